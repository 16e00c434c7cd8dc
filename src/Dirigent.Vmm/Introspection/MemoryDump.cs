using System.Buffers.Binary;
using Dirigent.Machine.Memory;

namespace Dirigent.Vmm.Introspection;

public enum MemoryDumpFormat { Raw, Elf }

/// <summary>
/// Guest RAM to a file. raw: the file offset is the guest-physical address (holes such as the PCI hole below 4 GiB
/// are left sparse), so any tool can seek to a physical address. elf: an ELF64 core file (ET_CORE, EM_X86_64) with one
/// PT_LOAD segment per RAM region, its guest-physical address in p_paddr (and p_vaddr), as QEMU's dump-guest-memory
/// writes them for physical-address analysis tools.
/// </summary>
public static unsafe class MemoryDump
{
    public static void Write(GuestMemory mem, string path, MemoryDumpFormat format)
    {
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        var regions = mem.Regions.OrderBy(r => r.GuestBase).ToArray();
        if (format == MemoryDumpFormat.Raw)
        {
            foreach (var r in regions)
            {
                f.Position = (long)r.GuestBase;
                CopyRegion(f, r);
            }
            f.SetLength(regions.Length == 0 ? 0 : (long)(regions[^1].GuestBase + regions[^1].Size));
            return;
        }
        const int ehSize = 64, phSize = 56;
        int n = regions.Length;
        ulong dataStart = (ulong)(ehSize + phSize * n + 0xFFF) & ~0xFFFUL;
        var hdr = new byte[dataStart];
        var eh = hdr.AsSpan();
        "\u007fELF"u8.CopyTo(eh);
        eh[4] = 2; eh[5] = 1; eh[6] = 1; // ELFCLASS64, little-endian, EV_CURRENT
        BinaryPrimitives.WriteUInt16LittleEndian(eh[16..], 4);     // ET_CORE
        BinaryPrimitives.WriteUInt16LittleEndian(eh[18..], 62);    // EM_X86_64
        BinaryPrimitives.WriteUInt32LittleEndian(eh[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(eh[32..], ehSize); // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(eh[52..], ehSize);
        BinaryPrimitives.WriteUInt16LittleEndian(eh[54..], phSize);
        BinaryPrimitives.WriteUInt16LittleEndian(eh[56..], (ushort)n);
        ulong off = dataStart;
        for (int k = 0; k < n; k++)
        {
            var ph = eh.Slice(ehSize + k * phSize, phSize);
            BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);        // PT_LOAD
            BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 7);   // RWX
            BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], off);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], regions[k].GuestBase);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], regions[k].GuestBase);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], regions[k].Size);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], regions[k].Size);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[48..], 0x1000);
            off += regions[k].Size;
        }
        f.Write(hdr);
        foreach (var r in regions) CopyRegion(f, r);
    }

    private static void CopyRegion(FileStream f, RamRegion r)
    {
        const int chunk = 1 << 20;
        for (ulong o = 0; o < r.Size; o += chunk)
        {
            int len = (int)Math.Min(chunk, r.Size - o);
            f.Write(new ReadOnlySpan<byte>(r.Host + o, len));
        }
    }
}
