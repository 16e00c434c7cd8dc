using System.Text;
using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Firmware;

/// <summary>
/// What a QEMU-like PC gives SeaBIOS through <see cref="FwCfg"/> (SeaBIOS src/fw/paravirt.c reads these): RAM size,
/// CPU count, "no graphics" (SeaBIOS then talks on COM1: its sercon), the e820 RAM map, the boot order, and the ACPI
/// tables through the table loader. SMBIOS is left to SeaBIOS's own defaults (no etc/smbios files).
/// </summary>
public static class BiosConfig
{
    /// <summary>Debian's SeaBIOS build for QEMU's PC (package seabios).</summary>
    public const string DefaultBiosPath = "/usr/share/seabios/bios-256k.bin", BiosPackage = "seabios";

    /// <summary>QEMU's device path for the virtio-blk function in <paramref name="slot"/> (SeaBIOS globs /pci@i0cf8/*@SLOT).</summary>
    public static string DiskPath(int slot) => $"/pci@i0cf8/scsi@{slot:x}/disk@0,0";

    /// <param name="bootPaths">Device paths in boot order (<see cref="DiskPath"/>); empty: SeaBIOS's default order.</param>
    /// <param name="userFiles">Files under opt/ the user adds (QEMU's -fw_cfg), after ours.</param>
    public static FwCfg Create(GuestMemory mem, int cpuCount, IReadOnlyList<string> bootPaths, IReadOnlyList<(string Name, byte[] Data)>? userFiles = null)
    {
        var fw = new FwCfg(mem);
        fw.AddItem(FwCfg.Uuid, new byte[16]);
        fw.AddItem(FwCfg.RamSize, FwCfg.Le64(mem.RamSize));
        fw.AddItem(FwCfg.NoGraphic, FwCfg.Le16(1));
        fw.AddItem(FwCfg.NbCpus, FwCfg.Le16((ushort)cpuCount));
        fw.AddItem(FwCfg.MaxCpus, FwCfg.Le16((ushort)cpuCount));
        // No NUMA: a zero node count, then the (zero) node of each possible CPU.
        fw.AddItem(FwCfg.Numa, new byte[8 + 8 * cpuCount]);
        fw.AddItem(FwCfg.BootMenu, FwCfg.Le16(0));
        fw.AddItem(FwCfg.AcpiTablesKey, FwCfg.Le16(0));
        fw.AddItem(FwCfg.SmbiosEntries, FwCfg.Le16(0));
        // The PIT is on IOAPIC pin 2 (the MADT's interrupt source override), as SeaBIOS's MP table then says.
        fw.AddItem(FwCfg.Irq0Override, FwCfg.Le32(1));
        fw.AddItem(FwCfg.E820Table, FwCfg.Le32(0));

        fw.AddFile("etc/e820", E820(mem));
        fw.AddFile("etc/sercon-port", FwCfg.Le16(PcPlatform.Com1Port));
        if (bootPaths.Count > 0) fw.AddFile("bootorder", Encoding.ASCII.GetBytes(string.Join('\n', bootPaths) + "\0"));
        var acpi = AcpiTableLoader.Build(cpuCount);
        fw.AddFile(AcpiTableLoader.TablesFile, acpi.Tables);
        fw.AddFile(AcpiTableLoader.RsdpFile, acpi.Rsdp);
        fw.AddFile(AcpiTableLoader.LoaderFile, acpi.Loader);
        foreach (var (name, data) in userFiles ?? [])
        {
            if (!name.StartsWith("opt/", StringComparison.Ordinal)) throw new ArgumentException($"fw_cfg file '{name}': user files live under opt/");
            fw.AddFile(name, data);
        }
        return fw;
    }

    /// <summary>etc/e820: packed { u64 address; u64 length; u32 type } per RAM region (SeaBIOS reserves its own areas).</summary>
    public static byte[] E820(GuestMemory mem)
    {
        var b = new byte[20 * mem.Regions.Count];
        for (int i = 0; i < mem.Regions.Count; i++)
        {
            var r = mem.Regions[i];
            BitConverter.TryWriteBytes(b.AsSpan(20 * i), r.GuestBase);
            BitConverter.TryWriteBytes(b.AsSpan(20 * i + 8), r.Size);
            BitConverter.TryWriteBytes(b.AsSpan(20 * i + 16), 1u); // E820_RAM
        }
        return b;
    }
}
