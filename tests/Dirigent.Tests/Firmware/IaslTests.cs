using Dirigent.Devices.Firmware;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Firmware;

/// <summary>The ACPICA disassembler must accept every table we write (it checks lengths, checksums, field values, AML).</summary>
public class IaslTests
{
    [Fact]
    public void IaslDisassemblesEveryTableWithoutErrors()
    {
        string iasl = RequiredTool.Find("iasl", "acpica-tools");
        using var mem = new GuestMemory(32 << 20);
        PcFirmware.WriteTables(mem, 2);
        var tables = FirmwareTableTests.Tables(mem);
        tables["DSDT"] = mem.ReadU64(tables["FACP"] + 140);
        tables["FACS"] = mem.ReadU32(tables["FACP"] + 36);
        tables["RSDT"] = mem.ReadU32(AcpiTables.RsdpAddress + 16);
        tables["XSDT"] = mem.ReadU64(AcpiTables.RsdpAddress + 24);
        string dir = Directory.CreateTempSubdirectory("dirigent-iasl").FullName;
        try
        {
            foreach (var (sig, addr) in tables)
            {
                var b = new byte[mem.ReadU32(addr + 4)];
                mem.Read(addr, b);
                File.WriteAllBytes(Path.Combine(dir, sig.ToLowerInvariant() + ".dat"), b);
                var (rc, output) = RequiredTool.Run(iasl, ["-d", sig.ToLowerInvariant() + ".dat"], dir);
                Assert.True(rc == 0, $"iasl -d {sig} failed (rc {rc}): {output}");
                string dsl = File.ReadAllText(Path.Combine(dir, sig.ToLowerInvariant() + ".dsl"));
                Assert.DoesNotContain("Invalid", dsl);
                Assert.DoesNotContain("Incorrect", dsl); // e.g. "Incorrect checksum"
                Assert.DoesNotContain("Error", output);
                if (sig == "DSDT")
                {
                    Assert.Contains("Name (\\_S5, Package (0x04)", dsl);
                    // The PCI host bridge Linux scans (with ACPI it ignores buses the DSDT does not declare).
                    Assert.Contains("Device (PCI0)", dsl);
                    Assert.Contains("EisaId (\"PNP0A03\")", dsl);
                    Assert.Contains("0xE0000000,         // Range Minimum", dsl);
                    Assert.Contains("0xEFFFFFFF,         // Range Maximum", dsl);
                    Assert.Contains("Name (_PRT, Package (0x80)", dsl);
                    // The disassembled source must compile back.
                    var (crc, cout) = RequiredTool.Run(iasl, ["-p", "recompiled", "dsdt.dsl"], dir);
                    Assert.True(crc == 0, $"iasl could not recompile the DSDT: {cout}");
                }
            }
        }
        finally { if (Environment.GetEnvironmentVariable("DIRIGENT_KEEP_IASL") == null) Directory.Delete(dir, recursive: true); }
    }

    /// <summary>Firmware boot's DSDT (handed over in etc/acpi/tables) also declares fw_cfg as QEMU does, so Linux's
    /// qemu_fw_cfg driver binds to it: _HID "QEMU0002" and the ports 0x510..0x51B (selector, data, DMA address).</summary>
    [Fact]
    public void FirmwareDsdtDeclaresFwCfgAsQemuDoes()
    {
        string iasl = RequiredTool.Find("iasl", "acpica-tools");
        var files = AcpiTableLoader.Build(1);
        int at = -1;
        for (int i = 0; i + 4 <= files.Tables.Length; i += 16)
            if (files.Tables.AsSpan(i, 4).SequenceEqual("DSDT"u8)) { at = i; break; }
        Assert.True(at >= 0, "no DSDT in etc/acpi/tables");
        int len = BitConverter.ToInt32(files.Tables, at + 4);
        string dir = Directory.CreateTempSubdirectory("dirigent-iasl").FullName;
        try
        {
            File.WriteAllBytes(Path.Combine(dir, "dsdt.dat"), files.Tables.AsSpan(at, len).ToArray());
            var (rc, output) = RequiredTool.Run(iasl, ["-d", "dsdt.dat"], dir);
            Assert.True(rc == 0, $"iasl -d failed (rc {rc}): {output}");
            string dsl = File.ReadAllText(Path.Combine(dir, "dsdt.dsl"));
            Assert.Contains("Device (FWCF)", dsl);
            Assert.Contains("Name (_HID, \"QEMU0002\")", dsl);
            Assert.Contains("Name (_STA, 0x0B)", dsl);
            Assert.Matches(@"IO \(Decode16,\s*0x0510,\s*// Range Minimum\s*0x0510,\s*// Range Maximum\s*0x01,\s*// Alignment\s*0x0C,", dsl);
            Assert.Contains("Device (PCI0)", dsl);
            var (crc, cout) = RequiredTool.Run(iasl, ["-p", "recompiled", "dsdt.dsl"], dir);
            Assert.True(crc == 0, $"iasl could not recompile the DSDT: {cout}");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
