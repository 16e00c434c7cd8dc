using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Dirigent.Api;

/// <summary>What went wrong setting up the API socket, as one line.</summary>
public sealed class ApiSocketException(string message) : Exception(message);

/// <summary>
/// The socket file's life: a stale one left by a process that died is replaced, a live one (another VMM serves it) or
/// anything that is not a socket (a file, a directory, a symlink) is refused rather than deleted; the socket is bound
/// and made 0600 before it listens, so no other user ever gets to connect.
/// </summary>
internal static partial class UnixSocketPath
{
    /// <summary>Checks <paramref name="path"/> and removes a stale socket there; throws <see cref="ApiSocketException"/>.</summary>
    public static void Prepare(string path)
    {
        if (path.Length == 0) throw new ApiSocketException("API socket path is empty");
        // sun_path holds 108 bytes with its terminating NUL on Linux.
        if (System.Text.Encoding.UTF8.GetByteCount(path) > 107)
            throw new ApiSocketException($"API socket path '{path}' is too long (at most 107 bytes)");
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null && !Directory.Exists(dir))
            throw new ApiSocketException($"API socket '{path}': directory '{dir}' does not exist");
        switch (TypeOf(path))
        {
            case FileType.Missing:
                return;
            case FileType.Socket:
                if (IsLive(path)) throw new ApiSocketException($"API socket '{path}' is in use by another process");
                try { File.Delete(path); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw new ApiSocketException($"API socket '{path}': cannot remove the stale socket: {e.Message}");
                }
                return;
            case var other:
                throw new ApiSocketException($"API socket '{path}' exists and is not a socket (it is a {Describe(other)})");
        }
    }

    /// <summary>Binds a listening-to-be socket at <paramref name="path"/> with mode 0600 (Kestrel calls listen after).</summary>
    public static Socket Bind(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(path));
            // Nobody can connect before listen(2), so setting the mode here leaves no window.
            if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("the API socket needs Linux");
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            return s;
        }
        catch (Exception e)
        {
            s.Dispose();
            throw new ApiSocketException($"API socket '{path}': {e.Message}");
        }
    }

    /// <summary>Removes the socket file if it is still a socket (never someone else's regular file).</summary>
    public static void Remove(string path)
    {
        try { if (TypeOf(path) == FileType.Socket) File.Delete(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ApiSocketException) { }
    }

    private static bool IsLive(string path)
    {
        // Non-blocking: a live server whose backlog is full must not hang the probe.
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
        try { probe.Connect(new UnixDomainSocketEndPoint(path)); return true; }
        catch (SocketException e)
        {
            return e.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => false,
                SocketError.WouldBlock or SocketError.InProgress or SocketError.TryAgain => true,
                _ => throw new ApiSocketException($"API socket '{path}' exists and cannot be probed: {e.Message}"),
            };
        }
    }

    internal enum FileType { Missing, Socket, Regular, Directory, Symlink, Other }

    private static string Describe(FileType t) => t switch
    {
        FileType.Regular => "regular file",
        FileType.Directory => "directory",
        FileType.Symlink => "symbolic link",
        _ => "special file",
    };

    // statx(2): unlike struct stat, struct statx has the same layout on every architecture.
    private const int AtFdCwd = -100, AtSymlinkNoFollow = 0x100, StatxType = 0x1, StatxSize = 256, StxModeOffset = 28;
    private const int Enoent = 2, Enotdir = 20;

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int Statx(int dirfd, string path, int flags, uint mask, byte* buf);

    internal static unsafe FileType TypeOf(string path)
    {
        byte* buf = stackalloc byte[StatxSize];
        if (Statx(AtFdCwd, path, AtSymlinkNoFollow, StatxType, buf) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is Enoent or Enotdir) return FileType.Missing;
            throw new ApiSocketException($"API socket '{path}': {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        int mode = *(ushort*)(buf + StxModeOffset) & 0xF000; // S_IFMT
        return mode switch
        {
            0xC000 => FileType.Socket,
            0x8000 => FileType.Regular,
            0x4000 => FileType.Directory,
            0xA000 => FileType.Symlink,
            _ => FileType.Other,
        };
    }
}
