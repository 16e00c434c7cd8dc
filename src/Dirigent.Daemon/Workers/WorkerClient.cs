using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Dirigent.Daemon.Workers;

/// <summary>
/// HTTP over one worker's API socket (VMDIR/worker.sock): the calls the daemon makes on a running VM. Every failure
/// surfaces as a <see cref="WorkerApiException"/>: the worker's own problem detail and status when it refused, or a
/// null status when it could not be reached (gone, not listening yet, hung past the timeout).
/// </summary>
public sealed class WorkerClient : IDisposable
{
    /// <summary>Bounds one request: a snapshot of a large guest takes seconds, a hung worker must not hang the daemon.</summary>
    public static readonly TimeSpan RequestTimeout = TimeSpan.FromMinutes(5);

    private readonly SocketsHttpHandler _handler;
    private readonly HttpClient _http;

    public string SocketPath { get; }

    public WorkerClient(string socketPath)
    {
        SocketPath = socketPath;
        _handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(s, ownsSocket: true);
                }
                catch
                {
                    s.Dispose();
                    throw;
                }
            },
            // A restarted worker listens on a new socket at the same path: do not keep idle connections for long.
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(15),
        };
        // The handler is shared with the console WebSocket invoker, so the client must not dispose it on its own.
        _http = new HttpClient(_handler, disposeHandler: false) { BaseAddress = new Uri("http://localhost"), Timeout = RequestTimeout };
    }

    /// <summary>GET /v1/vm: state, accel, vcpus, memory_mib, uptime_s, reboots and, once ended, exit.</summary>
    public Task<JsonObject> GetVmAsync(CancellationToken ct = default) => GetJsonAsync("/v1/vm", ct);

    /// <summary>GET /v1/vm/metrics: per-vCPU instructions, disk and NIC counters, memory.</summary>
    public Task<JsonObject> GetMetricsAsync(CancellationToken ct = default) => GetJsonAsync("/v1/vm/metrics", ct);

    /// <summary>GET /v1/vm/console: the recent console output the worker keeps in its ring.</summary>
    public async Task<byte[]> GetConsoleAsync(CancellationToken ct = default)
    {
        using var r = await SendAsync(new HttpRequestMessage(HttpMethod.Get, "/v1/vm/console"), ct);
        return await r.Content.ReadAsByteArrayAsync(ct);
    }

    /// <summary>PUT /v1/vm/{action}: pause, resume, power-button, reset or stop; returns once the worker has done it.</summary>
    public async Task PutAsync(string action, CancellationToken ct = default)
    {
        if (action.Length == 0 || action.Contains('/') || action.Contains('?'))
            throw new ArgumentException($"'{action}' is not a VM action", nameof(action));
        using var r = await SendAsync(new HttpRequestMessage(HttpMethod.Put, "/v1/vm/" + action), ct);
    }

    /// <summary>
    /// PUT /v1/vm/migrate {"to":URI}: returns once the VM runs in the target (the worker then ends), with the worker's
    /// figures (total_ms, downtime_ms, downtime_end, ack_ms, rounds, pages, bytes), or an empty object from a worker
    /// that gives none.
    /// </summary>
    public async Task<JsonObject> MigrateAsync(string to, CancellationToken ct = default)
    {
        var req = new HttpRequestMessage(HttpMethod.Put, "/v1/vm/migrate")
        {
            Content = new StringContent(new JsonObject { ["to"] = to }.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        using var r = await SendAsync(req, ct);
        // The VM has moved by now: figures that cannot be read are no reason to say otherwise.
        try { return JsonNode.Parse(await r.Content.ReadAsStringAsync(ct)) as JsonObject ?? []; }
        catch (Exception e) when (e is JsonException or IOException or HttpRequestException) { return []; }
    }

    /// <summary>PUT /v1/vm/snapshot {"path":DIR}: returns once the snapshot is complete on disk.</summary>
    public async Task SnapshotAsync(string dir, CancellationToken ct = default)
    {
        var body = new JsonObject { ["path"] = dir }.ToJsonString();
        var req = new HttpRequestMessage(HttpMethod.Put, "/v1/vm/snapshot")
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        using var r = await SendAsync(req, ct);
    }

    /// <summary>GET /v1/vm/processes: the guest's process list, as the worker's JSON array.</summary>
    public async Task<byte[]> GetProcessesAsync(CancellationToken ct = default)
    {
        using var r = await SendAsync(new HttpRequestMessage(HttpMethod.Get, "/v1/vm/processes"), ct);
        return await r.Content.ReadAsByteArrayAsync(ct);
    }

    /// <summary>PUT /v1/vm/memory-dump {"path", "format"}: returns once the file is written.</summary>
    public async Task MemoryDumpAsync(string path, string format, CancellationToken ct = default)
    {
        var req = new HttpRequestMessage(HttpMethod.Put, "/v1/vm/memory-dump")
        {
            Content = new StringContent(new JsonObject { ["path"] = path, ["format"] = format }.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        using var r = await SendAsync(req, ct);
    }

    /// <summary>
    /// GET /v1/vm/trace/stream: the open response (headers read, body streaming) for the caller to copy and dispose;
    /// the request timeout covers only the headers, the stream lasts as long as the caller reads.
    /// </summary>
    public async Task<HttpResponseMessage> OpenTraceStreamAsync(string? process, CancellationToken ct = default)
    {
        string path = process == null ? "/v1/vm/trace/stream" : $"/v1/vm/trace/stream?process={Uri.EscapeDataString(process)}";
        return await SendAsync(new HttpRequestMessage(HttpMethod.Get, path), ct, HttpCompletionOption.ResponseHeadersRead);
    }

    /// <summary>
    /// The worker's console as a WebSocket (GET /v1/vm/console/ws): binary messages, the replayed recent output then
    /// live output from the worker; what is sent goes to the guest. The caller owns (and disposes) the socket.
    /// </summary>
    public async Task<WebSocket> ConnectConsoleAsync(CancellationToken ct = default)
    {
        var ws = new ClientWebSocket();
        try
        {
            // The invoker borrows our handler (its unix-socket ConnectCallback); it must not dispose it.
            using var invoker = new HttpMessageInvoker(_handler, disposeHandler: false);
            await ws.ConnectAsync(new Uri("ws://localhost/v1/vm/console/ws"), invoker, ct);
            return ws;
        }
        catch (Exception e) when (e is WebSocketException or HttpRequestException or IOException)
        {
            ws.Dispose();
            throw new WorkerApiException(null, $"cannot open the worker's console at {SocketPath}: {OneLine(e.Message)}", e);
        }
        catch
        {
            ws.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        _http.Dispose();
        _handler.Dispose();
    }

    private async Task<JsonObject> GetJsonAsync(string path, CancellationToken ct)
    {
        using var r = await SendAsync(new HttpRequestMessage(HttpMethod.Get, path), ct);
        byte[] body = await r.Content.ReadAsByteArrayAsync(ct);
        try
        {
            return JsonNode.Parse(body) as JsonObject
                ?? throw new WorkerApiException(r.StatusCode, $"GET {path}: the worker answered JSON that is not an object");
        }
        catch (JsonException e)
        {
            throw new WorkerApiException(r.StatusCode, $"GET {path}: the worker answered invalid JSON: {OneLine(e.Message)}", e);
        }
    }

    /// <summary>Sends; a success comes back for the caller to read and dispose, anything else throws.</summary>
    private async Task<HttpResponseMessage> SendAsync(HttpRequestMessage req, CancellationToken ct,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        string what = $"{req.Method} {req.RequestUri}";
        HttpResponseMessage r;
        try
        {
            using (req) r = await _http.SendAsync(req, completion, ct);
        }
        catch (HttpRequestException e)
        {
            throw new WorkerApiException(null, $"{what}: worker not reachable at {SocketPath}: {OneLine(Innermost(e).Message)}", e);
        }
        catch (TaskCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new WorkerApiException(null, $"{what}: the worker did not answer within {RequestTimeout.TotalSeconds:0} s", e);
        }
        if (r.IsSuccessStatusCode) return r;
        using (r)
        {
            string detail = await ProblemDetail(r, ct);
            throw new WorkerApiException(r.StatusCode, detail);
        }
    }

    /// <summary>The problem+json detail the worker gives with every error, or the status line when it gave none.</summary>
    private static async Task<string> ProblemDetail(HttpResponseMessage r, CancellationToken ct)
    {
        string fallback = $"worker answered {(int)r.StatusCode} {r.ReasonPhrase}";
        try
        {
            string body = await r.Content.ReadAsStringAsync(ct);
            if (r.Content.Headers.ContentType is MediaTypeHeaderValue { MediaType: "application/problem+json" or "application/json" }
                && JsonNode.Parse(body) is JsonObject o && o["detail"] is JsonValue v && v.TryGetValue(out string? d) && d.Length > 0)
                return OneLine(d);
            return body.Length > 0 && body.Length < 300 ? $"{fallback}: {OneLine(body)}" : fallback;
        }
        catch (Exception e) when (e is JsonException or HttpRequestException or IOException)
        {
            return fallback;
        }
    }

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException != null) e = e.InnerException;
        return e;
    }

    private static string OneLine(string s) => string.Join(" ", s.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries)).Trim();
}
