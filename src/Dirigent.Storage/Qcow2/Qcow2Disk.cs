using System.Buffers.Binary;
using System.IO.Compression;
using Microsoft.Win32.SafeHandles;

namespace Dirigent.Storage;

/// <summary>
/// A qcow2 image (QEMU's docs/interop/qcow2.txt), versions 2 and 3, 16-bit refcounts, cluster sizes 512 B..2 MiB.
/// Guest cluster N maps through the L1 table (in memory) and an L2 table (cached) to a host cluster, to "zero", to
/// a compressed cluster (read-only: written clusters are stored uncompressed) or to nothing, which reads from the
/// backing image or as zeros. New clusters are appended at the end of the file. Crash ordering: a cluster's
/// refcount is raised before anything points at it and lowered only after nothing does, so a killed process
/// leaves at worst leaked clusters; fdatasync barriers keep that order on the disk through a power loss too (see
/// Qcow2Disk.WriteBack.cs). While open for writing the dirty bit is set; opening a dirty image for writing
/// repairs it by rebuilding every refcount from the L1/L2 tables (see <see cref="RebuildRefcounts"/>).
/// </summary>
public sealed partial class Qcow2Disk : IBlockDevice
{
    private const ulong L1Copied = 1UL << 63;
    private const ulong L2Copied = 1UL << 63;
    private const ulong L2Compressed = 1UL << 62;
    private const ulong L2Zero = 1UL;
    /// <summary>Bits 9-55 of L1/L2 entries: the host offset of a table or a standard cluster.</summary>
    private const ulong OffsetMask = 0x00FF_FFFF_FFFF_FE00UL;
    private const int MaxChainDepth = 64;

    private readonly SafeFileHandle _file;
    private readonly Qcow2Header _h;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly long _clusterMask;
    private readonly int _l2Bits;
    private readonly ulong[] _l1;
    private readonly IBlockDevice? _backing;
    private readonly int _csizeShift;
    private readonly ulong _csizeMask;
    private readonly ulong _coffsetMask;
    /// <summary>Scratch for the cluster being assembled by a partial write (copy-on-write).</summary>
    private readonly byte[] _clusterBuf;
    /// <summary>Scratch for metadata I/O (L2 tables, refcount blocks).</summary>
    private readonly byte[] _metaBuf;
    private byte[]? _decompressed;
    private ulong _decompressedEntry;
    private byte[]? _compressedBuf;
    private long _fileLength;
    private bool _disposed;

    public string Path { get; }
    public long Size { get; }
    public bool ReadOnly { get; }
    public int Version => (int)_h.Version;
    public int ClusterSize => _clusterSize;
    /// <summary>The backing file name exactly as stored in the header (relative to this image's directory).</summary>
    public string? BackingFileName => _h.BackingFile;
    /// <summary>The backing format from the header extension, or what probing found.</summary>
    public string? BackingFormat { get; }
    public IBlockDevice? Backing => _backing;
    /// <summary>The dirty bit was set when the image was opened (a writer did not close it cleanly).</summary>
    public bool WasDirty { get; }
    /// <summary>Opening for writing found the image dirty and rebuilt its refcounts.</summary>
    public bool Repaired { get; }
    public bool HasSnapshots => _h.NbSnapshots > 0;

    /// <summary>Opens a qcow2 image and its backing chain (backing files read-only).</summary>
    public static Qcow2Disk Open(string path, bool readOnly) => new(path, readOnly, []);

