using System.Buffers.Binary;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Dirigent.Storage;

/// <summary>
/// The qcow2 header (QEMU's docs/interop/qcow2.txt), parsed and validated once when an image is opened: every
/// offset the rest of the code trusts (L1 table, refcount table, snapshot table) is checked here against the
/// file length and the cluster size, so a corrupt or hostile file fails with one line instead of misbehaving later.
/// </summary>
internal sealed class Qcow2Header
{
    public const uint Magic = 0x514649FB; // "QFI\xfb"
    public const int V2Length = 72;
    public const int V3MinLength = 104;
    /// <summary>What we write: QEMU's 112 (104 plus compression_type and padding).</summary>
    public const int V3WrittenLength = 112;

    // Byte offsets of the fields we rewrite in place.
    public const int OffRefcountTableOffset = 48;
    public const int OffIncompatible = 72;
    public const int OffAutoclear = 88;

    public const ulong IncompatDirty = 1UL << 0;
    public const ulong IncompatCorrupt = 1UL << 1;
    public const ulong IncompatDataFile = 1UL << 2;
    public const ulong IncompatCompression = 1UL << 3;
    public const ulong IncompatExtendedL2 = 1UL << 4;

    public const uint ExtEnd = 0;
    public const uint ExtBackingFormat = 0xE2792ACA;
    public const uint ExtFeatureNames = 0x6803F857;
    public const uint ExtBitmaps = 0x23852875;
    public const uint ExtFullDiskEncryption = 0x0537BE77;
    public const uint ExtDataFile = 0x44415441;

    /// <summary>QEMU's limits (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE): anything larger is a corrupt header.</summary>
    public const long MaxL1Bytes = 32L << 20;
    public const long MaxRefcountTableBytes = 8L << 20;
    public const int MaxBackingNameLength = 1023;

    public uint Version;
    public long BackingFileOffset;
    public uint BackingFileSize;
    public int ClusterBits;
    public long Size;
    public uint CryptMethod;
    public uint L1Size;
    public long L1TableOffset;
    public long RefcountTableOffset;
    public uint RefcountTableClusters;
    public uint NbSnapshots;
    public long SnapshotsOffset;
    public ulong IncompatibleFeatures;
    public ulong CompatibleFeatures;
    public ulong AutoclearFeatures;
    public int RefcountOrder = 4;
    public uint HeaderLength = V2Length;
    public byte CompressionType;
    public string? BackingFile;
    public string? BackingFormat;

    public int ClusterSize => 1 << ClusterBits;

