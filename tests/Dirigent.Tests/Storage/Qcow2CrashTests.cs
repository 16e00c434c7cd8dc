using System.Text.Json;
using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>
/// A process killed in the middle of any write leaves an image that `qemu-img check` finds free of corruption
/// (leaks are allowed), where everything the guest flushed reads back (and each later write either did or did not
/// happen), and that our next writable open repairs to clean. The kill is simulated by refusing every file write
/// from the Nth on (all I/O is synchronous pwrite, so the file then holds exactly what a killed process would have
/// left in the page cache).
/// </summary>
public class Qcow2CrashTests
{
    private sealed record Op(int Kind, long Offset, int Length, int Seed);

    /// <summary>Small operations on 4 KiB clusters over a backing file, killed at every single write in turn.</summary>
    [Fact]
    public void KillAtEveryWriteOfSmallOperations() =>
        Run(clusterBits: 12, size: 1L << 20, withBacking: true, opCount: 50, maxLength: 12 << 10, seed: 30, growthWindow: false, points: int.MaxValue);

    /// <summary>512-byte clusters: kills around the move of the refcount table to a bigger one, and a few elsewhere.</summary>
    [Fact]
    public void KillWhileTheRefcountTableMoves() =>
        Run(clusterBits: 9, size: 24L << 20, withBacking: false, opCount: 700, maxLength: 64 << 10, seed: 20, growthWindow: true, points: 3);

    /// <summary>
    /// v2 images have no dirty bit, so nothing repairs them after a kill: the next writer must step over clusters
    /// counted past the end of the file instead of counting them twice (refcount 2 on a writable cluster).
    /// </summary>
    [Fact]
    public void KilledWriterOnVersion2ImageLeavesNothingTheNextWriterCountsTwice()
    {
        QemuImg.Require();
        using var dir = new TempDir(inMemory: true);
        for (int crashAt = 0; crashAt < 8; crashAt++)
        {
            string img = dir["v2.qcow2"];
            File.Delete(img);
            QemuImg.MustRun("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4096", img, "1M");
            var first = Enumerable.Repeat((byte)0xAB, 3000).ToArray();
            using (var d = Qcow2Disk.Open(img, readOnly: false))
            {
                d.WritesBeforeCrash = crashAt;
                Assert.Throws<IOException>(() => { d.Write(0, first); d.Write(8192, first); d.Flush(); });
            }
            var second = Enumerable.Repeat((byte)0xCD, 9000).ToArray();
            using (var d = Qcow2Disk.Open(img, readOnly: false))
            {
                Assert.False(d.Repaired);
                d.Write(100_000, second);
                var back = new byte[second.Length];
                d.Read(100_000, back);
                Assert.Equal(second, back);
            }
            var check = Qcow2Check.Run(img);
            Assert.True(check.Corruptions == 0, $"crash at write {crashAt}: {check.ToText()}");
            var (rc, o, e) = QemuImg.Run("check", img);
            Assert.True(rc is 0 or 3, $"crash at write {crashAt}: qemu-img check exited {rc}: {o}{e}");
        }
    }

