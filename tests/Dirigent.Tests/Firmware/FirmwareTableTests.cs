using System.Text;
using Dirigent.Devices;
using Dirigent.Devices.Firmware;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Firmware;

/// <summary>Finds and parses the tables the way a guest OS does: scan for the RSDP / MP pointer, follow pointers, verify.</summary>
public class FirmwareTableTests
{
    internal static string Sig(GuestMemory m, ulong a, int n = 4)
    {
        var b = new byte[n];
        m.Read(a, b);
        return Encoding.ASCII.GetString(b);
    }

    internal static byte Sum(GuestMemory m, ulong a, int len)
    {
        var b = new byte[len];
        m.Read(a, b);
        int s = 0;
        foreach (var x in b) s += x;
        return (byte)s;
    }

    /// <summary>Linux's acpi_find_root_pointer: 16-byte steps over 0xE0000..0xFFFFF, signature and checksum must match.</summary>
    internal static ulong ScanRsdp(GuestMemory m)
    {
        for (ulong a = 0xE0000; a < 0x10_0000; a += 16)
            if (Sig(m, a, 8) == "RSD PTR " && Sum(m, a, 20) == 0) return a;
        return 0;
    }

    /// <summary>Table address by signature, through the XSDT (or the RSDT when <paramref name="viaRsdt"/>).</summary>
    internal static Dictionary<string, ulong> Tables(GuestMemory m, bool viaRsdt = false)
    {
        ulong rsdp = ScanRsdp(m);
        ulong sdt = viaRsdt ? m.ReadU32(rsdp + 16) : m.ReadU64(rsdp + 24);
        Assert.Equal(viaRsdt ? "RSDT" : "XSDT", Sig(m, sdt));
        uint len = m.ReadU32(sdt + 4);
        int w = viaRsdt ? 4 : 8;
        var d = new Dictionary<string, ulong>();
        for (ulong p = sdt + 36; p < sdt + len; p += (ulong)w)
        {
            ulong t = viaRsdt ? m.ReadU32(p) : m.ReadU64(p);
            d[Sig(m, t)] = t;
        }
        return d;
    }

    [Fact]
    public void RsdpIsFoundByScanningAndHasValidChecksums()
    {
        using var mem = new GuestMemory(32 << 20);
        ulong rsdp = PcFirmware.WriteTables(mem, 2);
        Assert.Equal(rsdp, ScanRsdp(mem));
        Assert.Equal(0UL, rsdp & 15);
        Assert.Equal(2, mem.ReadU8(rsdp + 15));     // revision 2: XSDT present
        Assert.Equal(36u, mem.ReadU32(rsdp + 20));
        Assert.Equal(0, Sum(mem, rsdp, 36));
        ulong rsdt = mem.ReadU32(rsdp + 16), xsdt = mem.ReadU64(rsdp + 24);
        foreach (var t in new[] { rsdt, xsdt })
        {
            Assert.InRange(t, PcPlatform.FirmwareTablesBase, PcPlatform.FirmwareTablesBase + PcPlatform.FirmwareTablesSize - 1);
            Assert.Equal(0, Sum(mem, t, (int)mem.ReadU32(t + 4)));
        }
        Assert.Equal(Tables(mem).OrderBy(k => k.Key), Tables(mem, viaRsdt: true).OrderBy(k => k.Key));
    }

