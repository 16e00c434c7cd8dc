using Dirigent.Storage;
using static Dirigent.Tests.Storage.Qcow2PowerLossTests;

namespace Dirigent.Tests.Storage;

/// <summary>
/// The host refusing a write (ENOSPC, EIO) or a sync: the guest's request fails with an I/O error (virtio-blk
/// IOERR: VirtioBlock maps IOException to it), the image's caches stay equal to the file, and nothing the guest
/// flushed is lost. Faults are injected through the image's host I/O hooks, at every write of a workload in turn.
/// </summary>
public class Qcow2FaultTests
{
    private const int ClusterBits = 12;
    private const long Size = 1 << 20;

    private static (string Img, byte[] Base, List<Op> Ops) Setup(TempDir dir, int seed)
    {
        var rng = new Random(seed);
        var baseData = new byte[Size];
        rng.NextBytes(baseData);
        File.WriteAllBytes(dir["base.raw"], baseData);
        string img = dir["f.qcow2"];
        File.Delete(img);
        Qcow2Disk.Create(img, Size, "base.raw", "raw", ClusterBits);
        return (img, baseData, Ops(rng, Size, 40, 12 << 10));
    }

    private static IOException NoSpace() => new("No space left on device (injected)");

    /// <summary>How many host writes the workload and a final flush make after the open.</summary>
    private static int CountWrites(TempDir dir, int seed)
    {
        var (img, _, ops) = Setup(dir, seed);
        int writes = 0;
        bool armed = false;
        using (var d = Qcow2Disk.Open(img, readOnly: false, new Qcow2Disk.HostHooks { Write = (_, _) => { if (armed) writes++; } }))
        {
            armed = true;
            foreach (var op in ops) ApplyToDisk(d, op);
            d.Flush();
            armed = false; // not the close's header writes
        }
        return writes;
    }

    [Fact]
    public void OneFailedHostWriteFailsThatRequestOnlyAndLeavesCachesEqualToTheFile()
    {
        using var dir = new TempDir(inMemory: true);
        int total = CountWrites(dir, 61);
        Assert.True(total > 50, $"{total} writes");
        for (int failAt = 0; failAt < total; failAt++)
        {
            var (img, baseData, ops) = Setup(dir, 61);
            int writes = 0, failedOp = -1;
            bool armed = false;
            var hooks = new Qcow2Disk.HostHooks { Write = (_, _) => { if (armed && writes++ == failAt) throw NoSpace(); } };
            using (var d = Qcow2Disk.Open(img, readOnly: false, hooks))
            {
                armed = true;
                for (int i = 0; i < ops.Count; i++)
                {
                    try { ApplyToDisk(d, ops[i]); }
                    catch (IOException e)
                    {
                        Assert.Contains("injected", e.Message);
                        Assert.Equal(-1, failedOp);
                        failedOp = i;
                        string? m = d.CacheMismatch();
                        Assert.True(m == null, $"write {failAt} failed in op {i}: caches differ from the file: {m}");
                    }
                }
                try { d.Flush(); }
                catch (IOException)
                {
                    // The fault hit the final flush's write-back: it stays pending and the next flush writes it.
                    Assert.Equal(-1, failedOp);
                    failedOp = ops.Count;
                    Assert.Null(d.CacheMismatch());
                    d.Flush();
                }
                Assert.Null(d.CacheMismatch());
            }
            Assert.True(failedOp >= 0, $"write {failAt} was never made");
            var check = Qcow2Check.Run(img);
            Assert.True(check.Corruptions == 0, $"write {failAt}: {check.ToText()}");

            // Every operation but the failed one took effect; the failed one took effect in part or not at all.
            byte[] with = (byte[])baseData.Clone(), without = (byte[])baseData.Clone();
            for (int i = 0; i < ops.Count; i++)
            {
                ApplyToModel(with, ops[i], 1 << ClusterBits);
                if (i != failedOp) ApplyToModel(without, ops[i], 1 << ClusterBits);
            }
            var actual = new byte[Size];
            using (var d = Qcow2Disk.Open(img, readOnly: true)) d.Read(0, actual);
            for (int i = 0; i < actual.Length; i++)
                Assert.True(actual[i] == with[i] || actual[i] == without[i], $"write {failAt} (op {failedOp}): byte {i} is lost");
        }
    }

