using Dirigent.Machine.Loaders;
using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Firmware;

/// <summary>What the VMM calls before loading a kernel: the PC memory map and the firmware tables.</summary>
public static class PcFirmware
{
    /// <summary>The e820 map of the PC machine: RAM, the legacy BIOS hole, the IOAPIC and LAPIC pages, high RAM.</summary>
    public static IReadOnlyList<E820Entry> MemoryMap(GuestMemory mem) => Dirigent.Machine.Loaders.MemoryMap.Pc(mem,
        PcPlatform.EbdaBase,
        [
            (PcPlatform.FirmwareTablesBase, PcPlatform.FirmwareTablesSize),
            (PcPlatform.IoApicBase, GuestMemory.PageSize),
            (PcPlatform.LocalApicBase, GuestMemory.PageSize),
        ]);

    /// <summary>Writes the ACPI and MP tables; returns the RSDP address (for <see cref="BootOptions.AcpiRsdpAddress"/>).</summary>
    public static ulong WriteTables(GuestMemory mem, int cpuCount)
    {
        MpTable.Write(mem, cpuCount);
        return AcpiTables.Write(mem, cpuCount);
    }
}
