using System.Buffers.Binary;
using System.Text;
using Dirigent.Devices.Firmware;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Firmware;

/// <summary>
/// QEMU's fw_cfg interface as SeaBIOS drives it (docs/specs/fw_cfg.txt): the selector and byte-wide data port, the
/// file directory, and the DMA interface, including DMA requests that point outside guest RAM.
/// </summary>
public class FwCfgTests : IDisposable
{
    private readonly GuestMemory _mem = new(16 << 20);
    private readonly IoBus _io = new();
    private readonly FwCfg _fw;

    public FwCfgTests()
    {
        _fw = BiosConfig.Create(_mem, 2, [BiosConfig.DiskPath(2)], [("opt/org.dirigent/hostname", "web-1"u8.ToArray())]);
        _io.Register(FwCfg.BasePort, FwCfg.PortCount, _fw);
    }

    public void Dispose() => _mem.Dispose();

    private byte[] ReadPort(ushort key, int length)
    {
        _io.Write(0x510, 2, key);
        var b = new byte[length];
        for (int k = 0; k < length; k++) b[k] = (byte)_io.Read(0x511, 1);
        return b;
    }

    /// <summary>One FWCfgDmaAccess at <paramref name="at"/>, started by writing its address (big-endian) to 0x518.</summary>
    private uint Dma(ulong at, uint control, uint length, ulong address, ulong high = 0)
    {
        if (_mem.IsRam(at, 16))
        {
            var a = new byte[16];
            BinaryPrimitives.WriteUInt32BigEndian(a, control);
            BinaryPrimitives.WriteUInt32BigEndian(a.AsSpan(4), length);
            BinaryPrimitives.WriteUInt64BigEndian(a.AsSpan(8), address);
            _mem.Write(at, a);
        }
        if (high != 0) _io.Write(0x514, 4, BinaryPrimitives.ReverseEndianness((uint)high));
        _io.Write(0x518, 4, BinaryPrimitives.ReverseEndianness((uint)at));
        return _mem.IsRam(at, 4) ? BinaryPrimitives.ReadUInt32BigEndian(BitConverter.GetBytes(_mem.ReadU32(at))) : uint.MaxValue;
    }

