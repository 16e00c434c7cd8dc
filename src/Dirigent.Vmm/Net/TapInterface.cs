using System.Text;
using Dirigent.Devices.Net;

namespace Dirigent.Vmm.Net;

/// <summary>
/// A Linux TAP interface as a network backend (what QEMU's <c>-netdev tap</c> is).
/// <list type="bullet">
/// <item>Opens /dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and sets the vnet header size to 12, so the
/// kernel reads and writes the virtio 1.x header (num_buffers included) in front of every frame and the virtio NIC
/// passes packets through unchanged. Receive offloads start switched off (TUNSETOFFLOAD 0; a TAP left configured
/// by another user might still have some) and follow what the guest's driver accepts
/// (<see cref="SetReceiveOffloads"/>); on send the kernel honours whatever the header asks for.</item>
/// <item>Attaches to an existing TAP of that name or creates one; it never sets TUNSETPERSIST, so a TAP it created
/// disappears when the VM ends. Like QEMU it configures nothing on the host side: no addresses, and no link
/// state (a new TAP is down until the user, or a script, runs `ip link set NAME up`).</item>
/// <item>Receives on a thread of its own that poll()s the TAP and an eventfd, so stopping never waits on a
/// blocked read. When the device has no room it keeps the packet and stops reading until
/// <see cref="ReceiveReady"/>; meanwhile the kernel queues on the TAP (txqueuelen) and drops beyond it.</item>
/// <item><paramref name="netns"/> (in <see cref="Open"/>): the TAP is looked up or created inside that network
/// namespace, from a thread that joins it just for the open; the fd keeps working from the VMM's namespace.</item>
/// </list>
/// </summary>
public sealed unsafe class TapInterface : INetBackend
{
    private readonly int _fd;
    private readonly int _wakeFd;
    private readonly byte[] _rxBuffer = GC.AllocateArray<byte>(INetBackend.MaxPacketLength, pinned: true);
    private Thread? _rxThread;
    private INetReceiver? _receiver;
    private volatile bool _stopping;
    private int _holding;
    private long _readyGeneration;
    private int _disposed;

    public string Name { get; }

    /// <summary>Packets handed to the receiver, and packets the kernel refused on send.</summary>
    public long ReceivedPackets, SendDropped;

    /// <summary>Set when the receive thread stopped because the TAP failed (e.g. its netdev was deleted).</summary>
    public string? ReceiveError { get; private set; }

    /// <summary>Called once, on the receive thread, with <see cref="ReceiveError"/> when receiving stops.</summary>
    public Action<string>? Failed;

    private void Fail(string reason)
    {
        ReceiveError = reason;
        Failed?.Invoke(reason);
    }

    private TapInterface(int fd, int wakeFd, string name)
    {
        _fd = fd;
        _wakeFd = wakeFd;
        Name = name;
    }

    /// <summary>
    /// Why <paramref name="name"/> cannot be a Linux interface name, or null when it can (the kernel's
    /// dev_valid_name: 1..15 bytes, not "." or "..", no '/', ':' or whitespace).
    /// </summary>
    public static string? InvalidNameReason(string name)
    {
        if (name.Length == 0) return "the TAP name is empty";
        if (Encoding.UTF8.GetByteCount(name) >= NetNative.IfNameSize)
            return $"TAP name '{name}' is too long (at most {NetNative.IfNameSize - 1} bytes)";
        if (name is "." or "..") return $"'{name}' is not a valid interface name";
        foreach (char c in name)
            if (c == '/' || c == ':' || char.IsWhiteSpace(c) || char.IsControl(c))
                return $"TAP name '{name}' contains '{(char.IsControl(c) || char.IsWhiteSpace(c) ? "\\x" + ((int)c).ToString("x2") : c.ToString())}', which interface names cannot";
        return null;
    }

