namespace Dirigent.Devices.Firmware;

/// <summary>
/// AML for the PCI host bridge: <c>Device (\_SB.PCI0)</c> with _HID PNP0A03, _UID, _ADR, _BBN, a _CRS that
/// hands Linux bus 0-255, the conf1 ports, the remaining I/O space, the VGA hole and the 32-bit BAR window from
/// <see cref="PcPlatform"/>, and a _PRT routing INTA..INTD of every slot to GSI 16..23 with the bus's swizzle.
/// With ACPI present, Linux only scans PCI roots the DSDT declares (pci_acpi_init replaces the legacy probe).
/// </summary>
internal static class PciRootAml
{
    private const byte ZeroOp = 0x00, OneOp = 0x01, BytePrefix = 0x0A, WordPrefix = 0x0B, DWordPrefix = 0x0C, StringPrefix = 0x0D;
    private const byte NameOp = 0x08, BufferOp = 0x11, PackageOp = 0x12, ExtOpPrefix = 0x5B, DeviceOp = 0x82;
    /// <summary>EisaId ("PNP0A03") as the compressed DWORD ASL produces.</summary>
    public const uint PnpPciRoot = 0x030A_D041;

    /// <summary>The bytes of <c>Device (PCI0) { ... }</c> for use inside <c>Scope (\_SB)</c>.</summary>
    /// <param name="mmioEnd">Last byte of the 32-bit BAR window (firmware boot: up to the IOAPIC, where SeaBIOS puts BARs).</param>
    public static byte[] Device(uint mmioEnd = (uint)(PcPlatform.PciMmioBase + PcPlatform.PciMmioSize - 1))
    {
        var body = new List<byte>();
        body.AddRange("PCI0"u8.ToArray());
        body.AddRange(Name("_HID", DWord(PnpPciRoot)));
        body.AddRange(Name("_UID", [ZeroOp]));
        body.AddRange(Name("_ADR", [ZeroOp]));
        body.AddRange(Name("_BBN", [ZeroOp]));
        body.AddRange(Name("_CRS", Buffer(ResourceTemplate(mmioEnd))));
        body.AddRange(Name("_PRT", RoutingTable()));
        var dev = new List<byte> { ExtOpPrefix, DeviceOp };
        dev.AddRange(PkgLength(body.Count));
        dev.AddRange(body);
        return dev.ToArray();
    }

    /// <summary>
    /// <c>Device (FWCF) { Name (_HID, "QEMU0002") Name (_STA, 0x0B) Name (_CRS, ResourceTemplate () { IO (Decode16,
    /// 0x510, 0x510, 1, 12) }) }</c>, as QEMU declares fw_cfg (hw/nvram/fw_cfg-acpi): Linux's qemu_fw_cfg module binds
    /// to it and shows the files under /sys/firmware/qemu_fw_cfg (how a guest reads `--fw-cfg name=opt/...`).
    /// The 12 ports cover the selector, data and the DMA address register at 0x514.
    /// </summary>
    public static byte[] FwCfgDevice()
    {
        var body = new List<byte>();
        body.AddRange("FWCF"u8.ToArray());
        body.AddRange(Name("_HID", [StringPrefix, .. "QEMU0002"u8.ToArray(), 0]));
        body.AddRange(Name("_STA", [BytePrefix, 0x0B])); // present, enabled, functioning; not shown in UI
        byte[] crs = [0x47, 0x01, 0x10, 0x05, 0x10, 0x05, 0x01, 0x0C, 0x79, 0x00]; // IO (Decode16, 0x510, 0x510, 1, 12), end tag
        body.AddRange(Name("_CRS", Buffer(crs)));
        var dev = new List<byte> { ExtOpPrefix, DeviceOp };
        dev.AddRange(PkgLength(body.Count));
        dev.AddRange(body);
        return dev.ToArray();
    }

    /// <summary>AML PkgLength (ACPI 6.4 §20.2.4): the length counts its own encoding bytes.</summary>
    internal static byte[] PkgLength(int payload)
    {
        if (payload + 1 < 0x40) return [(byte)(payload + 1)];
        for (int extra = 1; extra <= 3; extra++)
        {
            int total = payload + 1 + extra;
            if (total < 1 << (4 + 8 * extra))
            {
                var b = new byte[1 + extra];
                b[0] = (byte)((extra << 6) | (total & 0xF));
                for (int i = 1; i <= extra; i++) b[i] = (byte)(total >> (4 + 8 * (i - 1)));
                return b;
            }
        }
        throw new ArgumentOutOfRangeException(nameof(payload));
    }

