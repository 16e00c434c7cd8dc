using System.Runtime.InteropServices;

namespace Dirigent.Machine.Memory;

/// <summary>One contiguous block of guest RAM backed by a single native allocation.</summary>
public sealed unsafe class RamRegion
{
    public ulong GuestBase { get; }
    public ulong Size { get; }
    public byte* Host { get; }

    private readonly bool _mapped;

    internal RamRegion(ulong guestBase, ulong size)
    {
        GuestBase = guestBase;
        Size = size;
        // Zeroed like fresh DRAM after a cold reset as QEMU presents it; guests rely on e.g. BSS being untouched garbage-free.
        // On Linux an anonymous mapping is zero already and costs no resident memory until the guest touches a page
        // (clearing a heap block would make all of guest RAM resident at start: the VMM's RSS would be the guest's size).
        if (OperatingSystem.IsLinux())
        {
            nint p = AnonMap.Mmap(0, (nuint)size, AnonMap.PROT_READ | AnonMap.PROT_WRITE,
                AnonMap.MAP_PRIVATE | AnonMap.MAP_ANONYMOUS | AnonMap.MAP_NORESERVE, -1, 0);
            if (p == -1)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new GuestMemoryException($"the host cannot map {size >> 20} MiB of guest RAM ({(errno == 12 ? "out of address space or memory (ENOMEM)" : $"errno {errno}")}): ask for less memory");
            }
            Host = (byte*)p;
            _mapped = true;
            // Transparent huge pages where the host offers them on request (THP "madvise", Debian's default), as QEMU
            // asks for its guest RAM: one host page fault per 2 MiB the guest touches instead of 512 (each dear on a
            // virtualized host), and fewer host TLB misses behind the soft TLB's host pointers. Advice only: a host
            // without THP ignores it, and nothing depends on it.
            AnonMap.Madvise(p, (nuint)size, AnonMap.MADV_HUGEPAGE);
            return;
        }
        Host = (byte*)NativeMemory.AlignedAlloc((nuint)size, 4096);
        NativeMemory.Clear(Host, (nuint)size);
    }

    /// <summary>
    /// Replaces the region's contents with <paramref name="length"/>... the file's bytes at <paramref name="fileOffset"/>,
    /// mapped copy-on-write at the same host address (MAP_PRIVATE | MAP_FIXED): pages are read from the file only when
    /// the guest touches them and guest writes never reach the file. This is how a snapshot restores in O(1), as
    /// Firecracker does. False (region unchanged) where it cannot be done.
    /// </summary>
    internal bool MapFilePrivate(int fd, long fileOffset)
    {
        if (!_mapped) return false;
        nint p = AnonMap.Mmap((nint)Host, (nuint)Size, AnonMap.PROT_READ | AnonMap.PROT_WRITE,
            AnonMap.MAP_PRIVATE | AnonMap.MAP_FIXED | AnonMap.MAP_NORESERVE, fd, (nint)fileOffset);
        return p == (nint)Host;
    }

    internal void Free()
    {
        if (_mapped) AnonMap.Munmap((nint)Host, (nuint)Size);
        else NativeMemory.AlignedFree(Host);
    }
}

internal static partial class AnonMap
{
    public const int PROT_READ = 1, PROT_WRITE = 2, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    public const int MADV_HUGEPAGE = 14;

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint addr, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);
}

/// <summary>
/// Guest-physical address space: RAM regions with holes between them (MMIO windows).
/// Every accessor is bounds-checked, so nothing the guest programs can make the host touch memory outside its RAM.
/// </summary>
public sealed unsafe class GuestMemory : IDisposable
{
    /// <summary>Start of the 32-bit MMIO hole (PCI window, IOAPIC, LAPIC, BIOS flash) as on a PC with &gt;3.5 GiB.</summary>
    /// <summary>The machine's physical-address width (the CPU models advertise it in CPUID 0x80000008).</summary>
    public const int PhysAddrBits = 40;

    /// <summary>The most RAM the machine can address: RAM above the 32-bit hole must end below 2^PhysAddrBits.</summary>
    public const ulong MaxRamSize = (1UL << PhysAddrBits) - HighRamStart + LowMmioStart;

    public const ulong LowMmioStart = 0xE000_0000;
    public const ulong HighRamStart = 0x1_0000_0000;
    public const int PageShift = 12;
    public const ulong PageSize = 1UL << PageShift;

