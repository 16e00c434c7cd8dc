using System.Buffers.Binary;
using Dirigent.Devices.Net;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Net;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Virtio;

/// <summary>
/// virtio-net's queue handling with a test-driven "driver" writing split rings in guest memory, a minimal
/// transport and a recording backend: no PCI, no guest.
/// </summary>
[Trait("Category", "Net")]
public sealed class VirtioNetTests : IDisposable
{
    private static readonly byte[] Mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
    private readonly GuestMemory _mem = new(4UL << 20);
    private readonly FakeBackend _backend = new();
    private readonly FakeTransport _transport;
    private readonly VirtioNet _net;
    private readonly DriverQueue _rx, _tx;

    public VirtioNetTests()
    {
        _net = new VirtioNet(_backend, Mac);
        _transport = new FakeTransport(_mem, 2);
        _rx = new DriverQueue(_mem, _transport.Queue(0), 0x10000, 0x100000);
        _tx = new DriverQueue(_mem, _transport.Queue(1), 0x20000, 0x200000);
    }

    public void Dispose() => _mem.Dispose();

    private void Activate(ulong features)
    {
        _transport.NegotiatedFeatures = features | VirtioConstants.Version1;
        _rx.Enable(_transport.NegotiatedFeatures);
        _tx.Enable(_transport.NegotiatedFeatures);
        _net.Activate(_transport);
    }

    private static byte[] Packet(int frameLength, byte flags = 0, byte gsoType = 0)
    {
        var p = new byte[INetBackend.HeaderLength + frameLength];
        new Random(frameLength).NextBytes(p.AsSpan(INetBackend.HeaderLength)); // fixed: a failure shows the same bytes again
        p[0] = flags;
        p[1] = gsoType;
        return p;
    }

    [Fact]
    public void ConfigSpaceHoldsMacAndLinkUp()
    {
        Assert.Equal(VirtioNet.Mac | VirtioNet.MrgRxbuf | VirtioNet.Status, _net.DeviceFeatures);
        Assert.Equal(1, _net.DeviceType);
        Assert.Equal(0x020000u, _net.PciClassCode);
        for (int k = 0; k < 6; k++) Assert.Equal(Mac[k], _net.ReadConfig(k, 1));
        Assert.Equal(0x00_54_52u | (0xabu << 24), _net.ReadConfig(0, 4));
        Assert.Equal((uint)VirtioNet.StatusLinkUp, _net.ReadConfig(6, 2));
        _net.WriteConfig(0, 4, 0xffffffff);
        Assert.Equal(Mac[0], _net.ReadConfig(0, 1));
    }

