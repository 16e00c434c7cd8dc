using System.Runtime.InteropServices;

namespace Dirigent.Accel.Emu.Native;

/// <summary>
/// One vCPU's executable memory for the native first tier: a fixed-size mapping filled front to back. When it is
/// full, the next block starts a new generation at the front: every earlier block's code is then stale (its
/// <see cref="NativeCode.Gen"/> no longer matches), so the vCPU never enters it again. Only the owning vCPU writes
/// and runs code here, and never while it is inside native code, so starting over needs no coordination. The
/// mapping's size is the tier's memory budget per vCPU.
/// </summary>
internal sealed unsafe partial class NativeArena : IDisposable
{
    public const int DefaultSize = 8 << 20;
    private byte* _base;
    private readonly int _size;
    private int _used;
    // The front of the mapping holds code that lives as long as the arena (shared routines): generations start after it.
    private int _fixedEnd;
    /// <summary>Bumped each time the arena starts over; code of an older generation is never run.</summary>
    public int Gen { get; private set; }
    public long BytesEmitted { get; private set; }
    public int Restarts { get; private set; }

    private NativeArena(byte* b, int size)
    {
        _base = b;
        _size = size;
    }

    /// <summary>The arena, or null where executable memory cannot be had (then the tier stays off).</summary>
    public static NativeArena? TryCreate(int size = DefaultSize)
    {
        const int PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4, MAP_PRIVATE = 2, MAP_ANONYMOUS = 0x20;
        nint p = mmap(0, (nuint)size, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == -1 || p == 0) return null;
        return new NativeArena((byte*)p, size);
    }

    /// <summary>Copies code in at the arena's front for its whole life (before any <see cref="Place"/>); returns its address.</summary>
    public nint PlaceFixed(ReadOnlySpan<byte> code)
    {
        int len = (code.Length + 15) & ~15;
        if (_used != _fixedEnd || len > _size / 2) throw new InvalidOperationException("fixed code goes in before any block's");
        byte* dst = _base + _used;
        code.CopyTo(new Span<byte>(dst, code.Length));
        _used += len;
        _fixedEnd = _used;
        return (nint)dst;
    }

    /// <summary>Copies code in; returns its address, or 0 when it is larger than the whole arena.</summary>
    public nint Place(ReadOnlySpan<byte> code)
    {
        int len = (code.Length + 15) & ~15;
        if (len > _size - _fixedEnd) return 0;
        if (_used + len > _size)
        {
            _used = _fixedEnd;
            Gen++;
            Restarts++;
        }
        byte* dst = _base + _used;
        code.CopyTo(new Span<byte>(dst, code.Length));
        _used += len;
        BytesEmitted += code.Length;
        return (nint)dst;
    }

    public void Dispose()
    {
        if (_base != null) munmap((nint)_base, (nuint)_size);
        _base = null;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);
}