    private readonly RamRegion[] _regions;
    /// <summary>Firmware ROM (the BIOS image below 4 GiB): addressable like RAM, but not guest RAM (not in
    /// <see cref="Regions"/>, not in snapshots or migration; the VMM loads it again from its file).</summary>
    private RamRegion[] _roms = [];
    private bool _disposed;

    public ulong RamSize { get; }
    public IReadOnlyList<RamRegion> Regions => _regions;

    /// <summary>Highest guest-physical address + 1 that is backed by RAM.</summary>
    public ulong TopOfRam { get; }

    /// <summary>Bumped whenever a page's contents may have changed behind an accelerator's back (DMA, loaders).</summary>
    public event Action<ulong, ulong>? ExternalWrite;

    /// <summary>Pages written since the last harvest, while live migration tracks them.</summary>
    public DirtyLog DirtyLog { get; }

    /// <summary>
    /// A device wrote [gpa, gpa+len) through a host pointer (DMA): logs it for migration and shows it to
    /// <see cref="DeviceWrites"/>. (<see cref="TryWrite"/> does this itself.)
    /// </summary>
    public void MarkDirty(ulong gpa, ulong len)
    {
        DirtyLog.Mark(gpa, len);
        if (DeviceWrites is not { } observe) return;
        byte* p = TryGetHostPointer(gpa, len);
        if (p != null) observe(gpa, new ReadOnlySpan<byte>(p, (int)len));
    }

    /// <summary>
    /// Sees every write into guest memory made outside the vCPUs (<see cref="TryWrite"/>, <see cref="MarkDirty"/>:
    /// device DMA, loaders), after it landed; a recording (Introspection/RecordReplay) logs them. The vCPUs' own
    /// stores do not come here. Null (the usual case) costs a null check.
    /// </summary>
    public DeviceWriteObserver? DeviceWrites { get; set; }

    public GuestMemory(ulong ramSize)
    {
        if (ramSize < PageSize || (ramSize & (PageSize - 1)) != 0)
            throw new ArgumentException($"RAM size must be a positive multiple of 4 KiB, got {ramSize}");
        RamSize = ramSize;
        if (ramSize <= LowMmioStart)
        {
            _regions = [new RamRegion(0, ramSize)];
            TopOfRam = ramSize;
        }
        else
        {
            _regions = [new RamRegion(0, LowMmioStart), new RamRegion(HighRamStart, ramSize - LowMmioStart)];
            TopOfRam = HighRamStart + ramSize - LowMmioStart;
        }
        DirtyLog = new DirtyLog(this);
    }

    /// <summary>Host pointer for [gpa, gpa+len) if the whole range lies in one RAM (or ROM) region, else null.</summary>
    public byte* TryGetHostPointer(ulong gpa, ulong len = 1)
    {
        foreach (var r in _regions)
        {
            ulong off = gpa - r.GuestBase;
            if (gpa >= r.GuestBase && off < r.Size && len <= r.Size - off)
                return r.Host + off;
        }
        foreach (var r in _roms)
        {
            ulong off = gpa - r.GuestBase;
            if (gpa >= r.GuestBase && off < r.Size && len <= r.Size - off)
                return r.Host + off;
        }
        return null;
    }

    /// <summary>The ROM regions added with <see cref="AddRom"/>.</summary>
    public IReadOnlyList<RamRegion> Roms => _roms;

    /// <summary>
    /// Maps a firmware ROM of <paramref name="size"/> bytes (a multiple of 4 KiB) at <paramref name="gpa"/>, in the
    /// hole below 4 GiB where no RAM is: the software CPU fetches and reads it like RAM. Its contents are written
    /// with <see cref="Write"/> (so code caches see the change). Only before anything runs on this memory.
    /// </summary>
    public RamRegion AddRom(ulong gpa, ulong size)
    {
        if (size == 0 || (size & (PageSize - 1)) != 0 || (gpa & (PageSize - 1)) != 0 || gpa + size < gpa)
            throw new ArgumentException($"ROM at 0x{gpa:x}+0x{size:x}: not page-aligned");
        for (ulong a = gpa; a < gpa + size; a += PageSize)
            if (TryGetHostPointer(a) != null) throw new ArgumentException($"ROM at 0x{gpa:x}+0x{size:x} overlaps RAM or another ROM");
        var rom = new RamRegion(gpa, size);
        _roms = [.. _roms, rom];
        return rom;
    }

