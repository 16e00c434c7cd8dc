using System.Buffers.Binary;
using System.Text;
using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Loaders;

/// <summary>
/// Linux x86 64-bit boot protocol (Documentation/arch/x86/boot.rst): loads a bzImage's protected-mode kernel or an
/// uncompressed vmlinux ELF, builds the zero page (struct boot_params) with command line, initrd and e820 map, and
/// returns a long-mode entry state with RSI pointing at the zero page.
/// </summary>
public static class LinuxLoader
{
    /// <summary>Zero page just above <see cref="BootState"/>'s GDT and page tables (0x1000..0x8000).</summary>
    public const ulong ZeroPageAddr = 0x8000;
    public const ulong CmdLineAddr = 0x2_0000;
    /// <summary>Room for the command line below the next 64 KiB; nothing else lives there.</summary>
    public const int CmdLineMax = 0x1_0000;
    public const ulong DefaultLoadAddr = 0x10_0000;
    /// <summary>Startup stack for the entry (the kernel sets up its own immediately); below the command line.</summary>
    public const ulong EntryStackTop = 0x1_F000;
    public const ulong StartKernelMap = 0xFFFF_FFFF_8000_0000; // __START_KERNEL_map

    // struct boot_params / struct setup_header offsets
    internal const int OffAcpiRsdp = 0x070, OffExtRamdiskImage = 0x0C0, OffExtRamdiskSize = 0x0C4, OffExtCmdLine = 0x0C8;
    internal const int OffE820Entries = 0x1E8, OffE820Table = 0x2D0, E820Max = 128;
    internal const int OffSetupSects = 0x1F1, OffSysSize = 0x1F4, OffBootFlag = 0x1FE, OffJump = 0x200, OffHeader = 0x202, OffVersion = 0x206;
    internal const int OffTypeOfLoader = 0x210, OffLoadFlags = 0x211, OffCode32Start = 0x214;
    internal const int OffRamdiskImage = 0x218, OffRamdiskSize = 0x21C, OffHeapEndPtr = 0x224, OffCmdLinePtr = 0x228;
    internal const int OffInitrdAddrMax = 0x22C, OffKernelAlignment = 0x230, OffRelocatable = 0x234;
    internal const int OffXLoadFlags = 0x236, OffCmdLineSize = 0x238, OffPrefAddress = 0x258, OffInitSize = 0x260;
    internal const uint HdrSMagic = 0x5372_6448; // "HdrS"
    internal const byte LoadedHigh = 0x01, CanUseHeap = 0x80;
    internal const ushort XlfKernel64 = 0x01;

    public static bool IsBzImage(ReadOnlySpan<byte> image) =>
        image.Length >= 0x264 && BinaryPrimitives.ReadUInt16LittleEndian(image[OffBootFlag..]) == 0xAA55
        && BinaryPrimitives.ReadUInt32LittleEndian(image[OffHeader..]) == HdrSMagic;

