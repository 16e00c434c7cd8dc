using System.Buffers.Binary;
using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>Broken, hostile or unsupported images fail at open with one line that names the problem.</summary>
public class Qcow2ErrorTests
{
    private static string OpenError(string path, string? format = "qcow2", bool readOnly = true)
    {
        var e = Assert.Throws<BlockDeviceException>(() => DiskImage.Open(path, format, readOnly).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    /// <summary>A fresh 1 MiB image (64 KiB clusters) with the header patched by <paramref name="patch"/>.</summary>
    private static string Patched(TempDir dir, Action<byte[]> patch, string name = "p.qcow2")
    {
        string path = dir[name];
        Qcow2Disk.Create(path, 1 << 20);
        var bytes = File.ReadAllBytes(path);
        patch(bytes);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static void U32(byte[] b, int at, uint v) => BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(at), v);
    private static void U64(byte[] b, int at, ulong v) => BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(at), v);

    [Fact]
    public void TruncatedHeader()
    {
        using var dir = new TempDir();
        var b = new byte[50];
        U32(b, 0, 0x514649FB);
        U32(b, 4, 3);
        File.WriteAllBytes(dir["t.qcow2"], b);
        Assert.Contains("truncated qcow2 header", OpenError(dir["t.qcow2"], null));
    }

    [Fact]
    public void BadMagicWhenQcow2IsAskedFor()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["r.img"], new byte[4096]);
        Assert.Contains("not a qcow2 image (bad magic)", OpenError(dir["r.img"], "qcow2"));
    }

    [Theory]
    [InlineData(1u)]
    [InlineData(4u)]
    public void UnsupportedVersion(uint version)
    {
        using var dir = new TempDir();
        Assert.Contains($"unsupported qcow2 version {version}", OpenError(Patched(dir, b => U32(b, 4, version)), null));
    }

    [Fact]
    public void UnknownIncompatibleFeatureIsNamed()
    {
        using var dir = new TempDir();
        Assert.Contains("unsupported incompatible qcow2 features: bit 10", OpenError(Patched(dir, b => U64(b, 72, 1UL << 10))));
    }

    [Fact]
    public void ZstdCompressionAndExtendedL2AreRefused()
    {
        using var dir = new TempDir();
        Assert.Contains("zstd", OpenError(Patched(dir, b => { U64(b, 72, 1UL << 3); b[104] = 1; })));
        Assert.Contains("extended L2 entries", OpenError(Patched(dir, b => U64(b, 72, 1UL << 4), "e.qcow2")));
    }

    [Fact]
    public void EncryptionIsRefused()
    {
        using var dir = new TempDir();
        Assert.Contains("encrypted qcow2 images are not supported", OpenError(Patched(dir, b => U32(b, 32, 1))));
    }

    [Fact]
    public void ExternalDataFileIsRefused()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", $"data_file={dir["data.raw"]}", dir["x.qcow2"], "1M");
        Assert.Contains("external data files are not supported", OpenError(dir["x.qcow2"], null));
    }

    [Theory]
    [InlineData(40, 1UL << 40, "L1 table at 0x10000000000")]
    [InlineData(40, 0x10200UL, "L1 table offset 0x10200 is not cluster-aligned")]
    [InlineData(48, 1UL << 40, "refcount table at 0x10000000000")]
    [InlineData(48, 0x123UL, "refcount table offset 0x123 is not cluster-aligned")]
    public void TableOffsetsPastTheEndOrUnaligned(int field, ulong value, string expected)
    {
        using var dir = new TempDir();
        string msg = OpenError(Patched(dir, b => U64(b, field, value)));
        Assert.Contains(expected, msg);
        if (value >= 1UL << 40) Assert.Contains("past the end of the file", msg);
    }

    [Fact]
    public void AbsurdSizes()
    {
        using var dir = new TempDir();
        Assert.Contains("absurd virtual size", OpenError(Patched(dir, b => U64(b, 24, 1UL << 62))));
        Assert.Contains("absurd L1 table size", OpenError(Patched(dir, b => U32(b, 36, 0x4000_0000), "l1.qcow2")));
        Assert.Contains("cannot map the virtual size", OpenError(Patched(dir, b => U64(b, 24, 1UL << 40), "small.qcow2")));
        Assert.Contains("unsupported cluster size 2^22", OpenError(Patched(dir, b => U32(b, 20, 22), "cs.qcow2")));
    }

    [Fact]
    public void RefcountWidthsOtherThan16BitsAreRefused()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", "refcount_bits=32", dir["r32.qcow2"], "1M");
        Assert.Contains("refcount_order 5 (32-bit refcounts) is not supported", OpenError(dir["r32.qcow2"], null));
    }

    [Fact]
    public void BackingFileLoop()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        Qcow2Disk.Create(dir["b.qcow2"], 1 << 20);
        Qcow2Disk.Create(dir["a.qcow2"], 1 << 20, "b.qcow2", "qcow2");
        QemuImg.MustRun("rebase", "-u", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", dir["b.qcow2"]);
        Assert.Contains("backing file loop: a.qcow2 -> b.qcow2 -> a.qcow2", OpenError(dir["a.qcow2"], null));
        // A self-reference is the shortest loop.
        Patched(dir, _ => { }, "self.qcow2");
        QemuImg.MustRun("rebase", "-u", "-f", "qcow2", "-b", "self.qcow2", "-F", "qcow2", dir["self.qcow2"]);
        Assert.Contains("backing file loop", OpenError(dir["self.qcow2"], null));
    }

    [Fact]
    public void MissingBackingFile()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["gone.raw"], new byte[1 << 20]);
        Qcow2Disk.Create(dir["o.qcow2"], 1 << 20, "gone.raw", "raw");
        File.Delete(dir["gone.raw"]);
        string msg = OpenError(dir["o.qcow2"], null);
        Assert.Contains("backing file 'gone.raw'", msg);
        Assert.Contains("not found", msg);
        Assert.Contains("not found", Assert.Throws<BlockDeviceException>(() => Qcow2Disk.Create(dir["p.qcow2"], 1 << 20, "gone.raw")).Message);
    }

    [Fact]
    public void CorruptL2OffsetIsAnErrorNotAWildRead()
    {
        using var dir = new TempDir();
        string path = dir["l2.qcow2"];
        Qcow2Disk.Create(path, 1 << 20);
        using (var d = Qcow2Disk.Open(path, readOnly: false)) d.Write(0, new byte[] { 1, 2, 3 });
        var bytes = File.ReadAllBytes(path);
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(40));
        U64(bytes, (int)l1, (1UL << 63) | (1UL << 40)); // L2 table far past the end of the file
        File.WriteAllBytes(path, bytes);
        using var disk = Qcow2Disk.Open(path, readOnly: true);
        var e = Assert.Throws<BlockDeviceException>(() => disk.Read(0, new byte[512]));
        Assert.Contains("corrupt qcow2 image: L2 table at 0x10000000000 lies outside the file", e.Message);
    }

    [Fact]
    public void CorruptL2EntryCannotMakeGuestWritesOverwriteTheTables()
    {
        using var dir = new TempDir();
        string path = dir["ov.qcow2"];
        Qcow2Disk.Create(path, 1 << 20);
        using (var d = Qcow2Disk.Open(path, readOnly: false)) d.Write(0, new byte[] { 1 });
        var bytes = File.ReadAllBytes(path);
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(40));
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)l1)) & 0x00FF_FFFF_FFFF_FE00UL);
        U64(bytes, (int)l2, (1UL << 63) | (ulong)l1); // guest cluster 0 "is" the L1 table
        File.WriteAllBytes(path, bytes);
        using (var disk = Qcow2Disk.Open(path, readOnly: false))
        {
            var e = Assert.Throws<BlockDeviceException>(() => disk.Write(0, new byte[512]));
            Assert.Contains("overlaps the L1 table", e.Message);
        }
        var after = File.ReadAllBytes(path);
        Assert.Equal(bytes.AsSpan((int)l1, 8).ToArray(), after.AsSpan((int)l1, 8).ToArray());
    }

    [Fact]
    public void CorruptFlagAndSnapshotsRefuseWritingButAllowReading()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string corrupt = Patched(dir, b => U64(b, 72, 1UL << 1));
        Assert.Contains("is marked corrupt", OpenError(corrupt, null, readOnly: false));
        DiskImage.Open(corrupt, null, readOnly: true).Dispose();

        string snap = dir["s.qcow2"];
        Qcow2Disk.Create(snap, 1 << 20);
        QemuImg.MustRun("snapshot", "-c", "first", snap);
        Assert.Contains("internal snapshot", OpenError(snap, null, readOnly: false));
        using var d = DiskImage.Open(snap, null, readOnly: true);
        Assert.Equal(1 << 20, d.Size);
    }
}
