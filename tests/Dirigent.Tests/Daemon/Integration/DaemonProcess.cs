using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>
/// The real daemon process (`dotnet dirigent.dll daemon --home TMP`, the CLI built beside the tests) and an HTTP client
/// on its Unix socket. Dispose kills the daemon and every worker started for this state directory (found by the
/// directory in their command line), even when the test failed.
/// </summary>
internal sealed class DaemonProcess : IAsyncDisposable
{
    /// <summary>Hang guard only: generous, because the machine may be loaded.</summary>
    public static readonly TimeSpan Hang = TimeSpan.FromSeconds(240);

    public string Home { get; }
    /// <summary>The tiny idle guest (prints <see cref="ApiTestVm.ReadyLine"/>, then halts with interrupts on).</summary>
    public string Kernel { get; }
    public HttpClient Http { get; private set; } = null!;
    /// <summary>http://127.0.0.1:PORT of the TCP listener, when started with one.</summary>
    public string? TcpBase { get; private set; }
    public string SocketPath => Path.Combine(Home, "dirigent.sock");

    private readonly bool _tcp;
    private readonly int _port;
    private Process? _daemon;
    private readonly StringBuilder _stderr = new();

    private readonly string[] _extraArgs;
    private readonly string[] _launcher;

    private DaemonProcess(bool tcp, int port, string[]? extraArgs = null, string[]? launcher = null)
    {
        _extraArgs = extraArgs ?? [];
        _launcher = launcher ?? [];
        // /tmp and a short name: worker socket paths (HOME/vms/NAME/worker.sock) must stay under 108 bytes.
        Home = Directory.CreateTempSubdirectory("dgd-").FullName;
        Kernel = Path.Combine(Home, "guest.bin");
        File.WriteAllBytes(Kernel, ApiTestVm.BuildGuest());
        _tcp = tcp;
        _port = port;
    }

