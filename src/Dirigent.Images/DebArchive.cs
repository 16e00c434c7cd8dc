using System.Text;

namespace Dirigent.Images;

/// <summary>
/// Unpacks a Debian binary package: the .deb is a Unix ar archive (read here) whose data.tar.* member holds the
/// files; that tarball is extracted by the system tar, which handles the xz/zstd/gzip compression.
/// </summary>
public static class DebArchive
{
    /// <summary>The members of an ar archive ("!&lt;arch&gt;\n", then 60-byte headers, data padded to 2 bytes).</summary>
    public static IEnumerable<(string Name, byte[] Data)> ReadAr(byte[] ar)
    {
        if (ar.Length < 8 || Encoding.ASCII.GetString(ar, 0, 8) != "!<arch>\n") throw new InvalidDataException("not an ar archive");
        int pos = 8;
        while (pos + 60 <= ar.Length)
        {
            string name = Encoding.ASCII.GetString(ar, pos, 16).TrimEnd(' ').TrimEnd('/');
            if (!long.TryParse(Encoding.ASCII.GetString(ar, pos + 48, 10).Trim(), out long size) || size < 0 || pos + 60 + size > ar.Length)
                throw new InvalidDataException($"corrupt ar member header at offset {pos}");
            yield return (name, ar.AsSpan(pos + 60, (int)size).ToArray());
            pos += 60 + (int)size;
            if ((pos & 1) != 0) pos++;
        }
    }

    /// <summary>Extracts the package's files into <paramref name="destDir"/>.</summary>
    public static void Extract(string debPath, string destDir)
    {
        var data = ReadAr(File.ReadAllBytes(debPath)).FirstOrDefault(m => m.Name.StartsWith("data.tar", StringComparison.Ordinal));
        if (data.Data == null) throw new InvalidDataException($"{Path.GetFileName(debPath)} has no data.tar member");
        Directory.CreateDirectory(destDir);
        string tarball = Path.Combine(destDir, "..", Path.GetFileName(debPath) + "." + data.Name);
        File.WriteAllBytes(tarball, data.Data);
        try { HostTool.Run("tar", ["-xf", tarball, "-C", destDir], "install tar (and xz-utils/zstd)"); }
        finally { File.Delete(tarball); }
    }
}
