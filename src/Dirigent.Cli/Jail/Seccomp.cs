using System.Runtime.InteropServices;

namespace Dirigent.Cli.Jail;

/// <summary>
/// The jailed VMM's seccomp filter, built and loaded with libseccomp (Debian's libseccomp2, loaded at run time). One
/// allow-list for the whole process: .NET runs vCPU loops, device I/O and the API server on threads it also lends to
/// the thread pool, so a per-thread-kind filter would only hold if every kind had threads of its own.
/// Anything not on the list kills the whole process (SECCOMP_RET_KILL_PROCESS): the kernel logs it (audit type=1326,
/// with the syscall number) and the jail launcher, its parent, turns the SIGSYS death into one line naming the call.
/// </summary>
internal static unsafe partial class Seccomp
{
    private const string Lib = "libseccomp.so.2";
    private const uint ActKillProcess = 0x80000000, ActAllow = 0x7fff0000, ActLog = 0x7ffc0000;
    private static uint ActErrno(int errno) => 0x00050000u | (uint)(errno & 0xffff);
    private const int FltAttrTsync = 4; // enum scmp_filter_attr: SCMP_FLTATR_CTL_TSYNC
    private const int CmpMaskedEq = 7;  // enum scmp_compare: SCMP_CMP_MASKED_EQ
    private const int ENOSYS = 38;

    /// <summary>clone(2) flags that would make new namespaces: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.</summary>
    private const ulong CloneNewNamespaces = 0x7E020000;

    /// <summary>
    /// What the VMM may call. Derived with `strace -f -c` over `dirigent run` of the default guest on both
    /// accelerators (emu and kvm) with a raw virtio disk read and written, --net user (DHCP and an HTTP fetch through
    /// libslirp), virtio-rng, --api-socket (GET /v1/vm), --console-log and --exit-file, through power-off; then widened
    /// with what the .NET runtime and glibc may call on other paths (timers, thread start-up, GC, signals, sockets).
    /// Deliberately absent: execve/execveat, fork/vfork, ptrace, process_vm_*, mount/umount2/pivot_root/chroot,
    /// setns/unshare, kexec_*, bpf, *_module, open_by_handle_at, perf_event_open, keyctl/add_key/request_key,
    /// personality, userfaultfd, setuid and friends, chown, mknod, link/symlink, reboot, swapon.
    /// </summary>
    internal static readonly string[] Allowed =
    [
        // Files and descriptors (disks, kernel/initrd, logs, exit file, /proc reads by the runtime).
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "open", "openat", "close", "close_range", "stat", "fstat", "lstat", "newfstatat", "statx", "lseek", "access",
        "faccessat", "faccessat2", "fcntl", "flock", "fsync", "fdatasync", "sync_file_range", "fallocate", "ftruncate",
        "getdents64", "getcwd", "readlink", "readlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "unlink",
        "unlinkat", "rmdir", "chmod", "fchmod", "fchmodat", "umask", "statfs", "fstatfs", "dup", "dup2", "dup3", "pipe",
        "pipe2", "ioctl", "copy_file_range", "sendfile", "memfd_create", "fadvise64",
        // Memory (guest RAM, GC, JIT's double-mapped code).
        "mmap", "mprotect", "munmap", "mremap", "madvise", "mincore", "msync", "mlock", "munlock", "brk",
        "get_mempolicy", "membarrier",
        // Threads, signals, time.
        "clone", "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl",
        "prctl", "sigaltstack", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "rt_sigsuspend",
        "restart_syscall", "tgkill", "tkill", "kill", "exit", "exit_group", "wait4", "nanosleep", "clock_nanosleep",
        "clock_gettime", "clock_getres", "gettimeofday", "timerfd_create", "timerfd_settime", "timerfd_gettime",
        "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
        "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min", "sched_getattr",
        "getcpu",
        // Process facts the runtime asks for.
        "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid",
        "getpgrp", "getpgid", "getsid", "getrlimit", "prlimit64", "getrusage", "sysinfo", "uname", "times", "capget",
        "getrandom",
        // Polling and sockets (API socket, libslirp's host sockets, TAP).
        "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
        "epoll_pwait2", "eventfd", "eventfd2", "signalfd4", "socket", "socketpair", "connect", "accept", "accept4", "bind",
        "listen", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockname",
        "getpeername", "setsockopt", "getsockopt",
    ];

