using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>Format probing, raw images, read-only opens, `disk info` text and the size syntax.</summary>
public class DiskImageTests
{
    [Fact]
    public void ProbingOpensQcow2AsQcow2AndRawOnlyWhenAskedFor()
    {
        using var dir = new TempDir();
        Qcow2Disk.Create(dir["q.qcow2"], 3 << 20);
        using (var probed = DiskImage.Open(dir["q.qcow2"], null, readOnly: true))
        {
            Assert.IsType<Qcow2Disk>(probed);
            Assert.Equal(3 << 20, probed.Size);
        }
        // Explicit raw: the guest sees the qcow2 file's bytes, magic first.
        using (var raw = DiskImage.Open(dir["q.qcow2"], "raw", readOnly: true))
        {
            Assert.IsType<RawDisk>(raw);
            var magic = new byte[4];
            raw.Read(0, magic);
            Assert.Equal(new byte[] { (byte)'Q', (byte)'F', (byte)'I', 0xFB }, magic);
        }
        File.WriteAllBytes(dir["plain.img"], new byte[8192]);
        using (var plain = DiskImage.Open(dir["plain.img"], null, readOnly: true)) Assert.IsType<RawDisk>(plain);
        Assert.Equal("raw", DiskImage.Probe(dir["plain.img"]));
        Assert.Equal("qcow2", DiskImage.Probe(dir["q.qcow2"]));
    }

    [Fact]
    public void OtherImageFormatsAreNotProbedAsRaw()
    {
        using var dir = new TempDir();
        var vmdk = new byte[4096];
        "KDMV"u8.CopyTo(vmdk);
        File.WriteAllBytes(dir["x.vmdk"], vmdk);
        var e = Assert.Throws<BlockDeviceException>(() => DiskImage.Open(dir["x.vmdk"], null, readOnly: true));
        Assert.Contains("looks like a VMDK image", e.Message);
        using (var raw = DiskImage.Open(dir["x.vmdk"], "raw", readOnly: true)) Assert.Equal(4096, raw.Size);
        Assert.Contains("unsupported disk format 'vmdk'", Assert.Throws<BlockDeviceException>(() => DiskImage.Open(dir["x.vmdk"], "vmdk", true)).Message);
    }