    public static LoadedKernel LoadBzImage(GuestMemory mem, byte[] image, BootOptions opt)
    {
        if (!IsBzImage(image)) throw new LoaderException("not a Linux bzImage (no 0xAA55 boot flag / \"HdrS\" setup header)");
        var img = image.AsSpan();
        ushort version = U16(img, OffVersion);
        if (version < 0x20C)
            throw new LoaderException($"bzImage boot protocol {version >> 8}.{version & 0xFF} is too old: 2.12 or newer is needed for the 64-bit entry");
        if ((U16(img, OffXLoadFlags) & XlfKernel64) == 0)
            throw new LoaderException("bzImage has no 64-bit entry point (XLF_KERNEL_64 clear): a 32-bit kernel is not supported");
        int setupSects = img[OffSetupSects] == 0 ? 4 : img[OffSetupSects];
        int setupSize = (setupSects + 1) * 512;
        if (setupSize >= img.Length) throw new LoaderException($"bzImage is truncated: setup of {setupSize} bytes, file of {img.Length}");
        var kernel = img[setupSize..];
        // syssize: the protected-mode kernel's size in 16-byte paragraphs (boot protocol 2.04+: all 32 bits). A file
        // cut short would otherwise boot into whatever follows in guest RAM.
        ulong sysSize = (ulong)U32(img, OffSysSize) * 16;
        if ((ulong)kernel.Length < sysSize)
            throw new LoaderException($"bzImage is truncated: its header gives {setupSize + (long)sysSize} bytes, the file has {img.Length}");

        uint align = U32(img, OffKernelAlignment);
        if (align == 0 || (align & (align - 1)) != 0) align = 0x20_0000;
        ulong initSize = Math.Max(U32(img, OffInitSize), (ulong)kernel.Length);
        bool relocatable = img[OffRelocatable] != 0;
        ulong pref = U64(img, OffPrefAddress);
        ulong load;
        if (relocatable && pref >= MemoryMap.OneMiB && MemoryMap.IsUsable(mem, opt.MemoryMap, pref, initSize)) load = pref;
        else
        {
            load = relocatable ? MemoryMap.AlignUp(DefaultLoadAddr, align) : DefaultLoadAddr;
            if (!MemoryMap.IsUsable(mem, opt.MemoryMap, load, initSize))
                throw new LoaderException($"kernel does not fit in guest RAM: needs 0x{initSize:x} bytes (init_size) at 0x{load:x}");
        }
        mem.Write(load, kernel);
        ulong kernelEnd = load + initSize;

        var zp = new byte[4096];
        // The setup header runs from 0x1F1 to the end given by the jump at 0x200 (its offset byte at 0x201).
        int hdrEnd = Math.Min(Math.Min(0x202 + img[OffJump + 1], zp.Length), img.Length);
        img[OffSetupSects..hdrEnd].CopyTo(zp.AsSpan(OffSetupSects));
        ulong cmdMax = U32(img, OffCmdLineSize);
        FinishZeroPage(mem, zp, opt, load, kernelEnd, cmdMax == 0 ? 255 : cmdMax, U32(img, OffInitrdAddrMax), out ulong rdAddr, out ulong rdSize);
        var st = BootState.Long64(mem, load + 0x200, EntryStackTop);
        st.Gpr[6] = ZeroPageAddr; // RSI
        return new LoadedKernel(KernelFormat.LinuxBzImage, st, load, kernelEnd, rdAddr, rdSize, ZeroPageAddr);
    }