    /// <summary>
    /// Starts a daemon; with <paramref name="tcp"/> also on 127.0.0.1:<paramref name="port"/> (0: any free port; a fixed
    /// one survives <see cref="StartDaemonAsync"/> again, as a browser's page needs after a daemon restart).
    /// </summary>
    /// <param name="extraArgs">More daemon options (e.g. --no-jail-workers; the cluster tests' --cluster, --host-name, --advertise).</param>
    /// <param name="launcher">A command that runs the daemon's command line (e.g. `ip netns exec NS`, which execs it: the pid stays).</param>
    public static async Task<DaemonProcess> StartAsync(bool tcp = false, int port = 0, string[]? extraArgs = null, string[]? launcher = null)
    {
        var d = new DaemonProcess(tcp, port, extraArgs, launcher);
        try { await d.StartDaemonAsync(); }
        catch
        {
            await d.DisposeAsync();
            throw;
        }
        return d;
    }

    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>Starts a daemon on <see cref="Home"/> and waits for its "serving" line.</summary>
    public async Task StartDaemonAsync()
    {
        var psi = new ProcessStartInfo(_launcher.Length > 0 ? _launcher[0] : "dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true };
        foreach (var a in _launcher.Skip(1).Concat(_launcher.Length > 0 ? ["dotnet"] : []))
            psi.ArgumentList.Add(a);
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "dirigent.dll"), "daemon", "--home", Home, "--log-requests" })
            psi.ArgumentList.Add(a);
        foreach (var a in _extraArgs) psi.ArgumentList.Add(a);
        if (_tcp) { psi.ArgumentList.Add("--listen"); psi.ArgumentList.Add($"127.0.0.1:{_port}"); }
        var ready = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var p = new Process { StartInfo = psi, EnableRaisingEvents = true };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data == null) return;
            lock (_stderr) _stderr.AppendLine(e.Data);
            if (e.Data.StartsWith("daemon: serving", StringComparison.Ordinal)) ready.TrySetResult(e.Data);
        };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_stderr) _stderr.AppendLine(e.Data); };
        p.Exited += (_, _) => ready.TrySetException(new InvalidOperationException($"the daemon exited before serving:\n{Stderr}"));
        p.Start();
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        _daemon = p;
        string line = await ready.Task.WaitAsync(Hang);
        int at = line.IndexOf(" and http://", StringComparison.Ordinal);
        TcpBase = at < 0 ? null : line[(at + 5)..].Split(' ')[0];
        Http?.Dispose();
        Http = new HttpClient(NewHandler()) { BaseAddress = new Uri("http://dirigent"), Timeout = Hang };
    }

    public int DaemonPid => _daemon!.Id;
    /// <summary>Completes when the daemon process has exited (through the Process that started it: a daemon that exited
    /// before the caller looked is no longer found by its pid).</summary>
    public Task WaitDaemonExitAsync() => _daemon!.WaitForExitAsync();

    /// <summary>A TCP port that was free a moment ago (for a daemon that must keep its port across restarts).</summary>
    public static int FreePort()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }

    /// <summary>SIGKILL the daemon (workers keep running) and wait until it is gone.</summary>
    public async Task KillDaemonAsync()
    {
        var p = _daemon!;
        p.Kill();
        await p.WaitForExitAsync().WaitAsync(Hang);
    }

    public SocketsHttpHandler NewHandler() => new()
    {
        ConnectCallback = async (_, ct) =>
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await s.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), ct);
                return new NetworkStream(s, ownsSocket: true);
            }
            catch
            {
                s.Dispose();
                throw;
            }
        },
    };

    // ---- requests ----

    public async Task<(HttpStatusCode Status, JsonNode? Body, HttpResponseMessage Response)> SendAsync(HttpMethod method, string path,
        object? body = null, string? rawBody = null, HttpClient? client = null, string? token = null)
    {
        using var req = new HttpRequestMessage(method, path);
        if (rawBody != null) req.Content = new StringContent(rawBody, Encoding.UTF8, "application/json");
        else if (body != null) req.Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");
        if (token != null) req.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        var resp = await (client ?? Http).SendAsync(req);
        string text = await resp.Content.ReadAsStringAsync();
        JsonNode? json = null;
        if (text.Length > 0 && (resp.Content.Headers.ContentType?.MediaType?.Contains("json") ?? false)) json = JsonNode.Parse(text);
        return (resp.StatusCode, json, resp);
    }

    public async Task<JsonObject> GetAsync(string path)
    {
        var (status, body, _) = await SendAsync(HttpMethod.Get, path);
        Assert.True(status == HttpStatusCode.OK, $"GET {path}: {(int)status} {body?.ToJsonString()}");
        return body!.AsObject();
    }

    /// <summary>POSTs and expects <paramref name="expected"/>; returns the body.</summary>
    public async Task<JsonObject> PostAsync(string path, object? body, HttpStatusCode expected)
    {
        var (status, json, _) = await SendAsync(HttpMethod.Post, path, body);
        Assert.True(status == expected, $"POST {path}: {(int)status} {json?.ToJsonString()}\n{Stderr}");
        return json!.AsObject();
    }

    /// <summary>A VM of the tiny idle guest on the software CPU, 16 MiB.</summary>
    public Task<JsonObject> CreateTinyAsync(string name, object? extra = null)
        => PostAsync("/api/v1/vms", new Dictionary<string, object?>
        {
            ["name"] = name,
            ["spec"] = new { kernel = Kernel, memory_mib = 16, accel = "emu" },
        }.Concat(extra == null ? [] : JsonSerializer.SerializeToNode(extra)!.AsObject().Select(kv => new KeyValuePair<string, object?>(kv.Key, kv.Value)))
         .ToDictionary(), HttpStatusCode.Created);

    /// <summary>Waits for an operation (GET /operations/{id}/wait) until it has finished; returns it.</summary>
    public async Task<JsonObject> WaitOperationAsync(JsonObject op)
    {
        string id = op["id"]!.GetValue<string>();
        var deadline = DateTime.UtcNow + Hang;
        while (true)
        {
            var now = await GetAsync($"/api/v1/operations/{id}/wait?timeout=30");
            string s = now["status"]!.GetValue<string>();
            if (s is not ("pending" or "running")) return now;
            Assert.True(DateTime.UtcNow < deadline, $"operation {op["description"]} still {s} after {Hang}");
        }
    }

    /// <summary>Submits an action and expects its operation to succeed.</summary>
    public async Task<JsonObject> ActAsync(string vm, string action, object? body = null)
    {
        var op = await PostAsync($"/api/v1/vms/{vm}/{action}", body, HttpStatusCode.Accepted);
        var done = await WaitOperationAsync(op);
        Assert.True(done["status"]!.GetValue<string>() == "succeeded", $"{action} {vm}: {done.ToJsonString()}\n{Stderr}\n{WorkerLog(vm)}");
        return done;
    }

    public string WorkerLog(string vm)
    {
        try { return File.ReadAllText(Path.Combine(Home, "vms", vm, "worker.log")); }
        catch (IOException) { return "(no worker.log)"; }
    }

    /// <summary>Opens the console WebSocket through the daemon.</summary>
    public async Task<ClientWebSocket> ConsoleAsync(string vm)
    {
        var ws = new ClientWebSocket();
        using var invoker = new HttpMessageInvoker(NewHandler());
        using var cts = new CancellationTokenSource(Hang);
        await ws.ConnectAsync(new Uri($"ws://dirigent/api/v1/vms/{vm}/console"), invoker, cts.Token);
        return ws;
    }

    /// <summary>Reads console bytes until <paramref name="text"/> has appeared; returns all that was read.</summary>
    public static async Task<string> ReadUntilAsync(WebSocket ws, string text, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? Hang);
        var sb = new StringBuilder();
        var buf = new byte[8192];
        while (!sb.ToString().Contains(text, StringComparison.Ordinal))
        {
            WebSocketReceiveResult r;
            try { r = await ws.ReceiveAsync(buf, cts.Token); }
            catch (OperationCanceledException) { throw new TimeoutException($"console: no '{text}' within the hang guard; got: {sb}"); }
            if (r.MessageType == WebSocketMessageType.Close) throw new InvalidOperationException($"console closed before '{text}'; got: {sb}");
            sb.Append(Encoding.Latin1.GetString(buf, 0, r.Count));
        }
        return sb.ToString();
    }

    public async Task<string> ConsoleUntilAsync(string vm, string text)
    {
        using var ws = await ConsoleAsync(vm);
        return await ReadUntilAsync(ws, text);
    }

    // ---- cleanup ----

    /// <summary>PIDs of processes whose command line names this state directory: the daemon and its workers.</summary>
    public List<int> ProcessesOfHome()
    {
        var pids = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId) continue;
            try
            {
                string cmd = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (cmd.Contains(Home + "/", StringComparison.Ordinal) || cmd.Contains(Home + " ", StringComparison.Ordinal) || cmd.EndsWith(Home, StringComparison.Ordinal))
                    pids.Add(pid);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return pids;
    }

    public async ValueTask DisposeAsync()
    {
        try { if (_daemon is { HasExited: false }) _daemon.Kill(); }
        catch (InvalidOperationException) { }
        foreach (int pid in ProcessesOfHome())
        {
            try
            {
                using var p = Process.GetProcessById(pid);
                p.Kill();
                await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception) { }
        }
        Http?.Dispose();
        _daemon?.Dispose();
        try { Directory.Delete(Home, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

/// <summary>A Server-Sent Events stream from GET /api/v1/events, read event by event.</summary>
internal sealed class EventReader : IAsyncDisposable
{
    private readonly HttpResponseMessage _resp;
    private readonly StreamReader _reader;

    private EventReader(HttpResponseMessage resp, StreamReader reader)
    {
        _resp = resp;
        _reader = reader;
    }

    public static async Task<EventReader> OpenAsync(DaemonProcess d, string query = "")
    {
        var resp = await d.Http.GetAsync("/api/v1/events" + query, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, resp.StatusCode);
        Assert.Equal("text/event-stream", resp.Content.Headers.ContentType?.MediaType);
        var r = new StreamReader(await resp.Content.ReadAsStreamAsync());
        // The daemon writes a comment once subscribed: events published after this line are seen.
        Assert.Equal(": subscribed", await r.ReadLineAsync());
        return new EventReader(resp, r);
    }

    /// <summary>The next event matching <paramref name="match"/> (others are skipped).</summary>
    public async Task<(string Type, JsonObject Data)> NextAsync(Func<string, JsonObject, bool> match)
    {
        using var cts = new CancellationTokenSource(DaemonProcess.Hang);
        string? type = null;
        while (true)
        {
            string? line = await _reader.ReadLineAsync(cts.Token) ?? throw new InvalidOperationException("event stream ended");
            if (line.StartsWith("event: ", StringComparison.Ordinal)) type = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                var data = JsonNode.Parse(line[6..])!.AsObject();
                if (type != null && match(type, data)) return (type, data);
            }
        }
    }

    public ValueTask DisposeAsync()
    {
        _reader.Dispose();
        _resp.Dispose();
        return ValueTask.CompletedTask;
    }
}
