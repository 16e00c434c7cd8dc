using System.Buffers.Binary;
using System.Text.Json;
using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>
/// <see cref="Qcow2Check"/> against `qemu-img check --output=json` on images the test corrupts by hand: the same
/// corruptions, leaks and allocation counts, and the same exit status.
/// </summary>
public class Qcow2CheckTests
{
    private const ulong Copied = 1UL << 63;
    private const ulong OffsetMask = 0x00FF_FFFF_FFFF_FE00UL;

    /// <summary>A 1 GiB image (64 KiB clusters, two L1 entries) with 200 KiB of data at 0 and 64 KiB at 2 MiB, written by QEMU.</summary>
    private static string Base(TempDir dir, string options = "cluster_size=65536")
    {
        string img = dir["c.qcow2"];
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", options, img, "1G");
        Qcow2InteropTests.RunQemuIo(img, "write -P 0x11 0 200k", "write -P 0x22 2M 64k");
        return img;
    }

    private sealed class Image(string path)
    {
        public byte[] B = File.ReadAllBytes(path);
        public int ClusterBits => (int)BinaryPrimitives.ReadUInt32BigEndian(B.AsSpan(20));
        public long Cs => 1L << ClusterBits;
        public long L1 => (long)U64(40);
        public long Reftable => (long)U64(48);
        public ulong U64(long at) => BinaryPrimitives.ReadUInt64BigEndian(B.AsSpan((int)at));
        public void Set64(long at, ulong v) => BinaryPrimitives.WriteUInt64BigEndian(B.AsSpan((int)at), v);
        public void Set16(long at, ushort v) => BinaryPrimitives.WriteUInt16BigEndian(B.AsSpan((int)at), v);
        public long L2(int l1Index = 0) => (long)(U64(L1 + l1Index * 8) & OffsetMask);
        public long Refblock0 => (long)(U64(Reftable) & ~511UL);
        public void SetRefcount(long cluster, ushort v) => Set16(Refblock0 + cluster * 2, v);
        public void Save() => File.WriteAllBytes(path, B);
    }

    public static TheoryData<string> Cases() =>
    [
        "clean", "leak", "refcount-too-low", "l2-entry-past-eof", "l2-entry-into-l1", "l2-entry-into-reftable", "l2-entry-misaligned",
        "l2-entry-reserved-bits", "l1-entry-past-eof", "l1-entry-into-refblock", "two-entries-one-cluster", "reftable-points-at-l1",
        "refblock-past-eof", "copied-flag-missing", "compressed", "compressed-entry-into-l1", "snapshot", "snapshot-l1-misaligned",
    ];

