using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Dirigent.Storage;

/// <summary>
/// Write ordering that survives power loss, not only a killed process (QEMU's order with cache=writeback).
/// <para>
/// The page cache may write our pwrites to the disk in any order, so the order that matters on power loss is made
/// with fdatasync barriers: (1) guest data and refcount increases are written (pwrite) right away; (2) the L2 entries
/// that point at new clusters, or that drop old ones, stay in the L2 cache (dirty) and the L1 entry of a new L2 table
/// stays pending; (3) at the guest's FLUSH, at close and when a dirty L2 table leaves the cache: fdatasync, then the
/// dirty L2 entries; fdatasync, then the pending L1 entries and the refcount decreases of clusters nothing points at
/// any more; fdatasync (the guest's flush). Hence on the disk a refcount is raised before any table points at the
/// cluster, data is there before the L2 entry that maps it, an L2 table before the L1 entry, and a refcount lowered
/// only once no table points at the cluster: a power loss leaves leaks at worst, and everything the guest flushed.
/// A new refcount block is on the disk before the refcount table points at it, a new refcount table before the
/// header does, and the old table is released only once the header no longer names it.
/// </para>
/// <para>
/// A write the host refuses (ENOSPC, EIO) reaches the guest as an I/O error and leaves the caches equal to the file:
/// refcounts change in memory only after their write succeeded (a refcount block whose write failed part-way is
/// dropped from the cache and read again), dirty L2 entries and pending L1 entries and decreases stay pending and
/// are written at the next flush. A failed fdatasync cannot be retried (the kernel may have dropped the pages it
/// could not write), so after one every write and flush fails and the image stays dirty for the next open to repair.
/// </para>
/// </summary>
public sealed partial class Qcow2Disk
{
    /// <summary>Tests: called before each host write and fdatasync; throwing makes that write or sync fail.</summary>
    internal sealed class HostHooks
    {
        public WriteHook? Write;
        public Action? Sync;
    }

    internal delegate void WriteHook(long offset, ReadOnlySpan<byte> data);

    /// <summary>Opens with <paramref name="hooks"/> seeing every host write and sync, the open's own included.</summary>
    internal static Qcow2Disk Open(string path, bool readOnly, HostHooks hooks) => new(path, readOnly, [], hooks);

    private readonly HostHooks? _hooks;
    /// <summary>Clusters whose refcount drops once the L2 entries that no longer point at them are on the disk.</summary>
    private readonly List<ulong> _pendingReleases = [];
    private bool _syncFailed;

    private void SyncFile()
    {
        if (_syncFailed) throw SyncFailed();
        try
        {
            _hooks?.Sync?.Invoke();
            if (OperatingSystem.IsLinux())
            {
                bool added = false;
                try
                {
                    _file.DangerousAddRef(ref added);
                    if (FDataSync((int)_file.DangerousGetHandle()) != 0)
                        throw new IOException($"fdatasync of '{Path}' failed: {Marshal.GetLastPInvokeErrorMessage()}");
                }
                finally
                {
                    if (added) _file.DangerousRelease();
                }
            }
            else RandomAccess.FlushToDisk(_file);
        }
        catch (IOException)
        {
            _syncFailed = true;
            throw;
        }
    }

    private IOException SyncFailed() => new($"'{Path}': an earlier fdatasync failed, so what reached the disk is unknown; the image takes no more writes until it is reopened (and repaired)");

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int FDataSync(int fd);

    /// <summary>The L2 entry is changed in the cache; it reaches the file at the next write-back.</summary>
    private static void MarkDirty(L2Slot slot, int first, int count)
    {
        slot.DirtyLo = Math.Min(slot.DirtyLo, first);
        slot.DirtyHi = Math.Max(slot.DirtyHi, first + count);
    }

    /// <summary>Drops this image's reference to the cluster an old L2 entry pointed at, once the new entry is on the disk.</summary>
    private void DeferRelease(ulong e, ClusterKind kind)
    {
        if (kind == ClusterKind.Compressed) _decompressedEntry = 0;
        if (kind is ClusterKind.Normal or ClusterKind.ZeroAllocated or ClusterKind.Compressed) _pendingReleases.Add(e);
    }

