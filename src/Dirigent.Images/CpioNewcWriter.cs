using System.Text;

namespace Dirigent.Images;

/// <summary>
/// Writes a cpio archive in the SVR4 "newc" format (magic 070701) that the Linux kernel unpacks as an initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII-hex header, the NUL-terminated
/// name, the data, each padded to 4 bytes; the archive ends with an entry named TRAILER!!!.
/// Timestamps and owners are fixed (0) so the same inputs give the same bytes.
/// </summary>
public sealed class CpioNewcWriter : IDisposable
{
    public const int S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xA000, S_IFCHR = 0x2000;
    public const string Trailer = "TRAILER!!!";

    private readonly Stream _out;
    private readonly bool _leaveOpen;
    private uint _nextIno = 1;
    private long _written;
    private bool _finished;

    public CpioNewcWriter(Stream output, bool leaveOpen = false)
    {
        _out = output;
        _leaveOpen = leaveOpen;
    }

    public void AddDirectory(string path, int mode = 0x1ED /* 0755 */) => Add(path, S_IFDIR | mode, 2, [], 0, 0);
    public void AddFile(string path, ReadOnlySpan<byte> data, int mode = 0x1A4 /* 0644 */) => Add(path, S_IFREG | mode, 1, data, 0, 0);
    public void AddSymlink(string path, string target) => Add(path, S_IFLNK | 0x1FF, 1, Encoding.UTF8.GetBytes(target), 0, 0);
    public void AddCharDevice(string path, int major, int minor, int mode = 0x180 /* 0600 */) => Add(path, S_IFCHR | mode, 1, [], major, minor);

    private void Add(string path, int mode, int nlink, ReadOnlySpan<byte> data, int rdevMajor, int rdevMinor)
    {
        if (_finished) throw new InvalidOperationException("archive already finished");
        path = path.TrimStart('/');
        if (path.Length == 0 || path == Trailer) throw new ArgumentException($"invalid archive path '{path}'");
        WriteEntry(path, _nextIno++, mode, nlink, data, rdevMajor, rdevMinor);
    }

    private void WriteEntry(string name, uint ino, int mode, int nlink, ReadOnlySpan<byte> data, int rdevMajor, int rdevMinor)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var h = new StringBuilder("070701", 110);
        foreach (long v in new long[] { ino, mode, 0, 0, nlink, 0, data.Length, 0, 0, rdevMajor, rdevMinor, nameBytes.Length + 1, 0 })
            h.Append(((uint)v).ToString("x8"));
        Put(Encoding.ASCII.GetBytes(h.ToString()));
        Put(nameBytes);
        Put([0]);
        Pad();
        Put(data);
        Pad();
    }

    private void Put(ReadOnlySpan<byte> b) { _out.Write(b); _written += b.Length; }
    private void Pad() { while (_written % 4 != 0) Put([0]); }

    /// <summary>Writes the trailer entry; the archive is complete afterwards.</summary>
    public void Finish()
    {
        if (_finished) return;
        WriteEntry(Trailer, 0, 0, 1, [], 0, 0);
        _finished = true;
        _out.Flush();
    }

    public void Dispose()
    {
        Finish();
        if (!_leaveOpen) _out.Dispose();
    }
}
