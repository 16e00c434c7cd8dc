namespace Dirigent.Devices;

/// <summary>
/// The fixed addresses, ports and interrupt numbers of Dirigent's PC machine. Devices, firmware tables (ACPI, MP)
/// and loaders all take them from here so they cannot disagree.
/// </summary>
public static class PcPlatform
{
    // Interrupt controllers
    public const ulong IoApicBase = 0xFEC0_0000;
    public const int IoApicPins = 24;
    public const byte IoApicId = 0; // APIC IDs 0..N-1 are the CPUs; the IOAPIC gets its own ID in the MP/MADT tables
    public const ulong LocalApicBase = 0xFEE0_0000;
    public const ushort PicMasterPort = 0x20, PicSlavePort = 0xA0, ElcrPort = 0x4D0;

    // ISA IRQs (the IOAPIC pin equals the IRQ except IRQ0, which is wired to pin 2 with an interrupt source
    // override, as on QEMU's PC and most real chipsets)
    public const int IrqPit = 0, IrqKeyboard = 1, IrqCom2 = 3, IrqCom1 = 4, IrqRtc = 8, IrqAcpiSci = 9, IrqMouse = 12;
    public const int PitGsi = 2;

    // Legacy ports
    public const ushort PitPort = 0x40, SystemControlPortB = 0x61, I8042DataPort = 0x60, I8042CmdPort = 0x64;
    public const ushort CmosPort = 0x70, PostPort = 0x80, SystemControlPortA = 0x92, DebugExitPort = 0xF4;
    public const ushort Com1Port = 0x3F8, Com2Port = 0x2F8, Com3Port = 0x3E8, Com4Port = 0x2E8;
    public const ushort ResetControlPort = 0xCF9;

    // ACPI fixed hardware (PIIX4-like PM block in I/O space)
    public const ushort AcpiPmBase = 0x600;
    public const ushort AcpiPm1aEvtBlk = AcpiPmBase + 0x0;  // PM1a status (2 bytes) + enable (2 bytes)
    public const ushort AcpiPm1aCntBlk = AcpiPmBase + 0x4;  // PM1a control (2 bytes)
    public const ushort AcpiPmTmrBlk = AcpiPmBase + 0x8;    // 24-bit PM timer at 3.579545 MHz (4 bytes)
    public const ushort AcpiGpe0Blk = AcpiPmBase + 0x20;    // GPE0 status + enable (2 x 4 bytes)
    public const ushort AcpiSmiCmdPort = 0; // no SMM: ACPI is always enabled (SCI_EN set), no SMI_CMD
    /// <summary>SLP_TYP value the DSDT's \_S5 package gives; PM1a_CNT with SLP_EN and this type powers off.</summary>
    public const int AcpiS5SlpTyp = 5;
    public const long AcpiPmTimerHz = 3_579_545;

    // Memory map
    /// <summary>Firmware-table area (MP floating pointer, ACPI RSDP and tables) in the BIOS range, reserved in e820.</summary>
    public const ulong FirmwareTablesBase = 0xE_0000, FirmwareTablesSize = 0x2_0000;
    public const ulong EbdaBase = 0x9_FC00;

    // PCI
    /// <summary>
    /// 32-bit window for PCI memory BARs: the start of the hole below 4 GiB (RAM never reaches past it), well below
    /// the IOAPIC. Not in e820: Linux sees it as a gap and takes it from the host bridge's _CRS.
    /// </summary>
    public const ulong PciMmioBase = 0xE000_0000, PciMmioSize = 0x1000_0000;
    /// <summary>PCI INTA..INTD of slot s swizzle onto GSI 16 + ((s + pin - 1) mod 8) (IOAPIC pins 16..23).</summary>
    public const int PciFirstGsi = 16, PciGsiCount = 8;
}
