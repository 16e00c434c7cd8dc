using System.CommandLine;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json.Nodes;

namespace Dirigent.Cli.Client;

/// <summary>
/// The options that say where the daemon is: <c>--home</c> (its state directory, whose dirigent.sock is used),
/// <c>--host</c> (TCP instead, with <c>--token</c> or DIRIGENT_TOKEN as the bearer token). Recursive, so
/// <c>dirigent vm --host H start web</c> and <c>dirigent vm start web --host H</c> both work.
/// </summary>
public sealed class ConnectionOptions
{
    public Option<string?> Home { get; } = new("--home")
    {
        Description = "The daemon's state directory (default: $DIRIGENT_HOME, else /var/lib/dirigent as root, ~/.local/share/dirigent otherwise); its dirigent.sock is used",
        Recursive = true,
    };
    public Option<string?> Host { get; } = new("--host")
    {
        Description = "Talk to the daemon over TCP instead of its Unix socket: http://HOST:PORT",
        Recursive = true,
    };
    public Option<string?> Token { get; } = new("--token")
    {
        Description = "Bearer token for --host (default: $DIRIGENT_TOKEN)",
        Recursive = true,
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Home);
        command.Options.Add(Host);
        command.Options.Add(Token);
    }

    /// <summary>The state directory the command line, the environment or the default names.</summary>
    public string ResolveHome(ParseResult r) => DaemonHome.Resolve(r.GetValue(Home));

    public DaemonClient Connect(ParseResult r)
    {
        string? host = r.GetValue(Host);
        string? token = r.GetValue(Token) ?? NullIfEmpty(Environment.GetEnvironmentVariable("DIRIGENT_TOKEN"));
        if (host == null) return DaemonClient.ForSocket(Path.Combine(ResolveHome(r), "dirigent.sock"), token);
        return DaemonClient.ForHost(host, token);
    }

    private static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;
}

/// <summary>The daemon's state directory as `dirigent daemon` picks it, so both sides agree on the socket.</summary>
public static class DaemonHome
{
    public static string Resolve(string? option) =>
        Path.GetFullPath(string.IsNullOrEmpty(option) ? Dirigent.Daemon.Host.DaemonPaths.DefaultHome() : option);
}

/// <summary>
/// HTTP to the daemon's /api/v1 over its Unix socket or TCP. Every failure becomes a <see cref="CliException"/> with
/// the README's exit status and a one-line message (the problem+json detail when the daemon sent one).
/// </summary>
public sealed class DaemonClient : IDisposable
{
    /// <summary>Longer than the 30 s server-side wait of GET /operations/{id}/wait, so a slow wait is not cut short.</summary>
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(90);

    private readonly SocketsHttpHandler _handler;
    private readonly string? _socketPath;
    private readonly string? _token;

    public HttpClient Http { get; }

    /// <summary>unix:PATH or the host's URI, for messages.</summary>
    public string Endpoint { get; }

    private DaemonClient(SocketsHttpHandler handler, Uri baseAddress, string endpoint, string? socketPath, string? token)
    {
        _handler = handler;
        _socketPath = socketPath;
        _token = token;
        Endpoint = endpoint;
        Http = new HttpClient(handler, disposeHandler: false) { BaseAddress = baseAddress, Timeout = RequestTimeout };
        if (token != null) Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
    }

