using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace Dirigent.Cli.Jail;

/// <summary>The few libc calls the jail needs that .NET does not offer: owners, chown, parent-death signal, kmsg.</summary>
internal static unsafe partial class JailNative
{
    [LibraryImport("libc", SetLastError = true)] private static partial uint geteuid();
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)] private static partial int chown(string path, int uid, int gid);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)] private static partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);
    [LibraryImport("libc", SetLastError = true)] private static partial int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)] private static partial int open(string path, int flags);
    [LibraryImport("libc", SetLastError = true)] private static partial nint read(int fd, byte* buf, nint count);
    [LibraryImport("libc")] private static partial int close(int fd);
    [LibraryImport("libc", SetLastError = true)] private static partial int kill(int pid, int sig);

    public static bool IsRoot => geteuid() == 0;

    public static void Chown(string path, int uid, int gid)
    {
        if (chown(path, uid, gid) != 0)
            throw new IOException($"cannot give {path} to {uid}:{gid} (errno {Marshal.GetLastPInvokeError()})");
    }

    /// <summary>Owner, group and permission bits of <paramref name="path"/> (following links), or null if it cannot be read.</summary>
    public static (int Uid, int Gid, int Mode)? Owner(string path)
    {
        // struct statx is the same on every architecture (unlike struct stat): uid at 20, gid at 24, mode at 28.
        byte* buf = stackalloc byte[256];
        if (statx(-100 /* AT_FDCWD */, path, 0, 0x7ff /* STATX_BASIC_STATS */, buf) != 0) return null;
        return (*(int*)(buf + 20), *(int*)(buf + 24), *(ushort*)(buf + 28) & 0xfff);
    }

    public const int S_IFSOCK = 0xC000, S_IFLNK = 0xA000;

    /// <summary>The file type bits (S_IFMT) of <paramref name="path"/> itself (a link is not followed), or null if absent.</summary>
    public static int? TypeOf(string path)
    {
        byte* buf = stackalloc byte[256];
        if (statx(-100, path, 0x100 /* AT_SYMLINK_NOFOLLOW */, 0x7ff, buf) != 0) return null;
        return *(ushort*)(buf + 28) & 0xF000;
    }

    /// <summary>Whether <paramref name="uid"/>:<paramref name="gid"/> (no supplementary groups) may read, and write if asked.</summary>
    public static bool MayAccess(string path, int uid, int gid, bool write)
    {
        if (Owner(path) is not { } o) return false;
        int shift = o.Uid == uid ? 6 : o.Gid == gid ? 3 : 0;
        int bits = (o.Mode >> shift) & 7;
        return (bits & 4) != 0 && (!write || (bits & 2) != 0);
    }

    /// <summary>
    /// PR_SET_PDEATHSIG SIGKILL: the jailed VMM dies with the unshare process above it. The launcher's own setting
    /// does not survive the change to the jail user (the kernel clears it when credentials change), so the VMM sets it
    /// again itself.
    /// </summary>
    public static void DieWithParent() => prctl(1 /* PR_SET_PDEATHSIG */, 9, 0, 0, 0);

    public static bool Signal(int pid, int sig) => kill(pid, sig) == 0;

    /// <summary>
    /// The syscall number the kernel logged when seccomp killed <paramref name="pid"/> (an audit type=1326 record in
    /// /dev/kmsg), or null when the log is not readable or has no such record (e.g. auditd took the record).
    /// </summary>
    public static int? DeniedSyscallFromKernelLog(int pid)
    {
        int fd = open("/dev/kmsg", 0x800 /* O_RDONLY|O_NONBLOCK */);
        if (fd < 0) return null;
        int? found = null;
        var re = new Regex($@"type=1326 .*\bpid={pid}\b.*\bsyscall=(\d+)");
        try
        {
            byte* buf = stackalloc byte[8192];
            // One record per read; EAGAIN at the end of the buffer. Bounded in case something keeps logging.
            for (int i = 0; i < 100_000; i++)
            {
                nint n = read(fd, buf, 8192);
                if (n < 0)
                {
                    if (Marshal.GetLastPInvokeError() == 32 /* EPIPE: a record was overwritten, go on */) continue;
                    break;
                }
                if (n == 0) break;
                var m = re.Match(Encoding.UTF8.GetString(buf, (int)n));
                if (m.Success) found = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            }
        }
        finally { close(fd); }
        return found;
    }
}
