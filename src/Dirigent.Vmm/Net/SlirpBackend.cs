using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using Dirigent.Devices.Net;

namespace Dirigent.Vmm.Net;

/// <summary>
/// User-mode networking (QEMU's <c>-netdev user</c>) on libslirp: the guest's Ethernet frames go to
/// <c>slirp_input</c>, the frames libslirp answers with (<c>send_packet</c>) go to the virtio NIC, and libslirp's
/// TCP/UDP connections are ordinary host sockets of this process, so no privilege, TAP or host setup is needed.
/// <list type="bullet">
/// <item>One I/O thread owns the Slirp instance (libslirp is not thread-safe): it feeds the frames the vCPU queued
/// in <see cref="Send"/>, runs libslirp's timers, and sleeps in poll(2) on the sockets slirp_pollfds_fill names
/// plus an eventfd that <see cref="Send"/>, <see cref="ReceiveReady"/>, notify and Dispose write. Before
/// <see cref="Start"/> and after that thread ends, only the thread creating or disposing the backend touches it.</item>
/// <item>Frames cross without the 12-byte virtio-net header: <see cref="Send"/> strips it, received frames get an
/// all-zero one (a complete, checksummed frame). No offloads are advertised, so the guest computes its checksums
/// and never sends segmented packets.</item>
/// <item>Clock: libslirp's clock_get_ns and timers run on the host's monotonic clock, not VM time. libslirp's
/// timers pace retransmissions and keep-alives of real host sockets whose peers live in host time; a paused or
/// slow guest (the software CPU) then looks like a slow peer, as it would on a real network.</item>
/// <item>When the NIC has no receive buffers, frames wait in a bounded queue (<see cref="MaxPendingRx"/>) and are
/// offered again after <see cref="ReceiveReady"/>; beyond it they are dropped and TCP retransmits, as
/// libslirp.h allows.</item>
/// </list>
/// </summary>
public sealed unsafe class SlirpBackend : INetBackend
{
    /// <summary>Frames held for the guest while its receive queue is full, and frames queued from the guest.</summary>
    public const int MaxPendingRx = 4096, MaxQueuedTx = 4096;
    /// <summary>Bytes queued from the guest: a guest may send frames up to 64 KiB, so the count alone does not bound memory.</summary>
    public const long MaxQueuedTxBytes = 4L << 20;
    private const short POLLIN = 0x1, POLLPRI = 0x2, POLLOUT = 0x4, POLLERR = 0x8, POLLHUP = 0x10;

    private readonly int _wakeFd;
    private readonly Action<string>? _log;
    private NetSinkhole? _sinkhole;
    private readonly FrameSink _deliver;
    private GCHandle _self;
    private nint _slirp;
    private SlirpCb* _cb;
    private SlirpConfig* _cfg;
    private Thread? _io;
    private INetReceiver? _receiver;
    private volatile bool _stopping;
    private int _disposed, _wakePending, _guestErrors;

    // Guest -> slirp: frames (without header) queued by Send on the vCPU thread.
    private readonly ConcurrentQueue<(byte[] Buffer, int Length)> _tx = new();
    private int _txCount;
    private long _txBytes;

    // Slirp -> guest, I/O thread only: packets (header + frame) the NIC refused, oldest first.
    private readonly Queue<(byte[] Buffer, int Length)> _rxPending = new();
    private readonly byte[] _rxBuffer = new byte[INetBackend.MaxPacketLength];
    private int _holding;
    private long _readyGeneration, _refusedAt;

    // The poll set of one iteration: [0] is the eventfd, the rest are slirp's sockets.
    private PollFd[] _fds = new PollFd[64];
    private int _nfds;

    private sealed class SlirpTimer
    {
        public int Id;
        public nint CbOpaque, Callback;
        public long ExpireMs = -1;
    }
    private readonly Dictionary<nint, SlirpTimer> _timers = new();
    private nint _nextTimer = 1;

    public string Name { get; }

    /// <summary>Packets handed to the NIC, packets dropped toward the guest (queue full) and from it.</summary>
    public long ReceivedPackets, ReceiveDropped, SendDropped;

    private SlirpBackend(int wakeFd, string name, Action<string>? log)
    {
        _wakeFd = wakeFd;
        Name = name;
        _log = log;
        _deliver = Deliver;
    }

