using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using Dirigent.Api;
using Dirigent.Tests.Lifecycle;

namespace Dirigent.Tests.Api;

/// <summary>GET /v1/vm/console/ws against a real running VM: replay, live output, input into the guest, many viewers.</summary>
public class ConsoleWebSocketTests
{
    [Fact]
    public async Task ViewerGetsTheReplayThenLiveOutputAndTypesIntoTheGuest()
    {
        await using var t = await ApiTestVm.StartAsync(echo: true);
        await using var v = await ConsoleClient.ConnectAsync(t.SocketPath);
        // The ready line was printed before the viewer connected: it comes from the ring.
        await v.ReadUntil(ApiTestVm.ReadyLine + "\r\n");
        await v.Send("ping-123");
        // Only the guest writes the console: seeing the text there means it went through COM1 and back.
        await v.ReadUntil("ping-123");
        Assert.Equal(ApiTestVm.ReadyLine + "\r\nping-123", v.Text);
    }

    [Fact]
    public async Task SeveralViewersSeeTheSameOutputAndEachCanType()
    {
        await using var t = await ApiTestVm.StartAsync(echo: true);
        await using var a = await ConsoleClient.ConnectAsync(t.SocketPath);
        await a.ReadUntil(ApiTestVm.ReadyLine);
        await a.Send("from-a;");
        await a.ReadUntil("from-a;");
        // A later viewer's replay holds what the first one typed (the guest echoed it into the ring).
        await using var b = await ConsoleClient.ConnectAsync(t.SocketPath);
        await b.ReadUntil("from-a;");
        await b.Send("from-b;");
        await a.ReadUntil("from-b;");
        await b.ReadUntil("from-b;");
        Assert.Equal(ApiTestVm.ReadyLine + "\r\nfrom-a;from-b;", a.Text);
        Assert.Equal(a.Text, b.Text);
        // One viewer leaving does not disturb the other.
        await b.DisposeAsync();
        await a.Send("after;");
        await a.ReadUntil("after;");
    }

    [Fact]
    public async Task TheViewerIsClosedNormallyWhenTheVmEndsAfterTheLastOutput()
    {
        await using var t = await ApiTestVm.StartAsync();
        await using var v = await ConsoleClient.ConnectAsync(t.SocketPath);
        await v.ReadUntil(ApiTestVm.ReadyLine);
        (await t.Put("/v1/vm/stop")).EnsureSuccessStatusCode();
        var (status, reason) = await v.ReadToClose();
        Assert.Equal(WebSocketCloseStatus.NormalClosure, status);
        Assert.Equal("vm ended: stopped_by_request", reason);
        // A viewer that connects to the ended VM still gets the replay, then the same close.
        await using var late = await ConsoleClient.ConnectAsync(t.SocketPath);
        (status, reason) = await late.ReadToClose();
        Assert.Equal(ApiTestVm.ReadyLine + "\r\n", late.Text);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, status);
        Assert.Equal("vm ended: stopped_by_request", reason);
    }

    [Fact]
    public async Task StoppingTheServerClosesViewersAsGoingAway()
    {
        await using var t = await ApiTestVm.StartAsync();
        await using var v = await ConsoleClient.ConnectAsync(t.SocketPath);
        await v.ReadUntil(ApiTestVm.ReadyLine);
        // Disposal must not wait for the viewer (the worker exits promptly when its VM ends).
        var disposing = t.Server.DisposeAsync().AsTask();
        var (status, _) = await v.ReadToClose();
        Assert.Equal(WebSocketCloseStatus.EndpointUnavailable, status);
        Assert.True(disposing.WaitDone(TimeSpan.FromSeconds(30)), "server disposal hung on an open console");
        Assert.Equal("running", t.Vm.State.ToString().ToLowerInvariant());
    }

    [Fact]
    public async Task AServerDisposedRightAfterTheVmEndsStillSaysTheVmEnded()
    {
        // What a worker does: its VM ends and it disposes the API server at once, before the VM's exit event may have
        // reached the viewers. They still get the "vm ended" close, not "shutting down".
        await using var t = await ApiTestVm.StartAsync();
        await using var v = await ConsoleClient.ConnectAsync(t.SocketPath);
        await v.ReadUntil(ApiTestVm.ReadyLine);
        t.Vm.Stop();
        var disposing = t.Server.DisposeAsync().AsTask();
        var (status, reason) = await v.ReadToClose();
        Assert.Equal((WebSocketCloseStatus.NormalClosure, "vm ended: stopped_by_request"), (status, reason));
        Assert.True(disposing.WaitDone(TimeSpan.FromSeconds(30)), "server disposal hung on an open console");
    }

    [Fact]
    public async Task APlainGetIs400()
    {
        await using var t = await ApiTestVm.StartAsync();
        using var r = await t.Http.GetAsync("/v1/vm/console/ws");
        Assert.Contains("WebSocket", await ApiTestVm.AssertProblem(r, HttpStatusCode.BadRequest));
        using var put = await t.Put("/v1/vm/console/ws");
        await ApiTestVm.AssertProblem(put, HttpStatusCode.MethodNotAllowed);
    }

    [Fact]
    public async Task AViewerThatFallsTooFarBehindIsDroppedWithoutHoldingUpTheGuest()
    {
        // The guest's side (OnByte) never waits: it runs to completion here with nobody taking output.
        var v = new ConsoleViewer();
        for (int i = 0; i < ConsoleViewer.MaxBacklog; i++) v.OnByte((byte)i);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var full = await v.TakeAsync(cts.Token);
        Assert.False(full.Lagged);
        Assert.Equal(ConsoleViewer.MaxBacklog, full.Length);
        Assert.Equal((byte)(12345 % 256), full.Buffer![12345]);
        // One byte past the backlog limit: the viewer is marked lagged and keeps nothing more.
        for (int i = 0; i <= ConsoleViewer.MaxBacklog; i++) v.OnByte(1);
        Assert.True((await v.TakeAsync(cts.Token)).Lagged);
        v.End("ignored");
        Assert.True((await v.TakeAsync(cts.Token)).Lagged);
    }

    [Fact]
    public async Task AnEndedViewerHandsOutWhatIsLeftBeforeTheEnd()
    {
        var v = new ConsoleViewer();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var waiting = v.TakeAsync(cts.Token);
        Assert.False(waiting.IsCompleted);
        v.OnByte((byte)'x');
        var b = await waiting;
        Assert.Equal((1, (byte)'x'), (b.Length, b.Buffer![0]));
        v.Return(b.Buffer);
        v.OnByte((byte)'y');
        v.End("done");
        v.End("second reason is ignored");
        b = await v.TakeAsync(cts.Token);
        Assert.Equal((1, (byte)'y'), (b.Length, b.Buffer![0]));
        Assert.Equal("done", (await v.TakeAsync(cts.Token)).EndReason);
    }
}

