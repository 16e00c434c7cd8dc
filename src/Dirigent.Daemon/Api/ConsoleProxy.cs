using System.Net.WebSockets;
using Dirigent.Daemon.Vms;
using Microsoft.AspNetCore.Http;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Api;

/// <summary>
/// GET /vms/{name}/console: a WebSocket relayed to the worker's /v1/vm/console/ws, binary messages both ways. The
/// worker replays its last 64 KiB on connect and serves several viewers, so the daemon only copies bytes.
/// </summary>
internal static class ConsoleProxy
{
    public static async Task Serve(HttpContext c, VmManager vms, string name)
    {
        var (rec, _) = await vms.Store.RequireAsync(name, c.RequestAborted);
        if (!vms.Live.TryGetValue(name, out var rt))
            throw Conflict($"VM '{name}' is {rec.State}: the console exists only while it runs");
        if (!c.WebSockets.IsWebSocketRequest)
            throw Bad("the console is a WebSocket: send an Upgrade: websocket request (GET /console/log has the log)");
        // Connect upstream first, so a worker that cannot be reached is a problem answer, not a dead WebSocket.
        using var upstream = await rt.Handle.Client.ConnectConsoleAsync(c.RequestAborted);
        using var client = await c.WebSockets.AcceptWebSocketAsync();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(c.RequestAborted);
        var down = Pump(upstream, client, cts.Token);
        var up = Pump(client, upstream, cts.Token);
        await Task.WhenAny(down, up);
        cts.Cancel();
        await CloseQuietly(client);
        await CloseQuietly(upstream);
        try { await Task.WhenAll(down, up); } catch (Exception) { /* the other direction ended by cancellation */ }
    }

    private static async Task Pump(WebSocket from, WebSocket to, CancellationToken ct)
    {
        var buf = new byte[16 * 1024];
        try
        {
            while (!ct.IsCancellationRequested)
            {
                var r = await from.ReceiveAsync(buf, ct);
                if (r.MessageType == WebSocketMessageType.Close) return;
                await to.SendAsync(buf.AsMemory(0, r.Count), WebSocketMessageType.Binary, r.EndOfMessage, ct);
            }
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or ObjectDisposedException) { }
    }

    private static async Task CloseQuietly(WebSocket ws)
    {
        if (ws.State is not (WebSocketState.Open or WebSocketState.CloseReceived)) return;
        using var t = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try { await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, t.Token); }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or ObjectDisposedException) { }
    }
}
