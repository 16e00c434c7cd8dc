using System.Globalization;
using System.Text;

namespace Dirigent.Storage;

/// <summary>What `dirigent disk info` prints, and the size syntax `dirigent disk create` takes.</summary>
public static class DiskInfo
{
    /// <summary>A human-readable description of an image and its backing chain; opens everything read-only.</summary>
    public static string Describe(string path, string? format = null) => Describe(path, format, out _);

    /// <summary>
    /// The description, and for a qcow2 image the result of <see cref="Qcow2Check"/> on it (shown as the "check"
    /// line): info already reads every L2 table for the allocation, so a corrupt image is never described as fine.
    /// </summary>
    public static string Describe(string path, string? format, out Qcow2CheckResult? check)
    {
        check = null;
        using var disk = DiskImage.Open(path, format, readOnly: true);
        var sb = new StringBuilder();
        void Line(string key, string value) => sb.Append(CultureInfo.InvariantCulture, $"{key + ":",-14}{value}\n");
        Line("image", path);
        long fileSize = new FileInfo(path).Length;
        if (disk is Qcow2Disk q)
        {
            Line("format", $"qcow2 (version {q.Version})");
            Line("virtual size", $"{Human(q.Size)} ({q.Size} bytes)");
            Line("cluster size", q.ClusterSize.ToString(CultureInfo.InvariantCulture));
            Line("dirty", q.WasDirty ? "yes (not closed cleanly; opening it for writing repairs the refcounts)" : "no");
            long allocated = q.AllocatedBytes();
            Line("allocated", $"{Human(allocated)} ({allocated} bytes of data in this image; file {fileSize} bytes)");
            check = Qcow2Check.Run(path);
            Line("check", CheckSummary(check, path));
            if (q.BackingFileName != null)
            {
                Line("backing file", $"{q.BackingFileName} ({q.BackingFormat})");
                var chain = new List<string> { $"{System.IO.Path.GetFileName(path)} (qcow2)" };
                for (IBlockDevice? b = q.Backing; b != null; b = (b as Qcow2Disk)?.Backing)
                    chain.Add(b switch
                    {
                        Qcow2Disk bq => $"{bq.Path} (qcow2, {Human(bq.Size)})",
                        RawDisk br => $"{br.Path} (raw, {Human(br.Size)})",
                        _ => b.GetType().Name,
                    });
                Line("chain", string.Join(" -> ", chain));
            }
        }
        else
        {
            Line("format", "raw");
            Line("virtual size", $"{Human(disk.Size)} ({disk.Size} bytes)");
            Line("allocated", $"{fileSize} bytes (file size)");
        }
        return sb.ToString();
    }

    /// <summary>One line: clean, leaks (harmless) or corrupt with the first problem.</summary>
    public static string CheckSummary(Qcow2CheckResult c, string path)
    {
        if (c.Corruptions > 0 || c.CheckErrors > 0)
        {
            string first = c.Problems.FirstOrDefault(p => p.StartsWith("overlap", StringComparison.Ordinal))
                ?? c.Problems.FirstOrDefault(p => p.StartsWith("ERROR", StringComparison.Ordinal)) ?? "";
            return $"CORRUPT: {c.Corruptions} error(s){(c.Leaks > 0 ? $", {c.Leaks} leaked cluster(s)" : "")}; {first} (details: dirigent disk check {path})";
        }
        if (c.Leaks > 0) return $"{c.Leaks} leaked cluster(s): wasted space, no harm to data";
        return "clean";
    }

    /// <summary>"8G", "512M", "100k", "1048576" (a bare number is bytes, as with qemu-img); binary multiples.</summary>
    public static long ParseSize(string text)
    {
        string t = text.Trim();
        if (t.EndsWith("iB", StringComparison.OrdinalIgnoreCase)) t = t[..^2];
        else if (t.Length > 1 && char.IsLetter(t[^2]) && (t[^1] is 'B' or 'b')) t = t[..^1];
        int shift = 0;
        if (t.Length > 0 && char.IsLetter(t[^1]))
        {
            shift = char.ToUpperInvariant(t[^1]) switch
            {
                'B' => 0, 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, 'P' => 50,
                _ => throw new FormatException($"bad size '{text}': the suffix must be K, M, G, T or P"),
            };
            t = t[..^1];
        }
        if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n > (long.MaxValue >> shift))
            throw new FormatException($"bad size '{text}': expected a number with an optional K, M, G, T or P suffix");
        return n << shift;
    }

    public static string Human(long bytes)
    {
        string[] units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{bytes} bytes" : string.Create(CultureInfo.InvariantCulture, $"{v:0.##} {units[u]}");
    }
}