    /// <summary>Opens (attaching or creating) the TAP <paramref name="name"/>; throws <see cref="NetBackendException"/> with a one-line reason.</summary>
    public static TapInterface Open(string name, string? netns = null)
    {
        if (InvalidNameReason(name) is { } bad) throw new NetBackendException(bad);
        int fd = netns == null ? OpenTap(name) : NetworkNamespace.RunIn(netns, () => OpenTap(name));
        int wake = NetNative.EventFd(0, NetNative.EFD_CLOEXEC | NetNative.EFD_NONBLOCK);
        if (wake < 0)
        {
            int e = NetNative.LastErrno;
            NetNative.Close(fd);
            throw new NetBackendException($"cannot create an eventfd for TAP {name}: {NetNative.ErrorText(e)}");
        }
        return new TapInterface(fd, wake, netns == null ? name : $"{name} (netns {netns})");
    }

    private static int OpenTap(string name)
    {
        int fd = NetNative.Open("/dev/net/tun", NetNative.O_RDWR | NetNative.O_NONBLOCK | NetNative.O_CLOEXEC);
        if (fd < 0)
        {
            int e = NetNative.LastErrno;
            throw new NetBackendException(e switch
            {
                NetNative.ENOENT => "/dev/net/tun is missing (load the tun module: modprobe tun)",
                NetNative.ENODEV or NetNative.ENXIO => "/dev/net/tun has no driver behind it (load the tun module: modprobe tun)",
                NetNative.EACCES or NetNative.EPERM => "no permission to open /dev/net/tun (run as root or grant access to it)",
                _ => $"cannot open /dev/net/tun: {NetNative.ErrorText(e)}",
            });
        }
        try
        {
            IfReq req = default;
            Encoding.UTF8.GetBytes(name, new Span<byte>(req.Name, NetNative.IfNameSize - 1));
            req.Flags = NetNative.IFF_TAP | NetNative.IFF_NO_PI | NetNative.IFF_VNET_HDR;
            if (NetNative.Ioctl(fd, NetNative.TUNSETIFF, &req) != 0)
            {
                int e = NetNative.LastErrno;
                throw new NetBackendException(e switch
                {
                    NetNative.EBUSY => $"TAP {name} is busy (another process has it open)",
                    NetNative.EPERM or NetNative.EACCES => $"not permitted to use TAP {name} (it belongs to another user, or CAP_NET_ADMIN is needed to create it)",
                    NetNative.EINVAL => $"'{name}' exists and is not a single-queue TAP interface",
                    _ => $"cannot attach to TAP {name}: {NetNative.ErrorText(e)}",
                });
            }
            int hdr = INetBackend.HeaderLength;
            if (NetNative.Ioctl(fd, NetNative.TUNSETVNETHDRSZ, &hdr) != 0)
                throw new NetBackendException($"TAP {name}: cannot set the virtio-net header size: {NetNative.ErrorText(NetNative.LastErrno)}");
            if (NetNative.Ioctl(fd, NetNative.TUNSETOFFLOAD, 0) != 0)
                throw new NetBackendException($"TAP {name}: cannot switch offloads off: {NetNative.ErrorText(NetNative.LastErrno)}");
            return fd;
        }
        catch
        {
            NetNative.Close(fd);
            throw;
        }
    }

    /// <summary>The kernel completes checksums and segments what we write, and does both for what we read unless told it may not.</summary>
    public NetOffloads SupportedOffloads => NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;

    public void SetReceiveOffloads(NetOffloads offloads)
    {
        // TUNSETOFFLOAD takes TUN_F_* bits, which NetOffloads mirrors; the kernel rejects TSO without CSUM.
        if ((offloads & ~NetOffloads.Checksum) != 0) offloads |= NetOffloads.Checksum;
        if (Volatile.Read(ref _disposed) != 0) return;
        // A failure leaves the kernel delivering less than allowed (complete frames), which every driver takes.
        NetNative.Ioctl(_fd, NetNative.TUNSETOFFLOAD, (nuint)(uint)offloads);
    }

