using System.Runtime.InteropServices;

namespace Dirigent.Machine.Time;

/// <summary>
/// A wait of the host thread that ends after a delay given in nanoseconds or when <see cref="Set"/> is called,
/// whichever comes first (an auto-reset event with a precise timeout).
/// <para>
/// Why not a .NET wait handle: <c>WaitOne(TimeSpan)</c> and <c>ManualResetEventSlim.Wait(TimeSpan)</c> take whole
/// milliseconds and truncate, so a timer due in 0.7 ms became a wait of 0 ms, and the timer thread polled in a busy
/// loop for the last millisecond before every deadline: 15% of a host core while a guest with a 250 Hz tick ran a
/// busy loop, taken from the compiler thread on a 2-core host. On Linux this is an eventfd waited on with
/// <c>ppoll(2)</c>, whose timeout is a timespec; elsewhere (no eventfd) a wait handle rounded up to the next whole
/// millisecond, late by under 1 ms rather than spinning.
/// </para>
/// </summary>
internal sealed unsafe partial class HostWait : IDisposable
{
    private const int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;
    private const short POLLIN = 1;

    private readonly int _fd = -1;
    private readonly AutoResetEvent? _fallback;
    // Set and Dispose under it: a Set racing with Dispose must not write into a closed (and maybe reused) descriptor.
    private readonly object _fdLock = new();
    private bool _disposed;

    public HostWait()
    {
        try { _fd = EventFd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _fd = -1; }
        if (_fd < 0) _fallback = new AutoResetEvent(false);
    }

    /// <summary>Ends the current or the next <see cref="Wait"/> (one wake-up, however often it is set before).</summary>
    public void Set()
    {
        if (_fallback != null) { _fallback.Set(); return; }
        ulong one = 1;
        lock (_fdLock)
        {
            // EAGAIN (the counter is full) still leaves it readable: the wake-up is not lost.
            if (!_disposed) _ = Write(_fd, &one, 8);
        }
    }

    /// <summary>Waits up to <paramref name="ns"/> nanoseconds or until <see cref="Set"/>; a pending Set is consumed.</summary>
    public void Wait(long ns)
    {
        ns = Math.Max(0, ns);
        if (_fallback != null)
        {
            _fallback.WaitOne(TimeSpan.FromMilliseconds(Math.Min(int.MaxValue, (ns + 999_999) / 1_000_000)));
            return;
        }
        var p = new PollFd { Fd = _fd, Events = POLLIN };
        var ts = new TimeSpec { Sec = ns / 1_000_000_000, Nsec = ns % 1_000_000_000 };
        // EINTR or a timeout both just return: the caller looks at its timers again either way.
        if (PPoll(&p, 1, &ts, null) > 0 && (p.Revents & POLLIN) != 0)
        {
            ulong v;
            _ = Read(_fd, &v, 8);
        }
    }

    /// <summary>Call once no thread waits any more (Set may still be called: it then does nothing).</summary>
    public void Dispose()
    {
        if (_fallback != null) return; // a wait handle a late Set may still touch; the GC closes it
        lock (_fdLock)
        {
            if (_disposed) return;
            _disposed = true;
            Close(_fd);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd { public int Fd; public short Events, Revents; }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec { public long Sec, Nsec; }

    [LibraryImport("libc", EntryPoint = "eventfd")]
    private static partial int EventFd(uint initval, int flags);

    [LibraryImport("libc", EntryPoint = "ppoll")]
    private static partial int PPoll(PollFd* fds, nuint nfds, TimeSpec* timeout, void* sigmask);

    [LibraryImport("libc", EntryPoint = "read")]
    private static partial nint Read(int fd, void* buf, nuint count);

    [LibraryImport("libc", EntryPoint = "write")]
    private static partial nint Write(int fd, void* buf, nuint count);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
