using System.Buffers.Binary;
using Dirigent.Devices.Net;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Virtio.Net;

/// <summary>
/// virtio-net (virtio 1.2 §5.1): one queue pair, receiveq1 = queue 0 and transmitq1 = queue 1, on an
/// <see cref="INetBackend"/>. Features: MAC, STATUS (link always up) and MRG_RXBUF; and, when the backend honours
/// them end to end (a TAP does: its kernel completes checksums and segments), the checksum and TCP segmentation
/// offloads in both directions (CSUM, HOST_TSO4/6, HOST_ECN; GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN). The header then
/// passes through as the driver or the backend wrote it, after checking it asks only for what was negotiated;
/// what the backend may deliver follows what the driver accepted.
/// <para>Transmit runs on the vCPU thread that notifies queue 1: each chain (header + frame) goes to the backend in
/// one write. Receive runs on the backend's thread: a packet fills as many receive chains as it needs (with
/// MRG_RXBUF; one chain otherwise), the first starting with the header whose num_buffers counts them. When the
/// guest has posted too few buffers the packet is refused and the backend holds it (and stops reading) until the
/// guest notifies queue 0; chains already taken for it stay with the device. The vCPU never waits for the host
/// network.</para>
/// </summary>
public sealed class VirtioNet : IVirtioDevice
{
    // Feature bits (§5.1.3).
    public const ulong Csum = 1UL << 0, GuestCsum = 1UL << 1, Mac = 1UL << 5, GuestTso4 = 1UL << 7, GuestTso6 = 1UL << 8,
        GuestEcn = 1UL << 9, HostTso4 = 1UL << 11, HostTso6 = 1UL << 12, HostEcn = 1UL << 13, MrgRxbuf = 1UL << 15,
        Status = 1UL << 16;
    public const ulong Offloads = Csum | GuestCsum | GuestTso4 | GuestTso6 | GuestEcn | HostTso4 | HostTso6 | HostEcn;

    // struct virtio_net_hdr (§5.1.6): flags and gso_type values.
    public const byte HdrFlagNeedsCsum = 1, HdrFlagDataValid = 2;
    public const byte GsoNone = 0, GsoTcpV4 = 1, GsoUdp = 3, GsoTcpV6 = 4, GsoEcn = 0x80;

    public const int ReceiveQueue = 0, TransmitQueue = 1;
    public const ushort QueueSize = 256;
    /// <summary>VIRTIO_NET_S_LINK_UP in the status field.</summary>
    public const ushort StatusLinkUp = 1;
    private const int HeaderLength = INetBackend.HeaderLength;
    /// <summary>Offset of num_buffers in struct virtio_net_hdr.</summary>
    private const int NumBuffersOffset = 10;

    private readonly INetBackend _backend;
    private readonly byte[] _mac;
    private readonly object _rxLock = new(), _txLock = new();
    private readonly byte[] _txBuffer = new byte[INetBackend.MaxPacketLength];
    private readonly VirtqueueChain _txChain = new();
    private readonly Receiver _receiver;
    private IVirtioTransport? _transport;
    private bool _backendStarted;

    // Receive state, under _rxLock: the transport while the driver is running, and the chains taken for the packet
    // being delivered (kept across a refusal).
    private IVirtioTransport? _rxTransport;
    private bool _mergeable;
    private ulong _features;
    private VirtqueueChain[] _rxChains = [new VirtqueueChain()];
    private int _rxTaken;
    // Avail index of the first chain held for the packet, and whether the held chains are the only ones taken since
    // (so stopping can give them back to the ring); _stopped refuses packets while the VM is paused.
    private ushort _rxHeldFrom;
    private bool _rxHeldContiguous;
    private bool _stopped;
    private NetOffloads _receiveOffloads;
    // Rate limits per direction (null: none). _rxCharged: the packet the backend is offering has been paid for
    // (it may be refused for want of buffers and offered again). _txStopped: paused, a limiter timer must not send.
    private RateLimiter? _rxLimiter, _txLimiter;
    private bool _rxCharged;
    private volatile bool _txStopped;