    public static DaemonClient ForSocket(string socketPath, string? token)
    {
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct).ConfigureAwait(false);
                    return new NetworkStream(s, ownsSocket: true);
                }
                catch
                {
                    s.Dispose();
                    throw;
                }
            },
        };
        return new DaemonClient(handler, new Uri("http://localhost"), "unix:" + socketPath, socketPath, token);
    }

    public static DaemonClient ForHost(string host, string? token)
    {
        // HOST:PORT alone is accepted too: the scheme is the only one the daemon speaks.
        string text = host.Contains("://", StringComparison.Ordinal) ? host : "http://" + host;
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || uri.AbsolutePath != "/")
            throw new CliException(ClientExit.BadCommandLine, $"--host must be http://HOST:PORT, got '{host}'");
        return new DaemonClient(new SocketsHttpHandler(), uri, uri.GetLeftPart(UriPartial.Authority), null, token);
    }

    public void Dispose()
    {
        Http.Dispose();
        _handler.Dispose();
    }

    /// <summary>Sends a request; any non-success answer or transport failure throws a <see cref="CliException"/>.</summary>
    public async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, JsonNode? body, CancellationToken ct,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        CheckSocket();
        using var request = new HttpRequestMessage(method, path);
        if (body != null) request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        HttpResponseMessage response;
        try
        {
            response = await Http.SendAsync(request, completion, ct).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw Unreachable(e);
        }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new CliException(ClientExit.Unreachable, $"the daemon at {Endpoint} did not answer within {RequestTimeout.TotalSeconds:0} s");
        }
        if (response.IsSuccessStatusCode) return response;
        using (response)
            throw await ErrorFrom(response, ct).ConfigureAwait(false);
    }

    /// <summary>Sends a request and parses the JSON answer (null for an empty one, e.g. 204).</summary>
    public async Task<JsonNode?> JsonAsync(HttpMethod method, string path, JsonNode? body, CancellationToken ct)
    {
        using var response = await SendAsync(method, path, body, ct).ConfigureAwait(false);
        return await ReadJson(response, ct).ConfigureAwait(false);
    }

    public Task<JsonNode?> GetAsync(string path, CancellationToken ct) => JsonAsync(HttpMethod.Get, path, null, ct);

    private async Task<JsonNode?> ReadJson(HttpResponseMessage response, CancellationToken ct)
    {
        string text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        if (string.IsNullOrWhiteSpace(text)) return null;
        try { return JsonNode.Parse(text); }
        catch (System.Text.Json.JsonException e)
        {
            throw new CliException(ClientExit.Unreachable, $"the daemon at {Endpoint} answered with bad JSON: {e.Message}");
        }
    }

    /// <summary>
    /// Sends an action that answers 202 Accepted with an operation, then waits for the operation (progress lines on
    /// <paramref name="progress"/>) unless <paramref name="noWait"/>, which prints its id on <paramref name="output"/>.
    /// A failed or cancelled operation throws with <see cref="ClientExit.OperationFailed"/>. Returns the finished
    /// operation (null for an answer that was not an operation, e.g. 200 or 204: the work was already done).
    /// </summary>
    public async Task<JsonObject?> SubmitAsync(HttpMethod method, string path, JsonNode? body, bool noWait,
        TextWriter output, TextWriter progress, CancellationToken ct)
    {
        using var response = await SendAsync(method, path, body, ct).ConfigureAwait(false);
        var node = await ReadJson(response, ct).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.Accepted || node is not JsonObject op || op["id"] is null) return null;
        if (noWait)
        {
            output.WriteLine((string?)op["id"]);
            return op;
        }
        return await WaitAsync(op, progress, ct).ConfigureAwait(false);
    }

    /// <summary>Polls GET /operations/{id}/wait (the server holds each call up to 30 s) until the operation ends.</summary>
    public async Task<JsonObject> WaitAsync(JsonObject op, TextWriter progress, CancellationToken ct)
    {
        string id = (string?)op["id"] ?? throw new CliException(ClientExit.Unreachable, "the daemon's operation has no id");
        string? lastProgress = null;
        while (true)
        {
            if (op["progress"]?.GetValue<string>() is { Length: > 0 } p && p != lastProgress)
            {
                progress.WriteLine($"dirigent: {OneLine(p)}");
                lastProgress = p;
            }
            string status = (string?)op["status"] ?? "";
            if (status == "succeeded") return op;
            if (status is "failed" or "cancelled")
            {
                string why = (string?)op["error"] is { Length: > 0 } e ? OneLine(e) : $"operation {status}";
                throw new CliException(ClientExit.OperationFailed, status == "cancelled" && !why.Contains("cancel", StringComparison.OrdinalIgnoreCase)
                    ? $"operation cancelled: {why}" : why);
            }
            var next = await GetAsync($"/api/v1/operations/{Uri.EscapeDataString(id)}/wait?timeout=30", ct).ConfigureAwait(false);
            op = next as JsonObject ?? throw new CliException(ClientExit.Unreachable, "the daemon answered an operation wait with no operation");
        }
    }

    /// <summary>
    /// Opens a WebSocket on <paramref name="path"/> through the same connection settings (Unix socket or TCP, token).
    /// A refused upgrade becomes the usual exit status (e.g. 409 when the VM is not running).
    /// </summary>
    public async Task<WebSocket> ConnectWebSocketAsync(string path, CancellationToken ct)
    {
        CheckSocket();
        var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        if (_token != null) ws.Options.SetRequestHeader("Authorization", "Bearer " + _token);
        var uri = new Uri(new Uri(Http.BaseAddress!.ToString().Replace("http", "ws", StringComparison.Ordinal)), path);
        try
        {
            using var invoker = new HttpMessageInvoker(_handler, disposeHandler: false);
            await ws.ConnectAsync(uri, invoker, ct).ConfigureAwait(false);
            return ws;
        }
        catch (WebSocketException e) when (ws.HttpStatusCode != 0 && ws.HttpStatusCode != HttpStatusCode.SwitchingProtocols)
        {
            int status = (int)ws.HttpStatusCode;
            ws.Dispose();
            throw new CliException(ClientExit.ForStatus(status), status switch
            {
                404 => "no such VM",
                409 => "the VM is not running",
                401 => "authentication required: give --token or DIRIGENT_TOKEN",
                403 => "the token lacks the right for the console (operate)",
                _ => $"console refused: {status} ({OneLine(e.Message)})",
            });
        }
        catch (Exception e) when (e is WebSocketException or HttpRequestException)
        {
            ws.Dispose();
            throw Unreachable(e);
        }
    }

    /// <summary>A socket file that is not there: no daemon with that home (a clearer message than ENOENT).</summary>
    private void CheckSocket()
    {
        if (_socketPath != null && !File.Exists(_socketPath))
            throw new CliException(ClientExit.Unreachable,
                $"no daemon socket at {_socketPath} (start one with `dirigent daemon`, or give --home, DIRIGENT_HOME or --host)");
    }

    private CliException Unreachable(Exception e)
    {
        string why = e.InnerException is SocketException se ? se.Message : OneLine(e.Message);
        return new CliException(ClientExit.Unreachable, $"cannot reach the daemon at {Endpoint}: {why}");
    }

    /// <summary>The problem+json detail (else its title, else the body's first line, else the status) as one line.</summary>
    private static async Task<CliException> ErrorFrom(HttpResponseMessage response, CancellationToken ct)
    {
        int status = (int)response.StatusCode;
        string text = "";
        try { text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false); }
        catch (Exception e) when (e is HttpRequestException or IOException) { }
        string? message = null;
        if (text.TrimStart().StartsWith('{'))
        {
            try
            {
                var problem = JsonNode.Parse(text) as JsonObject;
                message = (string?)problem?["detail"] ?? (string?)problem?["title"];
            }
            catch (System.Text.Json.JsonException) { }
        }
        if (string.IsNullOrWhiteSpace(message))
            message = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault();
        if (string.IsNullOrWhiteSpace(message)) message = $"{status} {response.ReasonPhrase}";
        return new CliException(ClientExit.ForStatus(status), OneLine(message));
    }

    /// <summary>Line breaks and tabs become spaces: every error is exactly one line on stderr.</summary>
    public static string OneLine(string s) =>
        string.Join(' ', s.Split(['\r', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
