using System.CommandLine;
using System.Net.WebSockets;
using System.Runtime.InteropServices;
using Dirigent.Cli.Terminal;

namespace Dirigent.Cli.Client;

/// <summary>
/// `dirigent vm console NAME`: the VM's serial console over the daemon's WebSocket (GET /api/v1/vms/NAME/console;
/// the daemon replays the last 64 KiB first, then live output).
/// On a terminal: raw mode, and Ctrl-A d detaches (the VM keeps running), Ctrl-A h helps, Ctrl-A Ctrl-A sends one
/// Ctrl-A; Ctrl-C goes to the guest. Without a terminal: bytes pass through both ways, and end-of-file on stdin only
/// ends input — the output keeps coming until the console closes (the VM stops) or SIGINT/SIGTERM detaches, the same
/// rule as `dirigent run </dev/null`. Status 0 after a detach or a closed console.
/// </summary>
public static class VmConsole
{
    public static Command Create(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The running VM" };
        var cmd = new Command("console", "Attach to a running VM's serial console (Ctrl-A d detaches; the VM keeps running)") { name };
        ClientAction.Set(cmd, "vm console", async (r, ct) =>
        {
            string vm = r.GetValue(name)!;
            using var client = conn.Connect(r);
            using var ws = await client.ConnectWebSocketAsync($"/api/v1/vms/{ClientAction.Seg(vm)}/console", ct);
            return await Attach(ws, vm, ct);
        });
        return cmd;
    }

    private static async Task<int> Attach(WebSocket ws, string vm, CancellationToken ct)
    {
        using var raw = TerminalMode.EnterRaw();
        bool interactive = raw != null;
        await using var stdout = Console.OpenStandardOutput();
        var outLock = new Lock();
        void Message(string text)
        {
            // In raw mode the terminal does not turn \n into \r\n: messages carry their own.
            lock (outLock) Console.Error.Write(interactive ? text.Replace("\n", "\r\n", StringComparison.Ordinal) : text);
        }
        if (interactive) Message($"dirigent: attached to {vm}'s console (Ctrl-A d detaches, Ctrl-A h helps)\n");

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var detached = new TaskCompletionSource();
        // SIGTERM, SIGHUP and (without a terminal) SIGINT detach in order, restoring the terminal, with status 0.
        void OnSignal(PosixSignalContext c)
        {
            c.Cancel = true;
            detached.TrySetResult();
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, OnSignal);
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        // stdin cannot be read with a cancellation token: a background thread, left blocked in read() when we return.
        var input = new Thread(() => InputLoop(ws, interactive, Message, detached, stop.Token)) { IsBackground = true, Name = "dirigent-console-stdin" };
        input.Start();

        var buffer = new byte[16 * 1024];
        int rc = ClientExit.Ok;
        string? endMessage = null;
        try
        {
            var receive = Task.Run(async () =>
            {
                while (true)
                {
                    var m = await ws.ReceiveAsync(buffer, stop.Token);
                    if (m.MessageType == WebSocketMessageType.Close) return;
                    if (m.Count > 0)
                        lock (outLock)
                        {
                            stdout.Write(buffer, 0, m.Count);
                            stdout.Flush();
                        }
                }
            }, stop.Token);
            var first = await Task.WhenAny(receive, detached.Task, Task.Delay(Timeout.Infinite, ct));
            if (first == receive)
            {
                await receive; // rethrows a broken connection
                endMessage = $"\ndirigent: {vm}'s console closed\n";
            }
            else endMessage = $"\ndirigent: detached from {vm} (it keeps running)\n";
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            endMessage = $"\ndirigent: detached from {vm} (it keeps running)\n";
        }
        catch (WebSocketException e)
        {
            rc = ClientExit.Unreachable;
            endMessage = $"\ndirigent vm console: the connection broke: {DaemonClient.OneLine(e.Message)}\n";
        }
        finally
        {
            stop.Cancel();
            await CloseQuietly(ws);
        }
        if (interactive || rc != ClientExit.Ok) Message(endMessage!);
        return rc;
    }

