using System.Net;
using System.Text.Json;
using Dirigent.Daemon.Auth;
using Dirigent.Daemon.Vms;
using Dirigent.Daemon.Workers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Api;

/// <summary>
/// Introspection of a running VM (README "Introspection"), proxied to its worker's API socket: the system-call trace
/// as a JSON-lines stream, a memory dump sent back as the response body (so the file lands where the client is, also
/// for a remote daemon or a jailed worker), and the guest's process list.
/// </summary>
internal sealed partial class DaemonApi
{
    private void MapIntrospection(WebApplication app, TokenRights R, TokenRights O)
    {
        // Watching what a guest does reads its memory: operate, as the console.
        Route(app, "GET", Base + "/vms/{name}/trace", O, TraceStream);
        Route(app, "POST", Base + "/vms/{name}/memory-dump", O, MemoryDump);
        Route(app, "GET", Base + "/vms/{name}/processes", R, async (HttpContext c, string name) =>
        {
            var rt = await LiveWorker(c, name, "processes");
            byte[] list = await Worker(() => rt.Handle.Client.GetProcessesAsync(c.RequestAborted));
            c.Response.ContentType = "application/json";
            c.Response.ContentLength = list.Length;
            await c.Response.Body.WriteAsync(list, c.RequestAborted);
        });
    }

    /// <summary>GET /vms/{name}/trace[?process=NAME]: the worker's application/x-ndjson stream, copied as it comes.</summary>
    private async Task TraceStream(HttpContext c, string name)
    {
        string? process = null;
        foreach (var (k, v) in c.Request.Query)
        {
            if (k != "process") throw Bad($"unknown query parameter '{k}' (only process=NAME)");
            if (v.Count != 1 || string.IsNullOrEmpty(v[0])) throw Bad("process must be given once, as a process name");
            process = v[0];
        }
        var rt = await LiveWorker(c, name, "trace");
        using var upstream = await Worker(() => rt.Handle.Client.OpenTraceStreamAsync(process, c.RequestAborted));
        c.Response.StatusCode = StatusCodes.Status200OK;
        c.Response.ContentType = "application/x-ndjson";
        c.Response.Headers.CacheControl = "no-cache";
        await c.Response.StartAsync(c.RequestAborted);
        await c.Response.Body.FlushAsync(c.RequestAborted);
        await using var body = await upstream.Content.ReadAsStreamAsync(c.RequestAborted);
        var buf = new byte[16 * 1024];
        try
        {
            int n;
            while ((n = await body.ReadAsync(buf, c.RequestAborted)) > 0)
            {
                await c.Response.Body.WriteAsync(buf.AsMemory(0, n), c.RequestAborted);
                await c.Response.Body.FlushAsync(c.RequestAborted);
            }
        }
        catch (Exception e) when (e is IOException or HttpRequestException or OperationCanceledException)
        {
            // The client left, or the worker ended (its VM stopped): the stream just ends.
        }
    }

    /// <summary>
    /// POST /vms/{name}/memory-dump [{"format": "raw" | "elf"}]: the worker writes the dump into the VM's directory
    /// (where a jailed worker may write), the daemon sends it as application/octet-stream and removes it.
    /// </summary>
    private async Task MemoryDump(HttpContext c, string name)
    {
        using var doc = ParseObject(await ReadBodyAsync(c), optional: true);
        string format = "raw";
        if (doc != null)
        {
            var f = Fields(doc.RootElement, "", "format");
            if (f.TryGetValue("format", out var fe)) format = String(fe, "format");
            if (format is not ("raw" or "elf")) throw Bad($"field 'format' must be raw or elf, got '{format}'");
        }
        var rt = await LiveWorker(c, name, "memory-dump");
        string dir = paths.SnapshotsDir(name);
        string file = Path.Combine(dir, $".memory-dump-{Guid.NewGuid():N}.{format}");
        try
        {
            await Worker(async () => { await rt.Handle.Client.MemoryDumpAsync(file, format, c.RequestAborted); return true; });
            await using var f = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
            c.Response.ContentType = "application/octet-stream";
            c.Response.ContentLength = f.Length;
            c.Response.Headers.ContentDisposition = $"attachment; filename=\"{name}.{format}\"";
            await f.CopyToAsync(c.Response.Body, c.RequestAborted);
        }
        finally { File.Delete(file); }
    }

    private async Task<VmRuntime> LiveWorker(HttpContext c, string name, string what)
    {
        var (rec, _) = await vms.Store.RequireAsync(name, c.RequestAborted);
        if (!vms.Live.TryGetValue(name, out var rt))
            throw Conflict($"VM '{name}' is {rec.State}: {what} needs it running");
        return rt;
    }

    /// <summary>A worker's refusal keeps its status and detail (400 no System.map, 409 ended...); an unreachable one is 502.</summary>
    private static async Task<T> Worker<T>(Func<Task<T>> call)
    {
        try { return await call(); }
        catch (WorkerApiException e)
        {
            int status = e.Status is HttpStatusCode s && (int)s is >= 400 and < 500 ? (int)s : StatusCodes.Status502BadGateway;
            throw new Dirigent.Api.ApiRequestException(status, e.Message);
        }
    }
}
