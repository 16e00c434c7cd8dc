using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Dirigent.Storage;

/// <summary>Opens disk images by format name or by probing their magic.</summary>
public static class DiskImage
{
    /// <summary>
    /// Opens <paramref name="path"/> as "raw", "qcow2", or (null) whatever its first bytes say. Probing never
    /// takes a qcow2 file for raw, and refuses other image formats it recognises instead of exposing their
    /// metadata to the guest as disk contents; a qcow2 file is opened raw only when "raw" is asked for.
    /// </summary>
    public static IBlockDevice Open(string path, string? format, bool readOnly) => Open(path, format, readOnly, []);

    internal static IBlockDevice Open(string path, string? format, bool readOnly, List<string> chain)
    {
        format ??= Probe(path);
        return format switch
        {
            "raw" => new RawDisk(path, readOnly),
            "qcow2" => new Qcow2Disk(path, readOnly, chain),
            _ => throw new BlockDeviceException($"unsupported disk format '{format}' (raw or qcow2)"),
        };
    }

    /// <summary>Creates an image of the given format ("raw" or "qcow2").</summary>
    public static void Create(string path, string format, long size, string? backingFile = null, string? backingFormat = null, int clusterBits = 16)
    {
        switch (format)
        {
            case "qcow2":
                Qcow2Disk.Create(path, size, backingFile, backingFormat, clusterBits);
                break;
            case "raw":
                if (backingFile != null) throw new BlockDeviceException("raw images cannot have a backing file (use qcow2)");
                if (size < 0) throw new BlockDeviceException($"disk size {size} is negative");
                FileStream? f = null;
                try
                {
                    f = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
                    f.SetLength(size);
                    f.Dispose();
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentOutOfRangeException)
                {
                    // Nothing is left behind: a file we created but could not size (EFBIG: over the file system's
                    // largest file, ENOSPC...) is removed.
                    if (f != null)
                    {
                        f.Dispose();
                        try { File.Delete(path); } catch (IOException) { }
                    }
                    string why = e is ArgumentOutOfRangeException ? $"{size} bytes is more than this file system allows in one file" : e.Message;
                    throw new BlockDeviceException($"cannot create '{path}': {why}", e);
                }
                break;
            default:
                throw new BlockDeviceException($"unsupported disk format '{format}' (raw or qcow2)");
        }
    }

    /// <summary>"qcow2" or "raw" from the file's first bytes; other known image formats are an error.</summary>
    public static string Probe(string path)
    {
        Span<byte> head = stackalloc byte[8];
        int n;
        using (var f = OpenFile(path, readOnly: true))
        {
            n = 0;
            while (n < head.Length)
            {
                int r = RandomAccess.Read(f, head[n..], n);
                if (r == 0) break;
                n += r;
            }
        }
        if (n < 4) return "raw";
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(head);
        if (magic == Qcow2Header.Magic) return "qcow2";
        string? other = head[..4] switch
        {
            [(byte)'K', (byte)'D', (byte)'M', (byte)'V'] => "VMDK",
            [(byte)'Q', (byte)'F', (byte)'I', 0] => "QED",
            [(byte)'c', (byte)'o', (byte)'n', (byte)'e'] when n == 8 && head[4..].SequenceEqual("ctix"u8) => "VHD",
            [(byte)'v', (byte)'h', (byte)'d', (byte)'x'] when n == 8 && head[4..].SequenceEqual("file"u8) => "VHDX",
            _ => null,
        };
        if (other != null)
            throw new BlockDeviceException($"'{path}' looks like a {other} image; only raw and qcow2 are supported (give the format raw explicitly to use the bytes as they are)");
        return "raw";
    }

    internal static SafeFileHandle OpenFile(string path, bool readOnly)
    {
        try
        {
            return File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                readOnly ? FileShare.Read : FileShare.None);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BlockDeviceException($"cannot open disk image '{path}': {e.Message}", e);
        }
    }
}
