using System.Buffers.Binary;
using System.Text;
using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Loaders;

/// <summary>
/// Multiboot 0.6.96 (as QEMU's -kernel implements it): ELF kernels by their program headers or any image by the
/// header's a.out-kludge addresses; each initrd becomes a module; the kernel enters 32-bit protected mode with
/// EAX = 0x2BADB002 and EBX = the multiboot_info structure.
/// </summary>
public static class MultibootLoader
{
    public const uint HeaderMagic = 0x1BAD_B002, BootloaderMagic = 0x2BAD_B002;
    public const int SearchLimit = 8192;
    // multiboot_header.flags
    private const uint FlagPageAlignModules = 1u << 0, FlagMemInfo = 1u << 1, FlagVideoMode = 1u << 2, FlagAoutKludge = 1u << 16;
    // multiboot_info.flags
    public const uint InfoMem = 1u << 0, InfoCmdLine = 1u << 2, InfoMods = 1u << 3, InfoMmap = 1u << 6, InfoLoaderName = 1u << 9;
    public const int InfoSize = 88;

    /// <summary>Offset of a valid Multiboot header (magic with matching checksum, 4-byte aligned) in the first 8 KiB, or -1.</summary>
    public static int FindHeader(ReadOnlySpan<byte> image)
    {
        int limit = Math.Min(image.Length, SearchLimit) - 12;
        for (int off = 0; off <= limit; off += 4)
        {
            uint magic = U32(image, off);
            if (magic == HeaderMagic && magic + U32(image, off + 4) + U32(image, off + 8) == 0) return off;
        }
        return -1;
    }

    public static LoadedKernel Load(GuestMemory mem, byte[] image, BootOptions opt)
    {
        int hoff = FindHeader(image);
        if (hoff < 0) throw new LoaderException("no Multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB");
        var img = image.AsSpan();
        uint flags = U32(img, hoff + 4);
        // Bits 0-15 are requirements: refuse unknown ones. A video-mode request (bit 2) is accepted without VBE
        // information, as QEMU does, since text-console kernels commonly set it.
        uint unsupported = flags & 0xFFFF & ~(FlagPageAlignModules | FlagMemInfo | FlagVideoMode);
        if (unsupported != 0) throw new LoaderException($"Multiboot header requires unsupported features (flags 0x{flags:x})");

        ulong lo, hi, entry;
        KernelFormat format;
        if ((flags & FlagAoutKludge) != 0)
        {
            if (hoff + 32 > img.Length) throw new LoaderException("Multiboot header with address fields is truncated");
            uint headerAddr = U32(img, hoff + 12), loadAddr = U32(img, hoff + 16), loadEnd = U32(img, hoff + 20);
            uint bssEnd = U32(img, hoff + 24), entryAddr = U32(img, hoff + 28);
            if (loadAddr > headerAddr || headerAddr - loadAddr > (uint)hoff)
                throw new LoaderException($"Multiboot header_addr 0x{headerAddr:x} / load_addr 0x{loadAddr:x} are inconsistent with the header at file offset {hoff}");
            long fileStart = hoff - (long)(headerAddr - loadAddr);
            long fileLen = loadEnd == 0 ? img.Length - fileStart : (long)loadEnd - loadAddr;
            if (loadEnd != 0 && loadEnd < loadAddr || fileLen < 0 || fileStart + fileLen > img.Length)
                throw new LoaderException($"Multiboot load_end_addr 0x{loadEnd:x} lies beyond the end of the image");
            ulong memEnd = bssEnd == 0 ? loadAddr + (ulong)fileLen : bssEnd;
            if (memEnd < loadAddr + (ulong)fileLen) throw new LoaderException($"Multiboot bss_end_addr 0x{bssEnd:x} is below load_end_addr");
            if (!MemoryMap.IsUsable(mem, opt.MemoryMap, loadAddr, memEnd - loadAddr))
                throw new LoaderException($"Multiboot kernel at 0x{loadAddr:x}..0x{memEnd:x} is not in guest RAM");
            MemoryMap.CheckClear(loadAddr, memEnd, BootState.GdtAddr, BootState.GdtAddr + 0x1000, "boot GDT");
            mem.Write(loadAddr, img.Slice((int)fileStart, (int)fileLen));
            if (memEnd > loadAddr + (ulong)fileLen) ElfImage.Zero(mem, loadAddr + (ulong)fileLen, memEnd - loadAddr - (ulong)fileLen);
            (lo, hi, entry, format) = (loadAddr, memEnd, entryAddr, KernelFormat.MultibootAout);
        }
        else
        {
            if (!ElfImage.IsElf(img)) throw new LoaderException("Multiboot kernel is not ELF and its header has no a.out-kludge addresses (flags bit 16)");
            var elf = ElfImage.Parse(image);
            if (elf.Machine != ElfImage.MachineI386 && elf.Machine != ElfImage.MachineX86_64)
                throw new LoaderException($"Multiboot ELF kernel is for machine {elf.Machine}, not x86");
            (lo, hi) = elf.PhysicalRange();
            MemoryMap.CheckClear(lo, hi, BootState.GdtAddr, BootState.GdtAddr + 0x1000, "boot GDT");
            elf.LoadSegments(mem, opt.MemoryMap, useVirtual: false);
            entry = elf.Entry;
            format = KernelFormat.MultibootElf;
        }
        if (entry >= 1UL << 32 || hi > 1UL << 32) throw new LoaderException($"Multiboot kernel must lie and start below 4 GiB (entry 0x{entry:x})");
        if (entry < lo || entry >= hi) throw new LoaderException($"Multiboot entry point 0x{entry:x} is outside the loaded kernel 0x{lo:x}..0x{hi:x}");

        ulong info = WriteBootInfo(mem, opt, hi);
        var st = BootState.Protected32(mem, entry);
        st.Gpr[0] = BootloaderMagic; // EAX
        st.Gpr[3] = info;            // EBX
        return new LoadedKernel(format, st, lo, hi, opt.Initrds.Count > 0 ? MemoryMap.AlignUp(hi, GuestMemory.PageSize) : 0,
            (ulong)opt.Initrds.Sum(f => (long)f.Data.Length), info);
    }

