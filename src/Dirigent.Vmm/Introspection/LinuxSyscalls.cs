namespace Dirigent.Vmm.Introspection;

/// <summary>
/// Linux x86-64 system-call numbers and how to show the arguments of the common ones. The names are the kernel's
/// (arch/x86/entry/syscalls/syscall_64.tbl); when the kernel's System.map is known, <see cref="LinuxGuest"/> names calls
/// from the guest's own sys_call_table instead, and this table is the fallback.
/// </summary>
public static class LinuxSyscalls
{
    /// <summary>Numbers 0..334 in order.</summary>
    private static readonly string[] s_low = "read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt clone fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync fdatasync truncate ftruncate getdents getcwd chdir fchdir rename mkdir rmdir creat link unlink symlink readlink chmod fchmod chown fchown lchown umask gettimeofday getrlimit getrusage sysinfo times ptrace getuid syslog getgid setuid setgid geteuid getegid setpgid getppid getpgrp setsid setreuid setregid getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs getpriority setpriority sched_setparam sched_getparam sched_setscheduler sched_getscheduler sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock mlockall munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot sethostname setdomainname iopl ioperm create_module init_module delete_module get_kernel_syms query_module quotactl nfsservctl getpmsg putpmsg afs_syscall tuxcall security gettid readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr tkill time futex sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64 timer_create timer_settime timer_gettime timer_getoverrun timer_delete clock_settime clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set ioprio_get inotify_init inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll unshare set_robust_list get_robust_list splice tee sync_file_range vmsplice move_pages utimensat epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg setns getcpu process_vm_readv process_vm_writev kcmp finit_module sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq".Split(' ');
    /// <summary>Numbers 424..450 in order (335..423 are unused on x86-64).</summary>
    private static readonly string[] s_high = "pidfd_send_signal io_uring_setup io_uring_enter io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open clone3 close_range openat2 pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr quotactl_fd landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret process_mrelease futex_waitv set_mempolicy_home_node".Split(' ');

    public static string? Name(ulong nr) =>
        nr < (ulong)s_low.Length ? s_low[nr] : nr >= 424 && nr - 424 < (ulong)s_high.Length ? s_high[nr - 424] : null;

    /// <summary>
    /// Argument kinds by call: d file descriptor (AT_FDCWD shown as -100), s path/string in user memory, S a buffer
    /// shown as text (write), a argv (NULL-terminated string array), k socket address, i signed, u unsigned, x hex.
    /// Calls not listed show six hex arguments.
    /// </summary>
    private static readonly Dictionary<string, string> s_sig = new(StringComparer.Ordinal)
    {
        ["read"] = "dxu", ["write"] = "dSu", ["pread64"] = "dxui", ["pwrite64"] = "dSui", ["readv"] = "dxu", ["writev"] = "dxu",
        ["open"] = "sxx", ["openat"] = "dsxx", ["openat2"] = "dsxu", ["creat"] = "sx", ["close"] = "d",
        ["stat"] = "sx", ["lstat"] = "sx", ["fstat"] = "dx", ["newfstatat"] = "dsxx", ["statx"] = "dsxxx",
        ["access"] = "sx", ["faccessat"] = "dsx", ["faccessat2"] = "dsxx", ["readlink"] = "sxu", ["readlinkat"] = "dsxu",
        ["execve"] = "sax", ["execveat"] = "dsaxx", ["chdir"] = "s", ["fchdir"] = "d", ["mkdir"] = "sx", ["mkdirat"] = "dsx",
        ["rmdir"] = "s", ["unlink"] = "s", ["unlinkat"] = "dsx", ["rename"] = "ss", ["renameat"] = "dsds", ["renameat2"] = "dsdsx",
        ["link"] = "ss", ["symlink"] = "ss", ["chmod"] = "sx", ["fchmodat"] = "dsx", ["chown"] = "sii", ["truncate"] = "si",
        ["mount"] = "sssxx", ["umount2"] = "sx", ["chroot"] = "s", ["getdents64"] = "dxu", ["getdents"] = "dxu",
        ["lseek"] = "dii", ["dup"] = "d", ["dup2"] = "dd", ["dup3"] = "ddx", ["fcntl"] = "dix", ["ioctl"] = "dxx",
        ["socket"] = "iii", ["connect"] = "dku", ["bind"] = "dku", ["listen"] = "di", ["accept"] = "dxx", ["accept4"] = "dxxx",
        ["sendto"] = "dSuxku", ["recvfrom"] = "dxuxxx", ["shutdown"] = "di",
        ["clone"] = "xxxxx", ["clone3"] = "xu", ["fork"] = "", ["vfork"] = "", ["exit"] = "i", ["exit_group"] = "i",
        ["wait4"] = "ixxx", ["kill"] = "ii", ["tgkill"] = "iii", ["getpid"] = "", ["gettid"] = "", ["getppid"] = "",
        ["mmap"] = "xuxxdx", ["munmap"] = "xu", ["mprotect"] = "xux", ["brk"] = "x", ["pipe2"] = "xx",
        ["nanosleep"] = "xx", ["sendfile"] = "ddxu", ["uname"] = "x", ["sethostname"] = "Su", ["memfd_create"] = "sx",
    };

    public static string? Signature(string name) => s_sig.TryGetValue(name, out var s) ? s : null;

    /// <summary>Calls that do not return to the caller when they succeed (the trace shows them at entry).</summary>
    public static bool NeverReturns(string? name) => name is "exit" or "exit_group";

    private static readonly Dictionary<long, string> s_errno = new()
    {
        [1] = "EPERM", [2] = "ENOENT", [3] = "ESRCH", [4] = "EINTR", [5] = "EIO", [9] = "EBADF", [10] = "ECHILD", [11] = "EAGAIN",
        [12] = "ENOMEM", [13] = "EACCES", [14] = "EFAULT", [16] = "EBUSY", [17] = "EEXIST", [20] = "ENOTDIR", [21] = "EISDIR",
        [22] = "EINVAL", [24] = "EMFILE", [25] = "ENOTTY", [28] = "ENOSPC", [32] = "EPIPE", [36] = "ENAMETOOLONG", [38] = "ENOSYS",
        [39] = "ENOTEMPTY", [95] = "EOPNOTSUPP", [97] = "EAFNOSUPPORT", [110] = "ETIMEDOUT", [111] = "ECONNREFUSED", [115] = "EINPROGRESS",
        [512] = "ERESTARTSYS", [513] = "ERESTARTNOINTR", [514] = "ERESTARTNOHAND", [516] = "ERESTART_RESTARTBLOCK",
    };

    /// <summary>The errno name of a return value in -4095..-1, else null.</summary>
    public static string? Errno(long ret) => ret is < 0 and >= -4095 ? s_errno.GetValueOrDefault(-ret, $"E{-ret}") : null;
}
