using System.Buffers.Binary;
using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Loaders;

/// <summary>Just enough of an ELF executable (32- or 64-bit, little-endian) to load its PT_LOAD segments.</summary>
internal sealed class ElfImage
{
    public const ushort MachineI386 = 3, MachineX86_64 = 62;
    private const uint PtLoad = 1;

    public readonly record struct Segment(ulong Offset, ulong VAddr, ulong PAddr, ulong FileSize, ulong MemSize);

    public bool Is64 { get; private init; }
    public ushort Machine { get; private init; }
    public ulong Entry { get; private init; }
    public List<Segment> Segments { get; } = new();
    private byte[] _image = [];

    public static bool IsElf(ReadOnlySpan<byte> b) => b.Length >= 52 && b[0] == 0x7F && b[1] == (byte)'E' && b[2] == (byte)'L' && b[3] == (byte)'F';

    public static ElfImage Parse(byte[] image)
    {
        var b = image.AsSpan();
        if (!IsElf(b)) throw new LoaderException("not an ELF file");
        if (b[5] != 1) throw new LoaderException("ELF image is not little-endian");
        bool is64 = b[4] switch { 1 => false, 2 => true, _ => throw new LoaderException($"ELF image has unknown class {b[4]}") };
        if (is64 && b.Length < 64) throw new LoaderException("ELF64 header is truncated");
        ushort type = U16(b, 16);
        if (type != 2) throw new LoaderException($"ELF image is not an executable (e_type {type})");
        var elf = new ElfImage
        {
            Is64 = is64, Machine = U16(b, 18), Entry = is64 ? U64(b, 24) : U32(b, 24), _image = image,
        };
        ulong phoff = is64 ? U64(b, 32) : U32(b, 28);
        int phentsize = U16(b, is64 ? 54 : 42), phnum = U16(b, is64 ? 56 : 44);
        if (phnum == 0) throw new LoaderException("ELF image has no program headers");
        if (phentsize < (is64 ? 56 : 32) || phoff > (ulong)b.Length || (ulong)phentsize * (ulong)phnum > (ulong)b.Length - phoff)
            throw new LoaderException("ELF program header table is corrupt or truncated");
        for (int i = 0; i < phnum; i++)
        {
            var p = b[(int)(phoff + (ulong)(i * phentsize))..];
            if (U32(p, 0) != PtLoad) continue;
            var s = is64
                ? new Segment(U64(p, 8), U64(p, 16), U64(p, 24), U64(p, 32), U64(p, 40))
                : new Segment(U32(p, 4), U32(p, 8), U32(p, 12), U32(p, 16), U32(p, 20));
            if (s.FileSize > s.MemSize || s.Offset > (ulong)b.Length || s.FileSize > (ulong)b.Length - s.Offset)
                throw new LoaderException($"ELF segment {i} is corrupt (offset 0x{s.Offset:x}, file size 0x{s.FileSize:x}, memory size 0x{s.MemSize:x})");
            if (s.MemSize > 0) elf.Segments.Add(s);
        }
        if (elf.Segments.Count == 0) throw new LoaderException("ELF image has no loadable segments");
        return elf;
    }

    public (ulong Low, ulong High) PhysicalRange() =>
        (Segments.Min(s => s.PAddr), Segments.Max(s => s.PAddr + s.MemSize));

    /// <summary>Copies every segment to its physical (or virtual) address after checking it is usable RAM; returns the covered range.</summary>
    public (ulong Low, ulong High) LoadSegments(GuestMemory mem, IReadOnlyList<E820Entry> map, bool useVirtual)
    {
        ulong lo = ulong.MaxValue, hi = 0;
        foreach (var s in Segments)
        {
            ulong at = useVirtual ? s.VAddr : s.PAddr;
            if (!MemoryMap.IsUsable(mem, map, at, s.MemSize))
                throw new LoaderException($"ELF segment at 0x{at:x} (0x{s.MemSize:x} bytes) is not in guest RAM");
            lo = Math.Min(lo, at);
            hi = Math.Max(hi, at + s.MemSize);
        }
        foreach (var s in Segments)
        {
            ulong at = useVirtual ? s.VAddr : s.PAddr;
            mem.Write(at, _image.AsSpan((int)s.Offset, (int)s.FileSize));
            if (s.MemSize > s.FileSize) Zero(mem, at + s.FileSize, s.MemSize - s.FileSize);
        }
        return (lo, hi);
    }

    internal static void Zero(GuestMemory mem, ulong addr, ulong len)
    {
        var chunk = new byte[(int)Math.Min(len, 1UL << 20)];
        for (ulong done = 0; done < len; done += (ulong)chunk.Length)
            mem.Write(addr + done, chunk.AsSpan(0, (int)Math.Min((ulong)chunk.Length, len - done)));
    }

    private static ushort U16(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt16LittleEndian(b[o..]);
    private static uint U32(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt32LittleEndian(b[o..]);
    private static ulong U64(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt64LittleEndian(b[o..]);
}
