using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Dirigent.Storage;
using Dirigent.Tests.Firmware;
using Dirigent.Tests.Storage;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;
using Xunit.Abstractions;

namespace Dirigent.Tests.Boot;

/// <summary>
/// qcow2 images under the stock Debian kernel: an overlay on a raw ext4 base (ours and qemu-img's), a guest
/// writing 100+ MiB straight to the device next to a raw mirror, and images that cannot be opened. The host
/// side is checked with qemu-img (check, compare, convert) and e2fsprogs (debugfs, e2fsck).
/// </summary>
[Trait("Category", "Boot")]
public class Qcow2GuestTests(ITestOutputHelper output)
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);
    private const int MiB = 1 << 20, Cluster = 64 * 1024;

    private static VmSpec Config(string script, IEnumerable<DiskConfig> disks) => new()
    {
        Kernel = s_image.Value.Kernel,
        Initrds = [s_image.Value.Initramfs],
        Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
        MemoryBytes = 256UL << 20,
        Disks = disks.ToList(),
    };

    private string Run(VmSpec cfg, string what)
    {
        var sw = Stopwatch.StartNew();
        var r = new GuestRunner();
        int rc = r.Run(cfg, BootTimeout);
        output.WriteLine($"{what}: guest ran {sw.Elapsed.TotalSeconds:F1} s wall");
        Assert.True(rc == 0, $"{what}: exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
        Assert.True(r.Output.Contains($"{InitScript.ExitStatusPrefix}0", StringComparison.Ordinal),
            $"{what}: the guest script failed:\n{GuestRunner.Tail(r.Output)}");
        foreach (var bad in new[] { "I/O error", "BUG:", "WARNING:", "Oops", "EXT4-fs error", "DEVICE_NEEDS_RESET" })
            Assert.False(r.Output.Contains(bad, StringComparison.Ordinal), $"{what}: console shows '{bad}':\n{GuestRunner.Tail(r.Output)}");
        return r.Output;
    }

    private static string Md5(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(MD5.HashData(data));

    private static byte[] SeededBytes(int seed, int length)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static string Tool(string program, string dir, params string[] args)
    {
        var (rc, o) = RequiredTool.Run(RequiredTool.Find(program, "e2fsprogs"), args, dir);
        Assert.True(rc == 0, $"{program} {string.Join(' ', args)} exited {rc}: {o}");
        return o;
    }

    // ------------------------------------------------------------------ 1. overlay on a raw ext4 base

    [Theory]
    [InlineData("dirigent")]     // DiskImage.Create: v3, backing name relative to the overlay
    [InlineData("qemu-img")]     // qemu-img create -f qcow2 -b base.raw -F raw (compat 1.1)
    [InlineData("qemu-img-v2")]  // the same with -o compat=0.10: no dirty bit, no zero flag
    public void OverlayOnRawExt4BaseKeepsTheBaseIntactAndCarriesTheGuestsFiles(string maker)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        byte[] baseBin = SeededBytes(11, 256 * 1024);
        string baseRaw = MakeExt4Base(dir, baseBin);
        string baseHash = FileHash.Of(baseRaw);

        string overlay = dir["overlay.qcow2"];
        switch (maker)
        {
            case "dirigent": DiskImage.Create(overlay, "qcow2", 32 * MiB, "base.raw", "raw"); break;
            case "qemu-img": QemuImg.MustRun("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay); break;
            case "qemu-img-v2": QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", overlay); break;
            default: throw new ArgumentException(maker);
        }
        var disks = new[] { new DiskConfig(overlay, DiskFormat.Auto, false) };

        // The guest rewrites 12 KiB inside base.bin (copy-on-write of clusters the base holds), deletes a base
        // file and writes new ones, one of them 384 KiB of its own random data, then trims the free space: on a v3
        // overlay whole free clusters become zero clusters (the base must not show through), on v2 nothing changes.
        string o = Run(Config(
            "mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/hello.txt && md5sum /mnt/base.bin && " +
            "dd if=/dev/zero of=/mnt/base.bin bs=4096 seek=10 count=3 conv=notrunc 2>/dev/null && rm /mnt/gone.txt && " +
            "echo from-guest-$((6*7)) > /mnt/guest.txt && mkdir /mnt/d && head -c 393216 /dev/urandom > /mnt/d/rand.bin && " +
            "md5sum /mnt/d/rand.bin && fstrim -v /mnt && umount /mnt && echo BOOT1-OK", disks), $"{maker} boot 1");
        Assert.Contains("hello-from-the-base", o);
        Assert.Contains($"{Md5(baseBin)}  /mnt/base.bin", o);
        Assert.Contains("BOOT1-OK", o);
        Assert.Matches(new Regex(@"/mnt: [1-9][0-9]* bytes trimmed"), o);
        var m = Regex.Match(o, @"([0-9a-f]{32})  /mnt/d/rand\.bin");
        Assert.True(m.Success, $"no md5 of rand.bin:\n{GuestRunner.Tail(o)}");
        string randMd5 = m.Groups[1].Value;
        byte[] baseBinAfter = (byte[])baseBin.Clone();
        Array.Clear(baseBinAfter, 40960, 12288);

        Assert.Equal(baseHash, FileHash.Of(baseRaw));
        QemuImg.AssertClean(overlay);
        var info = QemuImg.Info(overlay);
        Assert.Equal("base.raw", info.GetProperty("backing-filename").GetString());
        Assert.Equal("raw", info.GetProperty("backing-filename-format").GetString());
        Assert.False(info.TryGetProperty("dirty-flag", out var dirty) && dirty.GetBoolean(), $"overlay left dirty: {info}");
        Assert.Equal(maker == "qemu-img-v2" ? "0.10" : "1.1",
            info.GetProperty("format-specific").GetProperty("data").GetProperty("compat").GetString());
        // The overlay holds what the guest changed, not a copy of the base.
        long allocated;
        using (var q = Qcow2Disk.Open(overlay, readOnly: true)) allocated = q.AllocatedBytes();
        Assert.InRange(allocated, Cluster, 16 * MiB);
        int zeroClusters = ZeroFlagged(overlay);
        output.WriteLine($"{maker}: overlay holds {allocated / 1024} KiB of data and {zeroClusters} KiB of zero clusters");
        if (maker == "qemu-img-v2") Assert.Equal(0, zeroClusters);
        else Assert.True(zeroClusters > 0, "fstrim on a v3 overlay left no zero clusters");

        // The host sees the guest's files through qemu-img's reading of the overlay.
        string flat = dir["flat.raw"];
        QemuImg.MustRun("convert", "-f", "qcow2", "-O", "raw", overlay, flat);
        Assert.Contains("from-guest-42", Tool("debugfs", dir.Path, "-R", "cat /guest.txt", flat));
        Assert.Contains("hello-from-the-base", Tool("debugfs", dir.Path, "-R", "cat /hello.txt", flat));
        Assert.Contains("not found", Tool("debugfs", dir.Path, "-R", "stat /gone.txt", flat));
        Tool("debugfs", dir.Path, "-R", $"dump /d/rand.bin {dir["rand.bin"]}", flat);
        Assert.Equal(randMd5, Md5(File.ReadAllBytes(dir["rand.bin"])));
        Tool("debugfs", dir.Path, "-R", $"dump /base.bin {dir["base.bin"]}", flat);
        Assert.Equal(Md5(baseBinAfter), Md5(File.ReadAllBytes(dir["base.bin"])));
        Tool("e2fsck", dir.Path, "-f", "-n", flat);

        o = Run(Config(
            "mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/guest.txt && md5sum /mnt/d/rand.bin /mnt/base.bin && " +
            "{ [ -e /mnt/gone.txt ] || echo GONE-IS-GONE; } && umount /mnt && echo BOOT2-OK", disks), $"{maker} boot 2");
        Assert.Contains("from-guest-42", o);
        Assert.Contains($"{randMd5}  /mnt/d/rand.bin", o);
        Assert.Contains($"{Md5(baseBinAfter)}  /mnt/base.bin", o);
        Assert.Contains("GONE-IS-GONE", o);
        Assert.Contains("BOOT2-OK", o);
        Assert.Equal(baseHash, FileHash.Of(baseRaw));
        QemuImg.AssertClean(overlay);
    }

    /// <summary>dir/base.raw: a 32 MiB ext4 filesystem (mkfs.ext4 -d) with hello.txt, gone.txt, base.bin (and text.txt).</summary>
    private static string MakeExt4Base(TempDir dir, byte[] baseBin, bool text = false)
    {
        string tree = Directory.CreateDirectory(dir["tree"]).FullName;
        // 1 MiB of text for images meant to compress well.
        if (text)
            File.WriteAllText(Path.Combine(tree, "text.txt"), string.Concat(Enumerable.Range(0, 1 << 20).Select(k => (char)('a' + k % 7 * (k / 4096 % 3 + 1) % 26))));
        File.WriteAllText(Path.Combine(tree, "hello.txt"), "hello-from-the-base\n");
        File.WriteAllText(Path.Combine(tree, "gone.txt"), "the guest deletes this\n");
        File.WriteAllBytes(Path.Combine(tree, "base.bin"), baseBin);
        string baseRaw = dir["base.raw"];
        using (var f = File.Create(baseRaw)) f.SetLength(32 * MiB);
        Tool("mkfs.ext4", dir.Path, "-q", "-F", "-d", tree, baseRaw);
        return baseRaw;
    }

    /// <summary>
    /// raw base &lt;- mid.qcow2 (ours, written by a first guest) &lt;- top.qcow2 (qemu-img's): a second guest reads
    /// every layer and writes only the top; a third gets the top read-only and leaves its bytes as they are.
    /// </summary>
    [Fact]
    public void ThreeLayerChainReadsEveryLayerWritesOnlyTheTopAndReadOnlyChangesNothing()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        byte[] baseBin = SeededBytes(12, 256 * 1024);
        string baseRaw = MakeExt4Base(dir, baseBin), mid = dir["mid.qcow2"], top = dir["top.qcow2"];
        string baseHash = FileHash.Of(baseRaw);
        DiskImage.Create(mid, "qcow2", 32 * MiB, "base.raw", "raw");
        string o = Run(Config("mkdir -p /mnt && mount /dev/vda /mnt && echo mid-layer > /mnt/mid.txt && " +
                              "dd if=/dev/zero of=/mnt/base.bin bs=1024 seek=100 count=1 conv=notrunc 2>/dev/null && umount /mnt",
            [new DiskConfig(mid, DiskFormat.Qcow2, false)]), "chain boot 1 (mid)");
        QemuImg.AssertClean(mid);
        QemuImg.MustRun("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top);
        string midHash = FileHash.Of(mid);

        o = Run(Config("mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/hello.txt /mnt/mid.txt && md5sum /mnt/base.bin && " +
                       "echo top-layer > /mnt/top.txt && echo mid-rewritten-on-top > /mnt/mid.txt && " +
                       "dd if=/dev/zero of=/mnt/base.bin bs=1024 seek=200 count=1 conv=notrunc 2>/dev/null && umount /mnt",
            [new DiskConfig(top, DiskFormat.Auto, false)]), "chain boot 2 (top)");
        byte[] afterMid = (byte[])baseBin.Clone();
        Array.Clear(afterMid, 100 * 1024, 1024);
        byte[] afterTop = (byte[])afterMid.Clone();
        Array.Clear(afterTop, 200 * 1024, 1024);
        Assert.Contains("hello-from-the-base", o);
        Assert.Contains("mid-layer", o);
        Assert.Contains($"{Md5(afterMid)}  /mnt/base.bin", o);
        Assert.Equal(baseHash, FileHash.Of(baseRaw));
        Assert.Equal(midHash, FileHash.Of(mid));
        QemuImg.AssertClean(top);
        string flat = dir["flat.raw"];
        QemuImg.MustRun("convert", "-O", "raw", top, flat);
        Assert.Contains("top-layer", Tool("debugfs", dir.Path, "-R", "cat /top.txt", flat));
        Assert.Contains("mid-rewritten-on-top", Tool("debugfs", dir.Path, "-R", "cat /mid.txt", flat));
        Tool("e2fsck", dir.Path, "-f", "-n", flat);

        string topHash = FileHash.Of(top);
        o = Run(Config("echo RO=$(cat /sys/block/vda/ro); mkdir -p /mnt && mount -o ro /dev/vda /mnt && " +
                       "cat /mnt/top.txt /mnt/mid.txt && md5sum /mnt/base.bin && umount /mnt",
            [new DiskConfig(top, DiskFormat.Auto, true)]), "chain boot 3 (top, read-only)");
        Assert.Contains("RO=1", o);
        Assert.Contains("top-layer", o);
        Assert.Contains("mid-rewritten-on-top", o);
        Assert.Contains($"{Md5(afterTop)}  /mnt/base.bin", o);
        Assert.Equal(topHash, FileHash.Of(top));
        Assert.Equal(midHash, FileHash.Of(mid));
        Assert.Equal(baseHash, FileHash.Of(baseRaw));
    }

    /// <summary>
    /// A compressed image from <c>qemu-img convert -c</c>, booted writable: the guest reads files out of compressed
    /// clusters (several of which share a host cluster) and rewrites parts of them, which stores those clusters
    /// uncompressed and drops the compressed ones' references; qemu-img must find no leaks or corruption.
    /// </summary>
    [Fact]
    public void CompressedImageIsReadAndRewrittenByTheGuestWithoutLeaks()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        byte[] baseBin = SeededBytes(13, 64 * 1024);
        string baseRaw = MakeExt4Base(dir, baseBin, text: true);
        string comp = dir["comp.qcow2"];
        QemuImg.MustRun("convert", "-c", "-f", "raw", "-O", "qcow2", baseRaw, comp);
        var text = File.ReadAllBytes(dir["tree/text.txt"]);
        int compressedBefore = CompressedClusters(comp);
        Assert.True(compressedBefore >= 16, $"qemu-img convert -c left only {compressedBefore} compressed clusters");
        var disks = new[] { new DiskConfig(comp, DiskFormat.Auto, false) };

        string o = Run(Config(
            "mkdir -p /mnt && mount /dev/vda /mnt && md5sum /mnt/text.txt /mnt/base.bin && cat /mnt/hello.txt && " +
            "dd if=/dev/zero of=/mnt/text.txt bs=1024 seek=300 count=5 conv=notrunc 2>/dev/null && echo rewritten > /mnt/hello.txt && " +
            "umount /mnt && echo COMP-OK", disks), "compressed boot 1");
        Assert.Contains($"{Md5(text)}  /mnt/text.txt", o);
        Assert.Contains($"{Md5(baseBin)}  /mnt/base.bin", o);
        Assert.Contains("hello-from-the-base", o);
        Assert.Contains("COMP-OK", o);
        Array.Clear(text, 300 * 1024, 5 * 1024);
        QemuImg.AssertClean(comp);
        int compressedAfter = CompressedClusters(comp);
        output.WriteLine($"compressed clusters: {compressedBefore} before the guest wrote, {compressedAfter} after");
        Assert.InRange(compressedAfter, 1, compressedBefore - 1);
        string flat = dir["flat.raw"];
        QemuImg.MustRun("convert", "-O", "raw", comp, flat);
        Tool("e2fsck", dir.Path, "-f", "-n", flat);
        Tool("debugfs", dir.Path, "-R", $"dump /text.txt {dir["text.out"]}", flat);
        Assert.Equal(Md5(text), Md5(File.ReadAllBytes(dir["text.out"])));

        o = Run(Config("mkdir -p /mnt && mount /dev/vda /mnt && md5sum /mnt/text.txt /mnt/base.bin && cat /mnt/hello.txt && umount /mnt",
            disks), "compressed boot 2");
        Assert.Contains($"{Md5(text)}  /mnt/text.txt", o);
        Assert.Contains($"{Md5(baseBin)}  /mnt/base.bin", o);
        Assert.Contains("rewritten", o);
        QemuImg.AssertClean(comp);
    }

    private static int CompressedClusters(string path)
    {
        using var doc = JsonDocument.Parse(QemuImg.MustRun("check", "--output=json", path));
        return doc.RootElement.TryGetProperty("compressed-clusters", out var c) ? c.GetInt32() : 0;
    }

    /// <summary>KiB of the overlay that read as zeros through its own L2 zero flag (qemu-img map: depth 0, no data).</summary>
    private static int ZeroFlagged(string path)
    {
        using var doc = JsonDocument.Parse(QemuImg.MustRun("map", "--output=json", path));
        long bytes = 0;
        foreach (var e in doc.RootElement.EnumerateArray())
            if (e.GetProperty("depth").GetInt32() == 0 && e.GetProperty("zero").GetBoolean() && !e.GetProperty("data").GetBoolean())
                bytes += e.GetProperty("length").GetInt64();
        return (int)(bytes / 1024);
    }

    // ------------------------------------------------------------------ 2. 100+ MiB of raw device writes

    /// <summary>
    /// One step of the guest's write sequence, applied to /dev/vda (qcow2) and /dev/vdb (raw) in the guest and to
    /// the expected image on the host. c: O_DIRECT copy from the seed; b: buffered copy (any byte offset; the
    /// kernel writes whole pages); z: O_DIRECT zeros; x: blkdiscard of whole clusters (qcow2 leaves partial
    /// clusters of a discard alone while raw zeroes them, so only whole ones give both disks the same bytes).
    /// </summary>
    private readonly record struct DiskOp(char Fn, long Src, long Dst, long Len);

    // Not a whole number of clusters: the last cluster of the image is partial.
    private const long DiskSize = 160L * MiB + 3584, SeedSize = 8 * MiB;
    private const int Regions = 26;
    private const long RegionSize = 4 * MiB, RegionStride = 6 * MiB + 3584, SeedStride = 77824;

    private static readonly DiskOp[] ExtraOps =
    [
        new('c', 123 * 512 + 7, 5 * MiB - 2560, 5120),                 // gap: straddles a cluster boundary, both unallocated
        new('c', 999, 193L * Cluster + 1536, 1536),                     // inside an allocated cluster of region 2
        new('b', 77, 13 * MiB + 777, 1000),                             // sub-sector and unaligned: page-cache read-modify-write
        new('b', 4242, DiskSize - 1003, 1000),                          // the disk's last sectors, in its partial last cluster
        new('z', 0, 5 * RegionStride + 4096, 300 * 1024),               // zeros written as data
        new('x', 0, 291L * Cluster, 4 * Cluster),                       // whole clusters inside region 3
        new('x', 0, 440L * Cluster, 16 * Cluster),                      // region 4's end and the gap after it
        new('x', 0, 66L * Cluster, 2 * Cluster),                        // never written
        new('c', 17, 291L * Cluster + 4096, 4096),                      // into a discarded cluster: the rest reads as zeros
        new('c', 3 * MiB + 5, 6 * RegionStride + 700 * 512, MiB + 512), // rewrites clusters of region 6, unaligned at both ends
    ];

    /// <summary>Ranges the guest reads back (O_DIRECT) and hashes: the places where the operations meet.</summary>
    private static readonly (long Offset, long Length)[] ReadBacks =
    [
        (5 * MiB - Cluster, 2 * Cluster), (193L * Cluster, Cluster), (13 * MiB, Cluster), (DiskSize - Cluster, Cluster),
        (5 * RegionStride, 512 * 1024), (288L * Cluster, 8 * Cluster), (446L * Cluster, 8 * Cluster),
        (6 * RegionStride + 700 * 512 - Cluster, MiB + 2 * Cluster), (25 * RegionStride, RegionSize),
    ];

    private static IEnumerable<DiskOp> AllOps()
    {
        for (int i = 0; i < Regions; i++) yield return new('c', i * SeedStride, i * RegionStride, RegionSize);
        foreach (var op in ExtraOps) yield return op;
    }

    private static string WriteScript()
    {
        var s = new StringBuilder();
        s.Append("u(){ cut -d' ' -f1 /proc/uptime; }; ");
        s.Append("dd if=/dev/vdc of=/tmp/r bs=1M 2>/dev/null || exit 3; t0=$(u); ");
        s.Append("c(){ dd if=/tmp/r of=/dev/$d bs=$3 count=1 iflag=skip_bytes skip=$1 oflag=seek_bytes,direct seek=$2 2>/dev/null || exit 4; }; ");
        s.Append("b(){ dd if=/tmp/r of=/dev/$d bs=$3 count=1 iflag=skip_bytes skip=$1 oflag=seek_bytes seek=$2 conv=notrunc,fsync 2>/dev/null || exit 5; }; ");
        s.Append("z(){ dd if=/dev/zero of=/dev/$d bs=$3 count=1 oflag=seek_bytes,direct seek=$2 2>/dev/null || exit 6; }; ");
        s.Append("x(){ blkdiscard -o $2 -l $3 /dev/$d || exit 7; }; ");
        s.Append("for d in vda vdb; do ");
        s.Append($"for i in $(seq 0 {Regions - 1}); do c $((i*{SeedStride})) $((i*{RegionStride})) {RegionSize}; done; ");
        foreach (var op in ExtraOps) s.Append(CultureInfo.InvariantCulture, $"{op.Fn} {op.Src} {op.Dst} {op.Len}; ");
        s.Append("echo WROTE $d $(u); done; sync; echo WRITE-TIME $t0 $(u); ");
        s.Append("r(){ echo R $1 $2 $(dd if=/dev/vda bs=64K iflag=skip_bytes,count_bytes,direct skip=$1 count=$2 2>/dev/null | md5sum); }; ");
        foreach (var (off, len) in ReadBacks) s.Append(CultureInfo.InvariantCulture, $"r {off} {len}; ");
        return s.ToString();
    }

    /// <summary>
    /// The disk as the operations leave it, and which clusters a qcow2 image must have allocated. A buffered write
    /// reaches the disk as the dirty blocks of the page cache: 512-byte ones here (the disk size is not a multiple
    /// of 4 KiB), or whole pages with another block size; <paramref name="pageWriteback"/> picks the model.
    /// </summary>
    private static (byte[] Image, bool[] Allocated) Expected(byte[] seed, int clusterSize, bool pageWriteback)
    {
        var img = new byte[DiskSize];
        var alloc = new bool[(DiskSize + clusterSize - 1) / clusterSize];
        foreach (var op in AllOps())
        {
            long first = op.Dst / clusterSize, last = (op.Dst + op.Len - 1) / clusterSize;
            if (op.Fn == 'b' && pageWriteback)
            {
                first = op.Dst / 4096 * 4096 / clusterSize;
                last = (Math.Min(DiskSize, (op.Dst + op.Len + 4095) / 4096 * 4096) - 1) / clusterSize;
            }
            switch (op.Fn)
            {
                case 'c' or 'b':
                    seed.AsSpan((int)op.Src, (int)op.Len).CopyTo(img.AsSpan((int)op.Dst));
                    break;
                case 'z':
                    img.AsSpan((int)op.Dst, (int)op.Len).Clear();
                    break;
                case 'x':
                    Assert.True(op.Dst % clusterSize == 0 && op.Len % clusterSize == 0, "discards in this test cover whole clusters");
                    img.AsSpan((int)op.Dst, (int)op.Len).Clear();
                    for (long c = first; c <= last; c++) alloc[c] = false;
                    continue;
            }
            for (long c = first; c <= last; c++) alloc[c] = true;
        }
        return (img, alloc);
    }

    [Theory]
    [InlineData("dirigent", 16)]
    [InlineData("dirigent", 9)]   // 512-byte clusters: ~215000 of them, thousands of L2 tables and refcount blocks
    [InlineData("qemu-img", 16)]
    public void GuestWritesOver100MiBStraightToTheDeviceAndTheImageMatchesARawMirror(string maker, int clusterBits)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string vda = dir["vda.qcow2"], vdb = dir["vdb.raw"], vdc = dir["seed.raw"];
        int clusterSize = 1 << clusterBits;
        if (maker == "dirigent") DiskImage.Create(vda, "qcow2", DiskSize, clusterBits: clusterBits);
        else QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", $"cluster_size={clusterSize}", vda, DiskSize.ToString(CultureInfo.InvariantCulture));
        DiskImage.Create(vdb, "raw", DiskSize);
        // Random data from the host: /dev/urandom in the guest runs at well under 1 MiB/s on the software CPU.
        byte[] seed = SeededBytes(2026, (int)SeedSize);
        File.WriteAllBytes(vdc, seed);
        long written = AllOps().Where(op => op.Fn != 'x').Sum(op => op.Len);
        Assert.True(written > 100 * MiB);

        string script = WriteScript();
        var sw = Stopwatch.StartNew();
        string o = Run(Config(script,
        [
            new DiskConfig(vda, DiskFormat.Qcow2, false), new DiskConfig(vdb, DiskFormat.Raw, false),
            new DiskConfig(vdc, DiskFormat.Raw, true),
        ]), "device writes");
        double wall = sw.Elapsed.TotalSeconds;
        var t = Regex.Match(o, @"WRITE-TIME ([0-9.]+) ([0-9.]+)");
        Assert.True(t.Success, $"no timing line:\n{GuestRunner.Tail(o)}");
        var vdaDone = Regex.Match(o, @"WROTE vda ([0-9.]+)");
        Assert.True(vdaDone.Success, $"no timing line for vda:\n{GuestRunner.Tail(o)}");
        double Seconds(Group g) => double.Parse(g.Value, CultureInfo.InvariantCulture);
        double qcow2Seconds = Seconds(vdaDone.Groups[1]) - Seconds(t.Groups[1]), rawSeconds = Seconds(t.Groups[2]) - Seconds(vdaDone.Groups[1]);
        output.WriteLine($"guest wrote {written / (double)MiB:F1} MiB to vda (qcow2) in {qcow2Seconds:F2} s and to vdb (raw) in {rawSeconds:F2} s " +
                         $"(guest uptime); whole run {wall:F1} s wall");

        var (expected, alloc) = Expected(seed, clusterSize, pageWriteback: false);
        var (_, allocPages) = Expected(seed, clusterSize, pageWriteback: true);
        // What the guest read back through the qcow2 device.
        foreach (var (off, len) in ReadBacks)
        {
            string want = Md5(expected.AsSpan((int)off, (int)len));
            Assert.True(o.Contains($"R {off} {len} {want}", StringComparison.Ordinal),
                $"guest read of [{off}, +{len}) on the qcow2 disk does not hash to {want}:\n{GuestRunner.Tail(o)}");
        }

        QemuImg.AssertClean(vda);
        var (rc, cmpOut, cmpErr) = QemuImg.Run("compare", "-f", "qcow2", "-F", "raw", vda, vdb);
        Assert.True(rc == 0, $"qemu-img compare vda.qcow2 vdb.raw: {rc} {cmpOut}{cmpErr}");
        // The raw mirror holds exactly what the host expects (so the two disks did not merely agree on a wrong result).
        using (var raw = DiskImage.Open(vdb, "raw", readOnly: true)) AssertSameBytes(expected, raw, "vdb.raw");
        // Our own reader of the qcow2 file agrees, and the image holds the clusters written and not discarded since.
        using (var q = Qcow2Disk.Open(vda, readOnly: true))
        {
            AssertSameBytes(expected, q, "vda.qcow2 through Qcow2Disk");
            long clusters = alloc.Count(a => a), clustersPages = allocPages.Count(a => a);
            Assert.InRange(q.AllocatedBytes(), clusters * clusterSize, clustersPages * clusterSize);
            output.WriteLine($"vda.qcow2: {q.AllocatedBytes() / clusterSize} clusters of {clusterSize} B allocated ({q.AllocatedBytes() / (double)MiB:F1} MiB), " +
                             $"file {new FileInfo(vda).Length / (double)MiB:F1} MiB");
        }
    }

    private static void AssertSameBytes(byte[] expected, IBlockDevice disk, string what)
    {
        Assert.Equal(expected.Length, disk.Size);
        var chunk = new byte[MiB];
        for (long pos = 0; pos < disk.Size; pos += chunk.Length)
        {
            var have = chunk.AsSpan(0, (int)Math.Min(chunk.Length, disk.Size - pos));
            disk.Read(pos, have);
            int same = expected.AsSpan((int)pos, have.Length).CommonPrefixLength(have);
            Assert.True(same == have.Length, $"{what} differs from the expected image first at byte {pos + same}");
        }
    }

    // ------------------------------------------------------------------ 3. images that cannot be opened

    [Theory]
    [InlineData("missing-backing")]
    [InlineData("backing-loop")]
    [InlineData("self-loop")]
    [InlineData("missing-image")]
    public void DiskThatCannotBeOpenedIsOneLineAndStatus2WithoutBooting(string kind)
    {
        using var dir = new TempDir();
        // A good qcow2 disk before the bad one: it must be closed again (lock released, dirty bit cleared).
        string good = dir["good.qcow2"];
        DiskImage.Create(good, "qcow2", MiB);
        string bad = dir["bad.qcow2"], named;
        switch (kind)
        {
            case "missing-backing":
                File.WriteAllBytes(dir["gone.raw"], new byte[MiB]);
                DiskImage.Create(bad, "qcow2", MiB, "gone.raw", "raw");
                File.Delete(dir["gone.raw"]);
                named = "gone.raw";
                break;
            case "backing-loop":
                QemuImg.Require();
                DiskImage.Create(dir["other.qcow2"], "qcow2", MiB);
                DiskImage.Create(bad, "qcow2", MiB, "other.qcow2", "qcow2");
                QemuImg.MustRun("rebase", "-u", "-f", "qcow2", "-b", "bad.qcow2", "-F", "qcow2", dir["other.qcow2"]);
                named = "bad.qcow2 -> other.qcow2 -> bad.qcow2";
                break;
            case "self-loop":
                QemuImg.Require();
                DiskImage.Create(bad, "qcow2", MiB);
                QemuImg.MustRun("rebase", "-u", "-f", "qcow2", "-b", "bad.qcow2", "-F", "qcow2", bad);
                named = "bad.qcow2 -> bad.qcow2";
                break;
            case "missing-image":
                named = bad;
                break;
            default: throw new ArgumentException(kind);
        }

        var err = new StringWriter();
        var stdout = new MemoryStream();
        var cfg = Config("echo SHOULD-NOT-RUN",
            [new DiskConfig(good, DiskFormat.Auto, false), new DiskConfig(bad, DiskFormat.Auto, false)]);
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        int rc = VmLauncher.Run(cfg, err, Stream.Null, stdout, useTerminal: false, cancel: cts.Token);
        string e = err.ToString();
        output.WriteLine($"{kind}: status {rc}, stderr: {e.TrimEnd()}");
        Assert.Equal(ExitCodes.BadInput, rc);
        Assert.Equal(0, stdout.Length);
        Assert.True(e.EndsWith('\n') && e.IndexOf('\n') == e.Length - 1, $"expected exactly one line on stderr, got: {e}");
        Assert.StartsWith("dirigent run: ", e);
        Assert.Contains(named, e);

        using var reopened = Qcow2Disk.Open(good, readOnly: false);
        Assert.False(reopened.WasDirty, "the good disk was left open or dirty by the failed start");
    }
}
