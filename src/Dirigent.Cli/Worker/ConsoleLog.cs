namespace Dirigent.Cli.Worker;

/// <summary>
/// `--console-log PATH`: every console output byte appended to a file that others (the daemon's
/// GET /vms/{name}/console/log) read while the VM runs. The guest's vCPU thread only appends to a buffer under a
/// short lock; a writer thread takes the buffer and writes it at most every <see cref="FlushInterval"/> (so a line
/// shows up promptly, yet a chatty guest costs one write per interval, not one per byte), and once more when disposed.
/// The writer sleeps while the guest prints nothing: idle VMs cost no wake-ups. If the file cannot be written (disk
/// full) the output is dropped with one line on the error log: the VM never stops or waits for its log.
/// </summary>
internal sealed class ConsoleLog : IDisposable
{
    public static readonly TimeSpan FlushInterval = TimeSpan.FromMilliseconds(100);
    /// <summary>Output buffered for the writer beyond this is dropped (and counted): a stuck disk must not eat RAM.</summary>
    public const int MaxPending = 8 << 20;

    private readonly FileStream _file;
    private readonly TextWriter _err;
    private readonly object _lock = new();
    private readonly ManualResetEventSlim _stopping = new(false);
    private readonly Thread _writer;
    private byte[] _fill = new byte[4096], _spare = new byte[4096];
    private int _len;
    private long _dropped;
    private bool _stop, _failed;

    public string Path { get; }

    /// <summary>Opens (creates or appends to) the file; throws IOException/UnauthorizedAccessException if it cannot.</summary>
    public ConsoleLog(string path, TextWriter err)
    {
        Path = path;
        _err = err;
        // Shared for reading and for the daemon rotating or truncating it; appended so a restore keeps the history.
        _file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete, 1);
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "console-log" };
        _writer.Start();
    }

    /// <summary>Called on the guest's vCPU thread for each output byte: append and, if the writer sleeps, wake it.</summary>
    public void OnByte(byte b)
    {
        lock (_lock)
        {
            if (_stop || _failed) return;
            if (_len == _fill.Length)
            {
                if (_len >= MaxPending) { _dropped++; return; }
                Array.Resize(ref _fill, Math.Min(_fill.Length * 2, MaxPending));
            }
            _fill[_len++] = b;
            // Only the first byte after a write wakes the writer; it then waits out the interval collecting more.
            if (_len == 1) Monitor.Pulse(_lock);
        }
    }

    private void WriteLoop()
    {
        while (true)
        {
            lock (_lock)
            {
                while (_len == 0 && !_stop) Monitor.Wait(_lock);
                if (_len == 0 && _stop) return;
            }
            // Gather what else comes within the interval (cut short when the log is being closed).
            _stopping.Wait(FlushInterval);
            WriteOut();
        }
    }

    /// <summary>Writes and flushes what is buffered; on the writer thread, or at dispose once the writer has stopped.</summary>
    private void WriteOut()
    {
        byte[] buf;
        int n;
        long dropped;
        lock (_lock)
        {
            (buf, _fill, _spare) = (_fill, _spare, _fill);
            n = _len;
            _len = 0;
            dropped = _dropped;
            _dropped = 0;
        }
        if (n == 0 && dropped == 0) return;
        try
        {
            _file.Write(buf, 0, n);
            if (dropped > 0)
                _file.Write(System.Text.Encoding.ASCII.GetBytes($"\r\n[dirigent: {dropped} bytes of console output dropped: the log fell behind]\r\n"));
            _file.Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
        {
            lock (_lock) _failed = true;
            _err.WriteLine($"dirigent: --console-log {Path}: {e.Message}; console output is no longer logged");
        }
        // A burst's big buffer is let go instead of kept as the spare.
        if (buf.Length > 64 * 1024) lock (_lock) _spare = new byte[4096];
    }

    /// <summary>Writes what is left and closes the file (call once the VM's vCPUs have stopped).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_stop) return;
            _stop = true;
            Monitor.Pulse(_lock);
        }
        _stopping.Set();
        _writer.Join();
        WriteOut();
        _file.Dispose();
        _stopping.Dispose();
    }
}
