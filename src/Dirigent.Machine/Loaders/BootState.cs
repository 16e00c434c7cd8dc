using Dirigent.Machine.Accel;
using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Loaders;

/// <summary>
/// Initial vCPU states for entering a guest directly in 32-bit or 64-bit mode, as firmware would leave them.
/// Loaders (Linux 64-bit boot protocol, Multiboot) and test guests use these; the result goes through
/// <see cref="IVcpu.SetState"/>, so it is the same for every accelerator.
/// </summary>
public static class BootState
{
    public const ulong GdtAddr = 0x1000;
    public const ulong Pml4Addr = 0x2000;
    public const ulong PdptAddr = 0x3000;
    public const ulong PdAddr = 0x4000; // four page directories: identity map of 0..4 GiB with 2 MiB pages

    // GDT laid out like the Linux boot protocol expects: __BOOT_CS = 0x10, __BOOT_DS = 0x18.
    public const ushort Code32Sel = 0x08, Code64Sel = 0x10, DataSel = 0x18;
    private static readonly ulong[] s_gdt =
    [
        0,
        0x00CF_9B00_0000_FFFF, // 0x08: 32-bit code, flat
        0x00AF_9B00_0000_FFFF, // 0x10: 64-bit code
        0x00CF_9300_0000_FFFF, // 0x18: data, flat
        0x0080_8B00_0000_0067, // 0x20: 32-bit busy TSS at 0 (placeholder so TR is usable, as KVM requires)
    ];

    private static void WriteGdt(GuestMemory mem)
    {
        for (int k = 0; k < s_gdt.Length; k++) mem.WriteU64(GdtAddr + (ulong)k * 8, s_gdt[k]);
    }

    private static SegmentState Flat(ushort sel, ushort attr) => new() { Selector = sel, Base = 0, Limit = 0xFFFF_FFFF, Attributes = attr };

    /// <summary>Flat 32-bit protected mode, paging off, interrupts off (Multiboot's entry state).</summary>
    public static CpuState Protected32(GuestMemory mem, ulong entry)
    {
        WriteGdt(mem);
        var s = CpuState.Reset();
        s.Cr0 = 0x11; // PE | ET
        s.Rip = entry;
        s.Segments[(int)Seg.CS] = Flat(Code32Sel, 0xC09B);
        foreach (var seg in new[] { Seg.DS, Seg.ES, Seg.SS, Seg.FS, Seg.GS }) s.Segments[(int)seg] = Flat(DataSel, 0xC093);
        s.Gdtr = new TableRegister { Base = GdtAddr, Limit = (ushort)(s_gdt.Length * 8 - 1) };
        s.Idtr = new TableRegister { Base = 0, Limit = 0 };
        s.Tr = new SegmentState { Selector = 0x20, Base = 0, Limit = 0x67, Attributes = 0x8B };
        return s;
    }

    /// <summary>
    /// 64-bit long mode with 0..4 GiB identity-mapped by 2 MiB pages, CS = 0x10, data segments 0x18, SSE enabled,
    /// interrupts off. Page tables and GDT are written to guest RAM at 0x1000..0x8000.
    /// </summary>
    public static CpuState Long64(GuestMemory mem, ulong entry, ulong stackTop = 0)
    {
        WriteGdt(mem);
        mem.WriteU64(Pml4Addr, PdptAddr | 0x3);
        for (int k = 1; k < 512; k++) mem.WriteU64(Pml4Addr + (ulong)k * 8, 0);
        for (ulong g = 0; g < 4; g++)
        {
            mem.WriteU64(PdptAddr + g * 8, (PdAddr + g * 0x1000) | 0x3);
            for (ulong k = 0; k < 512; k++)
                mem.WriteU64(PdAddr + g * 0x1000 + k * 8, ((g << 30) + (k << 21)) | 0x83); // P | RW | PS
        }
        for (ulong k = 4; k < 512; k++) mem.WriteU64(PdptAddr + k * 8, 0);
        var s = Protected32(mem, entry);
        s.Cr0 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
        s.Cr3 = Pml4Addr;
        s.Cr4 = 0x620;       // OSXMMEXCPT | OSFXSR | PAE
        s.Efer = 0xD01;      // NXE | LMA | LME | SCE
        s.Segments[(int)Seg.CS] = Flat(Code64Sel, 0xA09B);
        s.Tr = new SegmentState { Selector = 0x20, Base = 0, Limit = 0x67, Attributes = 0x8B };
        s.Gpr[4] = stackTop;
        return s;
    }
}
