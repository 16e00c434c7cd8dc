using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Firmware;

/// <summary>
/// ACPI tables for the PC machine (ACPI 6.x): RSDP (revision 2) at the start of the firmware area so Linux finds it
/// by scanning 0xE0000..0xFFFFF (there is no EFI), RSDT and XSDT, FADT (revision 5) describing the PM block in
/// <see cref="PcPlatform"/>, MADT with one local APIC per vCPU, and a FACS, and a DSDT with the PCI host bridge and \_S5 so the guest can power off.
/// </summary>
public static class AcpiTables
{
    public const string OemId = "DIRIGT", OemTableId = "DIRIGENT";
    public const ulong RsdpAddress = PcPlatform.FirmwareTablesBase;
    /// <summary>The ACPI tables use the first half of the firmware area; <see cref="MpTable"/> the second.</summary>
    public const ulong AreaSize = PcPlatform.FirmwareTablesSize / 2;

    /// <summary>Writes all tables and returns the RSDP's physical address.</summary>
    public static ulong Write(GuestMemory mem, int cpuCount)
    {
        if (cpuCount < 1 || cpuCount > 255) throw new ArgumentOutOfRangeException(nameof(cpuCount), "1..255 vCPUs");
        ulong next = RsdpAddress + 0x40;
        ulong Place(byte[] table)
        {
            ulong at = next;
            if (at + (ulong)table.Length > RsdpAddress + AreaSize) throw new InvalidOperationException("ACPI tables overflow the firmware area");
            mem.Write(at, table);
            next = (at + (ulong)table.Length + 15) & ~15UL;
            return at;
        }
        next = (next + 63) & ~63UL; // the FACS must be 64-byte aligned
        ulong facs = Place(BuildFacs());
        ulong dsdt = Place(BuildDsdt());
        ulong fadt = Place(BuildFadt(dsdt, facs));
        ulong madt = Place(BuildMadt(cpuCount));
        ulong rsdt = Place(BuildRsdt([fadt, madt], wide: false));
        ulong xsdt = Place(BuildRsdt([fadt, madt], wide: true));
        mem.Write(RsdpAddress, BuildRsdp(rsdt, xsdt));
        return RsdpAddress;
    }

    private static TableWriter Header(string sig, int revision)
    {
        var w = new TableWriter();
        w.Ascii(sig, 4).U32(0).U8(revision).U8(0).Ascii(OemId, 6).Ascii(OemTableId, 8).U32(1).Ascii("DRGT", 4).U32(1);
        return w;
    }

    private static byte[] Finish(TableWriter w)
    {
        w.PatchU32(4, (uint)w.Length);
        w.Checksum(9);
        return w.ToArray();
    }

    internal static byte[] BuildRsdp(ulong rsdt, ulong xsdt)
    {
        var w = new TableWriter();
        w.Ascii("RSD PTR ", 8).U8(0).Ascii(OemId, 6).U8(2).U32(rsdt).U32(36).U64(xsdt).U8(0).U8(0).U8(0).U8(0);
        w.Checksum(8, 0, 20);   // ACPI 1.0 checksum over the first 20 bytes
        w.Checksum(32, 0, 36);  // extended checksum over the whole structure
        return w.ToArray();
    }

    internal static byte[] BuildRsdt(ulong[] tables, bool wide)
    {
        var w = Header(wide ? "XSDT" : "RSDT", 1);
        foreach (var t in tables) { if (wide) w.U64(t); else w.U32(t); }
        return Finish(w);
    }

    private static TableWriter Gas(TableWriter w, int bits, int accessSize, ulong port) =>
        w.U8(1 /* SystemIO */).U8(bits).U8(0).U8(accessSize).U64(port);

    /// <summary>
    /// FACS: no checksum, no S3 waking vector; present because ACPICA looks for the global lock in it.
    /// </summary>
    internal static byte[] BuildFacs()
    {
        var w = new TableWriter();
        w.Ascii("FACS", 4).U32(64).U32(0).U32(0).U32(0).U32(0).U64(0).U8(2).Bytes(new byte[31]);
        return w.ToArray();
    }

