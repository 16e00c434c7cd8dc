using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Virtio;

/// <summary>
/// One descriptor chain taken from a virtqueue: its buffers in order, device-readable ones first, then
/// device-writable ones (§2.7.4.2). Every buffer was checked to lie in guest RAM when the chain was taken. The
/// object is reused for the next chain, so taking chains allocates nothing once the buffer array has grown.
/// </summary>
public sealed class VirtqueueChain
{
    public readonly record struct Segment(ulong Address, uint Length, bool Writable);

    private Segment[] _segments = new Segment[16];
    private GuestMemory? _memory;

    /// <summary>Descriptor index of the chain's head: what goes back in the used ring.</summary>
    public ushort Head { get; private set; }
    public int Count { get; private set; }
    public long ReadableLength { get; private set; }
    public long WritableLength { get; private set; }
    public ReadOnlySpan<Segment> Segments => _segments.AsSpan(0, Count);

    internal void Start(GuestMemory memory, ushort head)
    {
        _memory = memory;
        Head = head;
        Count = 0;
        ReadableLength = WritableLength = 0;
    }

    internal void Add(ulong address, uint length, bool writable)
    {
        if (Count == _segments.Length) Array.Resize(ref _segments, _segments.Length * 2);
        _segments[Count++] = new Segment(address, length, writable);
        if (writable) WritableLength += length; else ReadableLength += length;
    }

    /// <summary>
    /// Copies device-readable bytes starting <paramref name="offset"/> bytes into the readable part; returns how
    /// many were copied (fewer when the readable part ends first).
    /// </summary>
    public int Read(long offset, Span<byte> destination)
    {
        int done = 0;
        long pos = 0;
        foreach (var s in Segments)
        {
            if (done == destination.Length || s.Writable) break;
            long end = pos + s.Length;
            if (offset + done < end)
            {
                long inSeg = offset + done - pos;
                int n = (int)Math.Min(destination.Length - done, s.Length - inSeg);
                if (!_memory!.TryRead(s.Address + (ulong)inSeg, destination.Slice(done, n))) break;
                done += n;
            }
            pos = end;
        }
        return done;
    }

    /// <summary>
    /// Copies into the device-writable part starting <paramref name="offset"/> bytes into it; returns how many bytes
    /// were written (fewer when the writable part ends first).
    /// </summary>
    public int Write(long offset, ReadOnlySpan<byte> source)
    {
        int done = 0;
        long pos = 0;
        foreach (var s in Segments)
        {
            if (done == source.Length) break;
            if (!s.Writable) continue;
            long end = pos + s.Length;
            if (offset + done < end)
            {
                long inSeg = offset + done - pos;
                int n = (int)Math.Min(source.Length - done, s.Length - inSeg);
                if (!_memory!.TryWrite(s.Address + (ulong)inSeg, source.Slice(done, n))) break;
                done += n;
            }
            pos = end;
        }
        return done;
    }
}
