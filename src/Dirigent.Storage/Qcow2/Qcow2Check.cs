using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;

namespace Dirigent.Storage;

/// <summary>
/// What <see cref="Qcow2Check.Run"/> found, counted in the same sense as <c>qemu-img check</c> (same numbers on the
/// same image): a corruption is a cluster referenced more often than its refcount says, a reference that cannot be
/// counted (past the end of the file, unaligned, reserved bits, a refcount block that is not referenced exactly
/// once) or a QCOW_OFLAG_COPIED flag that disagrees with the refcount; a leak is a cluster whose refcount is higher
/// than its references (wasted space only). <see cref="Problems"/> says which, one line each, and also names the
/// overlaps behind the counts (an L2 entry pointing into the L1 table, a refcount table entry pointing at an L2
/// table...), which qemu-img only shows as a refcount mismatch.
/// </summary>
public sealed class Qcow2CheckResult
{
    public required string Path { get; init; }
    public int Corruptions { get; internal set; }
    public int Leaks { get; internal set; }
    /// <summary>Reads that failed or refcount blocks that could not be read: the check is incomplete.</summary>
    public int CheckErrors { get; internal set; }
    public long ImageEndOffset { get; internal set; }
    public long TotalClusters { get; internal set; }
    public long AllocatedClusters { get; internal set; }
    public long FragmentedClusters { get; internal set; }
    public long CompressedClusters { get; internal set; }
    public bool Dirty { get; internal set; }
    public IReadOnlyList<string> Problems => _problems;
    /// <summary>Problems found beyond <see cref="MaxProblems"/> (counted, not listed).</summary>
    public int ProblemsNotListed { get; private set; }

    public const int MaxProblems = 1000;
    private readonly List<string> _problems = [];

    internal void Problem(string line)
    {
        if (_problems.Count < MaxProblems) _problems.Add(line);
        else ProblemsNotListed++;
    }

    /// <summary>qemu-img check's exit status: 0 clean, 1 the check could not complete, 2 corruptions, 3 leaks only.</summary>
    public int ExitStatus => CheckErrors > 0 ? 1 : Corruptions > 0 ? 2 : Leaks > 0 ? 3 : 0;

    /// <summary>qemu-img check --output=json's fields (all of them, zeros included), plus "dirty" and "problems".</summary>
    public JsonObject ToJson() => new()
    {
        ["filename"] = Path,
        ["format"] = "qcow2",
        ["check-errors"] = CheckErrors,
        ["corruptions"] = Corruptions,
        ["leaks"] = Leaks,
        ["image-end-offset"] = ImageEndOffset,
        ["total-clusters"] = TotalClusters,
        ["allocated-clusters"] = AllocatedClusters,
        ["fragmented-clusters"] = FragmentedClusters,
        ["compressed-clusters"] = CompressedClusters,
        ["dirty"] = Dirty,
        ["problems"] = new JsonArray([.. _problems.Select(p => (JsonNode?)JsonValue.Create(p))]),
    };

    /// <summary>The problems, one a line, then qemu-img check's summary.</summary>
    public string ToText()
    {
        var sb = new StringBuilder();
        foreach (var p in _problems) sb.Append(p).Append('\n');
        if (ProblemsNotListed > 0) sb.Append(CultureInfo.InvariantCulture, $"... and {ProblemsNotListed} more\n");
        if (_problems.Count > 0) sb.Append('\n');
        if (Corruptions == 0 && Leaks == 0 && CheckErrors == 0) sb.Append("No errors were found on the image.\n");
        if (Corruptions > 0)
            sb.Append(CultureInfo.InvariantCulture, $"{Corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n");
        if (Leaks > 0)
            sb.Append(CultureInfo.InvariantCulture, $"{Leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n");
        if (CheckErrors > 0)
            sb.Append(CultureInfo.InvariantCulture, $"{CheckErrors} internal errors have occurred during the check.\n");
        if (Dirty) sb.Append("The image is dirty (not closed cleanly); opening it for writing rebuilds its refcounts.\n");
        double Pct(long n) => TotalClusters == 0 ? 0 : 100.0 * n / TotalClusters;
        double PctOf(long n) => AllocatedClusters == 0 ? 0 : 100.0 * n / AllocatedClusters;
        sb.Append(CultureInfo.InvariantCulture,
            $"{AllocatedClusters}/{TotalClusters} = {Pct(AllocatedClusters):0.00}% allocated, {PctOf(FragmentedClusters):0.00}% fragmented, {PctOf(CompressedClusters):0.00}% compressed clusters\n");
        sb.Append(CultureInfo.InvariantCulture, $"Image end offset: {ImageEndOffset}\n");
        return sb.ToString();
    }
}

