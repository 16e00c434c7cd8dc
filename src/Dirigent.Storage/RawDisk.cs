using Microsoft.Win32.SafeHandles;

namespace Dirigent.Storage;

/// <summary>A raw image: guest byte N is file byte N. Discard punches nothing (kept simple); zeros are written.</summary>
public sealed class RawDisk : IBlockDevice
{
    private readonly SafeFileHandle _file;
    private readonly string _path;

    public string Path => _path;
    public long Size { get; }
    public bool ReadOnly { get; }

    public RawDisk(string path, bool readOnly)
    {
        _path = path;
        ReadOnly = readOnly;
        try
        {
            _file = File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                readOnly ? FileShare.Read : FileShare.None);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BlockDeviceException($"cannot open disk image '{path}': {e.Message}", e);
        }
        Size = RandomAccess.GetLength(_file);
    }

    public void Read(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(_file, buffer[done..], offset + done);
            if (n == 0) { buffer[done..].Clear(); break; }
            done += n;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        if (ReadOnly) throw new BlockDeviceException($"disk image '{_path}' is read-only");
        CheckRange(offset, data.Length);
        RandomAccess.Write(_file, data, offset);
    }

    public void Flush()
    {
        if (!ReadOnly) RandomAccess.FlushToDisk(_file);
    }

    public void Discard(long offset, long length) => WriteZeroes(offset, length);

    public void WriteZeroes(long offset, long length)
    {
        if (ReadOnly) throw new BlockDeviceException($"disk image '{_path}' is read-only");
        CheckRange(offset, length);
        var zeros = new byte[(int)Math.Min(length, 1 << 20)];
        for (long done = 0; done < length; done += zeros.Length)
            RandomAccess.Write(_file, zeros.AsSpan(0, (int)Math.Min(zeros.Length, length - done)), offset + done);
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size - length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range {offset}+{length} outside disk of {Size} bytes");
    }

    public void Dispose() => _file.Dispose();
}
