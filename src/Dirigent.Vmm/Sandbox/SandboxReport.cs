using System.Buffers.Binary;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Dirigent.Storage;

namespace Dirigent.Vmm.Sandbox;

/// <summary>
/// What a sandboxed run changed on disk, read from the qcow2 overlays after the VM stopped: per disk, the guest byte
/// ranges of the clusters allocated in the overlay (everything the guest wrote; the base image holds the rest), and,
/// when the disk (or a partition of its MBR) holds an ext2/3/4 file system, the files and directories that own the
/// changed blocks (those of the changed clusters whose bytes differ from the base), found with e2fsprogs' debugfs
/// (icheck: block → inode; ncheck: inode → path) on a copy of the file system as the guest left it. Changed blocks no
/// inode owns (bitmaps, inode tables, group descriptors, the superblock) are counted as unowned. Any other file
/// system: ranges only, with the reason.
/// </summary>
public static class SandboxReport
{
    /// <summary>More changed blocks than this are not mapped to files (debugfs would take minutes): ranges only.</summary>
    public const long MaxMappedBlocks = 1 << 20;

    public static JsonObject Build(string dir)
    {
        var m = VmSandbox.ReadManifest(dir);
        var disks = new JsonArray();
        for (int k = 0; k < m.Disks.Count; k++)
        {
            var d = m.Disks[k];
            using var q = Qcow2Disk.Open(d.Overlay, readOnly: true);
            var ranges = q.ClustersInThisImage();
            long bytes = ranges.Sum(r => r.Length);
            var disk = new JsonObject
            {
                ["index"] = k,
                ["base"] = d.Base,
                ["overlay"] = d.Overlay,
                ["cluster_size"] = q.ClusterSize,
                ["changed_clusters"] = bytes / q.ClusterSize + (bytes % q.ClusterSize != 0 ? 1 : 0),
                ["changed_bytes"] = bytes,
                ["ranges"] = new JsonArray(ranges.Select(r => (JsonNode)new JsonObject { ["offset"] = r.Offset, ["length"] = r.Length }).ToArray()),
            };
            Ext4Files(q, q.Backing, ranges, disk);
            disks.Add(disk);
        }
        var report = new JsonObject { ["sandbox"] = Path.GetFullPath(dir), ["disks"] = disks };
        if (Network(dir) is { } net) report["network"] = net;
        return report;
    }

    /// <summary>Network events the report lists in full; the rest are counted (the log has them all).</summary>
    public const int MaxNetworkEvents = 1000;

    /// <summary>
    /// The sinkhole's log (DIR/network.jsonl), when the sandbox had a network: every event up to
    /// <see cref="MaxNetworkEvents"/>, their count, and the distinct destinations and DNS names.
    /// </summary>
    private static JsonObject? Network(string dir)
    {
        string path = Path.Combine(dir, VmSandbox.NetworkLogFile);
        if (!File.Exists(path)) return null;
        var events = new JsonArray();
        var destinations = new SortedSet<string>(StringComparer.Ordinal);
        var names = new SortedSet<string>(StringComparer.Ordinal);
        long count = 0, unreadable = 0;
        foreach (string line in File.ReadLines(path))
        {
            if (line.Length == 0) continue;
            JsonNode? e;
            try { e = JsonNode.Parse(line); }
            catch (System.Text.Json.JsonException) { unreadable++; continue; } // a line cut short by a crash
            if (e is not JsonObject o) { unreadable++; continue; }
            count++;
            if (o["protocol"] is { } p && o["destination"] is { } d) destinations.Add($"{p}:{d}");
            if (o["name"] is { } n) names.Add((string)n!);
            if (events.Count < MaxNetworkEvents) events.Add(o);
        }
        var net = new JsonObject
        {
            ["log"] = path,
            ["events"] = count,
            ["destinations"] = new JsonArray(destinations.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray()),
            ["dns_names"] = new JsonArray(names.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray()),
            ["listed"] = events,
        };
        if (unreadable > 0) net["unreadable_lines"] = unreadable;
        return net;
    }