    public void Start(INetReceiver receiver)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (_rxThread != null) throw new InvalidOperationException("the TAP backend is already started");
        _receiver = receiver;
        _rxThread = new Thread(ReceiveLoop) { IsBackground = true, Name = $"tap {Name} rx" };
        _rxThread.Start();
    }

    public bool Send(ReadOnlySpan<byte> packet)
    {
        if (packet.Length < INetBackend.HeaderLength || packet.Length > INetBackend.MaxPacketLength) return Dropped();
        nint n;
        fixed (byte* p = packet)
        {
            do n = NetNative.Write(_fd, p, (nuint)packet.Length);
            while (n < 0 && NetNative.LastErrno == NetNative.EINTR);
        }
        // EAGAIN (the kernel is out of room), EIO (the TAP is down), EINVAL (a frame the kernel rejects): a lost
        // frame, as on a wire.
        return n == packet.Length || Dropped();
    }

    private bool Dropped()
    {
        Interlocked.Increment(ref SendDropped);
        return false;
    }

    public void ReceiveReady()
    {
        // Paired with the receive thread, which publishes _holding before re-reading the generation: either it sees
        // this increment, or this sees its _holding and wakes it.
        Interlocked.Increment(ref _readyGeneration);
        if (Volatile.Read(ref _holding) != 0) Wake();
    }

    private void Wake()
    {
        ulong one = 1;
        NetNative.Write(_wakeFd, &one, 8);
    }

    private void ReceiveLoop()
    {
        var fds = stackalloc PollFd[2];
        int held = 0;
        fixed (byte* buf = _rxBuffer)
        {
            while (!_stopping)
            {
                fds[0] = new PollFd { Fd = _wakeFd, Events = NetNative.POLLIN };
                fds[1] = new PollFd { Fd = _fd, Events = NetNative.POLLIN };
                // While a packet is held the TAP is not polled: the kernel keeps queueing, the device catches up.
                int r = NetNative.Poll(fds, held > 0 ? 1u : 2u, -1);
                if (r < 0)
                {
                    int e = NetNative.LastErrno;
                    if (e == NetNative.EINTR) continue;
                    Fail($"TAP {Name}: poll failed: {NetNative.ErrorText(e)}");
                    return;
                }
                if ((fds[0].Revents & NetNative.POLLIN) != 0)
                {
                    ulong v;
                    NetNative.Read(_wakeFd, &v, 8);
                }
                if (_stopping) return;
                if (held > 0)
                {
                    if (!Deliver(buf, held)) continue;
                    held = 0;
                }
                else if ((fds[1].Revents & NetNative.POLLIN) == 0)
                {
                    if ((fds[1].Revents & (NetNative.POLLERR | NetNative.POLLNVAL)) != 0)
                    {
                        Fail($"TAP {Name}: the interface reported an error (was it deleted?)");
                        return;
                    }
                    continue;
                }
                held = DrainTap(buf);
                if (held < 0) return;
            }
        }
    }

    /// <summary>Offers a packet to the receiver; on refusal marks it held, unless room appeared meanwhile.</summary>
    private bool Deliver(byte* buf, int length)
    {
        while (true)
        {
            long gen = Interlocked.Read(ref _readyGeneration);
            if (_receiver!.TryReceive(new ReadOnlySpan<byte>(buf, length)))
            {
                Interlocked.Exchange(ref _holding, 0);
                ReceivedPackets++;
                return true;
            }
            // Paired with ReceiveReady: publish _holding, then re-read the generation.
            Interlocked.Exchange(ref _holding, 1);
            if (Interlocked.Read(ref _readyGeneration) == gen) return false;
        }
    }

    /// <summary>Reads and delivers until the TAP is empty; returns the length of a packet the receiver refused, 0, or -1 on a fatal error.</summary>
    private int DrainTap(byte* buf)
    {
        while (!_stopping)
        {
            nint n = NetNative.Read(_fd, buf, (nuint)INetBackend.MaxPacketLength);
            if (n < 0)
            {
                int e = NetNative.LastErrno;
                if (e == NetNative.EINTR) continue;
                if (e == NetNative.EAGAIN) return 0;
                Fail(e == NetNative.EBADFD
                    ? $"TAP {Name}: the interface was deleted"
                    : $"TAP {Name}: read failed: {NetNative.ErrorText(e)}");
                return -1;
            }
            if (n < INetBackend.HeaderLength) continue;
            if (!Deliver(buf, (int)n)) return (int)n;
        }
        return 0;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stopping = true;
        Wake();
        _rxThread?.Join();
        NetNative.Close(_wakeFd);
        NetNative.Close(_fd);
    }
}
