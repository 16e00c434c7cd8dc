namespace Dirigent.Storage;

/// <summary>
/// A disk image as the block devices see it: a byte-addressed array of <see cref="Size"/> bytes. Offsets and
/// lengths need not be sector-aligned (virtio-blk always uses 512-byte sectors, but images serve any range).
/// Implementations are safe for one caller at a time; the device serialises its requests.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>Virtual size in bytes (what the guest sees).</summary>
    long Size { get; }
    bool ReadOnly { get; }

    /// <summary>Reads <c>buffer.Length</c> bytes at <paramref name="offset"/>; the range lies within <see cref="Size"/>.</summary>
    void Read(long offset, Span<byte> buffer);
    /// <summary>Writes at <paramref name="offset"/>; throws <see cref="BlockDeviceException"/> when read-only.</summary>
    void Write(long offset, ReadOnlySpan<byte> data);
    /// <summary>Makes every completed write durable on the host (fsync).</summary>
    void Flush();
    /// <summary>The guest no longer needs the range: an image may free it; reads return zeros or old data.</summary>
    void Discard(long offset, long length);
    /// <summary>The range reads as zeros afterwards.</summary>
    void WriteZeroes(long offset, long length);
}

/// <summary>A disk image that cannot be opened or used: the message is one line for the user.</summary>
public sealed class BlockDeviceException(string message, Exception? inner = null) : Exception(message, inner);