    /// <summary>Reads and validates the header and its extensions; throws <see cref="BlockDeviceException"/>.</summary>
    public static Qcow2Header Read(SafeFileHandle file, string path, long fileLength)
    {
        string Bad(string why) => $"'{path}': {why}";
        var fixedPart = new byte[V3MinLength];
        int got = ReadAt(file, fixedPart, 0);
        if (got < 8) throw new BlockDeviceException(Bad($"truncated qcow2 header ({fileLength} bytes)"));
        var b = fixedPart.AsSpan();
        if (BinaryPrimitives.ReadUInt32BigEndian(b) != Magic) throw new BlockDeviceException(Bad("not a qcow2 image (bad magic)"));
        var h = new Qcow2Header { Version = BinaryPrimitives.ReadUInt32BigEndian(b[4..]) };
        if (h.Version is not (2 or 3))
            throw new BlockDeviceException(Bad($"unsupported qcow2 version {h.Version} (2 and 3 are supported)"));
        int minLength = h.Version == 2 ? V2Length : V3MinLength;
        if (got < minLength) throw new BlockDeviceException(Bad($"truncated qcow2 header ({fileLength} bytes, need {minLength})"));

        h.BackingFileOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[8..]);
        h.BackingFileSize = BinaryPrimitives.ReadUInt32BigEndian(b[16..]);
        uint clusterBits = BinaryPrimitives.ReadUInt32BigEndian(b[20..]);
        ulong size = BinaryPrimitives.ReadUInt64BigEndian(b[24..]);
        h.CryptMethod = BinaryPrimitives.ReadUInt32BigEndian(b[32..]);
        h.L1Size = BinaryPrimitives.ReadUInt32BigEndian(b[36..]);
        ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(b[40..]);
        ulong rtOffset = BinaryPrimitives.ReadUInt64BigEndian(b[48..]);
        h.RefcountTableClusters = BinaryPrimitives.ReadUInt32BigEndian(b[56..]);
        h.NbSnapshots = BinaryPrimitives.ReadUInt32BigEndian(b[60..]);
        ulong snapOffset = BinaryPrimitives.ReadUInt64BigEndian(b[64..]);
        if (h.Version >= 3)
        {
            h.IncompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(b[72..]);
            h.CompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(b[80..]);
            h.AutoclearFeatures = BinaryPrimitives.ReadUInt64BigEndian(b[88..]);
            h.RefcountOrder = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(b[96..]), 64);
            h.HeaderLength = BinaryPrimitives.ReadUInt32BigEndian(b[100..]);
            if (h.HeaderLength < V3MinLength || h.HeaderLength % 8 != 0)
                throw new BlockDeviceException(Bad($"corrupt qcow2 header: header_length {h.HeaderLength}"));
        }

        if (clusterBits is < 9 or > 21)
            throw new BlockDeviceException(Bad($"unsupported cluster size 2^{clusterBits} (512 B to 2 MiB are supported)"));
        h.ClusterBits = (int)clusterBits;
        int cs = h.ClusterSize;
        if (h.HeaderLength > cs) throw new BlockDeviceException(Bad($"corrupt qcow2 header: header_length {h.HeaderLength} exceeds the cluster size"));

        if (h.CryptMethod != 0) throw new BlockDeviceException(Bad($"encrypted qcow2 images are not supported (crypt_method {h.CryptMethod})"));
        if (h.RefcountOrder != 4)
            throw new BlockDeviceException(Bad($"refcount_order {h.RefcountOrder} ({1L << Math.Min(h.RefcountOrder, 62)}-bit refcounts) is not supported: only 16-bit refcounts (refcount_order 4)"));

        // The rest of the header cluster holds the extensions and the backing file name.
        var cluster0 = new byte[cs];
        int have = ReadAt(file, cluster0, 0);
        var names = h.ParseExtensions(cluster0.AsSpan(0, have), Bad);
        h.CheckIncompatibleFeatures(names, Bad);
        if (h.Version >= 3 && h.HeaderLength > V3MinLength) h.CompressionType = cluster0[104];
        if ((h.IncompatibleFeatures & IncompatCompression) != 0 && h.CompressionType != 0)
            throw new BlockDeviceException(Bad($"compression type {h.CompressionType} ({(h.CompressionType == 1 ? "zstd" : "unknown")}) is not supported: only deflate"));

        if (size > long.MaxValue / 4) throw new BlockDeviceException(Bad($"absurd virtual size {size}"));
        h.Size = (long)size;
        long l2Coverage = (long)cs * (cs / 8);
        long l1Needed = (h.Size + l2Coverage - 1) / l2Coverage;
        if ((long)h.L1Size * 8 > MaxL1Bytes) throw new BlockDeviceException(Bad($"absurd L1 table size ({h.L1Size} entries)"));
        if (h.L1Size < l1Needed)
            throw new BlockDeviceException(Bad($"corrupt qcow2 header: L1 table of {h.L1Size} entries cannot map the virtual size {h.Size} (needs {l1Needed})"));
        h.L1TableOffset = CheckTable("L1 table", l1Offset, (long)h.L1Size * 8, cs, fileLength, Bad);
        if (h.RefcountTableClusters == 0) throw new BlockDeviceException(Bad("corrupt qcow2 header: empty refcount table"));
        if ((long)h.RefcountTableClusters * cs > MaxRefcountTableBytes)
            throw new BlockDeviceException(Bad($"absurd refcount table size ({h.RefcountTableClusters} clusters)"));
        h.RefcountTableOffset = CheckTable("refcount table", rtOffset, (long)h.RefcountTableClusters * cs, cs, fileLength, Bad);
        if (h.NbSnapshots > 0)
        {
            if (h.NbSnapshots > 65536) throw new BlockDeviceException(Bad($"absurd snapshot count {h.NbSnapshots}"));
            h.SnapshotsOffset = CheckTable("snapshot table", snapOffset, 1, cs, fileLength, Bad);
        }

        if (h.BackingFileOffset != 0)
        {
            if (h.BackingFileSize == 0 || h.BackingFileSize > MaxBackingNameLength || h.BackingFileOffset < 0
                || h.BackingFileOffset > have - h.BackingFileSize) // not offset + size > have: that sum can overflow
                throw new BlockDeviceException(Bad($"corrupt qcow2 header: backing file name at {h.BackingFileOffset} ({h.BackingFileSize} bytes) lies outside the header cluster"));
            h.BackingFile = Encoding.UTF8.GetString(cluster0, (int)h.BackingFileOffset, (int)h.BackingFileSize);
            if (h.BackingFile.Contains('\0')) throw new BlockDeviceException(Bad("corrupt qcow2 header: NUL in the backing file name"));
        }
        return h;
    }

    private static long CheckTable(string what, ulong offset, long length, int cs, long fileLength, Func<string, string> bad)
    {
        if (length == 0) return (long)offset;
        if (offset == 0 || offset % (ulong)cs != 0)
            throw new BlockDeviceException(bad($"corrupt qcow2 header: {what} offset 0x{offset:x} is not cluster-aligned (or is the header)"));
        if (offset > (ulong)fileLength || (long)offset + length > fileLength)
            throw new BlockDeviceException(bad($"corrupt qcow2 header: {what} at 0x{offset:x} ({length} bytes) lies past the end of the file ({fileLength} bytes)"));
        return (long)offset;
    }

    /// <summary>Walks the header extensions; returns the feature name table (for naming unknown features).</summary>
    private Dictionary<(int Type, int Bit), string> ParseExtensions(ReadOnlySpan<byte> cluster0, Func<string, string> bad)
    {
        var names = new Dictionary<(int, int), string>();
        int pos = Version >= 3 ? (int)HeaderLength : V2Length;
        // The backing file name, when present, follows the extensions.
        int end = BackingFileOffset > pos && BackingFileOffset < cluster0.Length ? (int)BackingFileOffset : cluster0.Length;
        while (pos + 8 <= end)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(cluster0[pos..]);
            uint len = BinaryPrimitives.ReadUInt32BigEndian(cluster0[(pos + 4)..]);
            if (type == ExtEnd) return names;
            if (len > (uint)(end - pos - 8))
                throw new BlockDeviceException(bad($"corrupt qcow2 header: extension 0x{type:x8} of {len} bytes runs past the header"));
            var data = cluster0.Slice(pos + 8, (int)len);
            switch (type)
            {
                case ExtBackingFormat:
                    BackingFormat = Encoding.UTF8.GetString(data).TrimEnd('\0');
                    break;
                case ExtFeatureNames:
                    for (int i = 0; i + 48 <= data.Length; i += 48)
                        names[(data[i], data[i + 1])] = Encoding.UTF8.GetString(data.Slice(i + 2, 46)).TrimEnd('\0');
                    break;
                case ExtDataFile:
                    throw new BlockDeviceException(bad($"external data files are not supported (data file '{Encoding.UTF8.GetString(data).TrimEnd('\0')}')"));
                case ExtFullDiskEncryption:
                    throw new BlockDeviceException(bad("encrypted qcow2 images are not supported (LUKS header extension)"));
                default:
                    break; // bitmaps and unknown extensions: only meaningful to writers that know them
            }
            pos += 8 + (int)((len + 7) & ~7u);
        }
        return names;
    }

    private void CheckIncompatibleFeatures(Dictionary<(int Type, int Bit), string> names, Func<string, string> bad)
    {
        if ((IncompatibleFeatures & IncompatDataFile) != 0)
            throw new BlockDeviceException(bad("external data files are not supported (incompatible feature bit 2)"));
        if ((IncompatibleFeatures & IncompatExtendedL2) != 0)
            throw new BlockDeviceException(bad("extended L2 entries (subclusters) are not supported (incompatible feature bit 4)"));
        ulong unknown = IncompatibleFeatures & ~(IncompatDirty | IncompatCorrupt | IncompatCompression);
        if (unknown == 0) return;
        var list = new List<string>();
        for (int bit = 0; bit < 64; bit++)
            if ((unknown & (1UL << bit)) != 0)
                list.Add(names.TryGetValue((0, bit), out var n) && n.Length > 0 ? $"bit {bit} ({n})" : $"bit {bit}");
        throw new BlockDeviceException(bad($"unsupported incompatible qcow2 features: {string.Join(", ", list)}"));
    }

    /// <summary>Serialises a fresh v3 header plus extensions and backing name into the start of <paramref name="cluster0"/>.</summary>
    public void WriteNew(Span<byte> cluster0)
    {
        cluster0.Clear();
        BinaryPrimitives.WriteUInt32BigEndian(cluster0, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(cluster0[4..], 3);
        BinaryPrimitives.WriteUInt32BigEndian(cluster0[20..], (uint)ClusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(cluster0[24..], (ulong)Size);
        BinaryPrimitives.WriteUInt32BigEndian(cluster0[36..], L1Size);
        BinaryPrimitives.WriteUInt64BigEndian(cluster0[40..], (ulong)L1TableOffset);
        BinaryPrimitives.WriteUInt64BigEndian(cluster0[48..], (ulong)RefcountTableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(cluster0[56..], RefcountTableClusters);
        BinaryPrimitives.WriteUInt64BigEndian(cluster0[72..], IncompatibleFeatures);
        BinaryPrimitives.WriteUInt64BigEndian(cluster0[80..], CompatibleFeatures);
        BinaryPrimitives.WriteUInt64BigEndian(cluster0[88..], AutoclearFeatures);
        BinaryPrimitives.WriteUInt32BigEndian(cluster0[96..], 4);
        BinaryPrimitives.WriteUInt32BigEndian(cluster0[100..], V3WrittenLength);
        int pos = V3WrittenLength;
        if (BackingFormat != null)
        {
            var fmt = Encoding.UTF8.GetBytes(BackingFormat);
            BinaryPrimitives.WriteUInt32BigEndian(cluster0[pos..], ExtBackingFormat);
            BinaryPrimitives.WriteUInt32BigEndian(cluster0[(pos + 4)..], (uint)fmt.Length);
            fmt.CopyTo(cluster0[(pos + 8)..]);
            pos += 8 + ((fmt.Length + 7) & ~7);
        }
        pos += 8; // end-of-extensions marker (type 0, length 0)
        if (BackingFile != null)
        {
            var name = Encoding.UTF8.GetBytes(BackingFile);
            if (name.Length > MaxBackingNameLength || pos + name.Length > cluster0.Length)
                throw new BlockDeviceException($"backing file name '{BackingFile}' is too long");
            name.CopyTo(cluster0[pos..]);
            BinaryPrimitives.WriteUInt64BigEndian(cluster0[8..], (ulong)pos);
            BinaryPrimitives.WriteUInt32BigEndian(cluster0[16..], (uint)name.Length);
        }
    }

    private static int ReadAt(SafeFileHandle file, Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(file, buffer[done..], offset + done);
            if (n == 0) break;
            done += n;
        }
        return done;
    }
}