    [Fact]
    public void BiosDataAreaPointsAtTheEbda()
    {
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 1);
        Assert.Equal(PcPlatform.EbdaBase, (ulong)mem.ReadU16(0x40E) << 4);
        Assert.Equal(639, mem.ReadU16(0x413));
    }

    [Fact]
    public void EveryTableChecksumsAndLiesInTheFirmwareArea()
    {
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 4);
        var t = Tables(mem);
        t["DSDT"] = mem.ReadU64(t["FACP"] + 140);
        Assert.Equal(new[] { "APIC", "DSDT", "FACP" }, t.Keys.Order());
        foreach (var (sig, a) in t)
        {
            uint len = mem.ReadU32(a + 4);
            Assert.True(len >= 36, sig);
            Assert.Equal(0, Sum(mem, a, (int)len));
            Assert.True(a >= PcPlatform.FirmwareTablesBase && a + len <= PcPlatform.FirmwareTablesBase + PcPlatform.FirmwareTablesSize, sig);
            Assert.Equal("DIRIGT", Sig(mem, a + 10, 6));
        }
    }

    [Fact]
    public void FadtDescribesThePmBlockResetRegisterAndDsdt()
    {
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 1);
        ulong f = Tables(mem)["FACP"];
        Assert.Equal(268u, mem.ReadU32(f + 4));
        Assert.Equal(5, mem.ReadU8(f + 8));
        ulong dsdt = mem.ReadU32(f + 40);
        Assert.Equal(dsdt, mem.ReadU64(f + 140));
        Assert.Equal("DSDT", Sig(mem, dsdt));
        ulong facs = mem.ReadU32(f + 36);
        Assert.Equal(0UL, mem.ReadU64(f + 132)); // FIRMWARE_CTRL and X_FIRMWARE_CTRL are exclusive
        Assert.Equal("FACS", Sig(mem, facs));
        Assert.Equal(64u, mem.ReadU32(facs + 4));
        Assert.Equal(0UL, facs & 63);
        Assert.Equal(9, mem.ReadU16(f + 46));                     // SCI_INT
        Assert.Equal(0u, mem.ReadU32(f + 48));                    // SMI_CMD: ACPI always enabled
        Assert.Equal(PcPlatform.AcpiPm1aEvtBlk, (ushort)mem.ReadU32(f + 56));
        Assert.Equal(PcPlatform.AcpiPm1aCntBlk, (ushort)mem.ReadU32(f + 64));
        Assert.Equal(PcPlatform.AcpiPmTmrBlk, (ushort)mem.ReadU32(f + 76));
        Assert.Equal(PcPlatform.AcpiGpe0Blk, (ushort)mem.ReadU32(f + 80));
        Assert.Equal(4, mem.ReadU8(f + 88));
        Assert.Equal(2, mem.ReadU8(f + 89));
        Assert.Equal(4, mem.ReadU8(f + 91));
        Assert.Equal(8, mem.ReadU8(f + 92));
        Assert.Equal(3, mem.ReadU16(f + 109));                    // LEGACY_DEVICES | 8042
        uint flags = mem.ReadU32(f + 112);
        Assert.NotEqual(0u, flags & (1 << 10));                   // RESET_REG_SUP
        Assert.Equal(0u, flags & (1 << 20));                      // not hardware-reduced
        Assert.NotEqual(0u, flags & 1);                           // WBINVD
        Assert.Equal(1, mem.ReadU8(f + 116));                     // RESET_REG in system I/O
        Assert.Equal(PcPlatform.ResetControlPort, mem.ReadU64(f + 120));
        Assert.Equal(6, mem.ReadU8(f + 128));
        Assert.Equal(PcPlatform.AcpiPm1aCntBlk, mem.ReadU64(f + 172 + 4)); // X_PM1a_CNT_BLK address
        Assert.Equal(PcPlatform.AcpiPmTmrBlk, mem.ReadU64(f + 208 + 4));
    }

    [Fact]
    public void MadtListsEachCpuTheIoApicAndOverrides()
    {
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 3);
        ulong a = Tables(mem)["APIC"];
        Assert.Equal(PcPlatform.LocalApicBase, mem.ReadU32(a + 36));
        Assert.Equal(1u, mem.ReadU32(a + 40) & 1);
        uint len = mem.ReadU32(a + 4);
        var cpus = new List<int>();
        var overrides = new Dictionary<int, (uint Gsi, ushort Flags)>();
        bool ioapic = false, nmi = false;
        for (ulong p = a + 44; p < a + len; p += mem.ReadU8(p + 1))
        {
            Assert.True(mem.ReadU8(p + 1) >= 2);
            switch (mem.ReadU8(p))
            {
                case 0:
                    Assert.Equal(1u, mem.ReadU32(p + 4));
                    cpus.Add(mem.ReadU8(p + 3));
                    break;
                case 1:
                    Assert.Equal(PcPlatform.IoApicId, mem.ReadU8(p + 2));
                    Assert.Equal(PcPlatform.IoApicBase, mem.ReadU32(p + 4));
                    Assert.Equal(0u, mem.ReadU32(p + 8));
                    ioapic = true;
                    break;
                case 2:
                    overrides[mem.ReadU8(p + 3)] = (mem.ReadU32(p + 4), mem.ReadU16(p + 8));
                    break;
                case 4:
                    Assert.Equal(0xFF, mem.ReadU8(p + 2));
                    Assert.Equal(1, mem.ReadU8(p + 5));
                    nmi = true;
                    break;
                default:
                    Assert.Fail($"unexpected MADT entry type {mem.ReadU8(p)}");
                    break;
            }
        }
        Assert.Equal(new[] { 0, 1, 2 }, cpus);
        Assert.True(ioapic && nmi);
        Assert.Equal((2u, (ushort)0), overrides[0]);
        Assert.Equal((9u, (ushort)0xD), overrides[9]);
    }

    [Fact]
    public void DsdtAmlDefinesS5Package()
    {
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 1);
        ulong d = mem.ReadU32(Tables(mem)["FACP"] + 40);
        var aml = new byte[mem.ReadU32(d + 4) - 36];
        mem.Read(d + 36, aml);
        int i = aml.AsSpan().IndexOf("\\_S5_"u8);
        Assert.True(i > 0 && aml[i - 1] == 0x08, "NameOp \\_S5_");
        byte typ = (byte)PcPlatform.AcpiS5SlpTyp;
        // PackageOp, PkgLength covering the rest, 4 elements: BytePrefix typ, BytePrefix typ, Zero, Zero
        Assert.Equal(new byte[] { 0x12, 0x08, 0x04, 0x0A, typ, 0x0A, typ, 0x00, 0x00 }, aml[(i + 5)..(i + 14)]);
        Assert.Equal(aml.Length, i + 14);
    }

    [Fact]
    public void MpFloatingPointerIsFoundWhereLinuxScansAndTableIsConsistent()
    {
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 2);
        ulong fp = 0;
        for (ulong a = 0xF0000; a < 0x10_0000 && fp == 0; a += 16)
            if (Sig(mem, a) == "_MP_" && mem.ReadU8(a + 8) == 1 && Sum(mem, a, 16) == 0) fp = a;
        Assert.NotEqual(0UL, fp);
        Assert.Equal(4, mem.ReadU8(fp + 9));
        Assert.Equal(0, mem.ReadU8(fp + 11)); // configuration table present (no default config)
        ulong c = mem.ReadU32(fp + 4);
        Assert.Equal("PCMP", Sig(mem, c));
        int len = mem.ReadU16(c + 4);
        Assert.Equal(0, Sum(mem, c, len));
        Assert.Equal(PcPlatform.LocalApicBase, mem.ReadU32(c + 36));
        int count = mem.ReadU16(c + 34);
        var procs = new List<(int Id, int Flags)>();
        var ioints = new Dictionary<int, int>();
        var lints = new Dictionary<int, int>();
        var buses = new Dictionary<int, string>();
        var pciInts = new Dictionary<int, int>();
        bool ioapic = false;
        ulong p = c + 44;
        for (int n = 0; n < count; n++)
        {
            int type = mem.ReadU8(p);
            switch (type)
            {
                case 0: procs.Add((mem.ReadU8(p + 1), mem.ReadU8(p + 3))); p += 20; break;
                case 1: buses[mem.ReadU8(p + 1)] = Sig(mem, p + 2, 6); p += 8; break;
                case 2: ioapic = mem.ReadU8(p + 1) == PcPlatform.IoApicId && mem.ReadU32(p + 4) == PcPlatform.IoApicBase && (mem.ReadU8(p + 3) & 1) == 1; p += 8; break;
                case 3:
                    Assert.Equal(PcPlatform.IoApicId, mem.ReadU8(p + 6));
                    if (mem.ReadU8(p + 4) == MpTable.PciBusId) pciInts[mem.ReadU8(p + 5)] = mem.ReadU8(p + 7);
                    else ioints[mem.ReadU8(p + 5)] = mem.ReadU8(p + 7);
                    p += 8;
                    break;
                case 4: lints[mem.ReadU8(p + 7)] = mem.ReadU8(p + 1); p += 8; break;
                default: Assert.Fail($"unexpected MP entry type {type}"); break;
            }
        }
        Assert.Equal((int)(p - c), len);
        Assert.Equal(new[] { (0, 3), (1, 1) }, procs); // CPU 0 is the bootstrap processor
        Assert.True(ioapic);
        Assert.Equal("ISA   ", buses[MpTable.IsaBusId]);
        Assert.Equal("PCI   ", buses[MpTable.PciBusId]);
        // PCI INTx: source IRQ slot << 2 | pin, swizzled onto GSI 16..23.
        Assert.Equal(128, pciInts.Count);
        Assert.Equal(16, pciInts[0 << 2 | 0]);
        Assert.Equal(17, pciInts[1 << 2 | 0]);
        Assert.Equal(20, pciInts[1 << 2 | 3]);
        Assert.Equal(16, pciInts[7 << 2 | 1]);
        Assert.Equal(2, ioints[0]);
        Assert.False(ioints.ContainsKey(2));
        Assert.All(Enumerable.Range(1, 15).Where(i => i != 2), i => Assert.Equal(i, ioints[i]));
        Assert.Equal(3, lints[0]); // ExtINT on LINT0
        Assert.Equal(1, lints[1]); // NMI on LINT1
    }
}