    public bool IsRam(ulong gpa, ulong len = 1) => TryGetHostPointer(gpa, len) != null;

    /// <summary>
    /// All of RAM was rewritten behind the accelerators' backs (a snapshot put back in place): logs every page dirty
    /// and raises <see cref="ExternalWrite"/> per region, so code caches drop what they decoded from the old bytes.
    /// </summary>
    public void AllContentsReplaced()
    {
        foreach (var r in _regions)
        {
            DirtyLog.Mark(r.GuestBase, r.Size);
            ExternalWrite?.Invoke(r.GuestBase, r.Size);
        }
    }

    /// <summary>Copies guest RAM into a host buffer; false (and nothing copied) if any byte is not RAM.</summary>
    public bool TryRead(ulong gpa, Span<byte> dst)
    {
        byte* p = TryGetHostPointer(gpa, (ulong)dst.Length);
        if (p == null) return false;
        new ReadOnlySpan<byte>(p, dst.Length).CopyTo(dst);
        return true;
    }

    public bool TryWrite(ulong gpa, ReadOnlySpan<byte> src)
    {
        byte* p = TryGetHostPointer(gpa, (ulong)src.Length);
        if (p == null) return false;
        src.CopyTo(new Span<byte>(p, src.Length));
        DirtyLog.Mark(gpa, (ulong)src.Length);
        ExternalWrite?.Invoke(gpa, (ulong)src.Length);
        DeviceWrites?.Invoke(gpa, src);
        return true;
    }

    public void Read(ulong gpa, Span<byte> dst)
    {
        if (!TryRead(gpa, dst))
            throw new ArgumentOutOfRangeException(nameof(gpa), $"guest-physical range 0x{gpa:x}+0x{dst.Length:x} is not RAM");
    }

    public void Write(ulong gpa, ReadOnlySpan<byte> src)
    {
        if (!TryWrite(gpa, src))
            throw new ArgumentOutOfRangeException(nameof(gpa), $"guest-physical range 0x{gpa:x}+0x{src.Length:x} is not RAM");
    }

    public ulong ReadU64(ulong gpa) { Span<byte> b = stackalloc byte[8]; Read(gpa, b); return BitConverter.ToUInt64(b); }
    public uint ReadU32(ulong gpa) { Span<byte> b = stackalloc byte[4]; Read(gpa, b); return BitConverter.ToUInt32(b); }
    public ushort ReadU16(ulong gpa) { Span<byte> b = stackalloc byte[2]; Read(gpa, b); return BitConverter.ToUInt16(b); }
    public byte ReadU8(ulong gpa) { Span<byte> b = stackalloc byte[1]; Read(gpa, b); return b[0]; }
    public void WriteU64(ulong gpa, ulong v) { Span<byte> b = stackalloc byte[8]; BitConverter.TryWriteBytes(b, v); Write(gpa, b); }
    public void WriteU32(ulong gpa, uint v) { Span<byte> b = stackalloc byte[4]; BitConverter.TryWriteBytes(b, v); Write(gpa, b); }
    public void WriteU16(ulong gpa, ushort v) { Span<byte> b = stackalloc byte[2]; BitConverter.TryWriteBytes(b, v); Write(gpa, b); }
    public void WriteU8(ulong gpa, byte v) { Span<byte> b = [v]; Write(gpa, b); }

    /// <summary>
    /// Makes all of RAM the contents of a file holding the regions back to back (a snapshot's memory file), mapped
    /// copy-on-write: nothing is read until the guest touches it. Only before anything runs on this memory (no
    /// accelerator mapping may depend on the old pages). False when the platform cannot map it; regions already
    /// mapped then hold the file's contents anyway, so the caller may still copy the file in.
    /// </summary>
    public bool TryMapFilePrivate(int fd)
    {
        long off = 0;
        foreach (var r in _regions)
        {
            if (!r.MapFilePrivate(fd, off)) return false;
            off += (long)r.Size;
        }
        return true;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var r in _regions) r.Free();
        foreach (var r in _roms) r.Free();
    }
}

/// <summary>Guest RAM could not be set up (the host refused the mapping): the request is too large for this host.</summary>
/// <summary>Sees bytes written into guest memory at <paramref name="gpa"/> from outside the vCPUs (<see cref="GuestMemory.DeviceWrites"/>).</summary>
public delegate void DeviceWriteObserver(ulong gpa, ReadOnlySpan<byte> bytes);

public sealed class GuestMemoryException(string message) : Exception(message);