    /// <summary>Counters (guest's view): frames delivered and sent, and frames dropped on the way.</summary>
    public long RxPackets, RxDropped, TxPackets, TxDropped;
    /// <summary>Frame bytes (without the virtio-net header) of the packets counted in RxPackets and TxPackets. Not in
    /// snapshots (the packet counters are): metrics of this process's work.</summary>
    public long RxBytes, TxBytes;

    public VirtioNet(INetBackend backend, ReadOnlySpan<byte> mac)
    {
        if (mac.Length != 6) throw new ArgumentException("a MAC address has 6 bytes", nameof(mac));
        _backend = backend;
        _mac = mac.ToArray();
        _receiver = new Receiver(this);
    }

    public ushort DeviceType => VirtioConstants.DeviceNet;
    /// <summary>Network controller, Ethernet.</summary>
    public uint PciClassCode => 0x020000;
    public ulong DeviceFeatures => Mac | MrgRxbuf | Status |
        ((_backend.SupportedOffloads & (NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn)) ==
            (NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn) ? Offloads : 0);
    public int QueueCount => 2;
    public ushort QueueMaxSize(int queue) => QueueSize;

    /// <summary>struct virtio_net_config up to max_virtqueue_pairs: mac[6], status, max_virtqueue_pairs (1).</summary>
    public int ConfigLength => 10;

    public uint ReadConfig(int offset, int size)
    {
        Span<byte> config = stackalloc byte[ConfigLength];
        _mac.CopyTo(config);
        BinaryPrimitives.WriteUInt16LittleEndian(config[6..], StatusLinkUp);
        BinaryPrimitives.WriteUInt16LittleEndian(config[8..], 1);
        uint v = 0;
        for (int k = 0; k < size && offset + k < ConfigLength; k++) v |= (uint)config[offset + k] << (8 * k);
        return v;
    }

    /// <summary>Every field is read-only for a VERSION_1 driver (the MAC is changed through the control queue, which we do not offer).</summary>
    public void WriteConfig(int offset, int size, uint value) { }

    /// <summary>
    /// Limits each direction separately to <paramref name="limit"/> (frame bytes and packets) in VM time; null
    /// removes the limits. Set it before the driver starts the device.
    /// </summary>
    public void SetRateLimit(RateLimitConfig? limit, Dirigent.Machine.Time.VirtualClock clock) =>
        SetRateLimit(limit, limit == null ? null : Misc.DeviceClock.From(clock));

    internal void SetRateLimit(RateLimitConfig? limit, Misc.DeviceClock? clock)
    {
        lock (_rxLock)
        {
            _rxLimiter?.Cancel();
            _rxLimiter = limit == null ? null : new RateLimiter(limit, clock!, _backend.ReceiveReady);
        }
        lock (_txLock)
        {
            _txLimiter?.Cancel();
            _txLimiter = limit == null ? null : new RateLimiter(limit, clock!, Transmit);
        }
    }

    internal RateLimiter? RxLimiter => _rxLimiter;
    internal RateLimiter? TxLimiter => _txLimiter;

    public void Activate(IVirtioTransport transport)
    {
        ulong f = transport.NegotiatedFeatures;
        _features = f;
        var rx = NetOffloads.None;
        if ((f & GuestCsum) != 0) rx |= NetOffloads.Checksum;
        if ((f & GuestTso4) != 0) rx |= NetOffloads.Tso4;
        if ((f & GuestTso6) != 0) rx |= NetOffloads.Tso6;
        if ((f & GuestEcn) != 0) rx |= NetOffloads.TsoEcn;
        _receiveOffloads = rx;
        _backend.SetReceiveOffloads(rx);
        _transport = transport;
        lock (_rxLock)
        {
            _mergeable = (f & MrgRxbuf) != 0;
            _rxTaken = 0;
            _rxTransport = transport;
        }
        if (!_backendStarted)
        {
            _backendStarted = true;
            _backend.Start(_receiver);
        }
        else _backend.ReceiveReady();
    }

