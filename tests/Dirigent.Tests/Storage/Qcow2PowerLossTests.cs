using Dirigent.Storage;

namespace Dirigent.Tests.Storage;

/// <summary>
/// Power loss, simulated: every host write and fdatasync of a session is recorded; at a cut point, what is on the
/// disk is every write before the last fdatasync plus any subset of the 512-byte sectors written after it (the page
/// cache writes back in any order). Such an image must have no corruption (leaks are fine), must hold everything
/// the guest had flushed (later writes may or may not be there), and must be repaired to clean by a writable open.
/// </summary>
public class Qcow2PowerLossTests
{
    internal sealed record Op(int Kind, long Offset, int Length, int Seed);

    /// <summary>Records host writes (offset, bytes) and syncs (null) in order.</summary>
    internal sealed class Trace
    {
        public readonly List<(long Offset, byte[] Data)?> Events = [];
        public Qcow2Disk.HostHooks Hooks() => new()
        {
            Write = (off, data) => Events.Add((off, data.ToArray())),
            Sync = () => Events.Add(null),
        };
    }

    internal static List<Op> Ops(Random rng, long size, int count, int maxLength)
    {
        var ops = new List<Op>();
        for (int i = 0; i < count; i++)
        {
            int kind = rng.Next(12) switch { < 7 => 0, < 9 => 1, < 10 => 2, _ => 3 };
            int len = rng.Next(1, maxLength);
            ops.Add(new Op(kind, rng.NextInt64(0, size - len), len, rng.Next()));
        }
        return ops;
    }

    /// <summary>The guest's view after the operation: its bytes in <paramref name="model"/> (zeroing and discard: zeros where they take effect).</summary>
    internal static void ApplyToModel(byte[] model, Op op, int clusterSize)
    {
        switch (op.Kind)
        {
            case 0: new Random(op.Seed).NextBytes(model.AsSpan((int)op.Offset, op.Length)); break;
            case 1: model.AsSpan((int)op.Offset, op.Length).Clear(); break;
            case 2:
                long first = (op.Offset + clusterSize - 1) / clusterSize * clusterSize, end = (op.Offset + op.Length) / clusterSize * clusterSize;
                if (end > first) model.AsSpan((int)first, (int)(end - first)).Clear();
                break;
        }
    }

    internal static void ApplyToDisk(IBlockDevice d, Op op)
    {
        switch (op.Kind)
        {
            case 0:
                var data = new byte[op.Length];
                new Random(op.Seed).NextBytes(data);
                d.Write(op.Offset, data);
                break;
            case 1: d.WriteZeroes(op.Offset, op.Length); break;
            case 2: d.Discard(op.Offset, op.Length); break;
            default: d.Flush(); break;
        }
    }

    /// <summary>
    /// Null when each byte of <paramref name="actual"/> is what <paramref name="flushed"/> holds or what one of
    /// <paramref name="later"/> operations put there.
    /// </summary>
    internal static string? Check(byte[] actual, byte[] flushed, IEnumerable<Op> later, int clusterSize)
    {
        var ok = new bool[actual.Length];
        for (int i = 0; i < actual.Length; i++) ok[i] = actual[i] == flushed[i];
        foreach (var op in later)
        {
            long from = op.Offset, to = op.Offset + op.Length;
            if (op.Kind == 2) { from = (from + clusterSize - 1) / clusterSize * clusterSize; to = to / clusterSize * clusterSize; }
            if (op.Kind == 3 || to <= from) continue;
            var bytes = new byte[to - from]; // zeroing and discard: zeros
            if (op.Kind == 0) new Random(op.Seed).NextBytes(bytes);
            for (long i = from; i < to; i++) ok[i] |= bytes[i - from] == actual[i];
        }
        int bad = Array.IndexOf(ok, false);
        return bad < 0 ? null : $"byte {bad} is 0x{actual[bad]:x2}, flushed 0x{flushed[bad]:x2}";
    }

