using System.Buffers.Binary;
using System.Text;

namespace Dirigent.Devices.Firmware;

/// <summary>
/// The ACPI tables of <see cref="AcpiTables"/> as QEMU hands them to firmware through fw_cfg: the tables back to
/// back in <c>etc/acpi/tables</c>, the RSDP in <c>etc/acpi/rsdp</c>, and <c>etc/table-loader</c>, the BIOS linker's
/// script (QEMU hw/acpi/bios-linker-loader.c; SeaBIOS src/fw/romfile_loader.c): 128-byte commands to allocate each
/// file (tables in high memory, the RSDP in the F segment where guests scan for it), add each file's final address
/// to the pointers that hold offsets into it, and fix the checksums afterwards.
/// </summary>
public static class AcpiTableLoader
{
    public const string TablesFile = "etc/acpi/tables", RsdpFile = "etc/acpi/rsdp", LoaderFile = "etc/table-loader";
    public const uint CmdAllocate = 1, CmdAddPointer = 2, CmdAddChecksum = 3;
    public const byte ZoneHigh = 1, ZoneFseg = 2;
    public const int EntrySize = 128, FileNameSize = 56;

    /// <summary>The last byte of the PCI BAR window the DSDT gives under firmware: SeaBIOS allocates BARs downwards
    /// from the IOAPIC (its pcimem_end, 0xFEC00000).</summary>
    public const uint FirmwarePciMmioEnd = 0xFEBF_FFFF;

    public sealed record Files(byte[] Tables, byte[] Rsdp, byte[] Loader);

    public static Files Build(int cpuCount)
    {
        if (cpuCount < 1 || cpuCount > 255) throw new ArgumentOutOfRangeException(nameof(cpuCount), "1..255 vCPUs");
        var blob = new List<byte>();
        int Place(byte[] table, int align)
        {
            while (blob.Count % align != 0) blob.Add(0);
            int at = blob.Count;
            blob.AddRange(table);
            return at;
        }
        // Pointers hold offsets into etc/acpi/tables; the loader adds its address.
        int facs = Place(AcpiTables.BuildFacs(), 64);
        int dsdt = Place(AcpiTables.BuildDsdt(FirmwarePciMmioEnd, fwCfg: true), 16);
        int fadt = Place(AcpiTables.BuildFadt((ulong)dsdt, (ulong)facs), 16);
        int madt = Place(AcpiTables.BuildMadt(cpuCount), 16);
        int rsdt = Place(AcpiTables.BuildRsdt([(ulong)fadt, (ulong)madt], wide: false), 16);
        int xsdt = Place(AcpiTables.BuildRsdt([(ulong)fadt, (ulong)madt], wide: true), 16);
        byte[] tables = blob.ToArray();
        byte[] rsdp = AcpiTables.BuildRsdp((ulong)rsdt, (ulong)xsdt);

        var loader = new List<byte[]>
        {
            Allocate(RsdpFile, 16, ZoneFseg),
            Allocate(TablesFile, 64, ZoneHigh),
            AddPointer(TablesFile, TablesFile, (uint)fadt + 36, 4),   // FADT.FIRMWARE_CTRL → FACS
            AddPointer(TablesFile, TablesFile, (uint)fadt + 40, 4),   // FADT.DSDT
            AddPointer(TablesFile, TablesFile, (uint)fadt + 140, 8),  // FADT.X_DSDT
            AddPointer(TablesFile, TablesFile, (uint)rsdt + 36, 4),   // RSDT entries
            AddPointer(TablesFile, TablesFile, (uint)rsdt + 40, 4),
            AddPointer(TablesFile, TablesFile, (uint)xsdt + 36, 8),   // XSDT entries
            AddPointer(TablesFile, TablesFile, (uint)xsdt + 44, 8),
            AddPointer(RsdpFile, TablesFile, 16, 4),                  // RSDP.RsdtAddress
            AddPointer(RsdpFile, TablesFile, 24, 8),                  // RSDP.XsdtAddress
        };
        foreach (int t in new[] { dsdt, fadt, madt, rsdt, xsdt })
            loader.Add(AddChecksum(TablesFile, (uint)t + 9, (uint)t, BinaryPrimitives.ReadUInt32LittleEndian(tables.AsSpan(t + 4))));
        loader.Add(AddChecksum(RsdpFile, 8, 0, 20));   // ACPI 1.0 checksum first: the extended one covers it
        loader.Add(AddChecksum(RsdpFile, 32, 0, (uint)rsdp.Length));
        return new Files(tables, rsdp, loader.SelectMany(e => e).ToArray());
    }

    private static byte[] Entry(uint command, out Span<byte> body)
    {
        var e = new byte[EntrySize];
        BinaryPrimitives.WriteUInt32LittleEndian(e, command);
        body = e.AsSpan(4);
        return e;
    }

    private static void Name(Span<byte> dst, string file) => Encoding.ASCII.GetBytes(file, dst[..FileNameSize]);

    public static byte[] Allocate(string file, uint align, byte zone)
    {
        var e = Entry(CmdAllocate, out var b);
        Name(b, file);
        BinaryPrimitives.WriteUInt32LittleEndian(b[FileNameSize..], align);
        b[FileNameSize + 4] = zone;
        return e;
    }

    public static byte[] AddPointer(string dest, string src, uint offset, byte size)
    {
        var e = Entry(CmdAddPointer, out var b);
        Name(b, dest);
        Name(b[FileNameSize..], src);
        BinaryPrimitives.WriteUInt32LittleEndian(b[(2 * FileNameSize)..], offset);
        b[2 * FileNameSize + 4] = size;
        return e;
    }

    public static byte[] AddChecksum(string file, uint offset, uint start, uint length)
    {
        var e = Entry(CmdAddChecksum, out var b);
        Name(b, file);
        BinaryPrimitives.WriteUInt32LittleEndian(b[FileNameSize..], offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b[(FileNameSize + 4)..], start);
        BinaryPrimitives.WriteUInt32LittleEndian(b[(FileNameSize + 8)..], length);
        return e;
    }
}