    public void QueueNotify(int queue)
    {
        if (queue == ReceiveQueue) _backend.ReceiveReady();
        else if (queue == TransmitQueue) Transmit();
    }

    public void Reset()
    {
        // Taking the locks waits out a receive or transmit in progress; afterwards neither touches the queues.
        lock (_rxLock)
        {
            _rxTransport = null;
            _rxTaken = 0;
            _rxCharged = false;
        }
        lock (_txLock) _transport = null;
        _features = 0;
        _receiveOffloads = NetOffloads.None;
        _backend.SetReceiveOffloads(NetOffloads.None);
        // A packet the backend holds for us is dropped now rather than delivered after the driver restarts.
        _backend.ReceiveReady();
    }

    /// <summary>
    /// Refuses received packets from now on (the backend holds them) and waits out a delivery in progress. Receive
    /// chains held for a refused packet go back to the ring (taken again after <see cref="Start"/>), so the saved
    /// rings own every buffer. Transmit runs on vCPU threads, which are stopped first.
    /// </summary>
    public void Stop()
    {
        // A rate limiter's timer may send from its own thread: it sends nothing once this is set and the lock is had.
        _txStopped = true;
        lock (_txLock) { }
        lock (_rxLock)
        {
            _stopped = true;
            if (_rxTaken == 0) return;
            var q = _rxTransport?.Queue(ReceiveQueue);
            if (q != null && _rxHeldContiguous) q.Unpop(_rxHeldFrom);
            else if (q != null)
            {
                // A buffer-less chain was returned between the held ones: return these too, empty.
                Span<uint> zero = _rxTaken <= 64 ? stackalloc uint[_rxTaken] : new uint[_rxTaken];
                q.PushAll(_rxChains.AsSpan(0, _rxTaken), zero);
                q.NotifyGuest();
            }
            _rxTaken = 0;
        }
    }

    /// <summary>Takes packets again: the backend offers the one it holds, and transmit chains posted meanwhile go out.</summary>
    public void Start()
    {
        lock (_rxLock)
        {
            if (!_stopped) return;
            _stopped = false;
        }
        _txStopped = false;
        Transmit();
        _backend.ReceiveReady();
    }

    public VirtioPciState SaveState(VirtioPciState state) =>
        state with { Net = new VirtioNetState(_mac.ToArray(), StatusLinkUp, _receiveOffloads, RxPackets, RxDropped, TxPackets, TxDropped) };

    public void CheckState(VirtioPciState state)
    {
        if (state.Net is not { } n || n.Mac == null) throw new StateRestoreException("virtio-net: saved state has no network device part");
        if (!n.Mac.AsSpan().SequenceEqual(_mac))
            throw new StateRestoreException($"virtio-net: saved with MAC {Convert.ToHexString(n.Mac)}, this device has {Convert.ToHexString(_mac)}");
        if ((n.ReceiveOffloads & ~(NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn)) != 0)
            throw new StateRestoreException($"virtio-net: receive offloads {n.ReceiveOffloads}");
        if (n.ReceiveOffloads != NetOffloads.None && !state.Active)
            throw new StateRestoreException("virtio-net: receive offloads on a device the driver has not started");
        if (n.RxPackets < 0 || n.RxDropped < 0 || n.TxPackets < 0 || n.TxDropped < 0)
            throw new StateRestoreException("virtio-net: negative packet counter");
    }

    /// <summary>Re-applies the receive offloads the driver accepted to this backend (activation derived them already).</summary>
    public void RestoreState(VirtioPciState state)
    {
        var n = state.Net!;
        _receiveOffloads = n.ReceiveOffloads;
        _backend.SetReceiveOffloads(n.ReceiveOffloads);
        RxPackets = n.RxPackets;
        RxDropped = n.RxDropped;
        TxPackets = n.TxPackets;
        TxDropped = n.TxDropped;
    }

