using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Firmware;

/// <summary>
/// Intel MultiProcessor Specification 1.4 tables: the floating pointer structure (in 0xF0000..0xFFFFF, where Linux
/// scans for it) and the configuration table with processors, the ISA and PCI buses, the IOAPIC, I/O interrupt assignments
/// for ISA IRQs 0-15 (IRQ0 on INTIN2) and PCI INTA-D of every slot (GSI 16-23), and the local interrupts (ExtINT on LINT0, NMI on LINT1).
/// </summary>
public static class MpTable
{
    /// <summary>Second half of the firmware area (the first belongs to <see cref="AcpiTables"/>).</summary>
    public const ulong FloatingPointerAddress = PcPlatform.FirmwareTablesBase + PcPlatform.FirmwareTablesSize / 2;
    public const ulong ConfigTableAddress = FloatingPointerAddress + 16;
    public const byte IsaBusId = 0;
    /// <summary>The PCI bus entry; Linux numbers PCI buses in the order of their entries, so this is PCI bus 0.</summary>
    public const byte PciBusId = 1;
    private const int IntTypeInt = 0, IntTypeNmi = 1, IntTypeExtInt = 3;

    /// <summary>Writes both structures and returns the floating pointer's physical address.</summary>
    public static ulong Write(GuestMemory mem, int cpuCount)
    {
        if (cpuCount < 1 || cpuCount > 254) throw new ArgumentOutOfRangeException(nameof(cpuCount), "1..254 vCPUs");
        var cfg = BuildConfigTable(cpuCount);
        if (ConfigTableAddress + (ulong)cfg.Length > PcPlatform.FirmwareTablesBase + PcPlatform.FirmwareTablesSize)
            throw new InvalidOperationException("MP table overflows the firmware area");
        mem.Write(ConfigTableAddress, cfg);
        mem.Write(FloatingPointerAddress, BuildFloatingPointer(ConfigTableAddress));
        return FloatingPointerAddress;
    }

    internal static byte[] BuildFloatingPointer(ulong config)
    {
        var w = new TableWriter();
        w.Ascii("_MP_", 4).U32(config).U8(1).U8(4).U8(0) // length in 16-byte units, spec 1.4, checksum
         .U8(0)   // feature 1: 0 = a configuration table is present
         .U8(0)   // feature 2: no IMCR, virtual-wire mode
         .U8(0).U8(0).U8(0);
        w.Checksum(10);
        return w.ToArray();
    }

    internal static byte[] BuildConfigTable(int cpuCount)
    {
        var w = new TableWriter();
        w.Ascii("PCMP", 4).U16(0).U8(4).U8(0).Ascii("DIRIGENT", 8).Ascii("PC", 12)
         .U32(0).U16(0).U16(0)                 // OEM table pointer/size, entry count (patched)
         .U32(PcPlatform.LocalApicBase).U16(0).U8(0).U8(0);
        int entries = 0;
        for (int i = 0; i < cpuCount; i++, entries++)
        {
            // Processor: LAPIC id, LAPIC version, flags EN (| BP for the first), signature (family 6), features (FPU, APIC)
            w.U8(0).U8(i).U8(0x14).U8(i == 0 ? 3 : 1).U32(0x600).U32(0x201).U32(0).U32(0);
        }
        w.U8(1).U8(IsaBusId).Ascii("ISA", 6); entries++;
        w.U8(1).U8(PciBusId).Ascii("PCI", 6); entries++;
        w.U8(2).U8(PcPlatform.IoApicId).U8(0x11).U8(1).U32(PcPlatform.IoApicBase); entries++;
        for (int irq = 0; irq < 16; irq++)
        {
            if (irq == 2) continue; // the cascade: its pin carries the PIT (IRQ0) instead
            int pin = irq == PcPlatform.IrqPit ? PcPlatform.PitGsi : irq;
            int flags = irq == PcPlatform.IrqAcpiSci ? 0x000D : 0; // SCI: level, active high (as in the MADT)
            w.U8(3).U8(IntTypeInt).U16(flags).U8(IsaBusId).U8(irq).U8(PcPlatform.IoApicId).U8(pin); entries++;
        }
        // PCI INTx: source bus IRQ = slot << 2 | pin (0 = INTA), level/active low as the PCI bus defines it.
        for (int slot = 0; slot < 32; slot++)
            for (int pin = 0; pin < 4; pin++)
            {
                w.U8(3).U8(IntTypeInt).U16(0x000F).U8(PciBusId).U8(slot << 2 | pin).U8(PcPlatform.IoApicId)
                 .U8(PciRootAml.Gsi(slot, pin + 1));
                entries++;
            }
        w.U8(4).U8(IntTypeExtInt).U16(0).U8(IsaBusId).U8(0).U8(0xFF).U8(0); entries++;
        w.U8(4).U8(IntTypeNmi).U16(0).U8(IsaBusId).U8(0).U8(0xFF).U8(1); entries++;
        w.PatchU16(4, w.Length);
        w.PatchU16(34, entries);
        w.Checksum(7);
        return w.ToArray();
    }
}
