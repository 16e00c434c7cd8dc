using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>Qcow2Disk against QEMU's qemu-img: images either side creates, the other reads, checks and compares.</summary>
public class Qcow2InteropTests
{
    private static byte[] RandomBytes(Random rng, int n)
    {
        var b = new byte[n];
        rng.NextBytes(b);
        return b;
    }

    /// <summary>Writes the same bytes to the image and to a raw reference file.</summary>
    private static void WriteBoth(IBlockDevice disk, FileStream reference, long offset, byte[] data)
    {
        disk.Write(offset, data);
        reference.Position = offset;
        reference.Write(data);
    }

    private static void AssertSameAsReference(IBlockDevice disk, string reference)
    {
        var expected = File.ReadAllBytes(reference);
        Assert.Equal(expected.LongLength, disk.Size);
        var actual = new byte[disk.Size];
        disk.Read(0, actual);
        Assert.True(expected.AsSpan().SequenceEqual(actual), "image contents differ from the raw reference");
    }

    [Theory]
    [InlineData(65536)]
    [InlineData(4096)]
    public void QemuCreatedImageIsReadAndWrittenAndStaysClean(int clusterSize)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string img = dir["q.qcow2"], refPath = dir["ref.raw"];
        var rng = new Random(clusterSize);
        File.WriteAllBytes(refPath, new byte[16 << 20]);
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", $"cluster_size={clusterSize}", img, "16M");