    private void Transmit()
    {
        lock (_txLock)
        {
            var t = _transport;
            if (t == null || _txStopped) return;
            var q = t.Queue(TransmitQueue);
            do
            {
                while (q.TryPop(_txChain))
                {
                    long len = _txChain.ReadableLength;
                    if (_txLimiter != null && !_txLimiter.TryConsume(Math.Max(len - HeaderLength, 0), 1, out _))
                    {
                        // Out of tokens: the chain goes back, first in line; the limiter's timer sends it later.
                        q.Unpop((ushort)(q.LastAvailIndex - 1));
                        q.NotifyGuest();
                        return;
                    }
                    if (len < HeaderLength + 14 || len > _txBuffer.Length || _txChain.Read(0, _txBuffer.AsSpan(0, (int)len)) != len
                        || !CheckTransmitHeader(_txBuffer))
                        TxDropped++;
                    else
                    {
                        if (_backend.Send(_txBuffer.AsSpan(0, (int)len)))
                        {
                            TxPackets++;
                            TxBytes += len - HeaderLength;
                        }
                        else TxDropped++;
                    }
                    q.Push(_txChain, 0);
                }
                q.NotifyGuest();
            }
            while (q.PrepareToSleep());
        }
    }

    /// <summary>
    /// Keeps what the header may ask of the backend within the negotiated offloads: a driver asking for more
    /// loses the packet. Flags other than NEEDS_CSUM mean nothing on transmit and num_buffers is unused: both are
    /// cleared, so the backend acts on nothing the driver did not negotiate.
    /// </summary>
    private bool CheckTransmitHeader(Span<byte> header)
    {
        ulong f = _features;
        byte flags = (byte)(header[0] & HdrFlagNeedsCsum), gso = header[1];
        if (flags != 0 && (f & Csum) == 0) return false;
        if (gso != GsoNone)
        {
            if ((gso & GsoEcn) != 0 && (f & HostEcn) == 0) return false;
            ulong need = (gso & ~GsoEcn) switch { GsoTcpV4 => HostTso4, GsoTcpV6 => HostTso6, _ => 0 };
            if (need == 0 || (f & need) == 0) return false;
        }
        else if ((f & Csum) == 0) header[..NumBuffersOffset].Clear();
        header[0] = flags;
        header.Slice(NumBuffersOffset, 2).Clear();
        return true;
    }

    /// <summary>
    /// Whether a received header asks only for what the driver accepted (GUEST_CSUM for partial checksums,
    /// GUEST_TSO4/6/ECN for segmented packets). Without GUEST_CSUM, DATA_VALID is dropped: §5.1.6.4 wants flags 0.
    /// </summary>
    private static bool CheckReceiveHeader(ReadOnlySpan<byte> packet, ulong f, out byte flags)
    {
        flags = (byte)(packet[0] & (HdrFlagNeedsCsum | HdrFlagDataValid));
        if ((f & GuestCsum) == 0)
        {
            if ((flags & HdrFlagNeedsCsum) != 0) return false;
            flags = 0;
        }
        byte gso = packet[1];
        if (gso == GsoNone) return true;
        if ((gso & GsoEcn) != 0 && (f & GuestEcn) == 0) return false;
        ulong need = (gso & ~GsoEcn) switch { GsoTcpV4 => GuestTso4, GsoTcpV6 => GuestTso6, _ => 0 };
        return need != 0 && (f & need) != 0;
    }

    /// <summary>Delivers one packet from the backend (on its thread); false: no room or no tokens, the backend holds it.</summary>
    private bool Receive(ReadOnlySpan<byte> packet)
    {
        lock (_rxLock)
        {
            bool done = ReceiveLocked(packet);
            // A packet done with (delivered or dropped) is paid for; the next one pays anew.
            if (done) _rxCharged = false;
            return done;
        }
    }

