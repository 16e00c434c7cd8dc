using System.Buffers.Binary;

namespace Dirigent.Storage;

/// <summary>L2 table cache, cluster allocation, refcounts (incl. growing the refcount table) and repair.</summary>
public sealed partial class Qcow2Disk
{
    private sealed class L2Slot
    {
        public long Offset;
        public required ulong[] Entries;
        public long Stamp;
        /// <summary>Entries [DirtyLo, DirtyHi) changed in the cache and not yet written (see WriteBackMetadata).</summary>
        public int DirtyLo = int.MaxValue, DirtyHi;
        /// <summary>The L1 index whose entry is to point at this new table once the table is on the disk; -1: none.</summary>
        public long PendingL1 = -1;
    }

    private readonly L2Slot?[] _l2Cache;
    private long _l2Clock;
    private L2Slot? _lastL2;
    private ulong[] _reftable;
    private readonly Dictionary<long, ushort[]> _refblocks = [];
    private readonly int _rbBits;
    /// <summary>Where the next cluster is appended: new clusters always go at the end of the file.</summary>
    private long _nextFree;

    /// <summary>Every cluster holding metadata of a writable image, and what it holds (for the overlap check).</summary>
    private readonly Dictionary<long, string> _meta = [];

    private int L2Entries => 1 << _l2Bits;

    /// <summary>
    /// Records the clusters of the header, the L1 table, the refcount table and blocks and the L2 tables before the
    /// image is written; two of them in one cluster (a refcount table entry pointing at the L1 table...) means any
    /// write would destroy one of them, so such an image is not opened for writing at all. Entries that lie outside
    /// the file or are unaligned are left out here: using them fails on its own (see CheckL2Offset, GetRefblock).
    /// </summary>
    private void MapMetadata()
    {
        AddMetadata(0, _clusterSize, "the header");
        AddMetadata(_h.L1TableOffset, _l1.Length * 8L, "the L1 table");
        AddMetadata(_h.RefcountTableOffset, (long)_h.RefcountTableClusters * _clusterSize, "the refcount table");
        for (long ti = 0; ti < _reftable.Length; ti++)
        {
            long off = (long)(_reftable[ti] & ~511UL);
            if (off != 0 && (off & _clusterMask) == 0 && off + _clusterSize <= _fileLength) AddMetadata(off, _clusterSize, $"refcount block {ti}");
        }
        for (long i = 0; i < _l1.Length; i++)
        {
            long off = (long)(_l1[i] & OffsetMask);
            if (off != 0 && (off & _clusterMask) == 0 && off + _clusterSize <= _fileLength)
                AddMetadata(off, _clusterSize, $"the L2 table for guest offset 0x{i << (_clusterBits + _l2Bits):x}");
        }
    }

    private void AddMetadata(long offset, long length, string what)
    {
        for (long c = offset >> _clusterBits; c <= (offset + length - 1) >> _clusterBits; c++)
            if (!_meta.TryAdd(c, what))
                throw Corrupt($"{what} at 0x{offset:x} overlaps {_meta[c]}; not opening it for writing (see 'dirigent disk check {Path}')");
    }
    private int RefblockEntries => 1 << _rbBits;

    // ---------------------------------------------------------------- L2 tables

    private ulong LookupL2Entry(long offset)
    {
        long vc = offset >> _clusterBits;
        long l1Index = vc >> _l2Bits;
        ulong l1e = _l1[l1Index];
        if ((l1e & OffsetMask) == 0) return 0;
        return GetL2(CheckL2Offset(l1e)).Entries[vc & (L2Entries - 1)];
    }

    private (L2Slot Slot, int Index) GetL2ForWrite(long offset)
    {
        long vc = offset >> _clusterBits;
        long l1Index = vc >> _l2Bits;
        int idx = (int)(vc & (L2Entries - 1));
        ulong l1e = _l1[l1Index];
        if ((l1e & OffsetMask) != 0) return (GetL2(CheckL2Offset(l1e)), idx);

        long host = AllocateCluster();
        _zeros ??= new byte[_clusterSize];
        WriteFile(host, _zeros);
        AddMetadata(host, _clusterSize, $"the L2 table for guest offset 0x{l1Index << (_clusterBits + _l2Bits):x}");
        var slot = InsertL2(host, new ulong[L2Entries]);
        // The L1 entry is written once the table is on the disk (WriteBackMetadata); until then the cache has it.
        _l1[l1Index] = (ulong)host | L1Copied;
        slot.PendingL1 = l1Index;
        return (slot, idx);
    }