/// <summary>A WebSocket client of a worker's console over its Unix socket, collecting what it receives as text.</summary>
internal sealed class ConsoleClient : IAsyncDisposable
{
    private readonly ClientWebSocket _ws;
    private readonly HttpMessageInvoker _invoker;
    private readonly StringBuilder _text = new();
    private readonly CancellationTokenSource _guard = new(TimeSpan.FromSeconds(60)); // a hang guard, not a timing

    private ConsoleClient(ClientWebSocket ws, HttpMessageInvoker invoker) => (_ws, _invoker) = (ws, invoker);

    public string Text => _text.ToString();

    public static async Task<ConsoleClient> ConnectAsync(string socketPath)
    {
        var handler = new SocketsHttpHandler
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
        };
        var invoker = new HttpMessageInvoker(handler);
        var ws = new ClientWebSocket();
        var c = new ConsoleClient(ws, invoker);
        await ws.ConnectAsync(new Uri("ws://localhost/v1/vm/console/ws"), invoker, c._guard.Token);
        return c;
    }

    public Task Send(string s) =>
        _ws.SendAsync(Encoding.ASCII.GetBytes(s), WebSocketMessageType.Binary, true, _guard.Token);

    /// <summary>Receives until the collected text contains <paramref name="s"/>; fails if the server closes first.</summary>
    public async Task ReadUntil(string s)
    {
        while (!Text.Contains(s, StringComparison.Ordinal))
        {
            if (await ReceiveOne() is { } closed)
                Assert.Fail($"closed ({closed}) before '{s}' arrived; got '{Text}'");
        }
    }

    /// <summary>Receives until the server's close frame; answers it and returns its status and reason.</summary>
    public async Task<(WebSocketCloseStatus?, string?)> ReadToClose()
    {
        while (await ReceiveOne() is not { } closed) { }
        return (_ws.CloseStatus, _ws.CloseStatusDescription);
    }

    /// <summary>One message appended to the text; the close status if it was the close frame.</summary>
    private async Task<WebSocketCloseStatus?> ReceiveOne()
    {
        var buf = new byte[64 * 1024];
        var r = await _ws.ReceiveAsync(buf.AsMemory(), _guard.Token);
        if (r.MessageType == WebSocketMessageType.Close)
        {
            if (_ws.State == WebSocketState.CloseReceived)
                await _ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", _guard.Token);
            return _ws.CloseStatus ?? WebSocketCloseStatus.Empty;
        }
        Assert.Equal(WebSocketMessageType.Binary, r.MessageType);
        _text.Append(Encoding.Latin1.GetString(buf, 0, r.Count));
        return null;
    }

    public async ValueTask DisposeAsync()
    {
        if (_ws.State == WebSocketState.Open)
        {
            try { await _ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "", _guard.Token); }
            catch (Exception e) when (e is WebSocketException or OperationCanceledException) { }
        }
        _ws.Dispose();
        _invoker.Dispose();
        _guard.Dispose();
    }
}