    [Fact]
    public void TransmitSendsEachChainWithAZeroedHeader()
    {
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf);
        var frame = new byte[100];
        new Random(100).NextBytes(frame); // fixed seed: the same frame in every run
        var hdr = new byte[12];
        hdr[0] = 2; hdr[2] = 54; hdr[6] = 34; hdr[10] = 7; // DATA_VALID, hdr_len, csum_start, num_buffers: meaningless here
        // Header and frame in separate descriptors, the frame itself split too.
        _tx.AddChain((hdr, false), (frame[..30], false), (frame[30..], false));
        _tx.AddChain((new byte[12], false), (frame, false));
        _net.QueueNotify(VirtioNet.TransmitQueue);
        Assert.Equal(2, _backend.Sent.Count);
        foreach (var p in _backend.Sent)
        {
            Assert.Equal(new byte[12], p[..12]);
            Assert.Equal(frame, p[12..]);
        }
        Assert.Equal(2, _tx.Used.Count);
        Assert.All(_tx.Used, u => Assert.Equal(0u, u.Length));
        Assert.True(_transport.Signals[1] > 0);
        Assert.Equal(2, _net.TxPackets);
        Assert.Equal(200, _net.TxBytes); // frame bytes, without the virtio-net header
    }

    private static byte[] TsoHeader(byte gsoType) => [VirtioNet.HdrFlagNeedsCsum, gsoType, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 9, 9];

    [Theory]
    [InlineData(VirtioNet.GsoNone, 0UL)]                             // NEEDS_CSUM without CSUM
    [InlineData(VirtioNet.GsoTcpV4, VirtioNet.Csum)]                  // TSO4 without HOST_TSO4
    [InlineData(VirtioNet.GsoTcpV6, VirtioNet.Csum | VirtioNet.HostTso4)]
    [InlineData(VirtioNet.GsoTcpV4 | VirtioNet.GsoEcn, VirtioNet.Csum | VirtioNet.HostTso4)]
    [InlineData(VirtioNet.GsoUdp, VirtioNet.Offloads)]                // UFO is never offered
    public void TransmitDropsHeadersAskingForOffloadsNotNegotiated(byte gsoType, ulong features)
    {
        _backend.Offloads = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;
        Activate(VirtioNet.Mac | features);
        _tx.AddChain((TsoHeader(gsoType), false), (new byte[3000], false));
        _net.QueueNotify(VirtioNet.TransmitQueue);
        Assert.Empty(_backend.Sent);
        Assert.Single(_tx.Used);
        Assert.Equal(1, _net.TxDropped);
    }

    [Fact]
    public void TransmitPassesNegotiatedOffloadHeadersThrough()
    {
        _backend.Offloads = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;
        Activate(VirtioNet.Mac | VirtioNet.Csum | VirtioNet.HostTso4);
        var hdr = TsoHeader(VirtioNet.GsoTcpV4);
        _tx.AddChain((hdr, false), (new byte[3000], false));
        _net.QueueNotify(VirtioNet.TransmitQueue);
        var sent = Assert.Single(_backend.Sent);
        Assert.Equal(hdr[..10], sent[..10]);
        Assert.Equal(0, sent[10] | sent[11]); // num_buffers is not the backend's business
        Assert.Equal(3012, sent.Length);
    }

    [Fact]
    public void OffloadsAreOfferedOnlyWhenTheBackendHonoursThem()
    {
        Assert.Equal(0UL, _net.DeviceFeatures & VirtioNet.Offloads);
        _backend.Offloads = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;
        Assert.Equal(VirtioNet.Offloads, _net.DeviceFeatures & VirtioNet.Offloads);
    }

    [Fact]
    public void ReceiveOffloadsFollowTheDriverAndResetClearsThem()
    {
        _backend.Offloads = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf | VirtioNet.GuestCsum | VirtioNet.GuestTso4);
        Assert.Equal(NetOffloads.Checksum | NetOffloads.Tso4, _backend.ReceiveOffloads);
        _net.Reset();
        Assert.Equal(NetOffloads.None, _backend.ReceiveOffloads);
    }

    [Fact]
    public void SegmentedPacketReachesADriverThatAcceptsIt()
    {
        _backend.Offloads = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf | VirtioNet.GuestCsum | VirtioNet.GuestTso4);
        var bufs = Enumerable.Range(0, 8).Select(_ => _rx.AddWritable(1536)).ToArray();
        var p = Packet(9000 - 12);
        TsoHeader(VirtioNet.GsoTcpV4).AsSpan(0, 10).CopyTo(p);
        Assert.True(_backend.Receiver!.TryReceive(p));
        Assert.Equal(6, _rx.Used.Count);
        var got = new byte[6 * 1536];
        for (int k = 0; k < 6; k++) _mem.Read(bufs[k], got.AsSpan(1536 * k, 1536));
        Assert.Equal(p[..10], got[..10]);
        Assert.Equal(6, BinaryPrimitives.ReadUInt16LittleEndian(got.AsSpan(10)));
        Assert.Equal(p[12..], got[12..9000]);
        // Segmented for IPv6, or partial checksums to a driver without GUEST_CSUM: not deliverable.
        Assert.True(_backend.Receiver.TryReceive(Packet(100, gsoType: VirtioNet.GsoTcpV6)));
        Assert.Equal(6, _rx.Used.Count);
    }

    [Fact]
    public void TransmitDropsChainsTooShortForAFrame()
    {
        Activate(VirtioNet.Mac);
        _tx.AddChain((new byte[20], false));
        _net.QueueNotify(VirtioNet.TransmitQueue);
        Assert.Empty(_backend.Sent);
        Assert.Single(_tx.Used);
        Assert.Equal(1, _net.TxDropped);
    }

    [Fact]
    public void ReceiveFillsOneBufferAndSetsNumBuffersToOne()
    {
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf);
        ulong buf = _rx.AddWritable(2048);
        var p = Packet(1000, flags: 2); // DATA_VALID from the host: not negotiated, must not reach the driver
        Assert.True(_backend.Receiver!.TryReceive(p));
        var u = Assert.Single(_rx.Used);
        Assert.Equal((uint)p.Length, u.Length);
        var got = new byte[p.Length];
        _mem.Read(buf, got);
        Assert.Equal(new byte[10], got[..10]);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(got.AsSpan(10)));
        Assert.Equal(p[12..], got[12..]);
        Assert.True(_transport.Signals[0] > 0);
    }

    [Fact]
    public void ReceiveMergesBuffersForALargerPacket()
    {
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf);
        ulong[] bufs = [_rx.AddWritable(600), _rx.AddWritable(600), _rx.AddWritable(600), _rx.AddWritable(600)];
        var p = Packet(1400 - 12);
        Assert.True(_backend.Receiver!.TryReceive(p));
        Assert.Equal([600u, 600u, 200u], _rx.Used.Select(u => u.Length));
        var got = new byte[1800];
        for (int k = 0; k < 3; k++) _mem.Read(bufs[k], got.AsSpan(600 * k, 600));
        Assert.Equal(3, BinaryPrimitives.ReadUInt16LittleEndian(got.AsSpan(10)));
        Assert.Equal(p[12..], got[12..1400]);
        // The fourth buffer is still the driver's.
        Assert.True(_backend.Receiver.TryReceive(Packet(60)));
        Assert.Equal(4, _rx.Used.Count);
        Assert.Equal((2L, 1400L - 12 + 60), (_net.RxPackets, _net.RxBytes)); // frame bytes, without the header
    }

    [Fact]
    public void PacketWithoutRoomIsRefusedUntilTheDriverPostsBuffers()
    {
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf);
        var p = Packet(1400);
        Assert.False(_backend.Receiver!.TryReceive(p));
        ulong first = _rx.AddWritable(1000);
        Assert.False(_backend.Receiver.TryReceive(p));
        Assert.Empty(_rx.Used); // the buffer taken is kept for this packet, not returned empty
        ulong second = _rx.AddWritable(1000);
        int before = _backend.ReadyCalls;
        _net.QueueNotify(VirtioNet.ReceiveQueue);
        Assert.Equal(before + 1, _backend.ReadyCalls);
        Assert.True(_backend.Receiver.TryReceive(p));
        Assert.Equal([1000u, (uint)p.Length - 1000], _rx.Used.Select(u => u.Length));
        var got = new byte[2000];
        _mem.Read(first, got.AsSpan(0, 1000));
        _mem.Read(second, got.AsSpan(1000, 1000));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(got.AsSpan(10)));
        Assert.Equal(p[12..], got[12..p.Length]);
    }

    [Fact]
    public void WithoutMergeableBuffersAPacketMustFitOneBuffer()
    {
        Activate(VirtioNet.Mac);
        ulong buf = _rx.AddWritable(600);
        Assert.True(_backend.Receiver!.TryReceive(Packet(1000))); // dropped: too big for the driver's buffers
        Assert.Empty(_rx.Used);
        var small = Packet(500);
        Assert.True(_backend.Receiver.TryReceive(small));
        Assert.Equal((uint)small.Length, Assert.Single(_rx.Used).Length);
        var got = new byte[small.Length];
        _mem.Read(buf, got);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(got.AsSpan(10)));
        Assert.Equal(small[12..], got[12..]);
        Assert.Equal(1, _net.RxDropped);
    }

    [Fact]
    public void OffloadedPacketsAndPacketsBeforeActivationAreDropped()
    {
        Assert.True(_backend.Receiver == null || _backend.Receiver.TryReceive(Packet(100)));
        Activate(VirtioNet.Mac | VirtioNet.MrgRxbuf);
        _rx.AddWritable(4096);
        Assert.True(_backend.Receiver!.TryReceive(Packet(100, gsoType: 1)));
        Assert.True(_backend.Receiver.TryReceive(Packet(100, flags: 1)));
        Assert.Empty(_rx.Used);
        _net.Reset();
        Assert.True(_backend.Receiver.TryReceive(Packet(100)));
        Assert.Empty(_rx.Used);
        Assert.Equal(3, _net.RxDropped);
    }
}
