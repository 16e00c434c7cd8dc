using System.Runtime.InteropServices;

namespace Dirigent.Vmm.Net;

/// <summary>
/// The libc calls and constants the TAP backend needs (values from linux/if_tun.h, linux/if.h, poll.h,
/// sys/eventfd.h and sched.h on x86-64). Direct P/Invoke: no C shim, and nothing is touched until a TAP is opened.
/// </summary>
internal static unsafe partial class NetNative
{
    private const string Lib = "libc";

    public const int O_RDONLY = 0, O_RDWR = 2, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800, EFD_CLOEXEC = 0x80000;
    public const short POLLIN = 0x1, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20;
    public const int CLONE_NEWNET = 0x40000000;

    public const int EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, ENXIO = 6, EAGAIN = 11, EACCES = 13, EBUSY = 16,
        ENODEV = 19, EINVAL = 22, EBADFD = 77;

    /// <summary>_IOW('T', 202, int) etc.: the tun character device's ioctls.</summary>
    public const nuint TUNSETIFF = 0x400454ca, TUNSETOFFLOAD = 0x400454d0, TUNSETVNETHDRSZ = 0x400454d8;
    public const short IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;

    /// <summary>IFNAMSIZ: interface names are at most 15 bytes plus the terminating NUL.</summary>
    public const int IfNameSize = 16;

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, void* buf, nuint count);

    // ioctl is variadic in C; on x86-64 SysV a fixed third pointer argument is passed identically.
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, void* arg);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, nuint arg);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint nfds, int timeoutMs);

    [LibraryImport(Lib, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initval, int flags);

    [LibraryImport(Lib, EntryPoint = "setns", SetLastError = true)]
    public static partial int SetNs(int fd, int nstype);

    [LibraryImport(Lib, EntryPoint = "strerror")]
    private static partial nint StrError(int errnum);

    public static string ErrorText(int errno) => Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";

    public static int LastErrno => Marshal.GetLastPInvokeError();
}

[StructLayout(LayoutKind.Sequential)]
internal struct PollFd
{
    public int Fd;
    public short Events;
    public short Revents;
}

/// <summary>struct ifreq as TUNSETIFF reads it: the name, then ifr_flags at offset 16; 40 bytes in all.</summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal unsafe struct IfReq
{
    [FieldOffset(0)] public fixed byte Name[NetNative.IfNameSize];
    [FieldOffset(16)] public short Flags;
}
