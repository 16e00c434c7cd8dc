namespace Dirigent.Vmm;

/// <summary>
/// A VM's serial console (COM1) as a two-way byte stream: what the guest writes goes to every subscriber and into a
/// ring buffer of recent output, so a client that attaches later (an API client, a web console) first sees what it
/// missed; <see cref="Write"/> types into the guest. Thread-safe.
/// </summary>
public sealed class VmConsole
{
    /// <summary>Bytes of recent output kept for replay.</summary>
    public const int RingSize = 64 * 1024;

    private readonly byte[] _ring = new byte[RingSize];
    private long _total;   // bytes ever written; the ring holds the last min(_total, RingSize)
    private readonly object _lock = new();
    private readonly List<Action<byte>> _subscribers = new();
    private Action<ReadOnlySpan<byte>>? _input;

    internal void ConnectInput(Action<ReadOnlySpan<byte>> input) => _input = input;

    /// <summary>Called by the UART for each byte the guest transmits.</summary>
    internal void GuestWrote(byte b)
    {
        Action<byte>[] subs;
        lock (_lock)
        {
            _ring[_total % RingSize] = b;
            _total++;
            if (_subscribers.Count == 0) return;
            subs = _subscribers.ToArray();
        }
        foreach (var s in subs) s(b);
    }

    /// <summary>Keystrokes for the guest (queued in the UART's receive FIFO).</summary>
    public void Write(ReadOnlySpan<byte> data) => _input?.Invoke(data);

    /// <summary>The recent output still in the ring buffer, oldest first.</summary>
    public byte[] Recent()
    {
        lock (_lock) return RecentLocked();
    }

    private byte[] RecentLocked()
    {
        int n = (int)Math.Min(_total, RingSize);
        var r = new byte[n];
        long start = _total - n;
        for (int i = 0; i < n; i++) r[i] = _ring[(start + i) % RingSize];
        return r;
    }

    /// <summary>
    /// Delivers every later output byte to <paramref name="onByte"/> (on the guest's vCPU thread: keep it short);
    /// with <paramref name="replay"/> the ring buffer's contents come first, with nothing lost or repeated between the
    /// two. Dispose the result to stop.
    /// </summary>
    public IDisposable Subscribe(Action<byte> onByte, bool replay = false)
    {
        lock (_lock)
        {
            if (replay) foreach (byte b in RecentLocked()) onByte(b);
            _subscribers.Add(onByte);
        }
        return new Subscription(this, onByte);
    }

    private sealed class Subscription(VmConsole c, Action<byte> a) : IDisposable
    {
        public void Dispose() { lock (c._lock) c._subscribers.Remove(a); }
    }
}
