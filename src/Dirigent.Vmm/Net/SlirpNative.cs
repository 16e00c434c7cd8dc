using System.Runtime.InteropServices;

namespace Dirigent.Vmm.Net;

/// <summary>
/// libslirp's C API (libslirp.h of libslirp 4.7, Debian package libslirp0, soname libslirp.so.0) as the user-mode
/// network backend calls it. Nothing is loaded until a `--net user` card is opened: <see cref="Probe"/> checks the
/// library first so a host without it gets one line naming the package instead of a DllNotFoundException.
/// </summary>
internal static unsafe partial class SlirpNative
{
    public const string Lib = "libslirp.so.0";
    public const string Package = "libslirp0";

    /// <summary>SLIRP_CONFIG_VERSION_MAX of 4.7: version 4 adds init_completed and timer_new_opaque.</summary>
    public const uint ConfigVersion = 4;

    // SLIRP_POLL_* (what slirp_pollfds_fill asks for and get_revents answers).
    public const int SLIRP_POLL_IN = 1, SLIRP_POLL_OUT = 2, SLIRP_POLL_PRI = 4, SLIRP_POLL_ERR = 8, SLIRP_POLL_HUP = 16;

    /// <summary>
    /// Null when <paramref name="library"/> can be loaded, else the one line to show (the library name is a
    /// parameter so a test can ask for one that is missing).
    /// </summary>
    public static string? Probe(string library = Lib)
    {
        if (NativeLibrary.TryLoad(library, out var h))
        {
            bool ok = NativeLibrary.TryGetExport(h, "slirp_new", out _);
            return ok ? null : $"{library} has no slirp_new: user networking needs libslirp 4.7 or later (Debian package {Package})";
        }
        return $"user networking needs libslirp ({library} was not found): install the Debian package {Package}";
    }

    [LibraryImport(Lib, EntryPoint = "slirp_new")]
    public static partial nint New(SlirpConfig* cfg, SlirpCb* callbacks, nint opaque);

    [LibraryImport(Lib, EntryPoint = "slirp_cleanup")]
    public static partial void Cleanup(nint slirp);

    [LibraryImport(Lib, EntryPoint = "slirp_pollfds_fill")]
    public static partial void PollFdsFill(nint slirp, uint* timeout, delegate* unmanaged<int, int, nint, int> addPoll, nint opaque);

    [LibraryImport(Lib, EntryPoint = "slirp_pollfds_poll")]
    public static partial void PollFdsPoll(nint slirp, int selectError, delegate* unmanaged<int, nint, int> getRevents, nint opaque);

    [LibraryImport(Lib, EntryPoint = "slirp_input")]
    public static partial void Input(nint slirp, byte* pkt, int pktLen);

    [LibraryImport(Lib, EntryPoint = "slirp_handle_timer")]
    public static partial void HandleTimer(nint slirp, int id, nint cbOpaque);

    /// <summary>Addresses are struct in_addr passed by value: the IPv4 address in network byte order.</summary>
    [LibraryImport(Lib, EntryPoint = "slirp_add_hostfwd", SetLastError = true)]
    public static partial int AddHostFwd(nint slirp, int isUdp, uint hostAddr, int hostPort, uint guestAddr, int guestPort);

    [LibraryImport(Lib, EntryPoint = "slirp_version_string")]
    public static partial nint VersionString();

    /// <summary>The IPv4 address <paramref name="a"/>.<paramref name="b"/>.<paramref name="c"/>.<paramref name="d"/> as a struct in_addr.</summary>
    public static uint InAddr(byte a, byte b, byte c, byte d) => (uint)(a | b << 8 | c << 16 | d << 24);
}

/// <summary>struct in6_addr: 16 bytes, 4-byte aligned (glibc's union with uint32_t).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
internal struct In6Addr
{
    public uint A, B, C, D;
}

/// <summary>
/// struct SlirpConfig up to version 4, with the offsets gcc gives on x86-64 (184 bytes; bool is one byte, in_addr
/// four, in6_addr 16 at 4-byte alignment, pointers and size_t eight).
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 184)]
internal unsafe struct SlirpConfig
{
    [FieldOffset(0)] public uint Version;
    [FieldOffset(4)] public int Restricted;
    [FieldOffset(8)] public byte InEnabled;
    [FieldOffset(12)] public uint VNetwork;
    [FieldOffset(16)] public uint VNetmask;
    [FieldOffset(20)] public uint VHost;
    [FieldOffset(24)] public byte In6Enabled;
    [FieldOffset(28)] public In6Addr VPrefixAddr6;
    [FieldOffset(44)] public byte VPrefixLen;
    [FieldOffset(48)] public In6Addr VHost6;
    [FieldOffset(64)] public byte* VHostname;
    [FieldOffset(72)] public byte* TftpServerName;
    [FieldOffset(80)] public byte* TftpPath;
    [FieldOffset(88)] public byte* Bootfile;
    [FieldOffset(96)] public uint VDhcpStart;
    [FieldOffset(100)] public uint VNameserver;
    [FieldOffset(104)] public In6Addr VNameserver6;
    [FieldOffset(120)] public byte** VDnsSearch;
    [FieldOffset(128)] public byte* VDomainName;
    [FieldOffset(136)] public nuint IfMtu;
    [FieldOffset(144)] public nuint IfMru;
    [FieldOffset(152)] public byte DisableHostLoopback;
    [FieldOffset(153)] public byte EnableEmu;
    [FieldOffset(160)] public nint OutboundAddr;
    [FieldOffset(168)] public nint OutboundAddr6;
    [FieldOffset(176)] public byte DisableDns;
    [FieldOffset(177)] public byte DisableDhcp;
}

/// <summary>
/// struct SlirpCb: eleven function pointers (88 bytes). libslirp keeps the pointer it is given, so the struct lives
/// in native memory for as long as the Slirp instance does.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct SlirpCb
{
    /// <summary>ssize_t send_packet(const void *buf, size_t len, void *opaque)</summary>
    public delegate* unmanaged<byte*, nuint, nint, nint> SendPacket;
    /// <summary>void guest_error(const char *msg, void *opaque)</summary>
    public delegate* unmanaged<byte*, nint, void> GuestError;
    /// <summary>int64_t clock_get_ns(void *opaque)</summary>
    public delegate* unmanaged<nint, long> ClockGetNs;
    /// <summary>void *timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque)</summary>
    public delegate* unmanaged<nint, nint, nint, nint> TimerNew;
    /// <summary>void timer_free(void *timer, void *opaque)</summary>
    public delegate* unmanaged<nint, nint, void> TimerFree;
    /// <summary>void timer_mod(void *timer, int64_t expire_time_ms, void *opaque)</summary>
    public delegate* unmanaged<nint, long, nint, void> TimerMod;
    /// <summary>void register_poll_fd(int fd, void *opaque)</summary>
    public delegate* unmanaged<int, nint, void> RegisterPollFd;
    /// <summary>void unregister_poll_fd(int fd, void *opaque)</summary>
    public delegate* unmanaged<int, nint, void> UnregisterPollFd;
    /// <summary>void notify(void *opaque)</summary>
    public delegate* unmanaged<nint, void> Notify;
    /// <summary>void init_completed(Slirp *slirp, void *opaque) (version 4)</summary>
    public delegate* unmanaged<nint, nint, void> InitCompleted;
    /// <summary>void *timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque) (version 4)</summary>
    public delegate* unmanaged<int, nint, nint, nint> TimerNewOpaque;
}
