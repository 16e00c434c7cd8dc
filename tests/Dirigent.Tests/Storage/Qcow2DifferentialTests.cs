using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>
/// The same random writes, zeroes and discards go to a Qcow2Disk and to a byte array; both must read back the
/// same, also across close and reopen. Discard's contract here: whole clusters read as zeros, partial ones keep
/// their data.
/// </summary>
public class Qcow2DifferentialTests
{
    [Theory]
    [InlineData(9, false)]
    [InlineData(9, true)]
    [InlineData(12, false)]
    [InlineData(12, true)]
    [InlineData(16, false)]
    [InlineData(16, true)]
    [InlineData(21, true)]
    public void RandomOperationsMatchAnInMemoryModel(int clusterBits, bool withBacking)
    {
        using var dir = new TempDir(inMemory: true);
        var rng = new Random(clusterBits * 10 + (withBacking ? 1 : 0));
        int cs = 1 << clusterBits;
        long size = Math.Max(4L << 20, 6L * cs) + 3 * 512; // not a multiple of the cluster size
        var model = new byte[size];
        string img = dir["d.qcow2"];
        string? baseHash = null;
        if (withBacking)
        {
            // A backing file shorter than the overlay: its end reads as zeros.
            var baseData = new byte[size - cs - 512];
            rng.NextBytes(baseData);
            File.WriteAllBytes(dir["base.raw"], baseData);
            baseData.CopyTo(model, 0);
            baseHash = FileHash.Of(dir["base.raw"]);
            Qcow2Disk.Create(img, size, "base.raw", "raw", clusterBits);
        }
        else Qcow2Disk.Create(img, size, clusterBits: clusterBits);

        var disk = Qcow2Disk.Open(img, readOnly: false);
        try
        {
            var buf = new byte[Math.Max(3 * cs + 1000, 5000)];
            // 2 MiB clusters make every partial write a 2 MiB copy: fewer operations keep the test short.
            int ops = clusterBits >= 20 ? 200 : 600;
            for (int op = 0; op < ops; op++)
            {
                int kind = rng.Next(10);
                int len = rng.Next(3) == 0 ? rng.Next(1, 3 * cs + 1000) : rng.Next(1, 5000);
                long off = rng.Next(2) == 0 ? rng.NextInt64(0, (size - len) / cs + 1) * cs : rng.NextInt64(0, size - len + 1);
                if (off + len > size) len = (int)(size - off);
                switch (kind)
                {
                    case < 6:
                        rng.NextBytes(buf.AsSpan(0, len));
                        disk.Write(off, buf.AsSpan(0, len));
                        buf.AsSpan(0, len).CopyTo(model.AsSpan((int)off));
                        break;
                    case < 8:
                        disk.WriteZeroes(off, len);
                        model.AsSpan((int)off, len).Clear();
                        break;
                    case 8:
                        disk.Discard(off, len);
                        long first = (off + cs - 1) / cs * cs, end = (off + len) / cs * cs;
                        if (off + len == size) end = size; // the last, partial cluster counts as whole
                        if (end > first) model.AsSpan((int)first, (int)(end - first)).Clear();
                        break;
                    default:
                        var got = new byte[len];
                        disk.Read(off, got);
                        Assert.True(got.AsSpan().SequenceEqual(model.AsSpan((int)off, len)), $"op {op}: read {off}+{len} differs");
                        break;
                }
                if (op % (ops / 3) == ops / 3 - 1)
                {
                    disk.Dispose();
                    disk = Qcow2Disk.Open(img, readOnly: false);
                }
            }
            var all = new byte[size];
            disk.Read(0, all);
            Assert.True(all.AsSpan().SequenceEqual(model), "final contents differ");
        }
        finally { disk.Dispose(); }

        if (baseHash != null) Assert.Equal(baseHash, FileHash.Of(dir["base.raw"]));
        QemuImg.AssertClean(img);
    }
}