    /// <summary>
    /// Creates the user network of one card and binds its forwarded host ports; throws
    /// <see cref="NetBackendException"/> with one line (libslirp missing, a port that cannot be bound).
    /// <paramref name="log"/> gets guest misbehaviour libslirp reports and a failure of the I/O thread.
    /// </summary>
    /// <param name="sinkhole">The sandbox's sinkhole: it sees every frame from the guest first (README "Sandbox").</param>
    public static SlirpBackend Open(UserNetConfig config, Action<string>? log = null, NetSinkhole? sinkhole = null)
    {
        if (SlirpNative.Probe() is { } missing) throw new NetBackendException(missing);
        string version = Marshal.PtrToStringUTF8(SlirpNative.VersionString()) ?? "?";
        int wake = NetNative.EventFd(0, NetNative.EFD_CLOEXEC | NetNative.EFD_NONBLOCK);
        if (wake < 0) throw new NetBackendException($"user networking: cannot create an eventfd: {NetNative.ErrorText(NetNative.LastErrno)}");
        var b = new SlirpBackend(wake, $"user (libslirp {version})", log) { _sinkhole = sinkhole };
        try
        {
            b.Create(config, version);
            return b;
        }
        catch
        {
            b.Dispose();
            throw;
        }
    }

    private void Create(UserNetConfig config, string version)
    {
        _self = GCHandle.Alloc(this);
        _cb = (SlirpCb*)NativeMemory.AllocZeroed((nuint)sizeof(SlirpCb));
        _cb->SendPacket = &OnSendPacket;
        _cb->GuestError = &OnGuestError;
        _cb->ClockGetNs = &OnClockGetNs;
        _cb->TimerNew = &OnTimerNew;
        _cb->TimerFree = &OnTimerFree;
        _cb->TimerMod = &OnTimerMod;
        _cb->RegisterPollFd = &OnRegisterPollFd;
        _cb->UnregisterPollFd = &OnRegisterPollFd;
        _cb->Notify = &OnNotify;
        _cb->InitCompleted = &OnInitCompleted;
        _cb->TimerNewOpaque = &OnTimerNewOpaque;
        _cfg = (SlirpConfig*)NativeMemory.AllocZeroed((nuint)sizeof(SlirpConfig));
        // Config version 4 (init_completed, timer_new_opaque) came with 4.7; older libraries get version 1 and
        // the plain timer_new callback.
        _cfg->Version = System.Version.TryParse(version, out var v) && v >= new Version(4, 7) ? SlirpNative.ConfigVersion : 1;
        _cfg->InEnabled = 1;
        _cfg->Restricted = config.Restricted ? 1 : 0;
        _cfg->VNetwork = Addr(UserNetConfig.Network);
        _cfg->VNetmask = Addr(UserNetConfig.Netmask);
        _cfg->VHost = Addr(UserNetConfig.Gateway);
        _cfg->VDhcpStart = Addr(UserNetConfig.DhcpStart);
        _cfg->VNameserver = Addr(UserNetConfig.Dns);
        // IPv6 stays off (IPv4 only); the host's loopback is reachable as 10.0.2.2 (disable_host_loopback false).
        _slirp = SlirpNative.New(_cfg, _cb, GCHandle.ToIntPtr(_self));
        if (_slirp == 0) throw new NetBackendException($"user networking: libslirp {version} refused its configuration (slirp_new failed)");
        foreach (var f in config.HostForwards)
        {
            Marshal.SetLastPInvokeError(0);
            if (SlirpNative.AddHostFwd(_slirp, f.Udp ? 1 : 0, Addr(f.HostAddress), f.HostPort, Addr(f.GuestAddress), f.GuestPort) < 0)
            {
                int e = Marshal.GetLastPInvokeError();
                throw new NetBackendException($"hostfwd {f}: cannot listen on {f.HostAddress}:{f.HostPort} ({(f.Udp ? "udp" : "tcp")}): " +
                    (e != 0 ? NetNative.ErrorText(e) : "the address is in use or not allowed"));
            }
        }
    }

    private static uint Addr(string dotted)
    {
        var b = IPAddress.Parse(dotted).GetAddressBytes();
        return SlirpNative.InAddr(b[0], b[1], b[2], b[3]);
    }

    public NetOffloads SupportedOffloads => NetOffloads.None;

    /// <summary>Received frames are always complete and checksummed, which any driver accepts.</summary>
    public void SetReceiveOffloads(NetOffloads offloads) { }

