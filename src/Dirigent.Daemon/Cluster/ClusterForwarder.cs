using System.Net.Http.Headers;
using Dirigent.Api;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Vms;
using Dirigent.Inventory;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Daemon.Cluster;

/// <summary>
/// Cluster mode: any daemon answers for every VM. Reads of records come from the shared store; whatever touches a
/// VM's worker (actions, snapshots, its console log, PATCH and DELETE) is forwarded to the daemon of the VM's host,
/// over its advertised TCP API with this daemon's peer token, and the answer is passed back as it came. Operations
/// live on the daemon that runs them, so an operation id unknown here is looked up on the other hosts. A request
/// for a VM the scheduler has not placed yet waits (on a watch of its record) until it is.
/// </summary>
internal sealed class ClusterForwarder(ClusterNode node, VmStore store, OperationManager ops)
{
    private static readonly TimeSpan PlacementWait = TimeSpan.FromSeconds(20);
    private readonly HttpClient _http = new(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(5) })
    {
        Timeout = TimeSpan.FromMinutes(5),
    };

    public void Use(WebApplication app) => app.Use(async (ctx, next) =>
    {
        if (await TryForwardAsync(ctx)) return;
        await next(ctx);
    });

    private async Task<bool> TryForwardAsync(HttpContext ctx)
    {
        // Already forwarded once: answer here, whatever this daemon thinks (no loops between two daemons).
        if (ctx.Request.Headers.ContainsKey("Dirigent-Forwarded")) return false;
        string[] seg = ctx.Request.Path.Value?.Trim('/').Split('/') ?? [];
        if (seg.Length < 4 || seg[0] != "api" || seg[1] != "v1") return false;
        if (seg[2] == "operations") return await ForwardOperationAsync(ctx, seg[3]);
        if (seg[2] != "vms") return false;
        string name = seg[3];
        bool worker = seg.Length > 4 || !HttpMethods.IsGet(ctx.Request.Method);
        // Records come from the store; "incoming" is the migration target's own half (the record names the source).
        if (!worker || seg.Length > 4 && seg[4] == "incoming") return false;
        if (await store.GetAsync(name, ctx.RequestAborted) is not var (rec, rev)) return false; // the local 404
        if (rec.Host == null && !HttpMethods.IsDelete(ctx.Request.Method) && !HttpMethods.IsPatch(ctx.Request.Method))
            rec = await WaitPlacedAsync(name, rev, ctx.RequestAborted)
                  ?? throw new ApiRequestException(StatusCodes.Status503ServiceUnavailable,
                      $"VM '{name}' is not placed on a host yet (no host up that fits it; see the leader's log): try again later");
        if (rec.Host == null || rec.Host == node.HostName) return false;
        var owner = await node.UpHostAsync(rec.Host, ctx.RequestAborted);
        if (owner == null)
        {
            // Its host is down: a record-only change (PATCH, DELETE of a down VM) can be made here.
            if (HttpMethods.IsDelete(ctx.Request.Method) || HttpMethods.IsPatch(ctx.Request.Method)) return false;
            throw new ApiRequestException(StatusCodes.Status503ServiceUnavailable,
                $"VM '{name}' is on host '{rec.Host}', which is down (its VMs are placed elsewhere once its lease expires)");
        }
        if (ctx.WebSockets.IsWebSocketRequest)
            throw new ApiRequestException(StatusCodes.Status421MisdirectedRequest,
                $"VM '{name}' runs on host '{owner.Name}': open its console there (http://{owner.Address})");
        await ProxyAsync(ctx, owner);
        return true;
    }

    /// <summary>Waits for the scheduler to give the VM a host (a watch on its record from the revision read).</summary>
    private async Task<VmRecord?> WaitPlacedAsync(string name, long rev, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(PlacementWait);
        try
        {
            await foreach (var ev in node.Inventory.Watch(VmStore.Key(name), rev, cts.Token))
            {
                if (ev.Key != VmStore.Key(name)) continue;
                if (ev.Kind == InventoryEventKind.Delete) return null;
                var r = VmStore.DecodeRecord(ev.Value!);
                if (r.Host != null) return r;
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
        return null;
    }

    private async Task<bool> ForwardOperationAsync(HttpContext ctx, string id)
    {
        if (ops.Get(id) != null) return false;
        foreach (var h in await node.UpHostsAsync(ctx.RequestAborted))
        {
            if (h.Name == node.HostName) continue;
            using var probe = new HttpRequestMessage(HttpMethod.Get, $"http://{h.Address}/api/v1/operations/{Uri.EscapeDataString(id)}");
            probe.Headers.Authorization = new AuthenticationHeaderValue("Bearer", node.PeerToken);
            probe.Headers.Add("Dirigent-Forwarded", node.HostName);
            try
            {
                using var r = await _http.SendAsync(probe, ctx.RequestAborted);
                if (!r.IsSuccessStatusCode) continue;
            }
            catch (HttpRequestException) { continue; }
            await ProxyAsync(ctx, h);
            return true;
        }
        return false; // the local 404
    }

    /// <summary>Sends the request on to <paramref name="owner"/> and copies its answer back.</summary>
    private async Task ProxyAsync(HttpContext ctx, HostRecord owner)
    {
        var req = ctx.Request;
        using var msg = new HttpRequestMessage(new HttpMethod(req.Method), $"http://{owner.Address}{req.Path}{req.QueryString}");
        if (req.ContentLength > 0 || req.Headers.TransferEncoding.Count > 0)
        {
            var body = new MemoryStream();
            await req.Body.CopyToAsync(body, ctx.RequestAborted);
            body.Position = 0;
            msg.Content = new StreamContent(body);
            if (req.ContentType != null) msg.Content.Headers.TryAddWithoutValidation("Content-Type", req.ContentType);
        }
        if (req.Headers.IfMatch.Count > 0) msg.Headers.TryAddWithoutValidation("If-Match", req.Headers.IfMatch.ToString());
        msg.Headers.Authorization = new AuthenticationHeaderValue("Bearer", node.PeerToken);
        msg.Headers.Add("Dirigent-Forwarded", node.HostName);
        HttpResponseMessage resp;
        try { resp = await _http.SendAsync(msg, HttpCompletionOption.ResponseHeadersRead, ctx.RequestAborted); }
        catch (HttpRequestException e)
        {
            throw new ApiRequestException(StatusCodes.Status502BadGateway, $"host '{owner.Name}' at {owner.Address} did not answer: {ApiProblem.OneLine(e.Message)}");
        }
        using (resp)
        {
            ctx.Response.StatusCode = (int)resp.StatusCode;
            if (resp.Content.Headers.ContentType is { } ct) ctx.Response.ContentType = ct.ToString();
            if (resp.Headers.Location is { } loc) ctx.Response.Headers.Location = loc.OriginalString;
            if (resp.Headers.ETag is { } etag) ctx.Response.Headers.ETag = etag.ToString();
            ctx.Response.Headers["Dirigent-Host"] = owner.Name;
            await resp.Content.CopyToAsync(ctx.Response.Body, ctx.RequestAborted);
        }
    }
}
