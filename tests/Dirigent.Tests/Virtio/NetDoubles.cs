using Dirigent.Devices.Net;
using Dirigent.Devices.Virtio;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Virtio;

/// <summary>A backend that records what is sent and lets the test deliver packets.</summary>
internal sealed class FakeBackend : INetBackend
{
    public readonly List<byte[]> Sent = new();
    public INetReceiver? Receiver;
    public int ReadyCalls;
    public NetOffloads Offloads, ReceiveOffloads;
    public string Name => "fake";
    public NetOffloads SupportedOffloads => Offloads;
    public void SetReceiveOffloads(NetOffloads offloads) => ReceiveOffloads = offloads;
    public void Start(INetReceiver receiver) => Receiver = receiver;
    public bool Send(ReadOnlySpan<byte> packet) { Sent.Add(packet.ToArray()); return true; }
    public void ReceiveReady() => ReadyCalls++;
    public void Dispose() { }
}

/// <summary>Queues without PCI: signals are counted; a malformed queue calls <c>onFail</c> (default: fails the test).</summary>
internal sealed class FakeTransport : IVirtioTransport
{
    private readonly Virtqueue[] _queues;
    public readonly int[] Signals;
    private readonly Action<string> _onFail;

    public FakeTransport(GuestMemory mem, int queues, Action<string>? onFail = null)
    {
        _onFail = onFail ?? (reason => throw new Xunit.Sdk.XunitException(reason));
        Memory = mem;
        Signals = new int[queues];
        _queues = Enumerable.Range(0, queues)
            .Select(i => new Virtqueue(i, 256, mem, q => Signals[q.Index]++, (q, reason) => _onFail(reason)))
            .ToArray();
    }
    public GuestMemory Memory { get; }
    public ulong NegotiatedFeatures { get; set; }
    public Virtqueue Queue(int index) => _queues[index];
    public void SignalConfigChange() { }
    public void SetNeedsReset(string reason) => _onFail(reason);
}

/// <summary>The driver's side of a split virtqueue: descriptors, avail ring and used ring at fixed addresses.</summary>
internal sealed class DriverQueue(GuestMemory mem, Virtqueue q, ulong rings, ulong buffers)
{
    private const int Size = 16;
    private ushort _nextDesc, _availIdx, _usedSeen;
    private ulong _nextBuf = buffers;
    public readonly List<(ushort Head, uint Length)> UsedList = new();
    private ulong Desc => rings;
    private ulong Avail => rings + 16 * Size;
    private ulong UsedRing => rings + 0x1000;

    public void Enable(ulong features)
    {
        q.Size = Size;
        q.DescAddress = Desc;
        q.DriverAddress = Avail;
        q.DeviceAddress = UsedRing;
        Assert.True(q.Enable(features));
    }

    public ulong AddWritable(int length) => AddChain((new byte[length], true));

    /// <summary>Adds one chain; returns the address of its first buffer.</summary>
    public ulong AddChain(params (byte[] Data, bool Writable)[] bufs)
    {
        ushort head = _nextDesc;
        ulong first = _nextBuf;
        for (int k = 0; k < bufs.Length; k++)
        {
            ushort i = (ushort)(_nextDesc++ % Size);
            mem.Write(_nextBuf, bufs[k].Data);
            ulong d = Desc + 16UL * i;
            mem.WriteU64(d, _nextBuf);
            mem.WriteU32(d + 8, (uint)bufs[k].Data.Length);
            ushort flags = (ushort)((bufs[k].Writable ? VirtioConstants.DescFlagWrite : 0) | (k + 1 < bufs.Length ? VirtioConstants.DescFlagNext : 0));
            mem.WriteU16(d + 12, flags);
            mem.WriteU16(d + 14, (ushort)(_nextDesc % Size));
            _nextBuf += (ulong)(bufs[k].Data.Length + 63) & ~63UL;
        }
        mem.WriteU16(Avail + 4 + 2UL * (ulong)(_availIdx % Size), (ushort)(head % Size));
        mem.WriteU16(Avail + 2, ++_availIdx);
        return first;
    }

    public List<(ushort Head, uint Length)> Used
    {
        get
        {
            ushort idx = mem.ReadU16(UsedRing + 2);
            for (; _usedSeen != idx; _usedSeen++)
            {
                ulong e = UsedRing + 4 + 8UL * (ulong)(_usedSeen % Size);
                UsedList.Add(((ushort)mem.ReadU32(e), mem.ReadU32(e + 4)));
            }
            return UsedList;
        }
    }
}