    public void Start(INetReceiver receiver)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (_io != null) throw new InvalidOperationException("the user network backend is already started");
        _receiver = receiver;
        _io = new Thread(IoLoop) { IsBackground = true, Name = "slirp io" };
        _io.Start();
    }

    public bool Send(ReadOnlySpan<byte> packet)
    {
        const int H = INetBackend.HeaderLength;
        // A header asking for a checksum or segmentation cannot come: no offload is advertised (the NIC drops such
        // packets before they get here). A frame shorter than an Ethernet header means nothing to libslirp.
        if (packet.Length < H + 14 || packet.Length > INetBackend.MaxPacketLength || packet[0] != 0 || packet[1] != 0
            || Volatile.Read(ref _disposed) != 0 || Volatile.Read(ref _txCount) >= MaxQueuedTx
            || Interlocked.Read(ref _txBytes) >= MaxQueuedTxBytes)
        {
            Interlocked.Increment(ref SendDropped);
            return false;
        }
        var buf = ArrayPool<byte>.Shared.Rent(packet.Length - H);
        packet[H..].CopyTo(buf);
        Interlocked.Increment(ref _txCount);
        Interlocked.Add(ref _txBytes, packet.Length - H);
        _tx.Enqueue((buf, packet.Length - H));
        if (Interlocked.Exchange(ref _wakePending, 1) == 0) Wake();
        return true;
    }

    public void ReceiveReady()
    {
        // Paired with Offer: either the I/O thread sees this generation, or this sees its _holding and wakes it.
        Interlocked.Increment(ref _readyGeneration);
        if (Volatile.Read(ref _holding) != 0) Wake();
    }

    private void Wake()
    {
        ulong one = 1;
        NetNative.Write(_wakeFd, &one, 8);
    }

    private void IoLoop()
    {
        try
        {
            while (!_stopping)
            {
                Volatile.Write(ref _wakePending, 0);
                DrainTx();
                FlushRx();
                RunTimers();
                uint timeout = TimerTimeout();
                _nfds = 1;
                _fds[0] = new PollFd { Fd = _wakeFd, Events = POLLIN };
                SlirpNative.PollFdsFill(_slirp, &timeout, &OnAddPoll, GCHandle.ToIntPtr(_self));
                int ms = timeout == uint.MaxValue ? -1 : (int)Math.Min(timeout, int.MaxValue);
                if (!_tx.IsEmpty) ms = 0;
                int r;
                fixed (PollFd* p = _fds) r = NetNative.Poll(p, (nuint)_nfds, ms);
                if (r < 0 && NetNative.LastErrno == NetNative.EINTR) continue;
                if ((_fds[0].Revents & POLLIN) != 0)
                {
                    ulong v;
                    NetNative.Read(_wakeFd, &v, 8);
                }
                if (_stopping) return;
                SlirpNative.PollFdsPoll(_slirp, r < 0 ? 1 : 0, &OnGetREvents, GCHandle.ToIntPtr(_self));
            }
        }
        catch (Exception e)
        {
            _log?.Invoke($"user network {Name} stopped: {e.Message}; the card receives nothing from now on");
        }
    }

    private void DrainTx()
    {
        while (_tx.TryDequeue(out var f))
        {
            Interlocked.Decrement(ref _txCount);
            Interlocked.Add(ref _txBytes, -f.Length);
            // The sandbox's sinkhole answers (or drops) what the guest starts; the rest is libslirp's.
            if (_sinkhole == null || Sinkhole(f.Buffer.AsSpan(0, f.Length)))
                fixed (byte* p = f.Buffer) SlirpNative.Input(_slirp, p, f.Length);
            ArrayPool<byte>.Shared.Return(f.Buffer);
        }
    }

    /// <summary>The sinkhole's verdict; a frame it cannot take apart (a bug, a full disk for the log) is dropped,
    /// never passed on, and the network goes on.</summary>
    private bool Sinkhole(ReadOnlySpan<byte> frame)
    {
        try { return _sinkhole!.Inspect(frame, _deliver); }
        catch (Exception e) when (e is IOException or ArgumentException or IndexOutOfRangeException or InvalidOperationException)
        {
            if (Interlocked.Increment(ref _guestErrors) <= 10) _log?.Invoke($"user network: sinkhole: {e.Message} (frame dropped)");
            return false;
        }
    }

    /// <summary>Offers held packets in order until the NIC refuses one; nothing until a ReceiveReady since the last refusal.</summary>
    private void FlushRx()
    {
        if (_rxPending.Count == 0 || Interlocked.Read(ref _readyGeneration) == _refusedAt) return;
        while (_rxPending.TryPeek(out var p))
        {
            if (!Offer(p.Buffer.AsSpan(0, p.Length))) return;
            _rxPending.Dequeue();
            ArrayPool<byte>.Shared.Return(p.Buffer);
        }
    }

    private bool Offer(ReadOnlySpan<byte> packet)
    {
        while (true)
        {
            long gen = Interlocked.Read(ref _readyGeneration);
            if (_receiver!.TryReceive(packet))
            {
                Interlocked.Exchange(ref _holding, 0);
                ReceivedPackets++;
                return true;
            }
            Interlocked.Exchange(ref _holding, 1);
            if (Interlocked.Read(ref _readyGeneration) == gen)
            {
                _refusedAt = gen;
                return false;
            }
        }
    }

    /// <summary>send_packet: one frame from libslirp for the guest (called on the I/O thread, inside slirp calls).</summary>
    private void Deliver(ReadOnlySpan<byte> frame)
    {
        const int H = INetBackend.HeaderLength;
        if (_receiver == null || frame.Length + H > INetBackend.MaxPacketLength) { ReceiveDropped++; return; }
        if (_rxPending.Count == 0)
        {
            _rxBuffer.AsSpan(0, H).Clear();
            frame.CopyTo(_rxBuffer.AsSpan(H));
            if (Offer(_rxBuffer.AsSpan(0, H + frame.Length))) return;
        }
        if (_rxPending.Count >= MaxPendingRx) { ReceiveDropped++; return; }
        var buf = ArrayPool<byte>.Shared.Rent(H + frame.Length);
        buf.AsSpan(0, H).Clear();
        frame.CopyTo(buf.AsSpan(H));
        _rxPending.Enqueue((buf, H + frame.Length));
    }

    private static long NowNs() => (long)((Int128)Stopwatch.GetTimestamp() * 1_000_000_000 / Stopwatch.Frequency);

    private void RunTimers()
    {
        if (_timers.Count == 0) return;
        long now = NowNs() / 1_000_000;
        List<SlirpTimer>? due = null;
        foreach (var t in _timers.Values)
            if (t.ExpireMs >= 0 && t.ExpireMs <= now) (due ??= new()).Add(t);
        if (due == null) return;
        foreach (var t in due)
        {
            if (t.ExpireMs < 0 || t.ExpireMs > now) continue;   // re-armed or freed by an earlier callback
            t.ExpireMs = -1;
            if (t.Callback != 0) ((delegate* unmanaged<nint, void>)t.Callback)(t.CbOpaque);
            else SlirpNative.HandleTimer(_slirp, t.Id, t.CbOpaque);
        }
    }

    /// <summary>Milliseconds until the next armed timer, or UINT32_MAX (infinite) when none is.</summary>
    private uint TimerTimeout()
    {
        long next = long.MaxValue;
        foreach (var t in _timers.Values)
            if (t.ExpireMs >= 0) next = Math.Min(next, t.ExpireMs);
        if (next == long.MaxValue) return uint.MaxValue;
        return (uint)Math.Clamp(next - NowNs() / 1_000_000, 0, int.MaxValue);
    }

    private static SlirpBackend From(nint opaque) => (SlirpBackend)GCHandle.FromIntPtr(opaque).Target!;

    // libslirp's callbacks. An exception must not unwind into C: each catches, and the worst case is a lost frame.

    [UnmanagedCallersOnly]
    private static nint OnSendPacket(byte* buf, nuint len, nint opaque)
    {
        try
        {
            var b = From(opaque);
            var frame = new ReadOnlySpan<byte>(buf, (int)Math.Min(len, int.MaxValue));
            b.Deliver(b._sinkhole != null ? b._sinkhole.FromSlirp(frame) : frame);
        }
        catch (Exception) { }
        return (nint)len;
    }

    [UnmanagedCallersOnly]
    private static void OnGuestError(byte* msg, nint opaque)
    {
        try
        {
            var b = From(opaque);
            // A misbehaving guest could report an error per packet: the first few are enough to diagnose it.
            int n = Interlocked.Increment(ref b._guestErrors);
            if (n <= 10) b._log?.Invoke($"user network: guest error: {Marshal.PtrToStringUTF8((nint)msg)}{(n == 10 ? " (further guest errors not shown)" : "")}");
        }
        catch (Exception) { }
    }

    [UnmanagedCallersOnly]
    private static long OnClockGetNs(nint opaque) => NowNs();

    [UnmanagedCallersOnly]
    private static nint OnTimerNew(nint cb, nint cbOpaque, nint opaque) => From(opaque).AddTimer(new SlirpTimer { Callback = cb, CbOpaque = cbOpaque });

    [UnmanagedCallersOnly]
    private static nint OnTimerNewOpaque(int id, nint cbOpaque, nint opaque) => From(opaque).AddTimer(new SlirpTimer { Id = id, CbOpaque = cbOpaque });

    private nint AddTimer(SlirpTimer t)
    {
        nint key = _nextTimer++;
        _timers[key] = t;
        return key;
    }

    [UnmanagedCallersOnly]
    private static void OnTimerFree(nint timer, nint opaque) => From(opaque)._timers.Remove(timer);

    [UnmanagedCallersOnly]
    private static void OnTimerMod(nint timer, long expireMs, nint opaque)
    {
        if (From(opaque)._timers.TryGetValue(timer, out var t)) t.ExpireMs = Math.Max(expireMs, 0);
    }

    /// <summary>register/unregister_poll_fd: nothing to do, every iteration polls what slirp_pollfds_fill names.</summary>
    [UnmanagedCallersOnly]
    private static void OnRegisterPollFd(int fd, nint opaque) { }

    [UnmanagedCallersOnly]
    private static void OnNotify(nint opaque)
    {
        try { From(opaque).Wake(); }
        catch (Exception) { }
    }

    [UnmanagedCallersOnly]
    private static void OnInitCompleted(nint slirp, nint opaque) => From(opaque)._slirp = slirp;

    [UnmanagedCallersOnly]
    private static int OnAddPoll(int fd, int events, nint opaque)
    {
        var b = From(opaque);
        if (b._nfds == b._fds.Length) Array.Resize(ref b._fds, b._fds.Length * 2);
        short ev = 0;
        if ((events & SlirpNative.SLIRP_POLL_IN) != 0) ev |= POLLIN;
        if ((events & SlirpNative.SLIRP_POLL_OUT) != 0) ev |= POLLOUT;
        if ((events & SlirpNative.SLIRP_POLL_PRI) != 0) ev |= POLLPRI;
        if ((events & SlirpNative.SLIRP_POLL_ERR) != 0) ev |= POLLERR;
        if ((events & SlirpNative.SLIRP_POLL_HUP) != 0) ev |= POLLHUP;
        b._fds[b._nfds] = new PollFd { Fd = fd, Events = ev };
        return b._nfds++;
    }

    [UnmanagedCallersOnly]
    private static int OnGetREvents(int idx, nint opaque)
    {
        var b = From(opaque);
        if (idx < 1 || idx >= b._nfds) return 0;
        short re = b._fds[idx].Revents;
        int r = 0;
        if ((re & POLLIN) != 0) r |= SlirpNative.SLIRP_POLL_IN;
        if ((re & POLLOUT) != 0) r |= SlirpNative.SLIRP_POLL_OUT;
        if ((re & POLLPRI) != 0) r |= SlirpNative.SLIRP_POLL_PRI;
        if ((re & POLLERR) != 0) r |= SlirpNative.SLIRP_POLL_ERR;
        if ((re & POLLHUP) != 0) r |= SlirpNative.SLIRP_POLL_HUP;
        return r;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stopping = true;
        Wake();
        _io?.Join();
        // From here only this thread touches the instance; slirp_cleanup still calls timer_free and
        // unregister_poll_fd, so the handle stays valid through it.
        if (_slirp != 0) SlirpNative.Cleanup(_slirp);
        _slirp = 0;
        if (_self.IsAllocated) _self.Free();
        if (_cb != null) NativeMemory.Free(_cb);
        if (_cfg != null) NativeMemory.Free(_cfg);
        _cb = null;
        _cfg = null;
        while (_tx.TryDequeue(out var f)) ArrayPool<byte>.Shared.Return(f.Buffer);
        while (_rxPending.TryDequeue(out var p)) ArrayPool<byte>.Shared.Return(p.Buffer);
        NetNative.Close(_wakeFd);
    }
}