    private static byte[] Name(string seg, byte[] value) => [NameOp, .. System.Text.Encoding.ASCII.GetBytes(seg), .. value];

    private static byte[] DWord(uint v) => [DWordPrefix, (byte)v, (byte)(v >> 8), (byte)(v >> 16), (byte)(v >> 24)];

    private static byte[] Integer(uint v) => v switch
    {
        0 => [ZeroOp],
        1 => [OneOp],
        <= 0xFF => [BytePrefix, (byte)v],
        <= 0xFFFF => [WordPrefix, (byte)v, (byte)(v >> 8)],
        _ => DWord(v),
    };

    private static byte[] Buffer(byte[] data)
    {
        var inner = new List<byte>(Integer((uint)data.Length));
        inner.AddRange(data);
        return [BufferOp, .. PkgLength(inner.Count), .. inner];
    }

    private static byte[] Package(IReadOnlyList<byte[]> elements)
    {
        var inner = new List<byte> { (byte)elements.Count };
        foreach (var e in elements) inner.AddRange(e);
        return [PackageOp, .. PkgLength(inner.Count), .. inner];
    }

    // Resource descriptors (ACPI 6.4 §6.4): producer, MinFixed|MaxFixed, positive decode.
    private const byte AddressFlags = 0x0C;

    private static void WordAddress(List<byte> r, byte type, byte typeFlags, ushort min, ushort max)
    {
        r.AddRange([0x88, 0x0D, 0x00, type, AddressFlags, typeFlags, 0, 0]);
        foreach (ushort v in new[] { min, max, (ushort)0, (ushort)(max - min + 1) }) r.AddRange([(byte)v, (byte)(v >> 8)]);
    }

    private static void DWordMemory(List<byte> r, byte typeFlags, uint min, uint max)
    {
        r.AddRange([0x87, 0x17, 0x00, 0 /* memory */, AddressFlags, typeFlags]);
        foreach (uint v in new[] { 0u, min, max, 0u, max - min + 1 }) r.AddRange([(byte)v, (byte)(v >> 8), (byte)(v >> 16), (byte)(v >> 24)]);
    }

    internal static byte[] ResourceTemplate(uint mmioEnd = (uint)(PcPlatform.PciMmioBase + PcPlatform.PciMmioSize - 1))
    {
        var r = new List<byte>();
        WordAddress(r, 2 /* bus number range */, 0, 0x00, 0xFF);
        r.AddRange([0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]); // IO (Decode16, 0xCF8, 0xCF8, 1, 8)
        WordAddress(r, 1 /* I/O */, 0x03 /* entire range */, 0x0000, 0x0CF7);
        WordAddress(r, 1, 0x03, 0x0D00, 0xFFFF);
        DWordMemory(r, 0x03 /* cacheable, read-write */, 0x000A_0000, 0x000B_FFFF);
        DWordMemory(r, 0x01 /* non-cacheable, read-write */, (uint)PcPlatform.PciMmioBase, mmioEnd);
        r.AddRange([0x79, 0x00]); // end tag, checksum 0 (= not checked)
        return r.ToArray();
    }

    /// <summary>Package of { 0xSSSSFFFF, pin, 0, GSI } for slots 0..31, pins 0..3 (INTA..INTD).</summary>
    internal static byte[] RoutingTable()
    {
        var entries = new List<byte[]>();
        for (int slot = 0; slot < 32; slot++)
            for (int pin = 0; pin < 4; pin++)
                entries.Add(Package([DWord((uint)(slot << 16) | 0xFFFF), Integer((uint)pin), [ZeroOp], Integer((uint)Gsi(slot, pin + 1))]));
        return Package(entries);
    }

    /// <summary>GSI of INTx pin <paramref name="pin"/> (1 = INTA) of <paramref name="slot"/>; the same swizzle as the PCI bus.</summary>
    public static int Gsi(int slot, int pin) => PcPlatform.PciFirstGsi + ((slot + pin - 1) & (PcPlatform.PciGsiCount - 1));
}
