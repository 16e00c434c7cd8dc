using System.Buffers.Binary;
using System.Security.Cryptography;
using Dirigent.Storage;
using Xunit.Abstractions;

namespace Dirigent.Tests.Fuzz;

/// <summary>
/// Mutated qcow2 images: a small valid image with data, a backing file and header extensions is made through the
/// product's own API, then random bytes in its header, extensions, backing name, L1 table, L2 tables, refcount
/// table, refcount blocks or data are changed (or the file is cut or grown), and the image is opened, read, written
/// and closed. Allowed outcomes: <see cref="BlockDeviceException"/> (at open or at any later call), or success. The
/// backing file must never change and no other file may appear: the image code writes only into its own file.
/// When only guest data was mutated, the metadata is intact and what was written must read back.
/// </summary>
public sealed class Qcow2MutationFuzzTests(ITestOutputHelper output) : IDisposable
{
    private const int ClusterBits = 12;           // 4 KiB clusters: many L2 tables and refcount blocks in a small file
    private const long DiskSize = 4L << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("dirigent-qcow2-fuzz-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private enum Region { Header, Extensions, BackingName, L1, L2, RefTable, RefBlock, Data, Anywhere, Length }

    /// <summary>The clean images, made once per test run; each case writes a mutated copy into its own folder.</summary>
    private sealed record Base(byte[] Top, byte[] Backing, Dictionary<Region, List<(long Start, int Len)>> Regions);

    private Base MakeBase()
    {
        string dir = Path.Combine(_dir, "base");
        Directory.CreateDirectory(dir);
        string backing = Path.Combine(dir, "backing.qcow2"), top = Path.Combine(dir, "top.qcow2");
        var rnd = new Random(7);
        DiskImage.Create(backing, "qcow2", DiskSize, clusterBits: ClusterBits);
        using (var b = DiskImage.Open(backing, "qcow2", readOnly: false))
            for (int k = 0; k < 40; k++) b.Write(rnd.Next(0, (int)(DiskSize / 512)) * 512L, Fill(rnd, 512 * rnd.Next(1, 9)));
        DiskImage.Create(top, "qcow2", DiskSize, "backing.qcow2", "qcow2", ClusterBits);
        using (var t = DiskImage.Open(top, "qcow2", readOnly: false))
            for (int k = 0; k < 40; k++) t.Write(rnd.Next(0, (int)(DiskSize / 512) - 8) * 512L, Fill(rnd, 512 * rnd.Next(1, 9)));
        byte[] img = File.ReadAllBytes(top);
        return new Base(img, File.ReadAllBytes(backing), Map(img));
    }

    /// <summary>Where each kind of structure lies in the image, read from its header and tables (big-endian).</summary>
    private static Dictionary<Region, List<(long, int)>> Map(byte[] img)
    {
        ulong U64(long at) => BinaryPrimitives.ReadUInt64BigEndian(img.AsSpan((int)at));
        uint U32(long at) => BinaryPrimitives.ReadUInt32BigEndian(img.AsSpan((int)at));
        int cs = 1 << (int)U32(20);
        var m = Enum.GetValues<Region>().ToDictionary(r => r, _ => new List<(long, int)>());
        int headerLen = (int)U32(100);
        m[Region.Header].Add((0, headerLen));
        long backingOff = (long)U64(8);
        int backingLen = (int)U32(16);
        m[Region.Extensions].Add((headerLen, (int)(backingOff > headerLen ? backingOff - headerLen : cs - headerLen)));
        m[Region.BackingName].Add((backingOff, backingLen));
        long l1 = (long)U64(40);
        int l1Size = (int)U32(36);
        m[Region.L1].Add((l1, 8 * l1Size));
        var meta = new HashSet<long> { 0, l1 & ~(cs - 1) };
        for (int k = 0; k < l1Size; k++)
        {
            long l2 = (long)(U64(l1 + 8 * k) & 0x00FF_FFFF_FFFF_FE00UL);
            if (l2 == 0) continue;
            m[Region.L2].Add((l2, cs));
            meta.Add(l2);
            for (int j = 0; j < cs / 8; j++)
            {
                long d = (long)(U64(l2 + 8 * j) & 0x00FF_FFFF_FFFF_FE00UL);
                if (d != 0) m[Region.Data].Add((d, cs));
            }
        }
        long rt = (long)U64(48);
        int rtClusters = (int)U32(56);
        m[Region.RefTable].Add((rt, rtClusters * cs));
        for (int k = 0; k < rtClusters * cs / 8; k++)
        {
            long rb = (long)U64(rt + 8 * k);
            if (rb != 0) m[Region.RefBlock].Add((rb, cs));
        }
        m[Region.Anywhere].Add((0, img.Length));
        m[Region.Length].Add((0, img.Length));
        return m;
    }

    [Fact]
    public void MutatedImagesOpenReadWriteClose()
    {
        var b = MakeBase();
        string backingHash = Convert.ToHexString(SHA256.HashData(b.Backing));
        int opened = 0, refusedAtOpen = 0, refusedLater = 0, readBackChecked = 0;
        long n = FuzzBudget.Run(GetType(), output, 600, (i, rnd) =>
        {
            string dir = Path.Combine(_dir, $"case-{i}");
            Directory.CreateDirectory(dir);
            try
            {
                string top = Path.Combine(dir, "top.qcow2"), backing = Path.Combine(dir, "backing.qcow2");
                File.WriteAllBytes(backing, b.Backing);
                var img = (byte[])b.Top.Clone();
                var regions = new List<Region>();
                for (int k = rnd.Next(1, 4); k > 0; k--) img = Mutate(img, b, rnd, regions);
                File.WriteAllBytes(top, img);
                bool dataOnly = regions.All(r => r == Region.Data);
                switch (Exercise(top, rnd, dataOnly, ref readBackChecked))
                {
                    case 0: opened++; break;
                    case 1: refusedAtOpen++; break;
                    default: refusedLater++; break;
                }
                FuzzBudget.Check(Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(backing))) == backingHash,
                    $"the backing file changed (mutated: {string.Join(",", regions)})");
                var files = Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order().ToArray();
                FuzzBudget.Check(files.SequenceEqual(["backing.qcow2", "top.qcow2"]), $"files appeared: {string.Join(",", files)}");
            }
            finally { Directory.Delete(dir, true); }
        });
        output.WriteLine($"{n} images: {opened} fully served, {refusedAtOpen} refused at open, {refusedLater} refused later; " +
            $"{readBackChecked} data-only cases read back what they wrote");
        Assert.True(n < 50 || opened > 0, "no mutated image was ever served: the mutations are too coarse to test anything");
    }

    /// <summary>Opens, reads, writes, flushes and closes; 0: all worked, 1: refused at open, 2: refused later.</summary>
    private static int Exercise(string path, Random rnd, bool dataOnly, ref int readBackChecked)
    {
        IBlockDevice disk;
        bool ro = rnd.Next(4) == 0;
        try { disk = DiskImage.Open(path, rnd.Next(2) == 0 ? "qcow2" : null, ro); }
        catch (BlockDeviceException) { return 1; }
        try
        {
            using (disk)
            {
                long size = disk.Size;
                FuzzBudget.Check(size >= 0, $"negative size {size}");
                var buf = new byte[64 << 10];
                // Read everything of a small disk; a mutated size may be huge, so then only samples of it.
                if (size <= 8L << 20)
                    for (long at = 0; at < size; at += buf.Length) disk.Read(at, buf.AsSpan(0, (int)Math.Min(buf.Length, size - at)));
                else
                    for (int k = 0; k < 64; k++)
                    {
                        long at = (long)(rnd.NextDouble() * (size - 4096)) & ~511L;
                        disk.Read(at, buf.AsSpan(0, 4096));
                    }
                if (ro || size < 4096) return 0;
                var written = new List<(long, byte[])>();
                for (int k = rnd.Next(1, 6); k > 0; k--)
                {
                    long at = (long)(rnd.NextDouble() * (Math.Min(size, DiskSize) - 4096)) & ~511L;
                    var data = Fill(rnd, 512 * rnd.Next(1, 9));
                    disk.Write(at, data);
                    written.Add((at, data));
                }
                if (rnd.Next(4) == 0) disk.WriteZeroes(0, Math.Min(size, 1 << ClusterBits));
                else if (rnd.Next(4) == 0) disk.Discard(1 << ClusterBits, Math.Min(size - (1 << ClusterBits), 2 << ClusterBits));
                disk.Flush();
                if (dataOnly)
                {
                    // The last write to each spot wins; overlapping earlier writes are checked only where not overwritten.
                    var (at, data) = written[^1];
                    var back = new byte[data.Length];
                    disk.Read(at, back);
                    FuzzBudget.Check(back.AsSpan().SequenceEqual(data), $"data written at {at} did not read back (metadata intact)");
                    readBackChecked++;
                }
            }
            return 0;
        }
        catch (BlockDeviceException) { return 2; }
    }

    private static byte[] Mutate(byte[] img, Base b, Random rnd, List<Region> regions)
    {
        var region = (Region)rnd.Next((int)Region.Length + 1);
        regions.Add(region);
        if (region == Region.Length)
        {
            // Cut anywhere (tables past the end), or grow with garbage.
            int len = rnd.Next(2) == 0 ? rnd.Next(img.Length) : img.Length + rnd.Next(1, 3 << ClusterBits);
            var r = new byte[len];
            img.AsSpan(0, Math.Min(len, img.Length)).CopyTo(r);
            if (len > img.Length) rnd.NextBytes(r.AsSpan(img.Length));
            return r;
        }
        var spans = b.Regions[region];
        if (spans.Count == 0 || spans[0].Len <= 0) return img;
        var (start, spanLen) = spans[rnd.Next(spans.Count)];
        if (start < 0 || start >= img.Length) return img;
        spanLen = (int)Math.Min(spanLen, img.Length - start);
        if (spanLen <= 0) return img;
        int at = (int)start + rnd.Next(spanLen);
        switch (rnd.Next(5))
        {
            case 0: img[at] ^= (byte)(1 << rnd.Next(8)); break;
            case 1: img[at] = (byte)rnd.Next(256); break;
            case 2: img[at] = new byte[] { 0, 0xFF, 0x80, 0x7F, 1 }[rnd.Next(5)]; break;
            default:
                // A whole 8- or 4-byte field (offsets, sizes, table entries) set to a boundary value, aligned as fields are.
                int width = rnd.Next(2) == 0 ? 8 : 4;
                at &= ~(width - 1);
                if (at + width > img.Length) break;
                ulong v = rnd.Next(9) switch
                {
                    0 => 0,
                    1 => ulong.MaxValue,
                    2 => (ulong)img.Length,                                   // just past the end
                    3 => (ulong)(img.Length & ~((1 << ClusterBits) - 1)),     // the last cluster
                    4 => (ulong)rnd.Next(0, img.Length) & ~0x1FFUL,            // some other structure
                    5 => 1UL << rnd.Next(64),
                    6 => (1UL << 63) | (uint)rnd.Next(0, img.Length),         // COPIED/flag bits set
                    7 => (ulong)rnd.NextInt64(),
                    _ => (ulong)rnd.Next(0, 64),
                };
                if (width == 8) BinaryPrimitives.WriteUInt64BigEndian(img.AsSpan(at), v);
                else BinaryPrimitives.WriteUInt32BigEndian(img.AsSpan(at), (uint)v);
                break;
        }
        return img;
    }

    private static byte[] Fill(Random rnd, int n)
    {
        var d = new byte[n];
        rnd.NextBytes(d);
        return d;
    }
}