    /// <summary>Modules (page-aligned) right after the kernel, then the info structure, its strings and mmap.</summary>
    private static ulong WriteBootInfo(GuestMemory mem, BootOptions opt, ulong kernelEnd)
    {
        ulong at = MemoryMap.AlignUp(kernelEnd, GuestMemory.PageSize);
        var mods = new List<(ulong Start, ulong End, string Name)>();
        foreach (var f in opt.Initrds)
        {
            LinuxLoader.WriteChecked(mem, opt, at, f.Data, $"module {f.Name}");
            mods.Add((at, at + (ulong)f.Data.Length, f.Name));
            at = MemoryMap.AlignUp(at + (ulong)f.Data.Length, GuestMemory.PageSize);
        }

        // Build the whole info block in a host buffer; pointers inside it are info + offset.
        ulong info = at;
        var buf = new List<byte>(new byte[InfoSize]);
        uint Append(byte[] data) { while (buf.Count % 4 != 0) buf.Add(0); uint a = (uint)(info + (ulong)buf.Count); buf.AddRange(data); return a; }
        uint Str(string s) { var b = Encoding.UTF8.GetBytes(s); return Append([.. b, 0]); }

        var head = new byte[InfoSize];
        uint flags = InfoMem | InfoCmdLine | InfoMmap | InfoLoaderName;
        ulong lowEnd = opt.MemoryMap.Where(e => e.Type == E820Type.Ram && e.Base == 0).Select(e => e.End).FirstOrDefault();
        ulong upperEnd = MemoryMap.RamEndAt(opt.MemoryMap, MemoryMap.OneMiB);
        W32(head, 4, (uint)(Math.Min(lowEnd, 640UL << 10) >> 10));                     // mem_lower (KiB)
        W32(head, 8, (uint)Math.Min((upperEnd - MemoryMap.OneMiB) >> 10, uint.MaxValue)); // mem_upper (KiB)
        W32(head, 16, Str(opt.CommandLine));
        if (mods.Count > 0)
        {
            var names = mods.Select(m => Str(m.Name)).ToArray();
            var table = new byte[16 * mods.Count];
            for (int i = 0; i < mods.Count; i++)
            {
                W32(table, i * 16, (uint)mods[i].Start);
                W32(table, i * 16 + 4, (uint)mods[i].End);
                W32(table, i * 16 + 8, names[i]);
            }
            flags |= InfoMods;
            W32(head, 20, (uint)mods.Count);
            W32(head, 24, Append(table));
        }
        var mmap = new byte[24 * opt.MemoryMap.Count];
        for (int i = 0; i < opt.MemoryMap.Count; i++)
        {
            var e = opt.MemoryMap[i];
            W32(mmap, i * 24, 20); // size of the entry, not counting this field
            BinaryPrimitives.WriteUInt64LittleEndian(mmap.AsSpan(i * 24 + 4), e.Base);
            BinaryPrimitives.WriteUInt64LittleEndian(mmap.AsSpan(i * 24 + 12), e.Length);
            W32(mmap, i * 24 + 20, (uint)e.Type);
        }
        W32(head, 44, (uint)mmap.Length);
        W32(head, 48, Append(mmap));
        W32(head, 64, Str("Dirigent"));
        W32(head, 0, flags);
        for (int i = 0; i < InfoSize; i++) buf[i] = head[i];
        LinuxLoader.WriteChecked(mem, opt, info, buf.ToArray(), "multiboot information");
        return info;
    }

    private static void W32(byte[] b, int o, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(o), v);
    private static uint U32(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt32LittleEndian(b[o..]);
}