    /// <summary>Reads stdin and sends it to the guest; in raw mode through <see cref="DetachEscape"/>.</summary>
    private static void InputLoop(WebSocket ws, bool interactive, Action<string> message, TaskCompletionSource detached, CancellationToken stop)
    {
        var escape = new DetachEscape();
        var buf = new byte[1024];
        try
        {
            while (!stop.IsCancellationRequested)
            {
                int n = ReadStdin(buf);
                if (n <= 0) return; // EOF: input ends, output goes on
                ReadOnlyMemory<byte> send = buf.AsMemory(0, n);
                if (interactive)
                {
                    var (forward, action) = escape.Feed(buf.AsSpan(0, n));
                    if (forward.Length > 0) Send(ws, forward, stop);
                    if (action == DetachEscape.Action.Help)
                        message("\ndirigent: Ctrl-A d  detach (the VM keeps running)\n          Ctrl-A Ctrl-A  send Ctrl-A\n          Ctrl-A h  this help\n");
                    if (action == DetachEscape.Action.Detach)
                    {
                        detached.TrySetResult();
                        return;
                    }
                    continue;
                }
                Send(ws, send, stop);
            }
        }
        catch (Exception e) when (e is IOException or WebSocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The socket closed under us (the output side reports why) or stdin failed: input simply ends.
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern nint read(int fd, byte[] buf, nint count);

    /// <summary>
    /// read(2) on fd 0. Not .NET's console stream: on a terminal it switches the terminal to its own settings around
    /// each read and back to the ones it saw first (cooked), so keys stayed in the line buffer until Enter and
    /// Ctrl-A d arrived late or never.
    /// </summary>
    private static int ReadStdin(byte[] buf)
    {
        if (!OperatingSystem.IsLinux())
        {
            using var s = Console.OpenStandardInput();
            return s.Read(buf, 0, buf.Length);
        }
        while (true)
        {
            nint n = read(0, buf, buf.Length);
            if (n >= 0) return (int)n;
            if (Marshal.GetLastPInvokeError() != 4 /* EINTR */) throw new IOException($"reading stdin: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    private static void Send(WebSocket ws, ReadOnlyMemory<byte> bytes, CancellationToken stop) =>
        ws.SendAsync(bytes, WebSocketMessageType.Binary, endOfMessage: true, stop).AsTask().GetAwaiter().GetResult();

    private static async Task CloseQuietly(WebSocket ws)
    {
        if (ws.State is not (WebSocketState.Open or WebSocketState.CloseReceived)) return;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2)); // a hang guard only: the daemon answers at once
        try { await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "detached", cts.Token); }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
    }
}

/// <summary>
/// The console's escape: Ctrl-A then d detaches, h asks for help, Ctrl-A sends one Ctrl-A; any other key after
/// Ctrl-A is dropped with it (as with QEMU and screen). The state survives across reads, since Ctrl-A and its key
/// can arrive in two reads.
/// </summary>
public sealed class DetachEscape
{
    public const byte EscapeChar = 0x01;

    public enum Action
    {
        None,
        Help,
        /// <summary>Detach: input after the 'd' is dropped.</summary>
        Detach,
    }

    private bool _pending;

    public (byte[] Forward, Action Action) Feed(ReadOnlySpan<byte> input)
    {
        var forward = new List<byte>(input.Length);
        var action = Action.None;
        foreach (byte b in input)
        {
            if (_pending)
            {
                _pending = false;
                switch (b)
                {
                    case (byte)'d' or (byte)'D': return (forward.ToArray(), Action.Detach);
                    case (byte)'h' or (byte)'H' or (byte)'?': action = Action.Help; break;
                    case EscapeChar: forward.Add(EscapeChar); break;
                }
                continue;
            }
            if (b == EscapeChar) _pending = true;
            else forward.Add(b);
        }
        return (forward.ToArray(), action);
    }
}