    [Fact]
    public void ReadOnlyOpenNeverWritesEvenADirtyImageWithABacking()
    {
        using var dir = new TempDir();
        var rng = new Random(4);
        var baseData = new byte[1 << 20];
        rng.NextBytes(baseData);
        File.WriteAllBytes(dir["b.raw"], baseData);
        Qcow2Disk.Create(dir["o.qcow2"], 2 << 20, "b.raw");
        using (var w = Qcow2Disk.Open(dir["o.qcow2"], readOnly: false)) w.Write(1000, new byte[] { 9, 9, 9 });
        // Mark it dirty by hand, as a killed writer would leave it.
        var bytes = File.ReadAllBytes(dir["o.qcow2"]);
        bytes[79] |= 1;
        File.WriteAllBytes(dir["o.qcow2"], bytes);
        string before = FileHash.Of(dir["o.qcow2"]), baseBefore = FileHash.Of(dir["b.raw"]);
        var stamp = File.GetLastWriteTimeUtc(dir["o.qcow2"]);

        using (var d = Qcow2Disk.Open(dir["o.qcow2"], readOnly: true))
        {
            Assert.True(d.WasDirty);
            Assert.True(d.ReadOnly);
            var all = new byte[d.Size];
            d.Read(0, all);
            Assert.Equal(new byte[] { 9, 9, 9 }, all[1000..1003]);
            Assert.Equal(baseData[1003..], all[1003..(1 << 20)]);
            Assert.All(all[(1 << 20)..], b => Assert.Equal(0, b));
            Assert.Contains("read-only", Assert.Throws<BlockDeviceException>(() => d.Write(0, new byte[1])).Message);
            Assert.Throws<BlockDeviceException>(() => d.WriteZeroes(0, 512));
            Assert.Throws<BlockDeviceException>(() => d.Discard(0, 65536));
            d.Flush();
        }
        Assert.Equal(before, FileHash.Of(dir["o.qcow2"]));
        Assert.Equal(baseBefore, FileHash.Of(dir["b.raw"]));
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(dir["o.qcow2"]));
    }

    [Fact]
    public void DirtyBitIsSetWhileOpenForWritingAndClearedOnDispose()
    {
        using var dir = new TempDir();
        Qcow2Disk.Create(dir["d.qcow2"], 1 << 20);
        bool Dirty()
        {
            using var f = new FileStream(dir["d.qcow2"], FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var h = new byte[80];
            f.ReadExactly(h);
            return (h[79] & 1) != 0;
        }
        Assert.False(Dirty());
        var d = Qcow2Disk.Open(dir["d.qcow2"], readOnly: false);
        try
        {
            // Read the header with a raw descriptor: .NET's advisory lock would refuse a second managed open.
            var bytes = ReadWithCat(dir["d.qcow2"]);
            Assert.Equal(1, bytes[79] & 1);
        }
        finally { d.Dispose(); }
        Assert.False(Dirty());
    }

    private static byte[] ReadWithCat(string path)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("head", ["-c", "128", path]) { RedirectStandardOutput = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        using var ms = new MemoryStream();
        p.StandardOutput.BaseStream.CopyTo(ms);
        p.WaitForExit();
        return ms.ToArray();
    }

    [Fact]
    public void AutoclearBitsAreClearedByAWriterOnly()
    {
        using var dir = new TempDir();
        Qcow2Disk.Create(dir["a.qcow2"], 1 << 20);
        var bytes = File.ReadAllBytes(dir["a.qcow2"]);
        bytes[95] = 0x03; // bitmaps + raw external data: both stale once someone writes without knowing them
        File.WriteAllBytes(dir["a.qcow2"], bytes);
        using (Qcow2Disk.Open(dir["a.qcow2"], readOnly: true)) { }
        Assert.Equal(0x03, File.ReadAllBytes(dir["a.qcow2"])[95]);
        using (Qcow2Disk.Open(dir["a.qcow2"], readOnly: false)) { }
        Assert.Equal(0, File.ReadAllBytes(dir["a.qcow2"])[95]);
    }

    [Fact]
    public void RawImagesReadWriteAndCreate()
    {
        using var dir = new TempDir();
        DiskImage.Create(dir["r.img"], "raw", 1 << 20);
        Assert.Equal(1 << 20, new FileInfo(dir["r.img"]).Length);
        using (var d = DiskImage.Open(dir["r.img"], null, readOnly: false))
        {
            d.Write(4095, new byte[] { 1, 2 });
            d.WriteZeroes(4096, 1);
        }
        var bytes = File.ReadAllBytes(dir["r.img"]);
        Assert.Equal(1, bytes[4095]);
        Assert.Equal(0, bytes[4096]);
        Assert.Contains("cannot have a backing file", Assert.Throws<BlockDeviceException>(() => DiskImage.Create(dir["x.img"], "raw", 1, "r.img")).Message);
        Assert.Contains("cannot create", Assert.Throws<BlockDeviceException>(() => DiskImage.Create(dir["r.img"], "raw", 1)).Message);
    }

    [Fact]
    public void InfoDescribesFormatSizeChainDirtyAndAllocation()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["base.raw"], new byte[2 << 20]);
        Qcow2Disk.Create(dir["mid.qcow2"], 2 << 20, "base.raw");
        Qcow2Disk.Create(dir["top.qcow2"], 4L << 30, "mid.qcow2", null, clusterBits: 12);
        using (var d = Qcow2Disk.Open(dir["top.qcow2"], readOnly: false)) d.Write(0, new byte[5000]);
        string text = DiskInfo.Describe(dir["top.qcow2"]);
        Assert.Contains("format:       qcow2 (version 3)", text);
        Assert.Contains("virtual size: 4 GiB (4294967296 bytes)", text);
        Assert.Contains("cluster size: 4096", text);
        Assert.Contains("dirty:        no", text);
        Assert.Contains("allocated:    8 KiB (8192 bytes of data in this image", text);
        Assert.Contains("backing file: mid.qcow2 (qcow2)", text);
        Assert.Matches(@"chain: +top\.qcow2 \(qcow2\) -> .*mid\.qcow2 \(qcow2, 2 MiB\) -> .*base\.raw \(raw, 2 MiB\)", text);
        Assert.Contains("format:       raw", DiskInfo.Describe(dir["base.raw"]));
    }

    [Theory]
    [InlineData("8G", 8L << 30)]
    [InlineData("512M", 512L << 20)]
    [InlineData("100k", 100L << 10)]
    [InlineData("1048576", 1048576)]
    [InlineData("2GiB", 2L << 30)]
    [InlineData("3MB", 3L << 20)]
    [InlineData("1T", 1L << 40)]
    public void SizesParse(string text, long expected) => Assert.Equal(expected, DiskInfo.ParseSize(text));

    [Theory]
    [InlineData("8X")]
    [InlineData("")]
    [InlineData("-1G")]
    [InlineData("1.5G")]
    [InlineData("99999999999P")]
    public void BadSizesAreRejected(string text) => Assert.Throws<FormatException>(() => DiskInfo.ParseSize(text));
}