    internal Qcow2Disk(string path, bool readOnly, List<string> chain, HostHooks? hooks = null)
    {
        Path = path;
        ReadOnly = readOnly;
        _hooks = hooks;
        _file = DiskImage.OpenFile(path, readOnly);
        try
        {
            _fileLength = RandomAccess.GetLength(_file);
            _h = Qcow2Header.Read(_file, path, _fileLength);
            _clusterBits = _h.ClusterBits;
            _clusterSize = 1 << _clusterBits;
            _clusterMask = _clusterSize - 1;
            _l2Bits = _clusterBits - 3;
            _csizeShift = 62 - (_clusterBits - 8);
            _csizeMask = (1UL << (_clusterBits - 8)) - 1;
            _coffsetMask = (1UL << _csizeShift) - 1;
            _rbBits = _clusterBits - 1; // 16-bit refcounts: cluster_size / 2 entries per block
            _clusterBuf = new byte[_clusterSize];
            _metaBuf = new byte[_clusterSize];
            Size = _h.Size;
            WasDirty = (_h.IncompatibleFeatures & Qcow2Header.IncompatDirty) != 0;

            _l1 = new ulong[_h.L1Size];
            ReadTable(_h.L1TableOffset, _l1);
            _reftable = new ulong[(long)_h.RefcountTableClusters * _clusterSize / 8];
            ReadTable(_h.RefcountTableOffset, _reftable);
            _nextFree = AlignUp(_fileLength);
            _l2Cache = new L2Slot[Math.Clamp((8 << 20) / _clusterSize, 4, 256)];

            if (!readOnly)
            {
                if ((_h.IncompatibleFeatures & Qcow2Header.IncompatCorrupt) != 0)
                    throw new BlockDeviceException($"'{path}' is marked corrupt; open it read-only or repair it with 'qemu-img check -r all'");
                if (_h.NbSnapshots > 0)
                    throw new BlockDeviceException($"'{path}' has {_h.NbSnapshots} internal snapshot(s); writing such images is not supported (open it read-only)");
            }

            chain.Add(System.IO.Path.GetFullPath(path));
            if (_h.BackingFile != null)
            {
                (_backing, string fmt) = OpenBacking(_h.BackingFile, _h.BackingFormat, chain);
                BackingFormat = fmt;
            }

            if (!readOnly)
            {
                MapMetadata();
                if (WasDirty) { RebuildRefcounts(); Repaired = true; }
                // Bitmaps and other autoclear data become stale as soon as we write: the spec has us clear the bits.
                _h.AutoclearFeatures = 0;
                if (_h.Version >= 3)
                {
                    _h.IncompatibleFeatures |= Qcow2Header.IncompatDirty;
                    WriteHeaderFeatures();
                    SyncFile(); // dirty on the disk before anything else changes
                }
            }
        }
        catch
        {
            _backing?.Dispose();
            _file.Dispose();
            throw;
        }
    }