    private static string Corrupt(TempDir dir, string kase)
    {
        if (kase.StartsWith("compressed", StringComparison.Ordinal))
        {
            string src = Base(dir);
            string img = dir["z.qcow2"];
            QemuImg.MustRun("convert", "-c", "-O", "qcow2", src, img);
            if (kase == "compressed-entry-into-l1")
            {
                var z = new Image(img);
                ulong e = z.U64(z.L2());
                int csizeShift = 62 - (z.ClusterBits - 8);
                ulong coffMask = (1UL << csizeShift) - 1;
                z.Set64(z.L2(), (e & ~coffMask) | (ulong)z.L1);
                z.Save();
            }
            return img;
        }
        if (kase.StartsWith("snapshot", StringComparison.Ordinal))
        {
            string img = Base(dir);
            QemuImg.MustRun("snapshot", "-c", "one", img);
            Qcow2InteropTests.RunQemuIo(img, "write -P 0x33 64k 64k");
            if (kase == "snapshot-l1-misaligned")
            {
                var s = new Image(img);
                long table = (long)s.U64(64);
                s.Set64(table, s.U64(table) + 512);
                s.Save();
            }
            return img;
        }
        string path = Base(dir);
        var m = new Image(path);
        long l2 = m.L2();
        long eof = m.B.Length;
        switch (kase)
        {
            case "clean":
                break;
            case "leak":
                // A cluster past the data, counted but used by nobody: what a crash between allocating and linking leaves.
                Array.Resize(ref m.B, (int)(eof + m.Cs));
                m.SetRefcount(eof / m.Cs, 1);
                break;
            case "refcount-too-low":
                m.SetRefcount((long)(m.U64(l2) & OffsetMask) / m.Cs, 0);
                break;
            case "l2-entry-past-eof":
                m.Set64(l2 + 8, Copied | (1UL << 40));
                m.Set64(l2 + 16, Copied | (ulong)eof);
                break;
            case "l2-entry-into-l1":
                m.Set64(l2 + 8, Copied | (ulong)m.L1);
                break;
            case "l2-entry-into-reftable":
                m.Set64(l2 + 8, Copied | (ulong)m.Reftable);
                break;
            case "l2-entry-misaligned":
                m.Set64(l2 + 8, m.U64(l2 + 8) + 4096);
                break;
            case "l2-entry-reserved-bits":
                m.Set64(l2 + 8, m.U64(l2 + 8) | (1UL << 57));
                break;
            case "l1-entry-past-eof":
                m.Set64(m.L1 + 8, Copied | (1UL << 36));
                break;
            case "l1-entry-into-refblock":
                m.Set64(m.L1 + 8, Copied | (ulong)m.Refblock0);
                break;
            case "two-entries-one-cluster":
                m.Set64(l2 + 8, m.U64(l2));
                break;
            case "reftable-points-at-l1":
                m.Set64(m.Reftable, (ulong)m.L1);
                break;
            case "refblock-past-eof":
                m.Set64(m.Reftable + 8, 1UL << 40);
                break;
            case "copied-flag-missing":
                m.Set64(l2, m.U64(l2) & ~Copied);
                break;
            default:
                throw new ArgumentException(kase);
        }
        m.Save();
        return path;
    }

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void CountsAgreeWithQemuImgCheck(string kase)
    {
        Skip.If(QemuImg.Missing != null, QemuImg.Missing);
        using var dir = new TempDir();
        string img = Corrupt(dir, kase);
        var (rc, o, e) = QemuImg.Run("check", "--output=json", img);
        Assert.True(o.Length > 0, $"qemu-img check produced no JSON ({rc}): {e}");
        using var doc = JsonDocument.Parse(o);
        long Q(string field) => doc.RootElement.TryGetProperty(field, out var v) ? v.GetInt64() : 0;

        var ours = Qcow2Check.Run(img);
        string why = $"{kase}: qemu-img: {o}\n{e}\nours:\n{ours.ToText()}";
        Assert.True(Q("corruptions") == ours.Corruptions, why);
        Assert.True(Q("leaks") == ours.Leaks, why);
        Assert.True(Q("check-errors") == ours.CheckErrors, why);
        Assert.True(Q("image-end-offset") == ours.ImageEndOffset, why);
        Assert.True(Q("allocated-clusters") == ours.AllocatedClusters, why);
        Assert.True(Q("fragmented-clusters") == ours.FragmentedClusters, why);
        Assert.True(Q("compressed-clusters") == ours.CompressedClusters, why);
        Assert.True(Q("total-clusters") == ours.TotalClusters, why);
        Assert.True(rc == ours.ExitStatus, why);
        if (kase is "clean" or "compressed" or "snapshot") Assert.Equal(0, ours.ExitStatus);
        else Assert.NotEqual(0, ours.ExitStatus);
    }

    [SkippableTheory]
    [InlineData("l2-entry-into-l1", "as the L1 table and as the data cluster of guest offset 0x10000")]
    [InlineData("reftable-points-at-l1", "as the L1 table and as refcount block 0")]
    [InlineData("l1-entry-into-refblock", "as the L2 table for guest offset 0x20000000 and as refcount block 0")]
    [InlineData("l2-entry-past-eof", "the data cluster of guest offset 0x10000 at 0x10000000000 (65536 bytes) lies past the end of the file")]
    public void ProblemsNameTheMetadataInvolved(string kase, string expected)
    {
        Skip.If(QemuImg.Missing != null, QemuImg.Missing);
        using var dir = new TempDir();
        var r = Qcow2Check.Run(Corrupt(dir, kase));
        Assert.True(r.Problems.Any(p => p.Contains(expected, StringComparison.Ordinal)), string.Join('\n', r.Problems));
    }
}