    /// <summary>Steps (3) of the ordering above, without the final fdatasync; a no-op when nothing is pending.</summary>
    private void WriteBackMetadata()
    {
        bool dirty = false, l1 = false;
        foreach (var s in _l2Cache)
        {
            if (s == null) continue;
            dirty |= s.DirtyHi > s.DirtyLo;
            l1 |= s.PendingL1 >= 0;
        }
        if (!dirty && !l1 && _pendingReleases.Count == 0) return;
        if (_syncFailed) throw SyncFailed();

        // Data and refcount increases before the L2 entries that point at them.
        if (dirty)
        {
            SyncFile();
            foreach (var s in _l2Cache)
                if (s != null && s.DirtyHi > s.DirtyLo) WriteL2Range(s);
        }
        if (!l1 && _pendingReleases.Count == 0) return;
        // L2 tables before the L1 entries that point at them; entries that dropped a cluster before its refcount drops.
        SyncFile();
        foreach (var s in _l2Cache)
        {
            if (s == null || s.PendingL1 < 0) continue;
            WriteEntry(_h.L1TableOffset + s.PendingL1 * 8, _l1[s.PendingL1]);
            s.PendingL1 = -1;
        }
        while (_pendingReleases.Count > 0)
        {
            ulong e = _pendingReleases[^1];
            ReleaseNow(e, Classify(e));
            _pendingReleases.RemoveAt(_pendingReleases.Count - 1);
        }
    }

    private void WriteL2Range(L2Slot s)
    {
        int lo = s.DirtyLo, hi = s.DirtyHi;
        var bytes = new byte[(hi - lo) * 8];
        for (int i = lo; i < hi; i++) BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan((i - lo) * 8), s.Entries[i]);
        WriteFile(s.Offset + lo * 8L, bytes);
        // Only a write that went through makes the range clean; a failed one is written again at the next flush.
        s.DirtyLo = int.MaxValue;
        s.DirtyHi = 0;
    }

    private void ReleaseNow(ulong e, ClusterKind kind)
    {
        switch (kind)
        {
            case ClusterKind.Normal:
            case ClusterKind.ZeroAllocated:
                AdjustRefcount(DataOffset(e) >> _clusterBits, -1);
                break;
            case ClusterKind.Compressed:
                (long start, long len) = CompressedRange(e);
                for (long c = start >> _clusterBits; c <= (start + len - 1) >> _clusterBits; c++) AdjustRefcount(c, -1);
                break;
        }
    }

    /// <summary>
    /// Tests: the first difference between the caches (L1 table, refcount table and blocks, clean L2 tables) and the
    /// file, or null. Dirty L2 entries and pending L1 entries are skipped: they are meant to differ until written.
    /// </summary>
    internal string? CacheMismatch()
    {
        var l1 = new ulong[_l1.Length];
        ReadTable(_h.L1TableOffset, l1);
        var pendingL1 = _l2Cache.Where(s => s != null && s.PendingL1 >= 0).Select(s => s!.PendingL1).ToHashSet();
        for (long i = 0; i < l1.Length; i++)
            if (l1[i] != _l1[i] && !pendingL1.Contains(i)) return $"L1 entry {i}: cache {_l1[i]:x}, file {l1[i]:x}";
        var rt = new ulong[_reftable.Length];
        ReadTable(_h.RefcountTableOffset, rt);
        for (long i = 0; i < rt.Length; i++)
            if (rt[i] != _reftable[i]) return $"refcount table entry {i}: cache {_reftable[i]:x}, file {rt[i]:x}";
        var buf = new byte[_clusterSize];
        foreach (var (ti, block) in _refblocks)
        {
            ReadFile((long)(_reftable[ti] & ~511UL), buf);
            for (int i = 0; i < block.Length; i++)
                if (BinaryPrimitives.ReadUInt16BigEndian(buf.AsSpan(i * 2)) != block[i])
                    return $"refcount of cluster {(ti << _rbBits) + i}: cache {block[i]}, file {BinaryPrimitives.ReadUInt16BigEndian(buf.AsSpan(i * 2))}";
        }
        foreach (var s in _l2Cache)
        {
            if (s == null) continue;
            ReadFile(s.Offset, buf);
            for (int i = 0; i < s.Entries.Length; i++)
            {
                if (i >= s.DirtyLo && i < s.DirtyHi) continue;
                ulong f = BinaryPrimitives.ReadUInt64BigEndian(buf.AsSpan(i * 8));
                if (f != s.Entries[i]) return $"L2 table at 0x{s.Offset:x} entry {i}: cache {s.Entries[i]:x}, file {f:x}";
            }
        }
        return null;
    }
}
