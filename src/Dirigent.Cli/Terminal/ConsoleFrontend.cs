namespace Dirigent.Cli.Terminal;

/// <summary>
/// Connects the guest's serial console to the host's stdin/stdout. On a terminal: raw mode with QEMU's escape
/// (Ctrl-A x quits, Ctrl-A h helps, Ctrl-A Ctrl-A sends Ctrl-A). Otherwise plain pass-through, and end-of-file on
/// stdin only stops input: the VM keeps running (so `&lt;/dev/null` works, as with QEMU).
/// Output goes through a writer thread: the guest's bytes arrive one by one on the vCPU thread, and a write(2) per
/// byte (2-4 us each on this project's hosts, ~20 KB of boot log) was vCPU time. The vCPU only appends to a buffer
/// and wakes the writer when it sleeps; the writer writes whatever gathered meanwhile in one call, so a burst goes
/// out in a few writes and a lone keystroke's echo at once. <see cref="Flush"/> and <see cref="Dispose"/> drain it.
/// </summary>
public sealed class ConsoleFrontend : IDisposable
{
    private readonly Stream _out;
    private readonly TerminalMode? _raw;
    private readonly object _outLock = new();   // guards _pending, _writerBusy, _writerStop
    private readonly object _writeLock = new(); // one writer of _out at a time (the thread, or a Flush)
    private byte[] _pending = new byte[4096];
    private int _pendingCount;
    private byte[] _spare = new byte[4096];     // guarded by _writeLock
    private bool _writerBusy, _writerStop;
    private readonly Thread _writer;
    private Thread? _reader;
    private volatile bool _stopped;

    public const byte EscapeChar = 0x01; // Ctrl-A

    public bool Interactive => _raw != null;

    /// <summary>Where host keystrokes go (the UART's receive queue).</summary>
    public Action<byte[]>? Input { get; set; }

    /// <summary>What Ctrl-A x does (stop the VM).</summary>
    public Action? Quit { get; set; }

    public ConsoleFrontend(Stream output, bool useTerminal = true)
    {
        _out = output;
        _raw = useTerminal ? TerminalMode.EnterRaw() : null;
        // Started here, before the VM runs (and before a seccomp filter, which allows no new threads).
        _writer = new Thread(WriterLoop) { IsBackground = true, Name = "dirigent-console-out" };
        _writer.Start();
    }

    /// <summary>A byte from the guest's UART.</summary>
    public void Write(byte b)
    {
        // Raw mode turns off the terminal's own LF -> CRLF mapping; the guest already sends CRLF on its console.
        Append(new ReadOnlySpan<byte>(in b));
    }

    private void Append(ReadOnlySpan<byte> bytes)
    {
        lock (_outLock)
        {
            if (_pendingCount + bytes.Length > _pending.Length)
                Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _pendingCount + bytes.Length));
            bytes.CopyTo(_pending.AsSpan(_pendingCount));
            _pendingCount += bytes.Length;
            if (!_writerBusy) Monitor.Pulse(_outLock);
        }
    }

    private void WriterLoop()
    {
        while (true)
        {
            lock (_outLock)
            {
                _writerBusy = false;
                while (_pendingCount == 0 && !_writerStop) Monitor.Wait(_outLock);
                if (_pendingCount == 0) return; // stopping, and everything is out
                _writerBusy = true;
            }
            lock (_writeLock) DrainLocked();
        }
    }

    /// <summary>Under _writeLock: takes what gathered and writes it. Taking and writing under the one lock keeps the
    /// output in order between the writer thread and <see cref="Flush"/>.</summary>
    private void DrainLocked()
    {
        byte[] chunk;
        int n;
        lock (_outLock)
        {
            (chunk, n) = (_pending, _pendingCount);
            (_pending, _pendingCount) = (_spare, 0);
        }
        if (n > 0) WriteOut(chunk, n);
        _spare = chunk;
    }

    private void WriteOut(byte[] chunk, int n)
    {
        try
        {
            _out.Write(chunk, 0, n);
            _out.Flush();
        }
        catch (IOException) { } // the reader of our stdout went away: the guest's output has nowhere to go
        catch (ObjectDisposedException) { }
    }

    /// <summary>Writes out everything the guest wrote so far, on this thread (before a line of the VMM's own).</summary>
    public void Flush()
    {
        lock (_writeLock) DrainLocked();
    }

    public void StartInput(Stream stdin)
    {
        _reader = new Thread(() => ReadLoop(stdin)) { IsBackground = true, Name = "dirigent-console-in" };
        _reader.Start();
    }

    private void ReadLoop(Stream stdin)
    {
        var buf = new byte[256];
        bool escape = false;
        while (!_stopped)
        {
            int n;
            try { n = stdin.Read(buf, 0, buf.Length); }
            catch (IOException) { return; }
            if (n <= 0) return; // EOF: input ends, the VM keeps running
            if (_raw == null)
            {
                Input?.Invoke(buf[..n]);
                continue;
            }
            var pass = new List<byte>(n);
            for (int k = 0; k < n; k++)
            {
                byte b = buf[k];
                if (escape)
                {
                    escape = false;
                    switch (b)
                    {
                        case (byte)'x': case (byte)'X':
                            Message("\r\ndirigent: terminated by Ctrl-A x\r\n");
                            Quit?.Invoke();
                            return;
                        case (byte)'h': case (byte)'H': case (byte)'?':
                            Message("\r\nC-a h    print this help\r\nC-a x    exit the VM\r\nC-a C-a  send C-a to the guest\r\n");
                            break;
                        case EscapeChar:
                            pass.Add(EscapeChar);
                            break;
                    }
                    continue;
                }
                if (b == EscapeChar) { escape = true; continue; }
                pass.Add(b);
            }
            if (pass.Count > 0) Input?.Invoke(pass.ToArray());
        }
    }

    private void Message(string s) => Append(System.Text.Encoding.ASCII.GetBytes(s));

    public void Dispose()
    {
        _stopped = true;
        lock (_outLock)
        {
            _writerStop = true;
            Monitor.Pulse(_outLock);
        }
        _writer.Join();
        Flush();
        _raw?.Dispose();
    }
}