    private long CheckL2Offset(ulong l1e)
    {
        long off = (long)(l1e & OffsetMask);
        if ((off & _clusterMask) != 0) throw Corrupt($"L2 table offset 0x{off:x} is not cluster-aligned");
        if (off + _clusterSize > _fileLength || off < _clusterSize) throw Corrupt($"L2 table at 0x{off:x} lies outside the file");
        return off;
    }

    private L2Slot GetL2(long offset)
    {
        // Sequential I/O stays within one table for a long time: try the last one first.
        if (_lastL2 != null && _lastL2.Offset == offset) return _lastL2;
        foreach (var s in _l2Cache)
        {
            if (s != null && s.Offset == offset) { s.Stamp = ++_l2Clock; return _lastL2 = s; }
        }
        var entries = new ulong[L2Entries];
        ReadFile(offset, _metaBuf);
        for (int i = 0; i < entries.Length; i++) entries[i] = BinaryPrimitives.ReadUInt64BigEndian(_metaBuf.AsSpan(i * 8));
        return InsertL2(offset, entries);
    }

    private L2Slot InsertL2(long offset, ulong[] entries)
    {
        int victim = 0;
        for (int i = 0; i < _l2Cache.Length; i++)
        {
            if (_l2Cache[i] == null) { victim = i; break; }
            if (_l2Cache[i]!.Stamp < _l2Cache[victim]!.Stamp) victim = i;
        }
        // A table with changes not yet on the disk is written back (with the barriers that takes) before it leaves.
        var old = _l2Cache[victim];
        if (old != null && (old.DirtyHi > old.DirtyLo || old.PendingL1 >= 0)) WriteBackMetadata();
        var slot = new L2Slot { Offset = offset, Entries = entries, Stamp = ++_l2Clock };
        _l2Cache[victim] = slot;
        return _lastL2 = slot;
    }

    private static void SetL2Entry(L2Slot slot, int idx, ulong value)
    {
        slot.Entries[idx] = value;
        MarkDirty(slot, idx, 1);
    }

    // ---------------------------------------------------------------- allocation and refcounts

    /// <summary>Appends one cluster with refcount 1; the caller writes it before linking it anywhere.</summary>
    private long AllocateCluster()
    {
        long host = TakeClusters(1);
        AdjustRefcount(host >> _clusterBits, +1);
        return host;
    }

    /// <summary>
    /// The next <paramref name="count"/> clusters at the end of the file that nothing counts yet. A writer killed
    /// after counting a cluster but before writing it leaves a refcount past the end of the file (v2 images have
    /// no dirty bit to trigger a repair): such clusters are stepped over rather than counted twice.
    /// </summary>
    private long TakeClusters(long count)
    {
        long skipped = 0;
        for (long run = 0; run < count; run++)
        {
            if (RefcountIfKnown((_nextFree >> _clusterBits) + run) != 0)
            {
                _nextFree += (run + 1) * _clusterSize;
                skipped += run + 1;
                if (skipped > 1 << 16) throw Corrupt("refcounts claim a large area past the end of the file");
                run = -1;
            }
        }
        long host = _nextFree;
        // Appending never reaches metadata (all of it lies inside the file); checked anyway, as QEMU checks overlaps.
        for (long c = 0; c < count; c++)
            if (_meta.TryGetValue((host >> _clusterBits) + c, out var what)) throw Corrupt($"allocating 0x{host + c * _clusterSize:x} would overwrite {what}");
        _nextFree += count * _clusterSize;
        return host;
    }

    private int RefcountIfKnown(long cluster)
    {
        long ti = cluster >> _rbBits;
        if (ti >= _reftable.Length || _reftable[ti] == 0) return 0;
        return GetRefblock(ti, allocate: false).Block[cluster & (RefblockEntries - 1)];
    }

    /// <summary>Raises the refcounts of <paramref name="count"/> (at most 64) consecutive clusters, one write per block.</summary>
    private void IncrementRefcounts(long first, int count)
    {
        Span<byte> b = stackalloc byte[128];
        for (long c = first, end = first + count; c < end;)
        {
            long ti = c >> _rbBits;
            int bi = (int)(c & (RefblockEntries - 1));
            var (block, blockOffset) = GetRefblock(ti, allocate: true);
            int m = (int)Math.Min(end - c, RefblockEntries - bi);
            for (int j = 0; j < m; j++)
            {
                if (block[bi + j] == ushort.MaxValue) throw Corrupt($"refcount of cluster 0x{(c + j) << _clusterBits:x} overflows 16 bits");
                BinaryPrimitives.WriteUInt16BigEndian(b[(j * 2)..], (ushort)(block[bi + j] + 1));
            }
            WriteRefcounts(ti, blockOffset + bi * 2L, b[..(m * 2)]);
            for (int j = 0; j < m; j++) block[bi + j]++;
            c += m;
        }
    }