    private static void Run(int clusterBits, long size, bool withBacking, int opCount, int maxLength, int seed, bool growthWindow, int points)
    {
        QemuImg.Require();
        using var dir = new TempDir(inMemory: true);
        var rng = new Random(seed);
        byte[] baseData = new byte[size];
        if (withBacking)
        {
            rng.NextBytes(baseData);
            File.WriteAllBytes(dir["base.raw"], baseData);
        }
        var ops = new List<Op>();
        for (int i = 0; i < opCount; i++)
        {
            // Writes, zeroing, discards, and the guest's flushes (what a kill must not undo).
            int kind = rng.Next(12) switch { < 7 => 0, < 9 => 1, < 10 => 2, _ => 3 };
            int len = rng.Next(1, maxLength);
            ops.Add(new Op(kind, rng.NextInt64(0, size - len), len, rng.Next()));
        }

        string Fresh(string name)
        {
            string p = dir[name];
            File.Delete(p);
            if (withBacking) Qcow2Disk.Create(p, size, "base.raw", "raw", clusterBits);
            else Qcow2Disk.Create(p, size, clusterBits: clusterBits);
            return p;
        }

        // One uncrashed run to learn how many writes the sequence makes and where the refcount table moves.
        long total, moved;
        using (var d = Qcow2Disk.Open(Fresh("full.qcow2"), readOnly: false))
        {
            long start = d.WritesDone;
            foreach (var op in ops) Apply(d, null, op);
            total = d.WritesDone - start;
            moved = d.RefcountTableMovedAtWrite - start;
        }
        QemuImg.AssertClean(dir["full.qcow2"]);

        var crashPoints = new SortedSet<long>();
        if (growthWindow)
        {
            Assert.True(moved > 0, "the sequence should move the refcount table");
            for (long k = -2; k <= 4; k++) crashPoints.Add(Math.Clamp(moved + k, 0, total - 1));
        }
        for (long i = 0; i < Math.Min(points, total); i++) crashPoints.Add(total * i / Math.Min(points, total));
        int n = 0;
        foreach (long crashAt in crashPoints)
        {
            string img = Fresh("crash.qcow2");
            var model = (byte[])baseData.Clone();
            // What the guest may read back after the kill: per byte, the flushed contents or what a later operation wrote.
            var candidates = new List<byte[]> { (byte[])model.Clone() };
            Op? inFlight = null;
            using (var d = Qcow2Disk.Open(img, readOnly: false))
            {
                d.WritesBeforeCrash = crashAt;
                foreach (var op in ops)
                {
                    try
                    {
                        Apply(d, model, op);
                        if (op.Kind == 3) candidates.Clear();
                        candidates.Add((byte[])model.Clone());
                    }
                    catch (IOException e) when (e.Message == "simulated crash")
                    {
                        inFlight = op;
                        candidates.Add((byte[])model.Clone()); // Apply updated the model before the write that failed
                        break;
                    }
                }
            }
            Assert.NotNull(inFlight);

            var check = Qcow2Check.Run(img);
            int leaks = check.Leaks;
            Assert.True(check.Corruptions == 0, $"crash at write {crashAt} of {total}: {check.ToText()}");
            // qemu-img check, on a sample (each run costs tens of milliseconds), must agree with the in-process checker.
            bool sample = growthWindow || n++ % 16 == 0;
            if (sample)
            {
                var (rc, o, err) = QemuImg.Run("check", "--output=json", img);
                Assert.True(rc is 0 or 3, $"crash at write {crashAt}: qemu-img check exited {rc}: {err}{o}");
                using var doc = JsonDocument.Parse(o);
                Assert.True(!doc.RootElement.TryGetProperty("corruptions", out var c) || c.GetInt32() == 0, $"crash at write {crashAt}: {o}");
                Assert.Equal(leaks, doc.RootElement.TryGetProperty("leaks", out var l) ? l.GetInt32() : 0);
            }

            using (var d = Qcow2Disk.Open(img, readOnly: false))
            {
                Assert.True(d.Repaired, $"crash at write {crashAt}: the image should have been dirty");
                var all = new byte[size];
                d.Read(0, all);
                string? lost = Mismatch(all, candidates);
                Assert.True(lost == null, $"crash at write {crashAt}: flushed writes were lost: {lost}");
            }
            var after = Qcow2Check.Run(img);
            Assert.True(after.Corruptions == 0 && after.Leaks == 0, after.ToText());
            if (sample) QemuImg.AssertClean(img);
        }
    }

    /// <summary>Null when every byte of <paramref name="actual"/> equals that byte in one of <paramref name="candidates"/>.</summary>
    internal static string? Mismatch(byte[] actual, List<byte[]> candidates)
    {
        for (int i = 0; i < actual.Length; i++)
        {
            bool ok = false;
            foreach (var c in candidates) if (c[i] == actual[i]) { ok = true; break; }
            if (!ok) return $"byte {i} is 0x{actual[i]:x2}, expected one of {string.Join(",", candidates.Select(c => c[i].ToString("x2")).Distinct())}";
        }
        return null;
    }

    /// <summary>Applies the operation to the model first (so a failure inside it leaves the would-be result there), then to the disk.</summary>
    private static void Apply(Qcow2Disk d, byte[]? model, Op op)
    {
        switch (op.Kind)
        {
            case 0:
                var data = new byte[op.Length];
                new Random(op.Seed).NextBytes(data);
                if (model != null) data.CopyTo(model, op.Offset);
                d.Write(op.Offset, data);
                break;
            case 1:
                if (model != null) model.AsSpan((int)op.Offset, op.Length).Clear();
                d.WriteZeroes(op.Offset, op.Length);
                break;
            case 2:
                long cs = d.ClusterSize, first = (op.Offset + cs - 1) / cs * cs, end = (op.Offset + op.Length) / cs * cs;
                if (model != null && end > first) model.AsSpan((int)first, (int)(end - first)).Clear();
                d.Discard(op.Offset, op.Length);
                break;
            default:
                d.Flush();
                break;
        }
    }
}