    [Fact]
    public void HostOutOfSpaceForGoodLosesNothingFlushed()
    {
        using var dir = new TempDir(inMemory: true);
        int total = CountWrites(dir, 62);
        for (int failAt = 0; failAt < total; failAt += 3)
        {
            var (img, baseData, ops) = Setup(dir, 62);
            int writes = 0, lastFlush = -1;
            bool armed = false;
            var failed = new HashSet<int>();
            var hooks = new Qcow2Disk.HostHooks { Write = (_, _) => { if (armed && writes++ >= failAt) throw NoSpace(); } };
            var d = Qcow2Disk.Open(img, readOnly: false, hooks);
            armed = true;
            for (int i = 0; i < ops.Count; i++)
            {
                try
                {
                    ApplyToDisk(d, ops[i]);
                    if (ops[i].Kind == 3) lastFlush = i;
                }
                catch (IOException e)
                {
                    Assert.Contains("injected", e.Message);
                    failed.Add(i);
                }
            }
            try { d.Dispose(); } catch (IOException) { } // the close cannot write either: the image stays dirty

            var check = Qcow2Check.Run(img);
            Assert.True(check.Corruptions == 0, $"writes fail from {failAt}: {check.ToText()}");
            // Flushed: the operations that succeeded before the last flush that did; a failed one may or may not show.
            var flushed = (byte[])baseData.Clone();
            for (int i = 0; i <= lastFlush; i++) if (!failed.Contains(i)) ApplyToModel(flushed, ops[i], 1 << ClusterBits);
            var later = ops.Where((_, i) => i > lastFlush || failed.Contains(i)).ToList();
            var actual = new byte[Size];
            using (var r = Qcow2Disk.Open(img, readOnly: true)) r.Read(0, actual);
            string? lost = Check(actual, flushed, later, 1 << ClusterBits);
            Assert.True(lost == null, $"writes fail from {failAt}: {lost}");
            // Space again: the next writable open repairs what the failed close left.
            using (var w = Qcow2Disk.Open(img, readOnly: false)) { }
            var after = Qcow2Check.Run(img);
            Assert.True(after.Corruptions == 0 && after.Leaks == 0, after.ToText());
        }
    }

    [Fact]
    public void FailedSyncFailsTheFlushAndEveryLaterWriteAndLeavesTheImageDirty()
    {
        using var dir = new TempDir(inMemory: true);
        var (img, baseData, ops) = Setup(dir, 63);
        int syncs = 0, lastFlush = -1, failedFlush = -1;
        bool armed = false;
        var hooks = new Qcow2Disk.HostHooks { Sync = () => { if (armed && syncs++ == 5) throw new IOException("Input/output error (injected)"); } };
        var d = Qcow2Disk.Open(img, readOnly: false, hooks);
        armed = true;
        for (int i = 0; i < ops.Count; i++)
        {
            try
            {
                ApplyToDisk(d, ops[i]);
                if (ops[i].Kind == 3) lastFlush = i;
            }
            catch (IOException e)
            {
                if (failedFlush < 0) { Assert.Contains("injected", e.Message); failedFlush = i; }
                else Assert.Contains("an earlier fdatasync failed", e.Message);
            }
        }
        Assert.True(failedFlush >= 0 && ops.Skip(failedFlush + 1).Any(o => o.Kind == 0), "the workload should write after the failed sync");
        Assert.Throws<IOException>(() => d.Dispose());

        using (var r = Qcow2Disk.Open(img, readOnly: true)) Assert.True(r.WasDirty);
        Assert.Equal(0, Qcow2Check.Run(img).Corruptions);
        var flushed = (byte[])baseData.Clone();
        for (int i = 0; i <= lastFlush; i++) ApplyToModel(flushed, ops[i], 1 << ClusterBits);
        var actual = new byte[Size];
        using (var w = Qcow2Disk.Open(img, readOnly: false))
        {
            Assert.True(w.Repaired);
            w.Read(0, actual);
        }
        Assert.Null(Check(actual, flushed, ops.Skip(lastFlush + 1), 1 << ClusterBits));
    }
}
