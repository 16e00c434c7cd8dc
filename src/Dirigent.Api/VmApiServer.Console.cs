using System.Net.WebSockets;
using Dirigent.Vmm;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Api;

public sealed partial class VmApiServer
{
    /// <summary>Largest server→client message: a backlog is sent in pieces of this size.</summary>
    internal const int ConsoleMessageMax = 64 * 1024;

    /// <summary>How long a closing handshake may take before the connection is simply dropped.</summary>
    private static readonly TimeSpan CloseGrace = TimeSpan.FromSeconds(2);

    /// <summary>
    /// GET /v1/vm/console/ws: the serial console as a WebSocket. Server→client binary messages carry the console's
    /// output, starting with the ring buffer's contents (the last ≤64 KiB) and then live, nothing lost or repeated in
    /// between; client→server messages (binary or text) are typed into the guest as they are. Any number of viewers.
    /// The server closes with 1000 once the VM has ended (after the last output), 1001 when the API server stops, and
    /// 1008 when this viewer fell <see cref="ConsoleViewer.MaxBacklog"/> bytes behind (it may reconnect).
    /// </summary>
    private async Task ConsoleWebSocket(HttpContext ctx)
    {
        if (!ctx.WebSockets.IsWebSocketRequest)
            throw ApiRequestException.BadRequest($"{ctx.Request.Path} is a WebSocket: send GET with Connection: Upgrade and Upgrade: websocket");
        if (_disposed != 0) throw new ObjectDisposedException(nameof(VmApiServer));
        using var ws = await ctx.WebSockets.AcceptWebSocketAsync();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, _stopping.Token);
        var viewer = new ConsoleViewer();
        void OnExit(VmExitReason r) => viewer.End($"vm ended: {SnakeCase(r.Kind.ToString())}");
        _vm.Exited += OnExit;
        using var sub = _vm.Console.Subscribe(viewer.OnByte, replay: true);
        // Subscribed first, so an exit that happened before is seen here and one that happens after by the event.
        if (_vm.ExitReason is { } ended) OnExit(ended);
        var receiving = ReceiveConsoleInput(ws, cts.Token);
        try
        {
            await SendConsoleOutput(ws, viewer, receiving, cts.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or ObjectDisposedException)
        {
            // The client went away (nothing to say to it) or the server is stopping (say so, briefly).
            if (_stopping.IsCancellationRequested && !ctx.RequestAborted.IsCancellationRequested)
                await TryClose(ws, WebSocketCloseStatus.EndpointUnavailable, "API server shutting down");
        }
        finally
        {
            _vm.Exited -= OnExit;
            // After our close frame the client answers with its own: give it a moment before the connection goes.
            if (ws.State == WebSocketState.CloseSent)
                await Task.WhenAny(receiving, Task.Delay(CloseGrace, cts.Token)).ContinueWith(_ => { }, TaskScheduler.Default);
            await cts.CancelAsync();
            try { await receiving; }
            catch (Exception e) when (e is OperationCanceledException or WebSocketException or ObjectDisposedException) { }
        }
    }

    /// <summary>Sends output until the VM ends, the viewer lags, or the client closes its side.</summary>
    private static async Task SendConsoleOutput(WebSocket ws, ConsoleViewer viewer, Task receiving, CancellationToken ct)
    {
        var takeCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        // The client's close ends the wait for output too (nobody reads what we would send).
        _ = receiving.ContinueWith(_ => takeCancel.Cancel(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            while (true)
            {
                ConsoleViewer.Batch b;
                try { b = await viewer.TakeAsync(takeCancel.Token); }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    // The client sent its close (or the connection broke): answer the close handshake.
                    if (ws.State == WebSocketState.CloseReceived)
                        await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", ct);
                    return;
                }
                if (b.Lagged)
                {
                    await TryClose(ws, WebSocketCloseStatus.PolicyViolation,
                        $"console viewer fell more than {ConsoleViewer.MaxBacklog >> 20} MiB behind");
                    return;
                }
                if (b.EndReason != null)
                {
                    await TryClose(ws, WebSocketCloseStatus.NormalClosure, b.EndReason);
                    return;
                }
                for (int off = 0; off < b.Length; off += ConsoleMessageMax)
                    await ws.SendAsync(b.Buffer.AsMemory(off, Math.Min(ConsoleMessageMax, b.Length - off)),
                        WebSocketMessageType.Binary, endOfMessage: true, ct);
                viewer.Return(b.Buffer!);
            }
        }
        finally { takeCancel.Dispose(); }
    }

    /// <summary>Types every message the client sends into the guest; returns when the client closes.</summary>
    private async Task ReceiveConsoleInput(WebSocket ws, CancellationToken ct)
    {
        var buf = new byte[4096];
        while (true)
        {
            var r = await ws.ReceiveAsync(buf.AsMemory(), ct);
            if (r.MessageType == WebSocketMessageType.Close) return;
            if (r.Count > 0)
            {
                try { _vm.Console.Write(buf.AsSpan(0, r.Count)); }
                catch (ObjectDisposedException) { return; } // the VM is being torn down: input has nowhere to go
            }
        }
    }

    /// <summary>Our close frame, then the client's (bounded): a client that never answers is just dropped.</summary>
    private static async Task TryClose(WebSocket ws, WebSocketCloseStatus status, string reason)
    {
        if (ws.State is not (WebSocketState.Open or WebSocketState.CloseReceived)) return;
        using var grace = new CancellationTokenSource(CloseGrace);
        try { await ws.CloseOutputAsync(status, reason, grace.Token); }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or ObjectDisposedException) { }
    }
}