    [Fact]
    public void SignatureIdAndDmaSignatureAreWhatSeaBiosProbes()
    {
        Assert.Equal("QEMU"u8.ToArray(), ReadPort(FwCfg.Signature, 4));
        uint id = BinaryPrimitives.ReadUInt32LittleEndian(ReadPort(FwCfg.Id, 4));
        Assert.Equal(FwCfg.IdTraditional | FwCfg.IdDma, id);
        // The DMA address register reads as the big-endian 64-bit "QEMU CFG".
        var sig = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(sig, _io.Read(0x514, 4));
        BinaryPrimitives.WriteUInt32LittleEndian(sig.AsSpan(4), _io.Read(0x518, 4));
        Assert.Equal("QEMU CFG", Encoding.ASCII.GetString(sig));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(ReadPort(FwCfg.NbCpus, 2)));
        Assert.Equal(16UL << 20, BinaryPrimitives.ReadUInt64LittleEndian(ReadPort(FwCfg.RamSize, 8)));
    }

    [Fact]
    public void TheFileDirectoryListsEachFileWithItsSizeAndSelectorAndTheDataPortStreamsIt()
    {
        var countBytes = ReadPort(FwCfg.FileDir, 4);
        int count = (int)BinaryPrimitives.ReadUInt32BigEndian(countBytes);
        var dir = ReadPort(FwCfg.FileDir, 4 + 64 * count).AsSpan(4);
        var files = new Dictionary<string, (uint Size, ushort Key)>();
        for (int i = 0; i < count; i++)
        {
            var e = dir.Slice(64 * i, 64);
            string name = Encoding.ASCII.GetString(e[8..]).TrimEnd('\0');
            files[name] = (BinaryPrimitives.ReadUInt32BigEndian(e), BinaryPrimitives.ReadUInt16BigEndian(e[4..]));
        }
        foreach (var n in new[] { "etc/e820", "bootorder", "etc/table-loader", "etc/acpi/tables", "etc/acpi/rsdp", "etc/sercon-port" })
            Assert.True(files.ContainsKey(n), $"{n} missing from the directory: {string.Join(", ", files.Keys)}");
        // A user file (--fw-cfg name=opt/...) is listed and read like ours: how the guest's qemu_fw_cfg driver sees it.
        Assert.Equal("web-1", Encoding.ASCII.GetString(ReadPort(files["opt/org.dirigent/hostname"].Key, (int)files["opt/org.dirigent/hostname"].Size)));
        var (size, key) = files["bootorder"];
        Assert.Equal("/pci@i0cf8/scsi@2/disk@0,0\0", Encoding.ASCII.GetString(ReadPort(key, (int)size)));
        // etc/e820: one RAM entry covering all 16 MiB.
        var e820 = ReadPort(files["etc/e820"].Key, (int)files["etc/e820"].Size);
        Assert.Equal(20, e820.Length);
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(e820));
        Assert.Equal(16UL << 20, BinaryPrimitives.ReadUInt64LittleEndian(e820.AsSpan(8)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(e820.AsSpan(16)));
        // The loader script is whole 128-byte commands.
        Assert.Equal(0u, files["etc/table-loader"].Size % AcpiTableLoader.EntrySize);
    }

    [Fact]
    public void UserFilesMustLiveUnderOpt()
    {
        using var mem = new GuestMemory(16 << 20);
        Assert.Throws<ArgumentException>(() => BiosConfig.Create(mem, 1, [], [("etc/e820", new byte[20])]));
    }

    [Fact]
    public void UnknownSelectorsAndReadsPastTheEndGiveZeros()
    {
        Assert.Equal(new byte[8], ReadPort(0x1234, 8));
        Assert.Equal(new byte[8], ReadPort(0x8077, 8));
        var sig = ReadPort(FwCfg.Signature, 8);
        Assert.Equal("QEMU\0\0\0\0"u8.ToArray(), sig);
    }

    [Fact]
    public void DmaSelectAndReadCopiesTheItemAndClearsTheControlWord()
    {
        uint control = (uint)FwCfg.Signature << 16 | FwCfg.DmaSelect | FwCfg.DmaRead;
        Assert.Equal(0u, Dma(0x1000, control, 6, 0x2000));
        var got = new byte[6];
        _mem.Read(0x2000, got);
        Assert.Equal("QEMU\0\0"u8.ToArray(), got); // zeros past the item's end, as QEMU fills
        // Skip then read continues at the offset.
        Assert.Equal(0u, Dma(0x1000, (uint)FwCfg.Signature << 16 | FwCfg.DmaSelect | FwCfg.DmaSkip, 2, 0));
        Assert.Equal(0u, Dma(0x1000, FwCfg.DmaRead, 2, 0x3000));
        Assert.Equal("MU"u8.ToArray(), new[] { _mem.ReadU8(0x3000), _mem.ReadU8(0x3001) });
    }

    [Fact]
    public void ALargeDmaReadFillsWithZerosPastTheItemWithoutAHostBufferOfThatSize()
    {
        _mem.Write(0x10_0000 + 5, new byte[] { 0xAA, 0xBB });
        _mem.Write(0x10_0000 + (8 << 20) - 1, new byte[] { 0xCC });
        uint control = (uint)FwCfg.Signature << 16 | FwCfg.DmaSelect | FwCfg.DmaRead;
        Assert.Equal(0u, Dma(0x1000, control, 8 << 20, 0x10_0000));
        Assert.Equal("QEMU"u8.ToArray(), new[] { _mem.ReadU8(0x10_0000), _mem.ReadU8(0x10_0001), _mem.ReadU8(0x10_0002), _mem.ReadU8(0x10_0003) });
        Assert.Equal(0, _mem.ReadU16(0x10_0000 + 5));
        Assert.Equal(0, _mem.ReadU8(0x10_0000 + (8 << 20) - 1));
    }

    [Fact]
    public void DmaToAddressesOutsideGuestRamSetsTheErrorBitAndTouchesNothing()
    {
        uint control = (uint)FwCfg.FileDir << 16 | FwCfg.DmaSelect | FwCfg.DmaRead;
        // Buffer beyond RAM, buffer straddling the end of RAM, buffer at a huge 64-bit address, an absurd length.
        Assert.Equal(FwCfg.DmaError, Dma(0x1000, control, 64, 0xFEC0_0000));
        Assert.Equal(FwCfg.DmaError, Dma(0x1000, control, 64, (16 << 20) - 32));
        Assert.Equal(FwCfg.DmaError, Dma(0x1000, control, 64, 0xFFFF_FFFF_FFFF_F000));
        Assert.Equal(FwCfg.DmaError, Dma(0x1000, control, 0xFFFF_FFFF, 0x2000));
        Assert.Equal(0u, _mem.ReadU32((16 << 20) - 32)); // nothing was written before the end of RAM either
        // The access structure itself outside RAM: ignored (there is nowhere to report), no exception.
        Dma(0x2_0000_0000, control, 64, 0x2000, high: 2);
        Dma(0xFFFF_FFF8, control, 64, 0x2000);
        // Writes are refused: nothing in fw_cfg is writable.
        Assert.Equal(FwCfg.DmaError, Dma(0x1000, (uint)FwCfg.Signature << 16 | FwCfg.DmaSelect | FwCfg.DmaWrite, 4, 0x2000));
        Assert.Equal("QEMU"u8.ToArray(), ReadPort(FwCfg.Signature, 4));
    }

    [Fact]
    public void SelectorAndOffsetSurviveSaveAndRestoreAndResetSelectsTheSignature()
    {
        _io.Write(0x510, 2, FwCfg.Signature);
        _io.Read(0x511, 1);
        var saved = _fw.Save();
        _fw.Reset();
        Assert.Equal((uint)'Q', _io.Read(0x511, 1));
        _fw.Restore(saved);
        Assert.Equal((uint)'E', _io.Read(0x511, 1));
    }

    [Fact]
    public void TheTableLoaderAllocatesBothFilesAndPointsTheRsdpAtTheTables()
    {
        var files = AcpiTableLoader.Build(2);
        Assert.Equal("RSD PTR "u8.ToArray(), files.Rsdp.AsSpan(0, 8).ToArray());
        var cmds = Enumerable.Range(0, files.Loader.Length / 128).Select(i => files.Loader.AsSpan(128 * i, 128).ToArray()).ToList();
        Assert.Equal(AcpiTableLoader.CmdAllocate, BinaryPrimitives.ReadUInt32LittleEndian(cmds[0]));
        Assert.Equal(AcpiTableLoader.ZoneFseg, cmds[0][4 + 56 + 4]);
        // Every pointer the RSDP holds is an offset inside etc/acpi/tables, at a table signature.
        uint rsdt = BinaryPrimitives.ReadUInt32LittleEndian(files.Rsdp.AsSpan(16));
        Assert.Equal("RSDT", Encoding.ASCII.GetString(files.Tables, (int)rsdt, 4));
        ulong xsdt = BinaryPrimitives.ReadUInt64LittleEndian(files.Rsdp.AsSpan(24));
        Assert.Equal("XSDT", Encoding.ASCII.GetString(files.Tables, (int)xsdt, 4));
        // Applying the script as SeaBIOS does at some addresses gives tables whose checksums hold.
        Apply(files, tablesAt: 0x1FFF_0000, rsdpAt: 0xF5A40, out var tables, out var rsdp);
        Assert.Equal(0, rsdp.Take(20).Sum(b => b) & 0xFF);
        Assert.Equal(0, rsdp.Sum(b => b) & 0xFF);
        Assert.Equal(0x1FFF_0000u + rsdt, BinaryPrimitives.ReadUInt32LittleEndian(rsdp.AsSpan(16)));
        foreach (int t in new[] { (int)rsdt, (int)xsdt })
        {
            int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(tables.AsSpan(t + 4));
            Assert.Equal(0, tables.Skip(t).Take(len).Sum(b => b) & 0xFF);
        }
    }

    private static void Apply(AcpiTableLoader.Files f, uint tablesAt, uint rsdpAt, out byte[] tables, out byte[] rsdp)
    {
        tables = (byte[])f.Tables.Clone();
        rsdp = (byte[])f.Rsdp.Clone();
        var data = new Dictionary<string, (byte[] Data, uint At)> { [AcpiTableLoader.TablesFile] = (tables, tablesAt), [AcpiTableLoader.RsdpFile] = (rsdp, rsdpAt) };
        string Name(ReadOnlySpan<byte> b) => Encoding.ASCII.GetString(b[..56]).TrimEnd('\0');
        for (int i = 0; i < f.Loader.Length; i += 128)
        {
            var c = f.Loader.AsSpan(i, 128);
            var body = c[4..];
            switch (BinaryPrimitives.ReadUInt32LittleEndian(c))
            {
                case AcpiTableLoader.CmdAddPointer:
                {
                    var dest = data[Name(body)].Data;
                    uint at = data[Name(body[56..])].At;
                    int off = (int)BinaryPrimitives.ReadUInt32LittleEndian(body[112..]);
                    int size = body[116];
                    ulong v = 0;
                    for (int k = 0; k < size; k++) v |= (ulong)dest[off + k] << (8 * k);
                    v += at;
                    for (int k = 0; k < size; k++) dest[off + k] = (byte)(v >> (8 * k));
                    break;
                }
                case AcpiTableLoader.CmdAddChecksum:
                {
                    var d = data[Name(body)].Data;
                    int off = (int)BinaryPrimitives.ReadUInt32LittleEndian(body[56..]);
                    int start = (int)BinaryPrimitives.ReadUInt32LittleEndian(body[60..]);
                    int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(body[64..]);
                    d[off] -= (byte)d.Skip(start).Take(len).Sum(b => b);
                    break;
                }
            }
        }
    }
}