    /// <summary>Loads an uncompressed vmlinux (ELF64 x86-64) at its segments' physical addresses and enters startup_64.</summary>
    public static LoadedKernel LoadVmlinux(GuestMemory mem, byte[] image, BootOptions opt)
    {
        var elf = ElfImage.Parse(image);
        if (!elf.Is64 || elf.Machine != ElfImage.MachineX86_64)
            throw new LoaderException("vmlinux must be an ELF64 x86-64 executable");
        var (lo, hi) = elf.PhysicalRange();
        MemoryMap.CheckClear(lo, hi, BootState.GdtAddr, ZeroPageAddr + 0x1000, "boot page tables and zero page");
        MemoryMap.CheckClear(lo, hi, CmdLineAddr, CmdLineAddr + CmdLineMax, "command line");
        elf.LoadSegments(mem, opt.MemoryMap, useVirtual: false);
        ulong entry = elf.Entry >= StartKernelMap ? elf.Entry - StartKernelMap : elf.Entry;
        if (entry < lo || entry >= hi) throw new LoaderException($"vmlinux entry point 0x{elf.Entry:x} is outside its loaded segments");

        // No setup header in a vmlinux: fill in the fields the kernel reads from it.
        var zp = new byte[4096];
        var z = zp.AsSpan();
        BinaryPrimitives.WriteUInt16LittleEndian(z[OffBootFlag..], 0xAA55);
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffHeader..], HdrSMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(z[OffVersion..], 0x20F);
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffKernelAlignment..], 0x20_0000);
        BinaryPrimitives.WriteUInt16LittleEndian(z[OffXLoadFlags..], XlfKernel64);
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffInitrdAddrMax..], 0x7FFF_FFFF);
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffCmdLineSize..], CmdLineMax - 1);
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffInitSize..], (uint)(hi - lo));
        FinishZeroPage(mem, zp, opt, lo, hi, CmdLineMax - 1, 0x7FFF_FFFF, out ulong rdAddr, out ulong rdSize);
        var st = BootState.Long64(mem, entry, EntryStackTop);
        st.Gpr[6] = ZeroPageAddr;
        return new LoadedKernel(KernelFormat.LinuxElf, st, lo, hi, rdAddr, rdSize, ZeroPageAddr);
    }

    private static void FinishZeroPage(GuestMemory mem, byte[] zp, BootOptions opt, ulong load, ulong kernelEnd,
        ulong cmdlineSize, ulong initrdAddrMax, out ulong rdAddr, out ulong rdSize)
    {
        var z = zp.AsSpan();
        if (kernelEnd > GuestMemory.HighRamStart) throw new LoaderException("kernel must be loaded below 4 GiB");
        z[OffTypeOfLoader] = 0xFF;
        z[OffLoadFlags] |= LoadedHigh | CanUseHeap;
        BinaryPrimitives.WriteUInt16LittleEndian(z[OffHeapEndPtr..], 0xFE00 - 0x200);
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffCode32Start..], (uint)load);

        var cmd = Encoding.UTF8.GetBytes(opt.CommandLine);
        if ((ulong)cmd.Length > Math.Min(cmdlineSize, CmdLineMax - 1))
            throw new LoaderException($"kernel command line is {cmd.Length} bytes; this kernel accepts at most {Math.Min(cmdlineSize, CmdLineMax - 1)}");
        var cmdz = new byte[cmd.Length + 1];
        cmd.CopyTo(cmdz, 0);
        WriteChecked(mem, opt, CmdLineAddr, cmdz, "command line");
        BinaryPrimitives.WriteUInt32LittleEndian(z[OffCmdLinePtr..], (uint)CmdLineAddr);

        rdAddr = rdSize = 0;
        long total = opt.Initrds.Sum(f => (long)f.Data.Length);
        if (total > 0)
        {
            ulong lowTop = MemoryMap.RamEndAt(opt.MemoryMap, MemoryMap.OneMiB);
            ulong top = Math.Min(initrdAddrMax + 1, lowTop);
            ulong size = (ulong)total;
            if (size > top || MemoryMap.AlignDown(top - size, GuestMemory.PageSize) < MemoryMap.AlignUp(kernelEnd, GuestMemory.PageSize))
                throw new LoaderException($"initrd of {size >> 10} KiB does not fit between the kernel end 0x{kernelEnd:x} and 0x{top:x}: give the guest more RAM");
            rdAddr = MemoryMap.AlignDown(top - size, GuestMemory.PageSize);
            rdSize = size;
            ulong at = rdAddr;
            foreach (var f in opt.Initrds) { WriteChecked(mem, opt, at, f.Data, $"initrd {f.Name}"); at += (ulong)f.Data.Length; }
            BinaryPrimitives.WriteUInt32LittleEndian(z[OffRamdiskImage..], (uint)rdAddr);
            BinaryPrimitives.WriteUInt32LittleEndian(z[OffRamdiskSize..], (uint)rdSize);
        }

        if (opt.MemoryMap.Count > E820Max) throw new LoaderException($"memory map has {opt.MemoryMap.Count} entries, boot_params holds {E820Max}");
        z[OffE820Entries] = (byte)opt.MemoryMap.Count;
        for (int i = 0; i < opt.MemoryMap.Count; i++)
        {
            var e = opt.MemoryMap[i];
            var d = z[(OffE820Table + i * 20)..];
            BinaryPrimitives.WriteUInt64LittleEndian(d, e.Base);
            BinaryPrimitives.WriteUInt64LittleEndian(d[8..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(d[16..], (uint)e.Type);
        }
        BinaryPrimitives.WriteUInt64LittleEndian(z[OffAcpiRsdp..], opt.AcpiRsdpAddress);
        WriteChecked(mem, opt, ZeroPageAddr, zp, "zero page");
    }

    internal static void WriteChecked(GuestMemory mem, BootOptions opt, ulong addr, ReadOnlySpan<byte> data, string what)
    {
        if (!MemoryMap.IsUsable(mem, opt.MemoryMap, addr, (ulong)data.Length))
            throw new LoaderException($"{what} (0x{data.Length:x} bytes at 0x{addr:x}) does not fit in guest RAM");
        mem.Write(addr, data);
    }

    private static ushort U16(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt16LittleEndian(b[o..]);
    private static uint U32(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt32LittleEndian(b[o..]);
    private static ulong U64(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt64LittleEndian(b[o..]);
}
