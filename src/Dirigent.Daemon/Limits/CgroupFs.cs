using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Dirigent.Daemon.Limits;

/// <summary>
/// The few file operations the cgroup code needs, in one place so that unit tests can run the real v1/v2 logic
/// against a fake directory tree (a subclass that emulates what the kernel does on mkdir/rmdir) and so that every
/// kernel refusal becomes one-line <see cref="CgroupException"/>.
/// </summary>
internal partial class CgroupFs
{
    private const int EBUSY = 16;
    private const int ENOENT = 2;
    private const int EACCES = 13;
    private const int EPERM = 1;
    private const int EROFS = 30;
    private const int W_OK = 2;

    public virtual bool FileExists(string path) => File.Exists(path);

    public virtual bool DirectoryExists(string path) => Directory.Exists(path);

    public virtual string Read(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CgroupException($"cannot read {path}: {OneLine(e.Message)}");
        }
    }

    /// <summary>
    /// Writes <paramref name="text"/> with one pwrite at offset 0: a cgroup interface file takes each write(2) as
    /// one command, so the text must not be split by a buffered stream. No O_CREAT: on cgroupfs a missing file
    /// means the controller is not enabled for that group, which must be an error rather than a new empty file.
    /// </summary>
    public virtual void Write(string path, string text)
    {
        try
        {
            using SafeFileHandle handle = File.OpenHandle(path, FileMode.Truncate, FileAccess.Write);
            RandomAccess.Write(handle, Encoding.ASCII.GetBytes(text), 0);
        }
        catch (FileNotFoundException)
        {
            throw new CgroupException($"cannot write '{text}' to {path}: the file does not exist (controller not enabled?)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CgroupException($"cannot write '{text}' to {path}: {OneLine(e.Message)}");
        }
    }

    public virtual void CreateDirectory(string path)
    {
        try
        {
            Directory.CreateDirectory(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CgroupException($"cannot create cgroup {path}: {OneLine(e.Message)}");
        }
    }

    /// <summary>
    /// rmdir(2) of one group. A group can be removed only when no task is left in it; a task that was just killed
    /// leaves it a moment after it dies, so EBUSY is retried for up to <paramref name="busyTimeout"/>. A group that is
    /// already gone counts as removed. Returns false (without throwing) when it stays busy: the caller decides.
    /// </summary>
    public virtual bool RemoveDirectory(string path, TimeSpan busyTimeout)
    {
        long deadline = Environment.TickCount64 + (long)busyTimeout.TotalMilliseconds;
        while (true)
        {
            if (rmdir(path) == 0)
                return true;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == ENOENT)
                return true;
            if (errno != EBUSY)
                throw new CgroupException($"cannot remove cgroup {path}: {Marshal.GetPInvokeErrorMessage(errno)}");
            if (Environment.TickCount64 >= deadline)
                return false;
            // Production back-off while the kernel finishes the exit of the group's last tasks (no event exists for it
            // on v1; v2's cgroup.events "populated" would need inotify for a case that lasts milliseconds).
            Thread.Sleep(20);
        }
    }

    /// <summary>Why the current process cannot create groups under <paramref name="path"/>, or null when it can.</summary>
    public virtual string? WhyNotWritable(string path)
    {
        if (access(path, W_OK) == 0)
            return null;
        int errno = Marshal.GetLastPInvokeError();
        return errno switch
        {
            EROFS => $"{path} is mounted read-only",
            EACCES or EPERM when geteuid() != 0 => $"not root: no write access to {path}",
            _ => $"no write access to {path}: {Marshal.GetPInvokeErrorMessage(errno)}",
        };
    }

    private static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    [LibraryImport("libc", EntryPoint = "rmdir", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int rmdir(string path);

    [LibraryImport("libc", EntryPoint = "access", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int access(string path, int mode);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint geteuid();
}
