namespace Dirigent.Cli.Terminal;

/// <summary>
/// The guest's serial output on its way to a stream (stdout, a `--serial file:`) through a writer thread. The bytes
/// arrive one by one on the vCPU thread, and a write(2) per byte (2-4 us each on this project's hosts, ~20 KB of boot
/// log) was vCPU time. The vCPU only appends to a buffer and wakes the writer; the writer writes whatever gathered
/// meanwhile in one call, so a burst goes out in a few writes and a lone keystroke's echo at once. <see cref="Flush"/>
/// and <see cref="Dispose"/> drain it; a stream that fails (its reader went away) loses the output, never the VM.
/// </summary>
public sealed class BatchedWriter : IDisposable
{
    private readonly Stream _out;
    private readonly object _lock = new();      // guards _pending, _pendingCount, _stop
    private readonly object _writeLock = new(); // one writer of _out at a time (the thread, or a Flush)
    private byte[] _pending = new byte[4096];
    private int _pendingCount;
    private byte[] _spare = new byte[4096];     // guarded by _writeLock
    private bool _stop;
    private readonly Thread _writer;

    /// <summary>Starts the writer thread: create it before the VM runs (a seccomp filter allows no new threads).</summary>
    public BatchedWriter(Stream output, string threadName)
    {
        _out = output;
        _writer = new Thread(WriterLoop) { IsBackground = true, Name = threadName };
        _writer.Start();
    }

    public void Write(byte b) => Write(new ReadOnlySpan<byte>(in b));

    public void Write(ReadOnlySpan<byte> bytes)
    {
        lock (_lock)
        {
            if (_pendingCount + bytes.Length > _pending.Length)
                Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _pendingCount + bytes.Length));
            bytes.CopyTo(_pending.AsSpan(_pendingCount));
            _pendingCount += bytes.Length;
            Monitor.Pulse(_lock); // wakes the writer if it waits; nothing to do (no system call) if it is writing
        }
    }

    private void WriterLoop()
    {
        while (true)
        {
            lock (_lock)
            {
                while (_pendingCount == 0 && !_stop) Monitor.Wait(_lock);
                if (_pendingCount == 0) return; // stopping, and everything is out
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
        lock (_lock)
        {
            (chunk, n) = (_pending, _pendingCount);
            (_pending, _pendingCount) = (_spare, 0);
        }
        if (n > 0)
        {
            try
            {
                _out.Write(chunk, 0, n);
                _out.Flush();
            }
            catch (IOException) { } // the reader of our output went away: the guest's output has nowhere to go
            catch (ObjectDisposedException) { }
        }
        _spare = chunk;
    }

    /// <summary>Writes out everything written so far, on this thread (before a line of the VMM's own).</summary>
    public void Flush()
    {
        lock (_writeLock) DrainLocked();
    }

    /// <summary>Stops the writer thread and writes out what is left; the stream stays open (the caller's).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _stop = true;
            Monitor.Pulse(_lock);
        }
        _writer.Join();
        Flush();
    }
}
