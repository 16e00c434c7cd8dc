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
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _viewers[viewer] = done.Task;
        void OnExit(VmExitReason r) => viewer.End(EndReason(r));
        _vm.Exited += OnExit;
        using var sub = _vm.Console.Subscribe(viewer.OnByte, replay: true);
        // Subscribed first, so an exit that happened before is seen here and one that happens after by the event.
        if (_vm.ExitReason is { } ended) OnExit(ended);
        // Not cancelled when the server stops: cancelling a receive aborts the socket, and we want to say goodbye.
        var receiving = ReceiveConsoleInput(ws, ctx.RequestAborted);
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
            _viewers.TryRemove(viewer, out _);
            done.TrySetResult();
            // After our close frame the client answers with its own: give it a moment, then drop the connection.
            try { await receiving.WaitAsync(CloseGrace); }
            catch (Exception e) when (e is TimeoutException or OperationCanceledException or WebSocketException or ObjectDisposedException) { }
            if (!receiving.IsCompleted) ws.Abort();
            try { await receiving; }
            catch (Exception e) when (e is OperationCanceledException or WebSocketException or ObjectDisposedException) { }
        }
    }

    private static string EndReason(VmExitReason r) => $"vm ended: {SnakeCase(r.Kind.ToString())}";

    /// <summary>
    /// At disposal: if the VM has ended, each viewer gets the rest of the output and the "vm ended" close (the worker
    /// disposes the server as soon as its VM ends, possibly before the VM's exit event has reached the viewers).
    /// </summary>
    private async Task DrainViewersOfEndedVm()
    {
        if (_vm.ExitReason is not { } r || _viewers.IsEmpty) return;
        foreach (var v in _viewers.Keys) v.End(EndReason(r));
        try { await Task.WhenAll(_viewers.Values).WaitAsync(CloseGrace * 2); }
        catch (TimeoutException) { } // a viewer that does not answer its close is cut off below
    }

    /// <summary>Sends output until the VM ends, the viewer lags, or the client closes its side.</summary>
    private static async Task SendConsoleOutput(WebSocket ws, ConsoleViewer viewer, Task receiving, CancellationToken ct)
    {
        var takeCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        // The client's close ends the wait for output too (nobody reads what we would send).
        _ = receiving.ContinueWith(_ =>
        {
            try { takeCancel.Cancel(); }
            catch (ObjectDisposedException) { } // the sender has already finished
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
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