/// <summary>
/// A read-only consistency check of a qcow2 image, following QEMU's qcow2_check_refcounts (block/qcow2-refcount.c)
/// step by step so that the counts agree with <c>qemu-img check</c>: count every reference (header, active and
/// snapshot L1 tables, their L2 tables, data and compressed clusters, snapshot table, refcount table and blocks),
/// compare with the stored refcounts, then check QCOW_OFLAG_COPIED. The same walk gives the writable open's refcount
/// rebuild its counts and tells it when the image is too broken to rebuild without overwriting metadata.
/// </summary>
public static class Qcow2Check
{
    /// <summary>Checks the image at <paramref name="path"/>; throws <see cref="BlockDeviceException"/> when it cannot be read as qcow2 at all.</summary>
    public static Qcow2CheckResult Run(string path)
    {
        using var file = DiskImage.OpenFile(path, readOnly: true);
        long length = RandomAccess.GetLength(file);
        var h = Qcow2Header.Read(file, path, length);
        var walk = new Walk(path, h, length, (off, dst) => ReadZeroFilled(file, off, dst));
        walk.Run();
        return walk.Result;
    }

    internal delegate void Reader(long offset, Span<byte> dst);

    internal static void ReadZeroFilled(SafeFileHandle file, long offset, Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            int n = RandomAccess.Read(file, dst[done..], offset + done);
            if (n == 0) break;
            done += n;
        }
        dst[done..].Clear(); // QEMU's file driver reads zeros past the end of the file too
    }

    /// <summary>What a cluster is used as, for naming overlaps (QEMU's metadata overlap classes, coarser).</summary>
    [Flags]
    private enum Use : byte { None = 0, Meta = 1, L2 = 2, Data = 4, Compressed = 8 }

    /// <summary>One pass over an image: the reference counts, the result, and the overlaps a rebuild must refuse.</summary>
    internal sealed class Walk
    {
        private const ulong L1eOffsetMask = 0x00FF_FFFF_FFFF_FE00UL;
        private const ulong L1eReservedMask = 0x7F00_0000_0000_01FFUL;
        private const ulong L2eOffsetMask = 0x00FF_FFFF_FFFF_FE00UL;
        private const ulong L2eStdReservedMask = 0x3F00_0000_0000_01FEUL;
        private const ulong ReftOffsetMask = 0xFFFF_FFFF_FFFF_FE00UL;
        private const ulong ReftReservedMask = 0x1FFUL;
        private const ulong OflagCopied = 1UL << 63, OflagCompressed = 1UL << 62;

        private readonly Qcow2Header _h;
        private readonly long _fileLength;
        private readonly Reader _read;
        private readonly int _cb;
        private readonly long _cs;
        private readonly int _rbBits;
        private readonly int _csizeShift;
        private readonly ulong _csizeMask, _coffsetMask;
        private readonly ulong[] _reftable;
        private readonly Dictionary<long, ushort[]> _storedBlocks = [];
        private readonly byte[] _buf;
        private ushort[] _refs;
        private Use[] _use;
        private readonly Dictionary<long, string> _metaNames = [];
        /// <summary>How far <see cref="_refs"/> is valid: the file's clusters, grown as QEMU grows its array.</summary>
        private long _nbClusters;

        public Qcow2CheckResult Result { get; }
        /// <summary>Problems a refcount rewrite cannot fix: references it cannot count, overlapping metadata.</summary>
        public List<string> Structural { get; } = [];
        public long NbClusters => _nbClusters;
        public int RefsOf(long cluster) => cluster < _nbClusters ? _refs[cluster] : 0;

        public Walk(string path, Qcow2Header h, long fileLength, Reader read)
        {
            _h = h;
            _fileLength = fileLength;
            _read = read;
            _cb = h.ClusterBits;
            _cs = 1L << _cb;
            _rbBits = _cb - 1; // 16-bit refcounts
            _csizeShift = 62 - (_cb - 8);
            _csizeMask = (1UL << (_cb - 8)) - 1;
            _coffsetMask = (1UL << _csizeShift) - 1;
            _buf = new byte[_cs];
            _nbClusters = (fileLength + _cs - 1) >> _cb;
            if (_nbClusters > 1L << 28) throw new BlockDeviceException($"'{path}': image too large to check ({fileLength} bytes)");
            _refs = new ushort[_nbClusters];
            _use = new Use[_nbClusters];
            _reftable = new ulong[h.RefcountTableClusters * _cs / 8];
            ReadTable(h.RefcountTableOffset, _reftable);
            Result = new Qcow2CheckResult
            {
                Path = path,
                Dirty = (h.IncompatibleFeatures & Qcow2Header.IncompatDirty) != 0,
                TotalClusters = (h.Size + _cs - 1) >> _cb,
            };
        }

        private string Hex(long v) => "0x" + v.ToString("x", CultureInfo.InvariantCulture);

        private void Corrupt(string line) { Result.Corruptions++; Result.Problem("ERROR " + line); }

        private void ReadTable(long offset, ulong[] table)
        {
            var bytes = new byte[Math.Min(table.Length * 8L, 1 << 20)];
            for (long i = 0; i < table.Length;)
            {
                int count = (int)Math.Min(table.Length - i, bytes.Length / 8);
                var chunk = bytes.AsSpan(0, count * 8);
                _read(offset + i * 8, chunk);
                for (int j = 0; j < count; j++) table[i + j] = BinaryPrimitives.ReadUInt64BigEndian(chunk[(j * 8)..]);
                i += count;
            }
        }

        /// <summary>QEMU's qcow2_inc_refcounts_imrt, plus a note of what uses each cluster so overlaps can be named.</summary>
        private void Count(long offset, long size, Use use, string what)
        {
            if (size <= 0) return;
            // The last cluster may be partly past the end of the file; a region a whole cluster or more past it is not counted.
            if (offset + size - _fileLength >= _cs)
            {
                Corrupt($"{what} at {Hex(offset)} ({size} bytes) lies past the end of the file ({_fileLength} bytes)");
                Structural.Add($"{what} at {Hex(offset)} lies past the end of the file");
                return;
            }
            for (long c = offset >> _cb, last = (offset + size - 1) >> _cb; c <= last; c++)
            {
                if (c >= _nbClusters) Grow(c + 1);
                if (_refs[c] == ushort.MaxValue)
                {
                    Corrupt($"refcount overflow for cluster at {Hex(c << _cb)}");
                    Structural.Add($"cluster at {Hex(c << _cb)} is referenced more than {ushort.MaxValue} times");
                    continue;
                }
                if (_refs[c] > 0) NoteOverlap(c, use, what);
                _refs[c]++;
                _use[c] |= use;
                if (use is Use.Meta or Use.L2) _metaNames.TryAdd(c, what);
            }
        }

        private void NoteOverlap(long c, Use use, string what)
        {
            Use had = _use[c];
            bool snapshots = _h.NbSnapshots > 0;
            bool bad = use == Use.Meta || (had & Use.Meta) != 0
                || (use == Use.L2 && (had & ~Use.L2) != 0) || ((had & Use.L2) != 0 && use != Use.L2)
                || (use == Use.Data && (had & Use.Compressed) != 0) || (use == Use.Compressed && (had & Use.Data) != 0)
                // Without snapshots nothing may share a table or a standard cluster.
                || (!snapshots && use is Use.Data or Use.L2);
            if (!bad) return;
            string other = _metaNames.TryGetValue(c, out var n) ? n : (had & Use.Compressed) != 0 ? "a compressed cluster" : "a data cluster";
            string line = $"cluster at {Hex(c << _cb)} is used twice: as {other} and as {what}";
            Result.Problem("overlap: " + line);
            Structural.Add(line);
        }

        private void Grow(long n)
        {
            long size = Math.Max(n, _refs.Length + (_refs.Length >> 1));
            Array.Resize(ref _refs, (int)Math.Min(size, int.MaxValue));
            Array.Resize(ref _use, _refs.Length);
            _nbClusters = n;
        }

        public void Run()
        {
            Count(0, _cs, Use.Meta, "the header");
            CheckL1(_h.L1TableOffset, _h.L1Size, "the L1 table", active: true);
            long snapshotsSize = CheckSnapshots();
            if (snapshotsSize > 0) Count(_h.SnapshotsOffset, snapshotsSize, Use.Meta, "the snapshot table");
            Count(_h.RefcountTableOffset, _reftable.Length * 8L, Use.Meta, "the refcount table");
            CheckRefblocks();
            CompareRefcounts();
            CheckCopiedFlags();
        }

        /// <summary>QEMU's check_refcounts_l1 and check_refcounts_l2.</summary>
        private void CheckL1(long l1Offset, long l1Size, string name, bool active)
        {
            if (l1Size == 0) return;
            Count(l1Offset, l1Size * 8, Use.Meta, name);
            var l1 = new ulong[l1Size];
            ReadTable(l1Offset, l1);
            var l2 = new ulong[_cs / 8];
            for (long i = 0; i < l1.Length; i++)
            {
                if (l1[i] == 0) continue;
                if ((l1[i] & L1eReservedMask) != 0) Corrupt($"{name} entry {i} has reserved bits set: {l1[i]:x}");
                long l2Offset = (long)(l1[i] & L1eOffsetMask);
                string l2Name = $"the L2 table for guest offset {Hex(i << (_cb + _cb - 3))}" + (active ? "" : $" of {name}");
                Count(l2Offset, _cs, Use.L2, l2Name);
                if ((l2Offset & (_cs - 1)) != 0)
                {
                    Corrupt($"L2 table offset {Hex(l2Offset)} in {name} entry {i} is not cluster-aligned");
                    Structural.Add($"L2 table offset {Hex(l2Offset)} is not cluster-aligned");
                }
                ReadTable(l2Offset, l2);
                CheckL2(l2, i, active);
            }
        }

        private void CheckL2(ulong[] l2, long l1Index, bool active)
        {
            long nextContiguous = 0;
            for (int j = 0; j < l2.Length; j++)
            {
                ulong e = l2[j];
                long guest = ((l1Index << (_cb - 3)) + j) << _cb;
                string what = $"the data cluster of guest offset {Hex(guest)}";
                if ((e & OflagCompressed) != 0)
                {
                    if ((e & OflagCopied) != 0) Corrupt($"compressed cluster of guest offset {Hex(guest)} has the COPIED flag");
                    long coffset = (long)(e & _coffsetMask);
                    long sectors = (long)((e >> _csizeShift) & _csizeMask) + 1;
                    Count(coffset, sectors * 512 - (coffset & 511), Use.Compressed, $"the compressed cluster of guest offset {Hex(guest)}");
                    if (active) { Result.AllocatedClusters++; Result.CompressedClusters++; Result.FragmentedClusters++; }
                    continue;
                }
                if ((e & L2eStdReservedMask) != 0) Corrupt($"L2 entry of guest offset {Hex(guest)} has reserved bits set: {e:x}");
                long offset = (long)(e & L2eOffsetMask);
                if (offset == 0) continue; // unallocated or a plain zero cluster
                if ((offset & (_cs - 1)) != 0)
                {
                    Corrupt($"{what} at {Hex(offset)} is not cluster-aligned");
                    Structural.Add($"{what} at {Hex(offset)} is not cluster-aligned");
                }
                if (active)
                {
                    Result.AllocatedClusters++;
                    if (nextContiguous != 0 && offset != nextContiguous) Result.FragmentedClusters++;
                    nextContiguous = offset + _cs;
                }
                Count(offset, _cs, Use.Data, what);
            }
        }

        /// <summary>Walks the snapshot table (QEMU's qcow2_read_snapshots layout) and their L1 tables; returns the table's size.</summary>
        private long CheckSnapshots()
        {
            if (_h.NbSnapshots == 0) return 0;
            long pos = _h.SnapshotsOffset;
            Span<byte> fixedPart = stackalloc byte[40];
            for (uint i = 0; i < _h.NbSnapshots; i++)
            {
                pos = (pos + 7) & ~7L;
                if (pos >= _fileLength)
                {
                    Result.CheckErrors++;
                    Result.Problem($"ERROR snapshot table entry {i} at {Hex(pos)} lies past the end of the file");
                    return pos - _h.SnapshotsOffset;
                }
                _read(pos, fixedPart);
                long l1Offset = (long)BinaryPrimitives.ReadUInt64BigEndian(fixedPart);
                uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[8..]);
                int idSize = BinaryPrimitives.ReadUInt16BigEndian(fixedPart[12..]);
                int nameSize = BinaryPrimitives.ReadUInt16BigEndian(fixedPart[14..]);
                uint extra = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[36..]);
                pos += 40 + extra + idSize + nameSize;
                if ((l1Offset & (_cs - 1)) != 0) { Corrupt($"snapshot {i}: L1 table offset {Hex(l1Offset)} is not cluster-aligned"); continue; }
                if (l1Size > Qcow2Header.MaxL1Bytes / 8) { Corrupt($"snapshot {i}: L1 table of {l1Size} entries is too large"); continue; }
                CheckL1(l1Offset, l1Size, $"the L1 table of snapshot {i}", active: false);
            }
            return pos - _h.SnapshotsOffset;
        }

        /// <summary>QEMU's check_refblocks: every refcount block is counted, and must be referenced exactly once.</summary>
        private void CheckRefblocks()
        {
            for (long i = 0; i < _reftable.Length; i++)
            {
                ulong rte = _reftable[i];
                long offset = (long)(rte & ReftOffsetMask);
                if ((rte & ReftReservedMask) != 0)
                {
                    Corrupt($"refcount table entry {i} has reserved bits set");
                    Structural.Add($"refcount table entry {i} has reserved bits set");
                    continue;
                }
                if ((offset & (_cs - 1)) != 0)
                {
                    Corrupt($"refcount block {i} at {Hex(offset)} is not cluster-aligned");
                    Structural.Add($"refcount block {i} at {Hex(offset)} is not cluster-aligned");
                    continue;
                }
                long cluster = offset >> _cb;
                if (cluster >= _nbClusters)
                {
                    Corrupt($"refcount block {i} at {Hex(offset)} lies past the end of the file");
                    Structural.Add($"refcount block {i} at {Hex(offset)} lies past the end of the file");
                    continue;
                }
                if (offset == 0) continue;
                Count(offset, _cs, Use.Meta, $"refcount block {i}");
                if (_refs[cluster] != 1)
                {
                    Corrupt($"refcount block {i} at {Hex(offset)} is referenced {_refs[cluster]} times");
                    Structural.Add($"refcount block {i} at {Hex(offset)} is also used as something else");
                }
            }
        }

        /// <summary>The refcount the image stores for a cluster; null when it cannot be read (QEMU: -EIO).</summary>
        private int? Stored(long cluster)
        {
            long ti = cluster >> _rbBits;
            if (ti >= _reftable.Length) return 0;
            long block = (long)(_reftable[ti] & ReftOffsetMask);
            if (block == 0) return 0;
            if ((block & (_cs - 1)) != 0) return null;
            if (!_storedBlocks.TryGetValue(ti, out var values))
            {
                _read(block, _buf);
                values = new ushort[_cs / 2];
                for (int k = 0; k < values.Length; k++) values[k] = BinaryPrimitives.ReadUInt16BigEndian(_buf.AsSpan(k * 2));
                _storedBlocks[ti] = values;
            }
            return values[cluster & ((1L << _rbBits) - 1)];
        }

        /// <summary>QEMU's compare_refcounts: lower than the references is a corruption, higher a leak.</summary>
        private void CompareRefcounts()
        {
            long highest = 0;
            for (long i = 0; i < _nbClusters; i++)
            {
                int? stored = Stored(i);
                if (stored == null)
                {
                    Result.CheckErrors++;
                    Result.Problem($"ERROR cannot read the refcount of cluster {i}: its refcount block is not cluster-aligned");
                    continue;
                }
                int refs = _refs[i];
                if (stored > 0 || refs > 0) highest = i;
                if (stored == refs) continue;
                if (stored < refs)
                {
                    string use = _metaNames.TryGetValue(i, out var n) ? $" ({n})" : "";
                    Corrupt($"cluster {i}{use} refcount={stored} reference={refs}");
                }
                else
                {
                    Result.Leaks++;
                    Result.Problem($"Leaked cluster {i} refcount={stored} reference={refs}");
                }
            }
            Result.ImageEndOffset = (highest + 1) << _cb;
        }

        /// <summary>QEMU's check_oflag_copied: COPIED on an active L1/L2 entry exactly when the stored refcount is 1.</summary>
        private void CheckCopiedFlags()
        {
            var l1 = new ulong[_h.L1Size];
            ReadTable(_h.L1TableOffset, l1);
            var l2 = new ulong[_cs / 8];
            for (long i = 0; i < l1.Length; i++)
            {
                long l2Offset = (long)(l1[i] & L1eOffsetMask);
                if (l2Offset == 0) continue;
                int? rc = Stored(l2Offset >> _cb);
                if (rc == null) continue;
                if ((rc == 1) != ((l1[i] & OflagCopied) != 0))
                    Corrupt($"OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1[i]:x} refcount={rc}");
                ReadTable(l2Offset, l2);
                foreach (ulong e in l2)
                {
                    if ((e & OflagCompressed) != 0) continue;
                    long offset = (long)(e & L2eOffsetMask);
                    if (offset == 0) continue;
                    int? drc = Stored(offset >> _cb);
                    if (drc == null) continue;
                    if ((drc == 1) != ((e & OflagCopied) != 0))
                        Corrupt($"OFLAG_COPIED data cluster: l2_entry={e:x} refcount={drc}");
                }
            }
        }
    }
}