    private bool ReceiveLocked(ReadOnlySpan<byte> packet)
    {
        {
            // Paused: refused, the backend keeps it until Start.
            if (_stopped) return false;
            var t = _rxTransport;
            var q = t?.Queue(ReceiveQueue);
            if (q == null || !q.Enabled || q.IsBroken)
            {
                RxDropped++;
                return true;
            }
            if (packet.Length < HeaderLength + 14 || !CheckReceiveHeader(packet, _features, out byte flags))
            {
                RxDropped++;
                return true;
            }
            // Over the rate: refused before any chain is taken; the limiter's timer asks the backend to offer it again.
            if (_rxLimiter != null && !_rxCharged)
            {
                if (!_rxLimiter.TryConsume(packet.Length - HeaderLength, 1, out _)) return false;
                _rxCharged = true;
            }
            // Gather chains until the packet fits: several with MRG_RXBUF, exactly one without.
            long room = 0;
            for (int k = 0; k < _rxTaken; k++) room += _rxChains[k].WritableLength;
            while (room < packet.Length)
            {
                if (!_mergeable && _rxTaken == 1)
                {
                    // The driver's buffers are too small for this frame: it is lost, the buffer waits for the next.
                    RxDropped++;
                    return true;
                }
                if (_rxTaken == _rxChains.Length)
                {
                    Array.Resize(ref _rxChains, _rxChains.Length * 2);
                    for (int k = _rxTaken; k < _rxChains.Length; k++) _rxChains[k] = new VirtqueueChain();
                }
                if (!q.TryPop(_rxChains[_rxTaken]))
                {
                    if (q.IsBroken) { RxDropped++; _rxTaken = 0; return true; }
                    return false;
                }
                var taken = _rxChains[_rxTaken];
                if (taken.WritableLength == 0)
                {
                    // Nothing to write into: give it back at once rather than count it as a part of the packet.
                    q.Push(taken, 0);
                    if (_rxTaken > 0) _rxHeldContiguous = false;
                    continue;
                }
                if (_rxTaken == 0)
                {
                    _rxHeldFrom = (ushort)(q.LastAvailIndex - 1);
                    _rxHeldContiguous = true;
                }
                room += taken.WritableLength;
                _rxTaken++;
            }

            Span<byte> header = stackalloc byte[HeaderLength];
            packet[..HeaderLength].CopyTo(header);
            header[0] = flags;
            if (flags == 0 && header[1] == GsoNone) header[..NumBuffersOffset].Clear();
            BinaryPrimitives.WriteUInt16LittleEndian(header[NumBuffersOffset..], (ushort)_rxTaken);
            var frame = packet[HeaderLength..];
            int chain = 0, done = 0;
            long inChain = 0;
            // Header first, then the frame, each chain filled in order.
            for (int part = 0; part < 2; part++)
            {
                var src = part == 0 ? (ReadOnlySpan<byte>)header : frame;
                int pos = 0;
                while (pos < src.Length)
                {
                    var c = _rxChains[chain];
                    int n = (int)Math.Min(src.Length - pos, c.WritableLength - inChain);
                    if (n > 0 && c.Write(inChain, src.Slice(pos, n)) != n)
                    {
                        // Checked to be RAM when taken; a guest racing its own memory map loses the packet.
                        q.Fail("receive buffer no longer in guest RAM");
                        _rxTaken = 0;
                        RxDropped++;
                        return true;
                    }
                    pos += n;
                    inChain += n;
                    done += n;
                    if (inChain == c.WritableLength && done < packet.Length)
                    {
                        chain++;
                        inChain = 0;
                    }
                }
            }
            // Every chain taken carries part of the packet (the loop above took only as many as needed).
            long left = packet.Length;
            Span<uint> written = _rxTaken <= 64 ? stackalloc uint[_rxTaken] : new uint[_rxTaken];
            for (int k = 0; k < _rxTaken; k++)
            {
                written[k] = (uint)Math.Min(left, _rxChains[k].WritableLength);
                left -= written[k];
            }
            q.PushAll(_rxChains.AsSpan(0, _rxTaken), written);
            _rxTaken = 0;
            RxPackets++;
            RxBytes += frame.Length;
            q.NotifyGuest();
            return true;
        }
    }

    private sealed class Receiver(VirtioNet dev) : INetReceiver
    {
        public bool TryReceive(ReadOnlySpan<byte> packet) => dev.Receive(packet);
    }
}
