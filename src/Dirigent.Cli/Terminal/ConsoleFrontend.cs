namespace Dirigent.Cli.Terminal;

/// <summary>
/// Connects the guest's serial console to the host's stdin/stdout. On a terminal: raw mode with QEMU's escape
/// (Ctrl-A x quits, Ctrl-A h helps, Ctrl-A Ctrl-A sends Ctrl-A). Otherwise plain pass-through, and end-of-file on
/// stdin only stops input: the VM keeps running (so `&lt;/dev/null` works, as with QEMU).
/// Output goes through a <see cref="BatchedWriter"/>: the vCPU thread only appends to a buffer.
/// </summary>
public sealed class ConsoleFrontend : IDisposable
{
    private readonly BatchedWriter _out;
    private readonly TerminalMode? _raw;
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
        _raw = useTerminal ? TerminalMode.EnterRaw() : null;
        _out = new BatchedWriter(output, "dirigent-console-out");
    }

    /// <summary>A byte from the guest's UART, as it is (raw mode turns off the terminal's own LF -> CRLF mapping; the
    /// guest already sends CRLF on its console).</summary>
    public void Write(byte b) => _out.Write(b);

    /// <summary>Writes out everything the guest wrote so far, on this thread (before a line of the VMM's own).</summary>
    public void Flush() => _out.Flush();

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

    private void Message(string s) => _out.Write(System.Text.Encoding.ASCII.GetBytes(s));

    public void Dispose()
    {
        _stopped = true;
        _out.Dispose();
        _raw?.Dispose();
    }
}
