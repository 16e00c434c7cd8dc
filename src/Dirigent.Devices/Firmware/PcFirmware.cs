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

    /// <summary>BIOS data area words guests read to find the EBDA (Linux: get_bios_ebda, the MP/RSDP scans).</summary>
    public const ulong BdaEbdaSegment = 0x40E, BdaBaseMemoryKiB = 0x413;

    /// <summary>
    /// Writes the BIOS data area's EBDA pointer and base-memory size, and the ACPI and MP tables; returns the RSDP
    /// address (for <see cref="BootOptions.AcpiRsdpAddress"/>).
    /// </summary>
    public static ulong WriteTables(GuestMemory mem, int cpuCount)
    {
        mem.WriteU16(BdaEbdaSegment, (ushort)(PcPlatform.EbdaBase >> 4));
        mem.WriteU16(BdaBaseMemoryKiB, (ushort)(PcPlatform.EbdaBase >> 10));
        mem.WriteU16(PcPlatform.EbdaBase, 1); // EBDA size in KiB (its first word)
        MpTable.Write(mem, cpuCount);
        return AcpiTables.Write(mem, cpuCount);
    }
}