    internal static byte[] BuildFadt(ulong dsdt, ulong facs)
    {
        const uint Wbinvd = 1 << 0, ProcC1 = 1 << 2, SlpButton = 1 << 5, ResetRegSup = 1 << 10;
        const int LegacyDevices = 1 << 0, I8042 = 1 << 1;
        var w = Header("FACP", 5);
        w.U32(facs)                       // FIRMWARE_CTRL
         .U32(dsdt)
         .U8(0).U8(0)                     // reserved, Preferred_PM_Profile: unspecified
         .U16(PcPlatform.IrqAcpiSci)      // SCI_INT
         .U32(PcPlatform.AcpiSmiCmdPort)  // SMI_CMD = 0: ACPI mode is always on
         .U8(0).U8(0).U8(0).U8(0)         // ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
         .U32(PcPlatform.AcpiPm1aEvtBlk).U32(0)
         .U32(PcPlatform.AcpiPm1aCntBlk).U32(0)
         .U32(0)                          // PM2_CNT_BLK
         .U32(PcPlatform.AcpiPmTmrBlk)
         .U32(PcPlatform.AcpiGpe0Blk).U32(0)
         .U8(4).U8(2).U8(0).U8(4)         // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
         .U8(8).U8(0).U8(0).U8(0)         // GPE0_BLK_LEN (status + enable), GPE1_BLK_LEN, GPE1_BASE, CST_CNT
         .U16(101).U16(1001)              // P_LVL2/3_LAT above the limits: C2/C3 not supported
         .U16(0).U16(0).U8(0).U8(0)       // FLUSH_SIZE/STRIDE, DUTY_OFFSET/WIDTH
         .U8(0).U8(0).U8(0x32)            // DAY_ALRM, MON_ALRM, CENTURY (CMOS register 0x32)
         .U16(LegacyDevices | I8042)      // IAPC_BOOT_ARCH
         .U8(0)
         // PWR_BUTTON clear: the power button is the fixed feature (PM1 PWRBTN_STS/EN), so Linux registers its
         // fixed power button device and a host-side "press" (AcpiPm.PressPowerButton) shuts the guest down.
         // SLP_BUTTON set: there is no sleep button.
         .U32(Wbinvd | ProcC1 | SlpButton | ResetRegSup);
        Gas(w, 8, 1, PcPlatform.ResetControlPort).U8(0x06) // RESET_REG / RESET_VALUE: CF9 full reset
         .U16(0).U8(0)                    // ARM_BOOT_ARCH, FADT minor version
         .U64(0).U64(dsdt);               // X_FIRMWARE_CTRL (must be 0 when FIRMWARE_CTRL is used), X_DSDT
        Gas(w, 32, 2, PcPlatform.AcpiPm1aEvtBlk);
        Gas(w, 0, 0, 0);
        Gas(w, 16, 2, PcPlatform.AcpiPm1aCntBlk);
        Gas(w, 0, 0, 0);
        Gas(w, 0, 0, 0);                  // X_PM2_CNT_BLK
        Gas(w, 32, 3, PcPlatform.AcpiPmTmrBlk);
        Gas(w, 64, 1, PcPlatform.AcpiGpe0Blk);
        Gas(w, 0, 0, 0);
        Gas(w, 0, 0, 0);                  // SLEEP_CONTROL_REG (hardware-reduced platforms only)
        Gas(w, 0, 0, 0);                  // SLEEP_STATUS_REG
        return Finish(w);
    }

    internal static byte[] BuildMadt(int cpuCount)
    {
        const int PcatCompat = 1;
        var w = Header("APIC", 4);
        w.U32(PcPlatform.LocalApicBase).U32(PcatCompat);
        for (int i = 0; i < cpuCount; i++) w.U8(0).U8(8).U8(i).U8(i).U32(1); // Processor Local APIC: UID, APIC ID, Enabled
        w.U8(1).U8(12).U8(PcPlatform.IoApicId).U8(0).U32(PcPlatform.IoApicBase).U32(0);
        // Interrupt Source Overrides: ISA bus, source IRQ, GSI, MPS INTI flags
        w.U8(2).U8(10).U8(0).U8(PcPlatform.IrqPit).U32(PcPlatform.PitGsi).U16(0);
        w.U8(2).U8(10).U8(0).U8(PcPlatform.IrqAcpiSci).U32(PcPlatform.IrqAcpiSci).U16(0x000D); // level, active high
        w.U8(4).U8(6).U8(0xFF).U16(0).U8(1);  // Local APIC NMI: all processors, LINT1
        return Finish(w);
    }

    /// <summary>DSDT whose AML is <c>Scope (\_SB) { Device (PCI0) {...} }</c> (see <see cref="PciRootAml"/>), with
    /// <paramref name="fwCfg"/> also QEMU's <c>Device (FWCF)</c> (see <see cref="PciRootAml.FwCfgDevice"/>), and
    /// <c>Name (\_S5, Package (4) { typ, typ, 0, 0 })</c>.</summary>
    internal static byte[] BuildDsdt(uint? pciMmioEnd = null, bool fwCfg = false)
    {
        var w = Header("DSDT", 2);
        byte[] pci = pciMmioEnd is { } end ? PciRootAml.Device(end) : PciRootAml.Device();
        if (fwCfg) pci = [.. pci, .. PciRootAml.FwCfgDevice()];
        w.U8(0x10).Bytes(PciRootAml.PkgLength(4 + pci.Length)).Bytes("_SB_"u8).Bytes(pci);  // Scope (\_SB) { PCI0 [FWCF] }
        byte typ = (byte)PcPlatform.AcpiS5SlpTyp;
        w.Bytes([0x08, (byte)'\\', (byte)'_', (byte)'S', (byte)'5', (byte)'_',           // NameOp \_S5_
                 0x12, 0x08, 0x04, 0x0A, typ, 0x0A, typ, 0x00, 0x00]);                   // PackageOp len 8, 4 elems
        return Finish(w);
    }
}