    [Fact]
    public void OneAllocatingWriteIsOrderedDataAndRefcountsThenL2ThenL1()
    {
        using var dir = new TempDir(inMemory: true);
        string img = dir["t.qcow2"];
        Qcow2Disk.Create(img, 1 << 20, clusterBits: 12);
        var b = File.ReadAllBytes(img);
        long rt = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48));
        long rb = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)rt));
        long l1 = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(40));
        long end = b.Length;
        var trace = new Trace();
        using (var d = Qcow2Disk.Open(img, readOnly: false, trace.Hooks()))
        {
            trace.Events.Clear(); // the open's dirty bit
            d.Write(8192, new byte[4096]);
            d.Flush();
        }
        string Name((long Offset, byte[] Data)? e) => e == null ? "sync" : e.Value.Offset switch
        {
            < 4096 => "header",
            var o when o >= rb && o < rb + 4096 => "refcount",
            var o when o >= l1 && o < l1 + 4096 => "L1",
            var o when o == end => "new L2 table",
            var o when o > end && o < end + 4096 => "L2 entry",
            _ => "data",
        };
        Assert.Equal(
            "refcount,new L2 table,refcount,data,sync,L2 entry,sync,L1,sync,sync,header,header,sync",
            string.Join(",", trace.Events.Select(Name)));
    }

    [Theory]
    [InlineData(12, 1L << 20, true, 60, 12 << 10, 41, 400)]
    [InlineData(9, 24L << 20, false, 700, 64 << 10, 42, 40)]
    public void PowerLossAtAnyPointKeepsFlushedDataAndLeavesNoCorruption(int clusterBits, long size, bool backing, int opCount, int maxLength, int seed, int cuts)
    {
        using var dir = new TempDir(inMemory: true);
        var rng = new Random(seed);
        var baseData = new byte[size];
        string img = dir["p.qcow2"];
        if (backing)
        {
            rng.NextBytes(baseData);
            File.WriteAllBytes(dir["base.raw"], baseData);
            Qcow2Disk.Create(img, size, "base.raw", "raw", clusterBits);
        }
        else Qcow2Disk.Create(img, size, clusterBits: clusterBits);
        var initial = File.ReadAllBytes(img);
        var ops = Ops(rng, size, opCount, maxLength);
        int cs = 1 << clusterBits;

        // The session, recorded: where each operation starts, and where each guest flush has completed.
        var trace = new Trace();
        var opStart = new List<int>();
        var flushDone = new List<(int Event, int Op)>();
        long moved;
        using (var d = Qcow2Disk.Open(img, readOnly: false, trace.Hooks()))
        {
            for (int i = 0; i < ops.Count; i++)
            {
                opStart.Add(trace.Events.Count);
                ApplyToDisk(d, ops[i]);
                if (ops[i].Kind == 3) flushDone.Add((trace.Events.Count, i));
            }
            moved = d.RefcountTableMovedAtWrite;
        }
        flushDone.Add((trace.Events.Count, ops.Count - 1)); // close flushes everything
        if (!backing) Assert.True(moved >= 0, "the workload should move the refcount table");

        long maxEnd = trace.Events.Max(e => e is { } w ? w.Offset + w.Data.Length : 0);
        maxEnd = Math.Max(maxEnd, initial.Length);
        var points = new SortedSet<int>();
        for (int k = 0; k < cuts; k++) points.Add((int)((long)trace.Events.Count * k / cuts));
        points.Add(trace.Events.Count);
        var syncs = Enumerable.Range(0, trace.Events.Count).Where(i => trace.Events[i] == null).ToList();
        foreach (int s in syncs.Where((_, i) => i % Math.Max(1, syncs.Count / 20) == 0)) { points.Add(s); points.Add(s + 1); }

        int n = 0;
        foreach (int cut in points)
        {
            int lastSync = trace.Events.FindLastIndex(Math.Max(0, cut - 1), cut == 0 ? 0 : cut, e => e == null);
            var image = new byte[maxEnd];
            initial.CopyTo(image, 0);
            long length = initial.Length;
            void Put(long off, ReadOnlySpan<byte> data)
            {
                length = Math.Max(length, off + data.Length);
                data.CopyTo(image.AsSpan((int)off));
            }
            for (int i = 0; i < lastSync; i++)
                if (trace.Events[i] is { } w) Put(w.Offset, w.Data);
            // After the last sync: any subset of sectors.
            var pick = new Random(seed * 7919 + cut);
            for (int i = Math.Max(lastSync, 0); i < cut; i++)
            {
                if (trace.Events[i] is not { } w) continue;
                for (long p = w.Offset; p < w.Offset + w.Data.Length;)
                {
                    long next = Math.Min((p / 512 + 1) * 512, w.Offset + w.Data.Length);
                    if (pick.Next(2) == 0) Put(p, w.Data.AsSpan((int)(p - w.Offset), (int)(next - p)));
                    p = next;
                }
            }
            string crashed = dir["crashed.qcow2"];
            File.WriteAllBytes(crashed, image[..(int)length]);

            var check = Qcow2Check.Run(crashed);
            Assert.True(check.Corruptions == 0 && check.CheckErrors == 0, $"power loss after event {cut} of {trace.Events.Count}:\n{check.ToText()}");

            // The guest's data: what its last completed flush had, or what later operations wrote.
            int flushedOp = flushDone.Where(f => f.Event <= cut).Select(f => f.Op).DefaultIfEmpty(-1).Last();
            var flushed = (byte[])baseData.Clone();
            for (int i = 0; i <= flushedOp; i++) ApplyToModel(flushed, ops[i], cs);
            var later = ops.Where((_, i) => i > flushedOp && opStart[i] < cut);
            var actual = new byte[size];
            using (var d = Qcow2Disk.Open(crashed, readOnly: true)) d.Read(0, actual);
            string? lost = Check(actual, flushed, later, cs);
            Assert.True(lost == null, $"power loss after event {cut} of {trace.Events.Count}: {lost}");

            if (n++ % 4 == 0)
            {
                using (var d = Qcow2Disk.Open(crashed, readOnly: false)) { }
                var after = Qcow2Check.Run(crashed);
                Assert.True(after.Corruptions == 0 && after.Leaks == 0, $"after repair, cut {cut}:\n{after.ToText()}");
            }
        }
    }
}