    private void AdjustRefcount(long cluster, int delta)
    {
        long ti = cluster >> _rbBits;
        int bi = (int)(cluster & (RefblockEntries - 1));
        var (block, blockOffset) = GetRefblock(ti, allocate: delta > 0);
        int v = block[bi] + delta;
        if (v < 0) throw Corrupt($"refcount of cluster 0x{cluster << _clusterBits:x} would drop below zero");
        if (v > ushort.MaxValue) throw Corrupt($"refcount of cluster 0x{cluster << _clusterBits:x} overflows 16 bits");
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)v);
        WriteRefcounts(ti, blockOffset + bi * 2L, b);
        block[bi] = (ushort)v;
    }

    /// <summary>
    /// Refcounts change in the cache only after their write went through; a write that failed may have reached the
    /// file in part, so the block is dropped from the cache and read from the file when next needed.
    /// </summary>
    private void WriteRefcounts(long ti, long offset, ReadOnlySpan<byte> values)
    {
        try { WriteFile(offset, values); }
        catch (IOException)
        {
            _refblocks.Remove(ti);
            throw;
        }
    }

    private (ushort[] Block, long Offset) GetRefblock(long ti, bool allocate)
    {
        if (ti >= _reftable.Length)
        {
            if (!allocate) throw Corrupt($"cluster 0x{ti << (_rbBits + _clusterBits):x} is beyond the refcount table");
            GrowRefcountTable(ti + 1);
        }
        long off = (long)(_reftable[ti] & ~511UL);
        if (off != 0)
        {
            if (_refblocks.TryGetValue(ti, out var cached)) return (cached, off);
            // off < 0: bit 63 set (a wild entry); off + _clusterSize would wrap past the bounds check.
            if (off < 0 || (off & _clusterMask) != 0 || off > _fileLength - _clusterSize)
                throw Corrupt($"refcount block at 0x{off:x} is unaligned or lies outside the file");
            var loaded = new ushort[RefblockEntries];
            ReadFile(off, _metaBuf);
            for (int i = 0; i < loaded.Length; i++) loaded[i] = BinaryPrimitives.ReadUInt16BigEndian(_metaBuf.AsSpan(i * 2));
            _refblocks[ti] = loaded;
            return (loaded, off);
        }
        if (!allocate) throw Corrupt($"no refcount block for cluster 0x{ti << (_rbBits + _clusterBits):x}");

        // A new block at the end of the file; it usually covers itself, which ends the recursion.
        long blockHost = TakeClusters(1);
        var block = new ushort[RefblockEntries];
        long own = blockHost >> _clusterBits;
        bool selfCovered = own >> _rbBits == ti;
        if (selfCovered) block[own & (RefblockEntries - 1)] = 1;
        else AdjustRefcount(own, +1); // counted before the table points at it, like every other cluster
        WriteRefblock(blockHost, block);
        AddMetadata(blockHost, _clusterSize, $"refcount block {ti}");
        // The block is on the disk before the table points at it; the caches change once the table entry is written.
        SyncFile();
        WriteEntry(_h.RefcountTableOffset + ti * 8, (ulong)blockHost);
        _refblocks[ti] = block;
        _reftable[ti] = (ulong)blockHost;
        return (block, blockHost);
    }

    private void WriteRefblock(long offset, ushort[] block)
    {
        for (int i = 0; i < block.Length; i++) BinaryPrimitives.WriteUInt16BigEndian(_metaBuf.AsSpan(i * 2), block[i]);
        WriteFile(offset, _metaBuf);
    }

    /// <summary>
    /// Moves the refcount table to a bigger run of clusters at the end of the file. Everything the new table needs
    /// is counted first (in existing blocks, or in new blocks it alone points at), then the table is written, then
    /// the header switched to it, and only then the old table released: a crash at any point leaks, never corrupts.
    /// </summary>
    private void GrowRefcountTable(long minEntries)
    {
        long perCluster = _clusterSize / 8;
        long entries = Math.Max(minEntries, _reftable.Length * 2L);
        long clusters = (entries + perCluster - 1) / perCluster;
        // The table and the blocks for its own clusters must fit: leave room for what this allocation adds.
        long endCluster = (_nextFree >> _clusterBits) + 2 * clusters + 2;
        entries = Math.Max(clusters * perCluster, (endCluster >> _rbBits) + 2);
        clusters = (entries + perCluster - 1) / perCluster;
        if (clusters * _clusterSize > Qcow2Header.MaxRefcountTableBytes)
            throw new BlockDeviceException($"'{Path}': the image has grown too large for its refcount table");

        long newOffset = TakeClusters(clusters);
        var table = new ulong[clusters * perCluster];
        _reftable.CopyTo(table, 0);
        var fresh = new Dictionary<long, ushort[]>();
        void Count(long cluster)
        {
            long ti = cluster >> _rbBits;
            if (ti < _reftable.Length && _reftable[ti] != 0) { AdjustRefcount(cluster, +1); return; }
            if (!fresh.TryGetValue(ti, out var block))
            {
                if (ti >= table.Length) throw new InvalidOperationException("refcount table growth undersized");
                long b = TakeClusters(1);
                fresh[ti] = block = new ushort[RefblockEntries];
                table[ti] = (ulong)b;
                Count(b >> _clusterBits);
            }
            block[cluster & (RefblockEntries - 1)]++;
        }
        for (long c = 0; c < clusters; c++) Count((newOffset >> _clusterBits) + c);
        foreach (var (ti, block) in fresh) WriteRefblock((long)table[ti], block);
        AddMetadata(newOffset, clusters * _clusterSize, "the refcount table");
        foreach (var (ti, _) in fresh) AddMetadata((long)table[ti], _clusterSize, $"refcount block {ti}");

        var bytes = new byte[table.Length * 8];
        for (int i = 0; i < table.Length; i++) BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), table[i]);
        WriteFile(newOffset, bytes);
        SyncFile(); // the new table and its blocks before the header names it

        long oldOffset = _h.RefcountTableOffset;
        long oldClusters = _h.RefcountTableClusters;
        Span<byte> hdr = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(hdr, (ulong)newOffset);
        BinaryPrimitives.WriteUInt32BigEndian(hdr[8..], (uint)clusters);
        WriteFile(Qcow2Header.OffRefcountTableOffset, hdr);
        RefcountTableMovedAtWrite = WritesDone;
        _h.RefcountTableOffset = newOffset;
        _h.RefcountTableClusters = (uint)clusters;
        _reftable = table;
        foreach (var (ti, block) in fresh) _refblocks[ti] = block;

        SyncFile(); // the header names the new table before the old one's clusters are released
        for (long c = 0; c < oldClusters; c++) AdjustRefcount((oldOffset >> _clusterBits) + c, -1);
    }

    /// <summary>
    /// Repair of a dirty image: recount every reference (header, L1, L2 tables, data and compressed clusters,
    /// refcount table and blocks) with the checker's walk and rewrite all refcount blocks from that count, dropping
    /// leaks. The blocks are rewritten in place, so the image must first be sound apart from its refcounts: a
    /// reference past the end of the file or unaligned, or a cluster used twice (a refcount block that is also the L1
    /// table, an L2 entry pointing into an L2 table...) refuses the open with one line instead of writing refcounts
    /// over metadata. Images with internal snapshots are refused before this runs.
    /// </summary>
    private void RebuildRefcounts()
    {
        long fileClusters = _nextFree >> _clusterBits;
        if (fileClusters > 1L << 27) throw new BlockDeviceException($"'{Path}': image too large to repair (dirty; run 'qemu-img check -r all')");
        var walk = new Qcow2Check.Walk(Path, _h, _fileLength, ReadFile);
        walk.Run();
        string? why = walk.Structural.FirstOrDefault();
        if (why == null && walk.NbClusters > fileClusters) why = $"a reference to 0x{fileClusters << _clusterBits:x} lies past the end of the file";
        if (why != null)
            throw Corrupt($"{why}; it is dirty and its refcounts cannot be rebuilt without that risk (open it read-only, see 'dirigent disk check {Path}', repair with 'qemu-img check -r all')");

        _refblocks.Clear();
        for (long ti = 0; ti < _reftable.Length; ti++)
        {
            long off = (long)(_reftable[ti] & ~511UL);
            if (off == 0) continue;
            var block = new ushort[RefblockEntries];
            long first = ti << _rbBits;
            for (int i = 0; i < block.Length && first + i < fileClusters; i++) block[i] = (ushort)walk.RefsOf(first + i);
            WriteRefblock(off, block);
            _refblocks[ti] = block;
        }
        // Referenced clusters whose range had no refcount block at all get one now (appended, self-counting).
        for (long c = 0; c < fileClusters; c++)
        {
            long ti = c >> _rbBits;
            if (walk.RefsOf(c) != 0 && (ti >= _reftable.Length || _reftable[ti] == 0))
                for (int k = 0; k < walk.RefsOf(c); k++) AdjustRefcount(c, +1);
        }
        SyncFile();
    }
}