    [LibraryImport(Lib)] private static partial nint seccomp_init(uint defAction);
    [LibraryImport(Lib)] private static partial int seccomp_attr_set(nint ctx, int attr, uint value);
    [LibraryImport(Lib)] private static partial int seccomp_rule_add_array(nint ctx, uint action, int syscall, uint argCount, ArgCmp* args);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] private static partial int seccomp_syscall_resolve_name(string name);
    [LibraryImport(Lib)] private static partial nint seccomp_syscall_resolve_num_arch(uint arch, int num);
    [LibraryImport(Lib)] private static partial int seccomp_load(nint ctx);
    [LibraryImport(Lib)] private static partial void seccomp_release(nint ctx);

    [LibraryImport("libc")] private static partial int personality(nuint persona);

    /// <summary>personality(2), which the filter does not allow: kills this process when the filter is loaded.</summary>
    public static void CallDenied() => personality(0xffffffff);

    /// <summary>struct scmp_arg_cmp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct ArgCmp
    {
        public uint Arg;
        public int Op;
        public ulong DatumA, DatumB;
    }

    /// <summary>Null when libseccomp can be loaded, else one line saying what to install.</summary>
    public static string? Probe() =>
        NativeLibrary.TryLoad(Lib, out nint h) ? Free(h) : "libseccomp is not installed (apt-get install libseccomp2)";

    private static string? Free(nint h) { NativeLibrary.Free(h); return null; }

    /// <summary>A syscall number's name on this architecture (for the denial line), or null if unknown.</summary>
    public static string? NameOf(int number)
    {
        if (Probe() != null) return null;
        nint p = seccomp_syscall_resolve_num_arch(0, number);
        return p == 0 ? null : Marshal.PtrToStringUTF8(p);
    }

    /// <summary>
    /// Loads the filter on every thread of this process (TSYNC; threads started later inherit it). libseccomp also
    /// sets no_new_privs, which the launcher has already set. <paramref name="learn"/>: log what is not on the list
    /// (kernel log, audit type=1326) instead of killing, to find what a new code path needs. Returns null, or one
    /// line saying why the filter could not be loaded.
    /// </summary>
    public static unsafe string? Install(bool learn)
    {
        if (Probe() is { } missing) return missing;
        nint ctx = seccomp_init(learn ? ActLog : ActKillProcess);
        if (ctx == 0) return "seccomp_init failed";
        try
        {
            int rc = seccomp_attr_set(ctx, FltAttrTsync, 1);
            if (rc < 0) return $"seccomp: cannot synchronise the filter across threads (error {-rc})";
            foreach (string name in Allowed)
            {
                int nr = seccomp_syscall_resolve_name(name);
                if (nr < 0) continue; // not on this architecture (e.g. a legacy call): nothing to allow
                rc = name == "clone" ? AllowCloneWithoutNamespaces(ctx, nr) : seccomp_rule_add_array(ctx, ActAllow, nr, 0, null);
                if (rc < 0) return $"seccomp: cannot add {name} to the filter (error {-rc})";
            }
            // glibc starts threads with clone3 and falls back to clone on ENOSYS; clone3's flags sit in memory that a
            // filter cannot read, so it is refused this way and clone's flags are checked instead.
            int clone3 = seccomp_syscall_resolve_name("clone3");
            if (clone3 >= 0 && (rc = seccomp_rule_add_array(ctx, ActErrno(ENOSYS), clone3, 0, null)) < 0)
                return $"seccomp: cannot add clone3 to the filter (error {-rc})";
            rc = seccomp_load(ctx);
            return rc < 0 ? $"seccomp: cannot load the filter (error {-rc})" : null;
        }
        finally { seccomp_release(ctx); }
    }

    /// <summary>clone(2) for threads only: no flag that would make a namespace.</summary>
    private static unsafe int AllowCloneWithoutNamespaces(nint ctx, int nr)
    {
        var cmp = new ArgCmp { Arg = 0, Op = CmpMaskedEq, DatumA = CloneNewNamespaces, DatumB = 0 };
        return seccomp_rule_add_array(ctx, ActAllow, nr, 1, &cmp);
    }
}
