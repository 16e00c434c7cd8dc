using System.Buffers.Binary;

namespace Dirigent.Storage;

public sealed partial class Qcow2Disk
{
    /// <summary>
    /// Creates an empty qcow2 v3 image: header cluster, refcount table, refcount blocks and a zeroed L1 table,
    /// laid out like <c>qemu-img create</c> does. <paramref name="backingFile"/> is stored as given and, when
    /// relative, is relative to the new image's directory (as QEMU resolves it); it must exist.
    /// <paramref name="backingFormat"/> null means probe it now and record the result.
    /// </summary>
    public static void Create(string path, long size, string? backingFile = null, string? backingFormat = null, int clusterBits = 16)
    {
        if (clusterBits is < 9 or > 21) throw new BlockDeviceException($"cluster size 2^{clusterBits} is outside 512 B..2 MiB");
        if (size < 0 || size > (1L << 50)) throw new BlockDeviceException($"disk size {size} is out of range (0..1 PiB)");
        size = (size + 511) & ~511L;
        if (backingFile != null)
        {
            if (backingFile.Length == 0) throw new BlockDeviceException("empty backing file name");
            string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path)) ?? ".";
            string resolved = System.IO.Path.IsPathRooted(backingFile) ? backingFile : System.IO.Path.Combine(dir, backingFile);
            if (!File.Exists(resolved)) throw new BlockDeviceException($"backing file '{backingFile}' not found (looked for '{resolved}')");
            if (System.IO.Path.GetFullPath(resolved) == System.IO.Path.GetFullPath(path))
                throw new BlockDeviceException($"'{path}' cannot be its own backing file");
            backingFormat ??= DiskImage.Probe(resolved);
            if (backingFormat is not ("raw" or "qcow2")) throw new BlockDeviceException($"unsupported backing format '{backingFormat}' (raw or qcow2)");
            // Open the chain once: a broken or looping backing file fails now rather than at first use.
            DiskImage.Open(resolved, backingFormat, readOnly: true).Dispose();
        }
        else if (backingFormat != null) throw new BlockDeviceException("a backing format needs a backing file");

        int cs = 1 << clusterBits;
        long l2Coverage = (long)cs * (cs / 8);
        long l1Entries = (size + l2Coverage - 1) / l2Coverage;
        if (l1Entries * 8 > Qcow2Header.MaxL1Bytes) throw new BlockDeviceException($"disk size {size} is too large for {cs}-byte clusters");
        long l1Clusters = Math.Max(1, (l1Entries * 8 + cs - 1) / cs);
        long perBlock = cs / 2;
        // Header, refcount table, refcount blocks, L1 table: find the smallest table and block count that cover them all.
        long tableClusters = 1, blocks = 1;
        while (true)
        {
            long total = 1 + tableClusters + blocks + l1Clusters;
            long needBlocks = (total + perBlock - 1) / perBlock;
            long needTable = (needBlocks * 8 + cs - 1) / cs;
            if (needBlocks <= blocks && needTable <= tableClusters) break;
            blocks = Math.Max(blocks, needBlocks);
            tableClusters = Math.Max(tableClusters, needTable);
        }
        long reftableOffset = cs;
        long blocksOffset = reftableOffset + tableClusters * cs;
        long l1Offset = blocksOffset + blocks * cs;
        long totalClusters = 1 + tableClusters + blocks + l1Clusters;

        var h = new Qcow2Header
        {
            Version = 3, ClusterBits = clusterBits, Size = size, L1Size = (uint)l1Entries, L1TableOffset = l1Offset,
            RefcountTableOffset = reftableOffset, RefcountTableClusters = (uint)tableClusters,
            BackingFile = backingFile, BackingFormat = backingFile != null ? backingFormat : null,
        };
        var image = new byte[totalClusters * cs];
        h.WriteNew(image.AsSpan(0, cs));
        for (long b = 0; b < blocks; b++)
            BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan((int)(reftableOffset + b * 8)), (ulong)(blocksOffset + b * cs));
        for (long c = 0; c < totalClusters; c++)
            BinaryPrimitives.WriteUInt16BigEndian(image.AsSpan((int)(blocksOffset + c * 2)), 1);

        try
        {
            using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
            f.Write(image);
            f.Flush(flushToDisk: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BlockDeviceException($"cannot create '{path}': {e.Message}", e);
        }
    }
}
