using System.Buffers.Binary;

namespace Dirigent.Tests.Storage;

/// <summary>
/// An independent, in-process `qemu-img check` for the refcount side of a qcow2 file (no snapshots): counts every
/// reference from the header, L1, L2, refcount table and blocks, and compares with the stored refcounts.
/// Errors are clusters referenced more often than counted (dangerous); leaks the reverse (only wasted space).
/// </summary>
public static class RefcountChecker
{
    public static (int Errors, int Leaks, string First) Check(string path)
    {
        var f = File.ReadAllBytes(path);
        int cb = (int)BinaryPrimitives.ReadUInt32BigEndian(f.AsSpan(20));
        long cs = 1L << cb;
        long l1Size = BinaryPrimitives.ReadUInt32BigEndian(f.AsSpan(36));
        long l1Off = (long)BinaryPrimitives.ReadUInt64BigEndian(f.AsSpan(40));
        long rtOff = (long)BinaryPrimitives.ReadUInt64BigEndian(f.AsSpan(48));
        long rtClusters = BinaryPrimitives.ReadUInt32BigEndian(f.AsSpan(56));
        long fileClusters = (f.Length + cs - 1) / cs;
        var refs = new Dictionary<long, int>();
        void Count(long start, long length)
        {
            for (long c = start / cs; c <= (start + length - 1) / cs; c++) refs[c] = refs.GetValueOrDefault(c) + 1;
        }
        ulong U64(long at) => at + 8 <= f.Length ? BinaryPrimitives.ReadUInt64BigEndian(f.AsSpan((int)at)) : 0;
        const ulong mask = 0x00FF_FFFF_FFFF_FE00UL;

        // QEMU_OFLAG_COPIED promises refcount exactly 1: writers write such clusters in place.
        var copied = new List<long>();
        Count(0, cs);
        Count(l1Off, l1Size * 8);
        int csizeShift = 62 - (cb - 8);
        for (long i = 0; i < l1Size; i++)
        {
            long l2 = (long)(U64(l1Off + i * 8) & mask);
            if (l2 == 0) continue;
            Count(l2, cs);
            if ((U64(l1Off + i * 8) & (1UL << 63)) != 0) copied.Add(l2 / cs);
            for (long j = 0; j < cs / 8; j++)
            {
                ulong e = U64(l2 + j * 8);
                if ((e & (1UL << 62)) != 0)
                {
                    long coff = (long)(e & ((1UL << csizeShift) - 1));
                    long sectors = (long)((e >> csizeShift) & ((1UL << (cb - 8)) - 1)) + 1;
                    Count(coff & ~511L, sectors * 512);
                }
                else if ((e & mask) != 0)
                {
                    Count((long)(e & mask), cs);
                    if ((e & (1UL << 63)) != 0) copied.Add((long)(e & mask) / cs);
                }
            }
        }
        Count(rtOff, rtClusters * cs);
        var stored = new Dictionary<long, int>();
        long perBlock = cs / 2;
        for (long ti = 0; ti < rtClusters * cs / 8; ti++)
        {
            long block = (long)(U64(rtOff + ti * 8) & ~511UL);
            if (block == 0) continue;
            Count(block, cs);
            for (long k = 0; k < perBlock; k++)
            {
                long at = block + k * 2;
                int v = at + 2 <= f.Length ? BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan((int)at)) : 0;
                if (v != 0) stored[ti * perBlock + k] = v;
            }
        }
        int errors = 0, leaks = 0;
        string first = "";
        foreach (long c in refs.Keys.Union(stored.Keys))
        {
            int want = refs.GetValueOrDefault(c), have = stored.GetValueOrDefault(c);
            if (have < want || (want > 0 && c >= fileClusters)) { errors++; if (first == "") first = $"cluster {c}: refcount {have}, referenced {want}"; }
            else if (have > want && c < fileClusters) leaks++; // as qemu-img: counts past the end of the file are not leaks
        }
        foreach (long c in copied)
        {
            if (stored.GetValueOrDefault(c) == 1) continue;
            errors++;
            if (first == "") first = $"cluster {c}: marked COPIED with refcount {stored.GetValueOrDefault(c)}";
        }
        return (errors, leaks, first);
    }
}