        using (var reference = new FileStream(refPath, FileMode.Open))
        {
            // Data QEMU wrote through qemu-io must read back through us.
            RunQemuIo(img, "write -P 0x5a 1M 300k", "write -z 1200k 64k", "write -P 0x33 7M 4k");
            reference.Position = 1 << 20; reference.Write(Enumerable.Repeat((byte)0x5a, 300 << 10).ToArray());
            reference.Position = 1200 << 10; reference.Write(new byte[64 << 10]);
            reference.Position = 7 << 20; reference.Write(Enumerable.Repeat((byte)0x33, 4096).ToArray());
            reference.Flush();
            using (var disk = DiskImage.Open(img, null, readOnly: false))
            {
                Assert.IsType<Qcow2Disk>(disk);
                Assert.Equal(clusterSize, ((Qcow2Disk)disk).ClusterSize);
                AssertSameAsReference(disk, refPath);
                for (int i = 0; i < 200; i++)
                {
                    int len = rng.Next(1, 3 * clusterSize);
                    long off = rng.NextInt64(0, disk.Size - len);
                    WriteBoth(disk, reference, off, RandomBytes(rng, len));
                }
                reference.Flush();
                AssertSameAsReference(disk, refPath);
            }
        }
        QemuImg.AssertClean(img);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", img, refPath);
    }

    [Fact]
    public void RandomWritesOfMoreThan100MiBPassQemuImgCheckAndCompare()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string img = dir["big.qcow2"], refPath = dir["big.raw"];
        const long size = 256L << 20;
        Qcow2Disk.Create(img, size);
        DiskImage.Create(refPath, "raw", size);
        var rng = new Random(1234);
        long written = 0;
        var buf = new byte[1 << 20];
        using (var disk = Qcow2Disk.Open(img, readOnly: false))
        using (var reference = new FileStream(refPath, FileMode.Open))
        {
            while (written < 110L << 20)
            {
                // Mixed sizes and alignments: sector-sized, unaligned and multi-cluster writes.
                int len = rng.Next(4) switch { 0 => 512 * rng.Next(1, 9), 1 => rng.Next(1, 70000), _ => rng.Next(64 << 10, 1 << 20) };
                long off = rng.Next(3) == 0 ? rng.NextInt64(0, (size - len) / 512) * 512 : rng.NextInt64(0, size - len);
                var data = buf.AsSpan(0, len);
                rng.NextBytes(data);
                disk.Write(off, data);
                reference.Position = off;
                reference.Write(data);
                written += len;
                if (rng.Next(50) == 0)
                {
                    long zoff = rng.NextInt64(0, size - (1 << 20));
                    int zlen = rng.Next(1, 1 << 20);
                    disk.WriteZeroes(zoff, zlen);
                    reference.Position = zoff;
                    reference.Write(new byte[zlen]);
                }
            }
        }
        QemuImg.AssertClean(img);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", img, refPath);
    }

    [Theory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    public void OverlayOnQemuBackingCopiesOnWriteAndNeverTouchesTheBacking(string baseFormat)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string baseRaw = dir["base.raw"], basePath = dir[$"base.{baseFormat}"], overlay = dir["overlay.qcow2"], refPath = dir["ref.raw"];
        var rng = new Random(7);
        File.WriteAllBytes(baseRaw, RandomBytes(rng, 8 << 20));
        if (baseFormat == "qcow2") QemuImg.MustRun("convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", baseRaw, basePath);
        File.Copy(baseRaw, refPath);
        // The overlay is larger than its backing: the tail must read as zeros.
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-b", System.IO.Path.GetFileName(basePath), "-F", baseFormat, overlay, "12M");
        using (var f = new FileStream(refPath, FileMode.Open)) f.SetLength(12 << 20);
        string baseHash = FileHash.Of(basePath);

        using (var disk = DiskImage.Open(overlay, "qcow2", readOnly: false))
        using (var reference = new FileStream(refPath, FileMode.Open))
        {
            var q = Assert.IsType<Qcow2Disk>(disk);
            Assert.Equal(baseFormat, q.BackingFormat);
            AssertSameAsReference(disk, refPath);
            for (int i = 0; i < 150; i++)
            {
                int len = rng.Next(1, 100000);
                WriteBoth(disk, reference, rng.NextInt64(0, disk.Size - len), RandomBytes(rng, len));
            }
            // Zeroing whole clusters must hide the backing data (zero flag), not expose it.
            disk.WriteZeroes(2 << 20, 1 << 20);
            reference.Position = 2 << 20; reference.Write(new byte[1 << 20]);
            reference.Flush();
            AssertSameAsReference(disk, refPath);
        }
        Assert.Equal(baseHash, FileHash.Of(basePath));
        QemuImg.AssertClean(overlay);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", overlay, refPath);
    }

    [Fact]
    public void ThreeLevelChainWithOurOverlayOnTop()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        var rng = new Random(99);
        string baseRaw = dir["base.raw"], mid = dir["mid.qcow2"], top = dir["top.qcow2"], refPath = dir["ref.raw"];
        File.WriteAllBytes(baseRaw, RandomBytes(rng, 4 << 20));
        File.Copy(baseRaw, refPath);
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid);
        RunQemuIo(mid, "write -P 0x11 100k 200k");
        using (var f = new FileStream(refPath, FileMode.Open)) { f.Position = 100 << 10; f.Write(Enumerable.Repeat((byte)0x11, 200 << 10).ToArray()); }
        string baseHash = FileHash.Of(baseRaw), midHash = FileHash.Of(mid);
        Qcow2Disk.Create(top, 4 << 20, "mid.qcow2", null, clusterBits: 12);
        using (var disk = DiskImage.Open(top, null, readOnly: false))
        using (var reference = new FileStream(refPath, FileMode.Open))
        {
            var q = (Qcow2Disk)disk;
            Assert.Equal("qcow2", q.BackingFormat);
            Assert.Equal("raw", ((Qcow2Disk)q.Backing!).BackingFormat);
            AssertSameAsReference(disk, refPath);
            for (int i = 0; i < 100; i++)
            {
                int len = rng.Next(1, 20000);
                WriteBoth(disk, reference, rng.NextInt64(0, disk.Size - len), RandomBytes(rng, len));
            }
        }
        Assert.Equal(baseHash, FileHash.Of(baseRaw));
        Assert.Equal(midHash, FileHash.Of(mid));
        QemuImg.AssertClean(top);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", top, refPath);
        var info = QemuImg.Info(top);
        Assert.Equal("mid.qcow2", info.GetProperty("backing-filename").GetString());
        Assert.Equal("qcow2", info.GetProperty("backing-filename-format").GetString());
    }

    [Theory]
    [InlineData(65536)]
    [InlineData(4096)]
    public void CompressedImageFromQemuImgConvertReadsCorrectlyAndCanBeOverwritten(int clusterSize)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string raw = dir["src.raw"], img = dir["c.qcow2"];
        var rng = new Random(3);
        var data = new byte[6 << 20];
        // Half compressible text, half random (stored as compressed clusters only where that saves space).
        for (int i = 0; i < 3 << 20; i++) data[i] = (byte)"the quick brown fox jumps over the lazy dog "[(i * 7 + i / 977) % 44];
        rng.NextBytes(data.AsSpan(3 << 20, 2 << 20));
        File.WriteAllBytes(raw, data);
        QemuImg.MustRun("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", $"cluster_size={clusterSize}", raw, img);
        Assert.True(new FileInfo(img).Length < data.Length * 3 / 4, "qemu-img convert -c did not compress");

        using (var disk = Qcow2Disk.Open(img, readOnly: true))
        {
            var back = new byte[disk.Size];
            disk.Read(0, back);
            Assert.True(back.AsSpan(0, data.Length).SequenceEqual(data));
            Assert.True(disk.AllocatedBytes() < data.Length / 2, "allocation should count compressed sizes");
        }
        using (var disk = Qcow2Disk.Open(img, readOnly: false))
        using (var reference = new FileStream(raw, FileMode.Open))
        {
            for (int i = 0; i < 60; i++)
            {
                int len = rng.Next(1, 2 * clusterSize);
                WriteBoth(disk, reference, rng.NextInt64(0, (3 << 20) - len), RandomBytes(rng, len));
            }
            disk.WriteZeroes(clusterSize * 5L, clusterSize * 3L);
            reference.Position = clusterSize * 5L; reference.Write(new byte[clusterSize * 3]);
        }
        QemuImg.AssertClean(img);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", img, raw);
    }

    [Fact]
    public void QemuImgInfoAgreesWithOurHeader()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        File.WriteAllBytes(dir["b.raw"], new byte[3 << 20]);
        Qcow2Disk.Create(dir["o.qcow2"], 5L << 30, "b.raw", "raw", clusterBits: 14);
        var info = QemuImg.Info(dir["o.qcow2"]);
        Assert.Equal("qcow2", info.GetProperty("format").GetString());
        Assert.Equal(5L << 30, info.GetProperty("virtual-size").GetInt64());
        Assert.Equal(1 << 14, info.GetProperty("cluster-size").GetInt32());
        Assert.Equal("b.raw", info.GetProperty("backing-filename").GetString());
        Assert.Equal("raw", info.GetProperty("backing-filename-format").GetString());
        Assert.Equal("1.1", info.GetProperty("format-specific").GetProperty("data").GetProperty("compat").GetString());
        QemuImg.AssertClean(dir["o.qcow2"]);

        // And the other way round: what qemu-img says about its own image is what we read.
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "-b", "b.raw", "-F", "raw", dir["q.qcow2"], "7G");
        var qinfo = QemuImg.Info(dir["q.qcow2"]);
        using var q = Qcow2Disk.Open(dir["q.qcow2"], readOnly: true);
        Assert.Equal(qinfo.GetProperty("virtual-size").GetInt64(), q.Size);
        Assert.Equal(qinfo.GetProperty("cluster-size").GetInt32(), q.ClusterSize);
        Assert.Equal(qinfo.GetProperty("backing-filename").GetString(), q.BackingFileName);
        Assert.Equal(3 << 20, q.Backing!.Size);
    }

    [Fact]
    public void DirtyImageLeftByAKilledWriterIsRepairedOnOpen()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string img = dir["d.qcow2"], crashed = dir["crashed.qcow2"];
        var rng = new Random(5);
        var data = RandomBytes(rng, 300000);
        Qcow2Disk.Create(img, 64 << 20, clusterBits: 12);
        using (var disk = Qcow2Disk.Open(img, readOnly: false))
        {
            disk.Write(12345, data);
            disk.Flush();
            // What a killed process leaves behind: everything written, the dirty bit still set.
            // (cp, not File.Copy: .NET's own advisory lock on the open image would refuse a second .NET reader.)
            using var cp = System.Diagnostics.Process.Start("cp", [img, crashed]);
            cp.WaitForExit();
            Assert.Equal(0, cp.ExitCode);
        }
        // Add a leak a crash between allocation and linking would leave: a cluster counted but used by nobody.
        using (var f = new FileStream(crashed, FileMode.Open))
        {
            long clusters = f.Length / 4096;
            f.SetLength((clusters + 1) * 4096);
        }
        using (var raw = new RawDisk(crashed, readOnly: false))
            SetRefcountByHand(raw, crashed, cluster: new FileInfo(crashed).Length / 4096 - 1, value: 1);
        var (rc, o, _) = QemuImg.Run("check", "--output=json", crashed);
        Assert.True(rc != 0 && o.Contains("\"leaks\": 1"), $"the hand-made leak should show: {o}");

        using (var disk = Qcow2Disk.Open(crashed, readOnly: true))
            Assert.True(disk.WasDirty);
        using (var disk = Qcow2Disk.Open(crashed, readOnly: false))
        {
            Assert.True(disk.Repaired);
            var back = new byte[data.Length];
            disk.Read(12345, back);
            Assert.Equal(data, back);
        }
        QemuImg.AssertClean(crashed);
        using (var disk = Qcow2Disk.Open(crashed, readOnly: true)) Assert.False(disk.WasDirty);
    }

    private static void SetRefcountByHand(RawDisk raw, string path, long cluster, ushort value)
    {
        var hdr = new byte[64];
        raw.Read(0, hdr);
        long rt = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(hdr.AsSpan(48));
        int cs = 1 << (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(hdr.AsSpan(20));
        long perBlock = cs / 2;
        var e = new byte[8];
        raw.Read(rt + cluster / perBlock * 8, e);
        long block = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(e);
        Assert.True(block != 0, $"{path}: no refcount block covers cluster {cluster}");
        var v = new byte[2];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(v, value);
        raw.Write(block + cluster % perBlock * 2, v);
    }

    [Fact]
    public void SmallClustersGrowTheRefcountTableAndStayClean()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string img = dir["small.qcow2"], refPath = dir["small.raw"];
        const long size = 24L << 20;
        Qcow2Disk.Create(img, size, clusterBits: 9);
        long TableOffset()
        {
            var h = new byte[64];
            using var f = File.OpenRead(img);
            f.ReadExactly(h);
            return (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(48));
        }
        long before = TableOffset();
        DiskImage.Create(refPath, "raw", size);
        var rng = new Random(11);
        using (var disk = Qcow2Disk.Open(img, readOnly: false))
        using (var reference = new FileStream(refPath, FileMode.Open))
        {
            // One 512-byte refcount table cluster covers 8 MiB of file: 20 MiB of data must move the table.
            for (long off = 0; off < 20L << 20; off += 256 << 10)
                WriteBoth(disk, reference, off + rng.Next(512), RandomBytes(rng, (256 << 10) - 512));
        }
        Assert.NotEqual(before, TableOffset());
        QemuImg.AssertClean(img);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", img, refPath);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Version2ImagesAreReadAndWritten(bool withBacking)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string img = dir["v2.qcow2"], refPath = dir["ref.raw"];
        var rng = new Random(2);
        File.WriteAllBytes(refPath, withBacking ? RandomBytes(rng, 4 << 20) : new byte[4 << 20]);
        if (withBacking)
        {
            File.Copy(refPath, dir["base.raw"]);
            QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", img, "4M");
        }
        else QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", "compat=0.10", img, "4M");
        using (var disk = Qcow2Disk.Open(img, readOnly: false))
        using (var reference = new FileStream(refPath, FileMode.Open))
        {
            Assert.Equal(2, disk.Version);
            for (int i = 0; i < 100; i++)
            {
                int len = rng.Next(1, 150000);
                WriteBoth(disk, reference, rng.NextInt64(0, disk.Size - len), RandomBytes(rng, len));
            }
            // v2 has no zero flag: over a backing file the zeros must really be written.
            disk.WriteZeroes(1 << 20, 512 << 10);
            reference.Position = 1 << 20; reference.Write(new byte[512 << 10]);
            reference.Flush();
            AssertSameAsReference(disk, refPath);
        }
        Assert.Equal("0.10", QemuImg.Info(img).GetProperty("format-specific").GetProperty("data").GetProperty("compat").GetString());
        QemuImg.AssertClean(img);
        QemuImg.MustRun("compare", "-q", "-f", "qcow2", "-F", "raw", img, refPath);
    }

    [Fact]
    public void QemuReadsWhatWeWroteAndWeReadWhatQemuWroteOnTop()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string img = dir["x.qcow2"];
        Qcow2Disk.Create(img, 8 << 20, clusterBits: 12);
        using (var disk = Qcow2Disk.Open(img, readOnly: false))
            disk.Write(3 << 20, Enumerable.Repeat((byte)0xC3, 10000).ToArray());
        RunQemuIo(img, "read -P 0xc3 3M 10000", "write -P 0x77 3M 4k", "write -z 5M 1M");
        using (var disk = Qcow2Disk.Open(img, readOnly: true))
        {
            var b = new byte[10000];
            disk.Read(3 << 20, b);
            Assert.All(b.AsSpan(0, 4096).ToArray(), x => Assert.Equal(0x77, x));
            Assert.All(b.AsSpan(4096).ToArray(), x => Assert.Equal(0xC3, x));
        }
        QemuImg.AssertClean(img);
    }

    internal static void RunQemuIo(string img, params string[] commands)
    {
        string io = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(QemuImg.Require())!, "qemu-io");
        var psi = new System.Diagnostics.ProcessStartInfo(io) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var c in commands) { psi.ArgumentList.Add("-c"); psi.ArgumentList.Add(c); }
        psi.ArgumentList.Add(img);
        using var p = System.Diagnostics.Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0 && !o.Contains("error", StringComparison.OrdinalIgnoreCase), $"qemu-io failed: {o}");
    }
}
