using System.Runtime.InteropServices;

namespace Dirigent.Cli.Terminal;

/// <summary>Puts a terminal into raw mode (no echo, no line editing, no signals) and restores it afterwards.</summary>
public sealed class TerminalMode : IDisposable
{
    [DllImport("libc", SetLastError = true)] private static extern int tcgetattr(int fd, byte[] termios);
    [DllImport("libc", SetLastError = true)] private static extern int tcsetattr(int fd, int action, byte[] termios);
    [DllImport("libc")] private static extern void cfmakeraw(byte[] termios);
    [DllImport("libc")] private static extern int isatty(int fd);

    private readonly int _fd;
    private readonly byte[]? _saved;

    public static bool IsTerminal(int fd) => OperatingSystem.IsLinux() && isatty(fd) == 1;

    private TerminalMode(int fd)
    {
        _fd = fd;
        var t = new byte[128]; // struct termios is 60 bytes on glibc x86-64; extra room is harmless
        if (tcgetattr(fd, t) != 0) return;
        _saved = (byte[])t.Clone();
        cfmakeraw(t);
        tcsetattr(fd, 0 /* TCSANOW */, t);
    }

    /// <summary>Raw mode on stdin if it is a terminal; null otherwise.</summary>
    public static TerminalMode? EnterRaw() => IsTerminal(0) ? new TerminalMode(0) : null;

    public void Dispose()
    {
        if (_saved != null) tcsetattr(_fd, 0, _saved);
    }
}