    /// <summary>Builds the report and writes it to DIR/sandbox-report.json; returns it.</summary>
    public static JsonObject Write(string dir)
    {
        var r = Build(dir);
        File.WriteAllText(Path.Combine(dir, VmSandbox.ReportFile), r.ToJsonString(new() { WriteIndented = true }) + "\n");
        return r;
    }

    private static void Ext4Files(IBlockDevice disk, IBlockDevice? baseDisk, List<(long Offset, long Length)> ranges, JsonObject into)
    {
        var fs = FindExt(disk);
        if (fs == null)
        {
            into["filesystem"] = null;
            into["files_note"] = "no ext2/3/4 file system on the disk or in its MBR partitions: changed ranges only";
            return;
        }
        var (start, size, blockSize) = fs.Value;
        into["filesystem"] = new JsonObject { ["type"] = "ext", ["offset"] = start, ["size"] = size, ["block_size"] = blockSize };
        // A cluster (64 KiB) holds several blocks: only those whose bytes differ from the base count, so a file that
        // merely shares a cluster with a write is not listed.
        var blocks = new SortedSet<long>();
        var now = new byte[blockSize];
        var was = new byte[blockSize];
        foreach (var (off, len) in ranges)
        {
            long a = Math.Max(off, start), b = Math.Min(off + len, start + size);
            for (long blk = (a - start) / blockSize; blk * blockSize < b - start; blk++)
            {
                long at = start + blk * blockSize;
                if (at + blockSize > disk.Size) break;
                if (baseDisk != null && at + blockSize <= baseDisk.Size)
                {
                    disk.Read(at, now);
                    baseDisk.Read(at, was);
                    if (now.AsSpan().SequenceEqual(was)) continue;
                }
                blocks.Add(blk);
                if (blocks.Count > MaxMappedBlocks) { into["files_note"] = $"over {MaxMappedBlocks} changed blocks: not mapped to files"; return; }
            }
        }
        into["changed_blocks"] = blocks.Count;
        if (blocks.Count == 0) { into["files"] = new JsonArray(); into["unowned_blocks"] = 0; return; }
        string tmp = Path.Combine(Path.GetTempPath(), $"dirigent-sandbox-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
        try
        {
            CopySparse(disk, start, size, tmp);
            var owners = Icheck(tmp, blocks);
            var paths = Ncheck(tmp, owners.Values.Where(i => i != 0).Distinct().ToList());
            var files = new JsonArray();
            foreach (var g in owners.Where(o => o.Value != 0).GroupBy(o => o.Value).OrderBy(g => g.Key))
                files.Add(new JsonObject
                {
                    ["inode"] = g.Key,
                    ["path"] = paths.TryGetValue(g.Key, out var p) ? p : null,
                    ["changed_blocks"] = g.Count(),
                });
            into["files"] = files;
            into["unowned_blocks"] = owners.Count(o => o.Value == 0);
        }
        catch (SandboxToolException e) { into["files_note"] = e.Message; }
        finally { File.Delete(tmp); }
    }

    /// <summary>(start, size, block size) of an ext file system on the whole disk or in an MBR partition; null if none.</summary>
    internal static (long Start, long Size, int BlockSize)? FindExt(IBlockDevice disk)
    {
        if (TryExt(disk, 0) is { } whole) return whole;
        if (disk.Size < 512) return null;
        var mbr = new byte[512];
        disk.Read(0, mbr);
        if (mbr[510] != 0x55 || mbr[511] != 0xAA) return null;
        for (int p = 0; p < 4; p++)
        {
            long lba = BinaryPrimitives.ReadUInt32LittleEndian(mbr.AsSpan(446 + p * 16 + 8));
            if (mbr[446 + p * 16 + 4] == 0 || lba == 0 || lba * 512 >= disk.Size) continue;
            if (TryExt(disk, lba * 512) is { } part) return part;
        }
        return null;
    }

    private static (long, long, int)? TryExt(IBlockDevice disk, long start)
    {
        if (start + 2048 > disk.Size) return null;
        var sb = new byte[1024];
        disk.Read(start + 1024, sb);
        if (BinaryPrimitives.ReadUInt16LittleEndian(sb.AsSpan(0x38)) != 0xEF53) return null;
        int logBlock = (int)BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(0x18));
        if (logBlock > 6) return null;
        int blockSize = 1024 << logBlock;
        long count = BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(0x04));
        // 64-bit file systems keep the high half of the block count at 0x150.
        if ((BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(0x60)) & 0x80) != 0) count |= (long)BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(0x150)) << 32;
        return (start, Math.Min(count * blockSize, disk.Size - start), blockSize);
    }

    /// <summary>The file system as the guest sees it (overlay over base), written sparse: zero chunks are skipped.</summary>
    private static void CopySparse(IBlockDevice disk, long start, long size, string path)
    {
        using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        f.SetLength(size);
        var buf = new byte[1 << 20];
        for (long off = 0; off < size; off += buf.Length)
        {
            int n = (int)Math.Min(buf.Length, size - off);
            disk.Read(start + off, buf.AsSpan(0, n));
            if (buf.AsSpan(0, n).IndexOfAnyExcept((byte)0) < 0) continue;
            f.Position = off;
            f.Write(buf, 0, n);
        }
    }

    /// <summary>debugfs icheck: each block's owning inode (0: none).</summary>
    private static Dictionary<long, long> Icheck(string image, SortedSet<long> blocks)
    {
        var cmds = blocks.Chunk(512).Select(c => "icheck " + string.Join(' ', c));
        var owners = new Dictionary<long, long>();
        foreach (string line in Debugfs(image, cmds))
        {
            var t = line.Split('\t', 2);
            if (t.Length != 2 || !long.TryParse(t[0], out long blk)) continue; // the "Block\tInode number" headers
            owners[blk] = long.TryParse(t[1].Trim(), out long ino) ? ino : 0; // "<block not found>"
        }
        foreach (long b in blocks) owners.TryAdd(b, 0);
        return owners;
    }

    /// <summary>debugfs ncheck: a path of each inode (those with none, e.g. the journal's, are missing).</summary>
    private static Dictionary<long, string> Ncheck(string image, List<long> inodes)
    {
        var paths = new Dictionary<long, string>();
        if (inodes.Count == 0) return paths;
        // The root directory has no name in a parent: ncheck does not list it.
        if (inodes.Contains(2)) paths[2] = "/";
        foreach (string line in Debugfs(image, inodes.Chunk(512).Select(c => "ncheck " + string.Join(' ', c))))
        {
            var t = line.Split('\t', 2);
            // debugfs 1.47 writes files in the root as "//NAME".
            if (t.Length == 2 && long.TryParse(t[0], out long ino)) paths.TryAdd(ino, System.Text.RegularExpressions.Regex.Replace(t[1].Trim(), "/+", "/"));
        }
        return paths;
    }

    private static List<string> Debugfs(string image, IEnumerable<string> commands)
    {
        string cmdFile = image + ".cmds";
        File.WriteAllLines(cmdFile, commands);
        try
        {
            var psi = new ProcessStartInfo(FindDebugfs()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (string a in new[] { "-f", cmdFile, image }) psi.ArgumentList.Add(a);
            Process p;
            try { p = Process.Start(psi)!; }
            catch (System.ComponentModel.Win32Exception e) { throw new SandboxToolException($"cannot run debugfs: {e.Message}"); }
            using (p)
            {
                var err = p.StandardError.ReadToEndAsync();
                var lines = new List<string>();
                while (p.StandardOutput.ReadLine() is { } l) lines.Add(l);
                p.WaitForExit();
                if (p.ExitCode != 0) throw new SandboxToolException($"debugfs failed ({p.ExitCode}): {err.Result.Split('\n').FirstOrDefault(x => x.Length > 0)}");
                return lines;
            }
        }
        finally { File.Delete(cmdFile); }
    }

    private static string FindDebugfs() =>
        new[] { "/usr/sbin/debugfs", "/sbin/debugfs", "/usr/bin/debugfs" }.FirstOrDefault(File.Exists)
        ?? throw new SandboxToolException("debugfs not found (install e2fsprogs): changed ranges only");
}

internal sealed class SandboxToolException(string message) : Exception(message);