    private (IBlockDevice, string) OpenBacking(string name, string? format, List<string> chain)
    {
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path)) ?? ".";
        string resolved = System.IO.Path.GetFullPath(System.IO.Path.IsPathRooted(name) ? name : System.IO.Path.Combine(dir, name));
        if (chain.Contains(resolved))
            throw new BlockDeviceException($"backing file loop: {string.Join(" -> ", chain.Select(System.IO.Path.GetFileName))} -> {System.IO.Path.GetFileName(resolved)}");
        if (chain.Count >= MaxChainDepth)
            throw new BlockDeviceException($"backing chain of '{chain[0]}' is deeper than {MaxChainDepth} images");
        if (!File.Exists(resolved))
            throw new BlockDeviceException($"backing file '{name}' of '{Path}' not found (looked for '{resolved}')");
        format ??= DiskImage.Probe(resolved);
        return (DiskImage.Open(resolved, format, readOnly: true, chain), format);
    }

    // ---------------------------------------------------------------- reads

    public void Read(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        while (buffer.Length > 0)
        {
            int inCluster = (int)(offset & _clusterMask);
            int n = Math.Min(buffer.Length, _clusterSize - inCluster);
            ulong e = LookupL2Entry(offset);
            if (Classify(e) == ClusterKind.Normal)
            {
                // Clusters that follow each other on the host too are read with one call.
                long host = DataOffset(e) + inCluster;
                n = ContiguousRun(offset, host, n, buffer.Length, needCopied: false);
                ReadFile(host, buffer[..n]);
            }
            else ReadInCluster(offset, inCluster, buffer[..n]);
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>
    /// Extends a run of <paramref name="n"/> bytes at guest <paramref name="offset"/> / host <paramref name="host"/>
    /// over the following clusters while they are standard clusters right behind it on the host.
    /// </summary>
    private int ContiguousRun(long offset, long host, int n, int max, bool needCopied)
    {
        while (n < max)
        {
            ulong next = LookupL2Entry(offset + n);
            if (Classify(next) != ClusterKind.Normal || (needCopied && (next & L2Copied) == 0) || (long)(next & OffsetMask) != host + n) break;
            if (needCopied) CheckNotMetadata(host + n);
            n += Math.Min(max - n, _clusterSize);
        }
        return n;
    }

    private void ReadInCluster(long offset, int inCluster, Span<byte> dst)
    {
        ulong e = LookupL2Entry(offset);
        switch (Classify(e))
        {
            case ClusterKind.Unallocated:
                ReadBacking(offset, dst);
                break;
            case ClusterKind.Zero:
            case ClusterKind.ZeroAllocated:
                dst.Clear();
                break;
            case ClusterKind.Compressed:
                Decompress(e).AsSpan(inCluster, dst.Length).CopyTo(dst);
                break;
            default:
                ReadFile(DataOffset(e) + inCluster, dst);
                break;
        }
    }

    private void ReadBacking(long offset, Span<byte> dst)
    {
        long avail = _backing == null ? 0 : Math.Max(0, _backing.Size - offset);
        int n = (int)Math.Min(avail, dst.Length);
        if (n > 0) _backing!.Read(offset, dst[..n]);
        dst[n..].Clear();
    }

    /// <summary>The cluster's contents before a partial write: backing, zeros, compressed or (shared) host data.</summary>
    private void ReadWholeCluster(ulong e, ClusterKind kind, long virtStart, Span<byte> dst)
    {
        switch (kind)
        {
            case ClusterKind.Unallocated: ReadBacking(virtStart, dst); break;
            case ClusterKind.Zero:
            case ClusterKind.ZeroAllocated: dst.Clear(); break;
            case ClusterKind.Compressed: Decompress(e).CopyTo(dst); break;
            default: ReadFile(DataOffset(e), dst); break;
        }
    }

    private byte[] Decompress(ulong e)
    {
        _decompressed ??= new byte[_clusterSize];
        if (_decompressedEntry == e) return _decompressed;
        (long start, long length) = CompressedRange(e);
        long coffset = (long)(e & _coffsetMask);
        int csize = (int)(start + length - coffset);
        if (coffset >= _fileLength) throw Corrupt($"compressed cluster at 0x{coffset:x} lies past the end of the file");
        if (_compressedBuf == null || _compressedBuf.Length < csize) _compressedBuf = new byte[Math.Max(csize, _clusterSize)];
        // The last compressed cluster may end before its final sector does.
        int have = ReadFileAvailable(coffset, _compressedBuf.AsSpan(0, csize));
        try
        {
            using var ms = new MemoryStream(_compressedBuf, 0, have, writable: false);
            using var inflate = new DeflateStream(ms, CompressionMode.Decompress);
            int done = 0;
            while (done < _clusterSize)
            {
                int n = inflate.Read(_decompressed, done, _clusterSize - done);
                if (n == 0) break;
                done += n;
            }
            if (done != _clusterSize) throw Corrupt($"compressed cluster at 0x{coffset:x} inflates to {done} bytes, not {_clusterSize}");
        }
        catch (InvalidDataException ex)
        {
            _decompressedEntry = 0;
            throw Corrupt($"compressed cluster at 0x{coffset:x} is not valid deflate data ({ex.Message})");
        }
        _decompressedEntry = e;
        return _decompressed;
    }

    /// <summary>The host byte range a compressed cluster's refcounts cover (QEMU counts whole 512-byte sectors).</summary>
    private (long Start, long Length) CompressedRange(ulong e)
    {
        long coffset = (long)(e & _coffsetMask);
        long sectors = (long)((e >> _csizeShift) & _csizeMask) + 1;
        return (coffset & ~511L, sectors * 512);
    }

    // ---------------------------------------------------------------- writes

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        CheckWritable();
        if (_syncFailed) throw SyncFailed();
        CheckRange(offset, data.Length);
        while (data.Length > 0)
        {
            int inCluster = (int)(offset & _clusterMask);
            int n = Math.Min(data.Length, _clusterSize - inCluster);
            ulong e = LookupL2Entry(offset);
            if (Classify(e) == ClusterKind.Normal && (e & L2Copied) != 0)
            {
                // Already ours: overwrite in place, several host-contiguous clusters at once.
                long host = CheckNotMetadata(DataOffset(e)) + inCluster;
                n = ContiguousRun(offset, host, n, data.Length, needCopied: true);
                WriteFile(host, data[..n]);
            }
            else if (n == _clusterSize && data.Length >= 2 * _clusterSize) n = WriteNewClusters(offset, data);
            else WriteInCluster(offset, inCluster, data[..n]);
            data = data[n..];
            offset += n;
        }
    }

    private void WriteInCluster(long offset, int inCluster, ReadOnlySpan<byte> src)
    {
        var (slot, idx) = GetL2ForWrite(offset);
        ulong e = slot.Entries[idx];
        var kind = Classify(e);
        if (kind == ClusterKind.Normal && (e & L2Copied) != 0)
        {
            WriteFile(CheckNotMetadata(DataOffset(e)) + inCluster, src);
            return;
        }
        bool full = src.Length == _clusterSize;
        if (!full)
        {
            ReadWholeCluster(e, kind, offset - inCluster, _clusterBuf);
            src.CopyTo(_clusterBuf.AsSpan(inCluster));
        }
        ReadOnlySpan<byte> whole = full ? src : _clusterBuf;
        if (kind == ClusterKind.ZeroAllocated && (e & L2Copied) != 0)
        {
            // A preallocated zero cluster: it is ours already, only the zero flag has to go.
            WriteFile(CheckNotMetadata(DataOffset(e)), whole);
            SetL2Entry(slot, idx, (e & OffsetMask) | L2Copied);
            return;
        }
        long host = AllocateCluster();
        WriteFile(host, whole);
        SetL2Entry(slot, idx, (ulong)host | L2Copied);
        DeferRelease(e, kind);
    }

    private const int MaxRun = 64;

    /// <summary>
    /// Whole clusters that need new host clusters (unallocated, zero, compressed or shared), up to the end of the
    /// L2 table: one contiguous run is counted, then written with one call, then mapped in the L2 cache, then the
    /// old clusters queued for release, the same order as one cluster at a time. Returns the bytes written.
    /// </summary>
    private int WriteNewClusters(long offset, ReadOnlySpan<byte> data)
    {
        var (slot, idx) = GetL2ForWrite(offset);
        int limit = (int)Math.Min(Math.Min(MaxRun, L2Entries - idx), data.Length / _clusterSize);
        Span<ulong> old = stackalloc ulong[MaxRun];
        int k = 0;
        for (; k < limit; k++)
        {
            ulong e = slot.Entries[idx + k];
            var kind = Classify(e);
            if ((kind is ClusterKind.Normal or ClusterKind.ZeroAllocated) && (e & L2Copied) != 0) break;
            old[k] = e;
        }
        if (k < 2)
        {
            WriteInCluster(offset, 0, data[.._clusterSize]);
            return _clusterSize;
        }
        long host = TakeClusters(k);
        IncrementRefcounts(host >> _clusterBits, k);
        WriteFile(host, data[..(k * _clusterSize)]);
        for (int j = 0; j < k; j++) slot.Entries[idx + j] = (ulong)(host + (long)j * _clusterSize) | L2Copied;
        MarkDirty(slot, idx, k);
        for (int j = 0; j < k; j++) DeferRelease(old[j], Classify(old[j]));
        return k * _clusterSize;
    }

    public void WriteZeroes(long offset, long length) => ZeroOrDiscard(offset, length, discard: false);

    /// <summary>
    /// Whole clusters in the range are deallocated and read as zeros afterwards; partial clusters at either end are
    /// left as they are (discard is advisory). On v2 images with a backing file nothing changes: v2 has no zero flag,
    /// and dropping the cluster would expose the backing data.
    /// </summary>
    public void Discard(long offset, long length) => ZeroOrDiscard(offset, length, discard: true);

    private void ZeroOrDiscard(long offset, long length, bool discard)
    {
        CheckWritable();
        if (_syncFailed) throw SyncFailed();
        CheckRange(offset, length);
        long end = offset + length;
        while (offset < end)
        {
            if (_backing == null && _l1[offset >> (_clusterBits + _l2Bits)] == 0)
            {
                // Nothing mapped in this L2 range and nothing behind it: it reads as zeros already.
                long rangeEnd = ((offset >> (_clusterBits + _l2Bits)) + 1) << (_clusterBits + _l2Bits);
                offset = Math.Min(end, rangeEnd);
                continue;
            }
            int inCluster = (int)(offset & _clusterMask);
            long n = Math.Min(end - offset, _clusterSize - inCluster);
            if (n < _clusterSize)
            {
                if (!discard) WritePartialZeros(offset, (int)n);
            }
            else if (!ZeroCluster(offset) && !discard)
            {
                WritePartialZeros(offset, _clusterSize);
            }
            offset += n;
        }
    }

    private void WritePartialZeros(long offset, int n)
    {
        // Zeros through the normal write path; a cluster that already reads as zero needs nothing.
        ulong e = LookupL2Entry(offset);
        var kind = Classify(e);
        if (kind is ClusterKind.Zero or ClusterKind.ZeroAllocated || (kind == ClusterKind.Unallocated && _backing == null)) return;
        _zeros ??= new byte[_clusterSize];
        Write(offset, _zeros.AsSpan(0, n));
    }

    private byte[]? _zeros;

    /// <summary>Makes one whole cluster read as zeros through metadata; false when that is impossible (v2 + backing).</summary>
    private bool ZeroCluster(long offset)
    {
        ulong e = LookupL2Entry(offset);
        var kind = Classify(e);
        ulong newEntry;
        if (_backing == null) newEntry = 0;          // unallocated reads as zeros without a backing file
        else if (_h.Version >= 3) newEntry = L2Zero;
        else return kind is ClusterKind.Zero or ClusterKind.ZeroAllocated;
        if (e == newEntry || (newEntry == 0 && kind == ClusterKind.Unallocated)) return true;
        var (slot, idx) = GetL2ForWrite(offset);
        SetL2Entry(slot, idx, newEntry);
        DeferRelease(e, kind);
        if (_pendingReleases.Count >= MaxPendingReleases) WriteBackMetadata();
        return true;
    }

    /// <summary>A discard of a large range queues many releases: they are written back in batches of this many.</summary>
    private const int MaxPendingReleases = 1 << 16;

    /// <summary>The guest's FLUSH: everything written so far is on the disk, in the order described in Qcow2Disk.WriteBack.cs.</summary>
    public void Flush()
    {
        if (ReadOnly) return;
        ObjectDisposedException.ThrowIf(_disposed, this);
        WriteBackMetadata();
        SyncFile();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try
        {
            if (!ReadOnly && !_crashed)
            {
                // If any of this fails the dirty bit stays set, and the next writable open rebuilds the refcounts.
                WriteBackMetadata();
                SyncFile();
                if (_h.Version >= 3)
                {
                    _h.IncompatibleFeatures &= ~Qcow2Header.IncompatDirty;
                    WriteHeaderFeatures();
                    SyncFile();
                }
            }
        }
        finally
        {
            _file.Dispose();
            _backing?.Dispose();
        }
    }

    /// <summary>Bytes of guest data stored in this image itself (standard and compressed clusters), not its backing.</summary>
    public long AllocatedBytes()
    {
        long total = 0;
        foreach (ulong l1e in _l1)
        {
            if ((l1e & OffsetMask) == 0) continue;
            // Through the cache: on a writable image it holds entries not yet written back.
            foreach (ulong e in GetL2(CheckL2Offset(l1e)).Entries)
            {
                var kind = Classify(e);
                if (kind == ClusterKind.Normal) total += _clusterSize;
                else if (kind == ClusterKind.Compressed) total += CompressedRange(e).Length;
            }
        }
        return total;
    }

    // ---------------------------------------------------------------- helpers

    private enum ClusterKind { Unallocated, Zero, ZeroAllocated, Compressed, Normal }

    private ClusterKind Classify(ulong e)
    {
        if ((e & L2Compressed) != 0) return ClusterKind.Compressed;
        bool zero = _h.Version >= 3 && (e & L2Zero) != 0;
        if ((e & OffsetMask) == 0) return zero ? ClusterKind.Zero : ClusterKind.Unallocated;
        return zero ? ClusterKind.ZeroAllocated : ClusterKind.Normal;
    }

    private long DataOffset(ulong e)
    {
        long host = (long)(e & OffsetMask);
        if ((host & _clusterMask) != 0) throw Corrupt($"data cluster offset 0x{host:x} is not cluster-aligned");
        if (host >= _nextFree) throw Corrupt($"data cluster at 0x{host:x} lies past the end of the file");
        if (host < _clusterSize) throw Corrupt("an L2 entry points at the header cluster");
        return host;
    }

    /// <summary>
    /// A corrupt L2 entry must not let guest data overwrite the image's metadata (QEMU's overlap check): the header,
    /// L1 table, refcount table and blocks and every L2 table are in <see cref="_meta"/> while the image is writable.
    /// </summary>
    private long CheckNotMetadata(long host)
    {
        if (_meta.TryGetValue(host >> _clusterBits, out var what))
            throw Corrupt($"data cluster at 0x{host:x} overlaps {what}");
        return host;
    }

    private void CheckRange(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (offset < 0 || length < 0 || offset > Size - length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range {offset}+{length} outside disk of {Size} bytes");
    }

    private void CheckWritable()
    {
        if (ReadOnly) throw new BlockDeviceException($"disk image '{Path}' is read-only");
    }

    private BlockDeviceException Corrupt(string why) => new($"'{Path}': corrupt qcow2 image: {why}");

    private long AlignUp(long v) => (v + _clusterMask) & ~_clusterMask;

    private void ReadFile(long offset, Span<byte> dst)
    {
        int n = ReadFileAvailable(offset, dst);
        dst[n..].Clear(); // a cluster the file ends inside reads as zeros past the end, as QEMU does
    }

    private int ReadFileAvailable(long offset, Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            int n = RandomAccess.Read(_file, dst[done..], offset + done);
            if (n == 0) break;
            done += n;
        }
        return done;
    }

    /// <summary>Tests: file writes left before a simulated kill of the process (negative: never).</summary>
    internal long WritesBeforeCrash = -1;
    /// <summary>Tests: file writes so far, and the write that switched the header to a new refcount table.</summary>
    internal long WritesDone, RefcountTableMovedAtWrite = -1;
    private bool _crashed;

    private void WriteFile(long offset, ReadOnlySpan<byte> src)
    {
        if (_crashed || (WritesBeforeCrash >= 0 && WritesBeforeCrash-- == 0))
        {
            // The process "dies" here: nothing more reaches the file, not even Dispose's header update.
            _crashed = true;
            throw new IOException("simulated crash");
        }
        _hooks?.Write?.Invoke(offset, src);
        WritesDone++;
        RandomAccess.Write(_file, src, offset);
        if (offset + src.Length > _fileLength) _fileLength = offset + src.Length;
    }

    /// <summary>Reads a big-endian table of 64-bit entries.</summary>
    private void ReadTable(long offset, ulong[] table)
    {
        var bytes = new byte[Math.Min(table.Length * 8L, 1 << 20)];
        for (long i = 0; i < table.Length;)
        {
            int count = (int)Math.Min(table.Length - i, bytes.Length / 8);
            var chunk = bytes.AsSpan(0, count * 8);
            ReadFile(offset + i * 8, chunk);
            for (int j = 0; j < count; j++) table[i + j] = BinaryPrimitives.ReadUInt64BigEndian(chunk[(j * 8)..]);
            i += count;
        }
    }

    private void WriteEntry(long offset, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        WriteFile(offset, b);
    }

    private void WriteHeaderFeatures()
    {
        WriteEntry(Qcow2Header.OffIncompatible, _h.IncompatibleFeatures);
        WriteEntry(Qcow2Header.OffAutoclear, _h.AutoclearFeatures);
    }
}
