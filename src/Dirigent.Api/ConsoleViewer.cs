namespace Dirigent.Api;

/// <summary>
/// One console WebSocket's output backlog: the VM's console calls <see cref="OnByte"/> on the guest's vCPU thread,
/// which only appends to a buffer under a short lock and never waits for the network; the viewer's sender takes
/// everything at once with <see cref="TakeAsync"/>. A viewer that falls <see cref="MaxBacklog"/> bytes behind (a
/// stalled client, a slow link under a flood of output) is marked lagged and dropped: its backlog stops growing, and
/// the sender closes the socket so the client can reconnect and get the replay.
/// </summary>
internal sealed class ConsoleViewer
{
    /// <summary>
    /// The most output kept for one viewer: 16 times the console ring (64 KiB), so a replay plus ordinary bursts
    /// never trip it, while a stalled viewer costs at most this (twice, with the buffer being sent).
    /// </summary>
    public const int MaxBacklog = 1 << 20;

    private readonly object _lock = new();
    // Output not yet taken (_fill[0.._len]); _spare is the buffer the sender handed back after sending it.
    private byte[] _fill = new byte[4096];
    private byte[]? _spare;
    private int _len;
    private bool _lagged;
    private string? _endReason;
    private TaskCompletionSource? _waiter;

    /// <summary>Called for each byte the guest writes (on its vCPU thread): append, wake the sender, never block.</summary>
    public void OnByte(byte b)
    {
        TaskCompletionSource? wake;
        lock (_lock)
        {
            if (_lagged) return;
            if (_len == _fill.Length)
            {
                if (_len >= MaxBacklog)
                {
                    _lagged = true;
                    _len = 0;
                }
                else Array.Resize(ref _fill, Math.Min(_fill.Length * 2, MaxBacklog));
            }
            if (!_lagged) _fill[_len++] = b;
            wake = _waiter;
            _waiter = null;
        }
        // RunContinuationsAsynchronously: the sender's continuation runs on the pool, not on the vCPU thread.
        wake?.TrySetResult();
    }

    /// <summary>No more output will come (the VM has ended): the sender sends what is left, then closes.</summary>
    public void End(string reason)
    {
        TaskCompletionSource? wake;
        lock (_lock)
        {
            _endReason ??= reason;
            wake = _waiter;
            _waiter = null;
        }
        wake?.TrySetResult();
    }

    /// <summary>What the sender does next.</summary>
    public readonly record struct Batch(byte[]? Buffer, int Length, bool Lagged, string? EndReason);

    /// <summary>
    /// Waits until there is output (all of it, oldest first), the viewer has lagged, or it has ended with nothing
    /// left to send. Give the buffer back with <see cref="Return"/> once sent. One caller at a time.
    /// </summary>
    public async Task<Batch> TakeAsync(CancellationToken ct)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_lagged) return new Batch(null, 0, true, null);
                if (_len > 0)
                {
                    var full = _fill;
                    int n = _len;
                    _fill = _spare ?? new byte[4096];
                    _spare = null;
                    _len = 0;
                    return new Batch(full, n, false, null);
                }
                if (_endReason != null) return new Batch(null, 0, false, _endReason);
                _waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
            }
            await wait.WaitAsync(ct);
        }
    }

    /// <summary>Hands a sent buffer back for reuse (only the small ones: a burst's big buffer is let go).</summary>
    public void Return(byte[] buffer)
    {
        if (buffer.Length > 64 * 1024) return;
        lock (_lock) _spare ??= buffer;
    }
}
