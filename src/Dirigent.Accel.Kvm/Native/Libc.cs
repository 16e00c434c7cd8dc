using System.Runtime.InteropServices;

namespace Dirigent.Accel.Kvm.Native;

/// <summary>
/// The few libc calls the KVM accelerator needs. Direct P/Invoke (no C shim), so the project builds anywhere and
/// only touches libc when a KVM accelerator is actually created.
/// </summary>
internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    public const int O_RDWR = 2, O_CLOEXEC = 0x80000;
    public const int PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1;
    public const int EINTR = 4, EAGAIN = 11, E2BIG = 7;
    public const int SIG_BLOCK = 0, SIG_SETMASK = 2;
    public static readonly nint MapFailed = -1;

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    // ioctl is variadic in C; on x86-64 SysV a fixed third integer/pointer argument is passed identically.
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, nint arg);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, void* arg);

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport(Lib, EntryPoint = "pthread_self")]
    public static partial nuint PthreadSelf();

    [LibraryImport(Lib, EntryPoint = "pthread_kill")]
    public static partial int PthreadKill(nuint thread, int sig);

    [LibraryImport(Lib, EntryPoint = "pthread_sigmask")]
    public static partial int PthreadSigmask(int how, SigSet* set, SigSet* oldset);

    [LibraryImport(Lib, EntryPoint = "sigemptyset")]
    public static partial int SigEmptySet(SigSet* set);

    [LibraryImport(Lib, EntryPoint = "sigaddset")]
    public static partial int SigAddSet(SigSet* set, int sig);

    [LibraryImport(Lib, EntryPoint = "sigdelset")]
    public static partial int SigDelSet(SigSet* set, int sig);

    [LibraryImport(Lib, EntryPoint = "sigtimedwait", SetLastError = true)]
    public static partial int SigTimedWait(SigSet* set, void* info, Timespec* timeout);

    [LibraryImport(Lib, EntryPoint = "__libc_current_sigrtmax")]
    public static partial int SigRtMax();

    public const int CLOCK_MONOTONIC = 1;

    [LibraryImport(Lib, EntryPoint = "clock_gettime", SetLastError = true)]
    public static partial int ClockGettime(int clockId, Timespec* tp);

    /// <summary>CLOCK_MONOTONIC in ns: the kernel's ktime_get(), which KVM's PIT stamps count loads with.</summary>
    public static long MonotonicNs()
    {
        Timespec t;
        if (ClockGettime(CLOCK_MONOTONIC, &t) != 0) throw new InvalidOperationException($"clock_gettime failed: {ErrorText(LastErrno)}");
        return t.Sec * 1_000_000_000 + t.Nsec;
    }

    [LibraryImport(Lib, EntryPoint = "strerror")]
    private static partial nint StrError(int errnum);

    public static string ErrorText(int errno) => $"{Marshal.PtrToStringUTF8(StrError(errno))} (errno {errno})";

    public static int LastErrno => Marshal.GetLastPInvokeError();
}

/// <summary>glibc's sigset_t: 1024 bits. (The kernel's own sigset, used by KVM_SET_SIGNAL_MASK, is its first 8 bytes.)</summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
internal struct SigSet
{
    public ulong First;
}

[StructLayout(LayoutKind.Sequential)]
internal struct Timespec
{
    public long Sec;
    public long Nsec;
}