/// <summary>`dirigent disk check` and `disk info` as a real process: qemu-img check's exit statuses, one-line errors.</summary>
public sealed class DiskCheckCliTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private string Image(bool corrupt)
    {
        string img = _dir[corrupt ? "bad.qcow2" : "good.qcow2"];
        Qcow2Disk.Create(img, 1 << 20);
        using (var d = Qcow2Disk.Open(img, readOnly: false)) d.Write(0, new byte[70000]);
        if (corrupt)
        {
            var b = File.ReadAllBytes(img);
            long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(40));
            long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)l1)) & 0x00FF_FFFF_FFFF_FE00UL);
            BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 8), (1UL << 63) | (1UL << 40)); // past the end of the file
            File.WriteAllBytes(img, b);
        }
        return img;
    }

    [Fact]
    public void CleanImageIsStatus0AndJsonHasQemuImgFields()
    {
        string img = Image(corrupt: false);
        var r = Tests.Cli.Cli.Run(_dir.Path, "disk", "check", img);
        Assert.True(r.Exit == 0, r.ToString());
        Assert.Contains("No errors were found on the image.", r.Out);
        var j = Tests.Cli.Cli.Run(_dir.Path, "disk", "check", "--output", "json", img);
        Assert.True(j.Exit == 0, j.ToString());
        using var doc = JsonDocument.Parse(j.Out);
        Assert.Equal(0, doc.RootElement.GetProperty("corruptions").GetInt32());
        Assert.Equal(2, doc.RootElement.GetProperty("allocated-clusters").GetInt32());
        var info = Tests.Cli.Cli.Run(_dir.Path, "disk", "info", img);
        Assert.True(info.Exit == 0 && info.Err == "", info.ToString());
        Assert.Contains("check:        clean", info.Out);
    }

    [Fact]
    public void CorruptImageIsStatus2AndInfoWarnsOnOneLine()
    {
        string img = Image(corrupt: true);
        var r = Tests.Cli.Cli.Run(_dir.Path, "disk", "check", img);
        Assert.True(r.Exit == 2, r.ToString());
        Assert.Contains("lies past the end of the file", r.Out);
        var info = Tests.Cli.Cli.Run(_dir.Path, "disk", "info", img);
        Assert.True(info.Exit == 2, info.ToString());
        Assert.Contains("check:        CORRUPT: 2 error(s)", info.Out);
        string line = Assert.Single(info.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("is corrupt: 2 error(s)", line);
    }

    [Fact]
    public void LeaksOnlyIsStatus3()
    {
        string img = Image(corrupt: false);
        var b = File.ReadAllBytes(img);
        int cs = 1 << (int)BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(20));
        long rt = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48));
        long block = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)rt));
        long extra = b.Length / cs;
        Array.Resize(ref b, b.Length + cs);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan((int)(block + extra * 2)), 1);
        File.WriteAllBytes(img, b);
        var r = Tests.Cli.Cli.Run(_dir.Path, "disk", "check", img);
        Assert.True(r.Exit == 3, r.ToString());
        Assert.Contains("1 leaked clusters were found", r.Out);
    }

    [Fact]
    public void UncheckableInputIsStatus1WithOneLine()
    {
        File.WriteAllBytes(_dir["raw.img"], new byte[4096]);
        foreach (string path in new[] { _dir["raw.img"], _dir["missing.qcow2"] })
        {
            var r = Tests.Cli.Cli.Run(_dir.Path, "disk", "check", path);
            Assert.True(r.Exit == 1 && r.Out == "", r.ToString());
            Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
    }
}
