using System.Text.Json;
using Dirigent.Devices.Net;
using Dirigent.Devices.Pci;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Net;
using Dirigent.Machine.Bus;
using Dirigent.Machine.State;
using Dirigent.Storage;
using Dirigent.Tests.Devices.Misc;
using Dirigent.Tests.Pci;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

/// <summary>
/// Lifecycle of virtio PCI devices: stop quiesces the device threads, save/restore carries the transport, the rings'
/// device-side indices and the device part onto a freshly built device, reset returns to the power-on state, and
/// every device write into guest memory is in the dirty log.
/// </summary>
public class VirtioStateTests
{
    private const ulong BufferBase = 0x10000;
    private const int Sector = VirtioBlock.SectorSize;

    private static MemoryDisk RandomDisk()
    {
        var d = new MemoryDisk(64 * 1024);
        new Random(42).NextBytes(d.Data);
        return d;
    }

    private static ulong Features(VirtioHarness h) => Version1 | RingEventIdx | h.DeviceFeatures() & 0xFFFF_FFFF;

    // Request k: header and status on their own page, a one-sector buffer, descriptors 3k..3k+2.
    private static ulong HeaderAt(int k) => DataBase + 0x100UL * (ulong)k;
    private static ulong StatusAt(int k) => DataBase + 0x4000 + 0x100UL * (ulong)k;
    private static ulong BufferAt(int k) => BufferBase + 0x1000UL * (ulong)k;

    /// <summary>Writes read request k (sector <paramref name="sector"/>) into the descriptor table; <see cref="VirtioHarness.Publish"/> makes it available.</summary>
    private static ushort WriteRead(VirtioHarness h, int k, ulong sector)
    {
        h.Mem.WriteU32(HeaderAt(k), VirtioBlock.TypeIn);
        h.Mem.WriteU32(HeaderAt(k) + 4, 0);
        h.Mem.WriteU64(HeaderAt(k) + 8, sector);
        h.Mem.WriteU8(StatusAt(k), 0xEE);
        h.Mem.Write(BufferAt(k), new byte[Sector]);
        int d = 3 * k;
        h.Desc(d, HeaderAt(k), 16, DescFlagNext, (ushort)(d + 1));
        h.Desc(d + 1, BufferAt(k), Sector, DescFlagNext | DescFlagWrite, (ushort)(d + 2));
        h.Desc(d + 2, StatusAt(k), 1, DescFlagWrite);
        return (ushort)d;
    }

    private static void AssertRead(VirtioHarness h, MemoryDisk disk, int k, ulong sector)
    {
        Assert.Equal(VirtioBlock.StatusOk, h.Mem.ReadU8(StatusAt(k)));
        var buf = new byte[Sector];
        h.Mem.Read(BufferAt(k), buf);
        Assert.Equal(disk.Data.AsSpan((int)sector * Sector, Sector).ToArray(), buf);
    }

    private static Dictionary<string, SavedUnit> ThroughJson(Dictionary<string, SavedUnit> saved) =>
        JsonSerializer.Deserialize<Dictionary<string, SavedUnit>>(JsonSerializer.Serialize(saved, StateRegistry.Json), StateRegistry.Json)!;

    private static string Json(VirtioPciState s) => JsonSerializer.Serialize(s, StateRegistry.Json);

    [Fact]
    public void BlockRequestsAvailableAtSaveCompleteOnTheRestoredDeviceAfterStart()
    {
        var disk = RandomDisk();
        var h1 = new VirtioHarness(new VirtioBlock(disk, "s", useWorkerThread: false));
        h1.EnableMsix();
        h1.ProgramMsixVector(1, 0x31);
        h1.Start(Features(h1), msixVector: 1);
        h1.Publish(WriteRead(h1, 0, 1));
        Assert.Equal(1, h1.UsedIdx);
        AssertRead(h1, disk, 0, 1);

        h1.Dev.Stop();
        h1.SetUsedEvent(1);
        h1.Publish(WriteRead(h1, 1, 5));
        h1.Publish(WriteRead(h1, 2, 9));
        Assert.Equal(1, h1.UsedIdx); // kicks while stopped are not acted on
        var reg1 = new StateRegistry();
        reg1.Add("pci/00:01.0", h1.Dev);
        var saved = ThroughJson(reg1.SaveAll());

        // A new machine over the same RAM and disk image.
        var h2 = new VirtioHarness(new VirtioBlock(disk, "s", useWorkerThread: false), memory: h1.Mem) { QueueSize = 16 };
        var reg2 = new StateRegistry();
        reg2.Add("pci/00:01.0", h2.Dev);
        reg2.RestoreAll(saved);
        Assert.Equal(h1.Bar, h2.Bus.MappedBase(h2.Dev, 0));
        Assert.Equal(h1.Dev.Status, h2.Dev.Status);
        Assert.Equal(1, h2.UsedIdx); // nothing processed before Start
        Assert.Equal(0, h2.Sink.MsiCount);

        reg2.StartAll();
        Assert.Equal(3, h2.UsedIdx);
        Assert.Equal((3u, (uint)Sector + 1), h2.Used(1));
        Assert.Equal((6u, (uint)Sector + 1), h2.Used(2));
        AssertRead(h2, disk, 1, 5);
        AssertRead(h2, disk, 2, 9);
        Assert.Equal(new[] { (0xFEE0_0000UL, 0x31u) }, h2.Sink.Msis); // the restored MSI-X vector, on the new machine
        Assert.Equal(3, h2.AvailEvent);                               // EVENT_IDX state carried on
        // And the restored device keeps serving.
        h1.Publish(WriteRead(h2, 3, 11), kick: false);
        h2.Kick(0);
        Assert.Equal(4, h2.UsedIdx);
        AssertRead(h2, disk, 3, 11);
        h2.Dispose();
    }

    /// <summary>A disk whose reads wait at a gate the test opens.</summary>
    private sealed class GateDisk(MemoryDisk inner) : IBlockDevice
    {
        public readonly ManualResetEventSlim Entered = new(), Release = new();
        public int Reads;
        public long Size => inner.Size;
        public bool ReadOnly => false;
        public void Read(long offset, Span<byte> buffer)
        {
            Interlocked.Increment(ref Reads);
            Entered.Set();
            if (!Release.Wait(10_000)) throw new IOException("test gate never opened");
            inner.Read(offset, buffer);
        }
        public void Write(long offset, ReadOnlySpan<byte> data) => inner.Write(offset, data);
        public void Flush() { }
        public void Discard(long offset, long length) { }
        public void WriteZeroes(long offset, long length) { }
        public void Dispose() { }
    }

    [Fact]
    public void StopWaitsForTheRequestInProgressAndTakesNoMoreUntilStart()
    {
        var disk = RandomDisk();
        var gate = new GateDisk(disk);
        using var blk = new VirtioBlock(gate, "s", useWorkerThread: true);
        using var h = new VirtioHarness(blk);
        h.Start(Features(h));
        h.Publish(WriteRead(h, 0, 2));
        Assert.True(gate.Entered.Wait(10_000), "worker never started the request");
        h.Publish(WriteRead(h, 1, 4));

        var stopper = new Thread(() => h.Dev.Stop());
        stopper.Start();
        // Stop blocks until the worker lets go of the request it is serving.
        Assert.True(FakeIrqLine.WaitFor(() => (stopper.ThreadState & ThreadState.WaitSleepJoin) != 0));
        Assert.True(stopper.IsAlive);
        Assert.Equal(0, h.UsedIdx);
        gate.Release.Set();
        Assert.True(stopper.Join(10_000));

        // The request in progress completed and was published (used ring and interrupt) before Stop returned ...
        Assert.Equal(1, h.UsedIdx);
        Assert.Equal((0u, (uint)Sector + 1), h.Used(0));
        AssertRead(h, disk, 0, 2);
        Assert.Equal(IsrQueue, h.Dev.IsrStatus);
        // ... and the next one was not taken, not even after another kick.
        h.Kick(0);
        Assert.Equal(1, h.UsedIdx);
        Assert.Equal(1, Volatile.Read(ref gate.Reads));

        h.Dev.Start();
        Assert.True(FakeIrqLine.WaitFor(() => h.UsedIdx == 2), "request made available while stopped not served after Start");
        AssertRead(h, disk, 1, 4);
        Assert.Equal(2, Volatile.Read(ref gate.Reads));
    }

    [Fact]
    public void DeviceWritesIntoGuestMemoryAreInTheDirtyLog()
    {
        var disk = RandomDisk();
        using var h = new VirtioHarness(new VirtioBlock(disk, "s", useWorkerThread: false));
        h.Start(Features(h));
        ushort head = WriteRead(h, 0, 3);
        h.Mem.DirtyLog.SetEnabled(true);
        h.Publish(head);
        Assert.Equal(1, h.UsedIdx);
        var pages = h.Mem.DirtyLog.Harvest();
        Assert.Contains(UsedBase, pages);       // used element, used->idx and avail_event, through host pointers
        Assert.Contains(BufferAt(0), pages);    // the data read
        Assert.Contains(StatusAt(0) & ~0xFFFUL, pages);
        Assert.Contains(AvailBase, pages);      // the test's own (driver) write
        Assert.DoesNotContain(DescBase, pages); // only read
        Assert.DoesNotContain(HeaderAt(0) & ~0xFFFUL, pages);
        Assert.Empty(h.Mem.DirtyLog.Harvest());
    }

    private static readonly byte[] Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    private const NetOffloads All = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn;

    private static byte[] Packet(int frame, int seed)
    {
        var p = new byte[INetBackend.HeaderLength + frame];
        new Random(seed).NextBytes(p.AsSpan(INetBackend.HeaderLength));
        return p;
    }

    [Fact]
    public void NetRestoreReappliesOffloadsAndResumesReceiveWithTheBuffersHeldAtStop()
    {
        var backend1 = new FakeBackend { Offloads = All };
        var h1 = new VirtioHarness(new VirtioNet(backend1, Mac));
        h1.Start(Version1 | VirtioNet.Mac | VirtioNet.MrgRxbuf | VirtioNet.GuestCsum | VirtioNet.GuestTso4);
        Assert.Equal(NetOffloads.Checksum | NetOffloads.Tso4, backend1.ReceiveOffloads);
        for (int i = 0; i < 3; i++) h1.Desc(i, BufferAt(i), 100, DescFlagWrite);
        h1.Publish(0);
        Assert.True(backend1.Receiver!.TryReceive(Packet(60, 1)));
        Assert.Equal(1, h1.UsedIdx);
        // A 150-byte packet takes buffer 1 and waits for more room.
        h1.Publish(1);
        var big = Packet(138, 2);
        Assert.False(backend1.Receiver.TryReceive(big));

        h1.Dev.Stop();
        Assert.False(backend1.Receiver.TryReceive(big)); // refused while stopped: the backend keeps it
        var saved = JsonSerializer.Deserialize<VirtioPciState>(Json(h1.Dev.Save()), StateRegistry.Json)!;
        Assert.Equal(1, saved.Queues[0].LastAvail);      // buffer 1 went back to the ring
        Assert.Equal(NetOffloads.Checksum | NetOffloads.Tso4, saved.Net!.ReceiveOffloads);
        Assert.Equal(1, saved.Net.RxPackets);

        var backend2 = new FakeBackend { Offloads = All };
        var h2 = new VirtioHarness(new VirtioNet(backend2, Mac), memory: h1.Mem) { QueueSize = 16 };
        h2.Dev.Restore(saved);
        Assert.Equal(NetOffloads.Checksum | NetOffloads.Tso4, backend2.ReceiveOffloads);
        Assert.NotNull(backend2.Receiver);
        Assert.False(backend2.Receiver!.TryReceive(big)); // still stopped until Start
        h1.Publish(2, kick: false);
        int ready = backend2.ReadyCalls;
        h2.Dev.Start();
        Assert.True(backend2.ReadyCalls > ready);
        Assert.True(backend2.Receiver.TryReceive(big));
        Assert.Equal(3, h2.UsedIdx);
        Assert.Equal((1u, 100u), h2.Used(1));
        Assert.Equal((2u, 50u), h2.Used(2));
        Assert.Equal(2, h2.Mem.ReadU16(BufferAt(1) + 10)); // num_buffers
        var got = new byte[150];
        h2.Mem.Read(BufferAt(1), got.AsSpan(0, 100));
        h2.Mem.Read(BufferAt(2), got.AsSpan(100, 50));
        Assert.Equal(big.AsSpan(12).ToArray(), got.AsSpan(12).ToArray());

        // The MAC is part of what the guest saw: another one is refused.
        var h3 = new VirtioHarness(new VirtioNet(new FakeBackend { Offloads = All }, [2, 0, 0, 0, 0, 1]), memory: h1.Mem);
        Assert.Throws<StateRestoreException>(() => h3.Dev.Restore(saved));
        h2.Dispose();
    }

    public static TheoryData<string> HostileCases() => new() { "type", "queues", "null queue", "queue size", "ring outside RAM",
        "in flight", "disabled with indices", "queue vector", "features", "isr", "intx without isr", "config vector",
        "capacity", "no block part", "no function", "misaligned bar" };

    [Theory]
    [MemberData(nameof(HostileCases))]
    public void HostileRecordsAreRefusedAndLeaveTheDeviceUntouched(string what)
    {
        var disk = RandomDisk();
        using var h1 = new VirtioHarness(new VirtioBlock(disk, "s", useWorkerThread: false));
        h1.Start(Features(h1));
        h1.Publish(WriteRead(h1, 0, 1));
        h1.Dev.Stop();
        var s = h1.Dev.Save();
        var q = s.Queues[0];
        var cfg = (byte[])s.Function.Config.Clone();
        VirtioPciState bad = what switch
        {
            "type" => s with { DeviceType = DeviceEntropy },
            "queues" => s with { Queues = [] },
            "null queue" => s with { Queues = [null!] },
            "queue size" => s with { Queues = [q with { Size = 3 }] },
            "ring outside RAM" => s with { Queues = [q with { DeviceAddress = 0x8000_0000 }] },
            "in flight" => s with { Queues = [q with { LastAvail = (ushort)(q.UsedIdx + 17) }] },
            "disabled with indices" => s with { Queues = [q with { Enabled = false }] },
            "queue vector" => s with { Queues = [q with { MsixVector = 7 }] },
            "features" => s with { NegotiatedFeatures = s.NegotiatedFeatures | 1UL << 50, DriverFeatures = s.DriverFeatures | 1UL << 50 },
            "isr" => s with { Isr = 0x80 },
            "intx without isr" => s with { Isr = 0 },
            "config vector" => s with { ConfigMsixVector = 2 },
            "capacity" => s with { Block = new VirtioBlockState(1, false) },
            "no block part" => s with { Block = null },
            "no function" => s with { Function = null! },
            "misaligned bar" => s with { Function = s.Function with { Config = SetByte(cfg, PciConfig.Bar0 + 1, 0x10) } },
            _ => throw new ArgumentException(what),
        };
        var h2 = new VirtioHarness(new VirtioBlock(disk, "s", useWorkerThread: false), memory: h1.Mem);
        string before = Json(h2.Dev.Save());
        var e = Assert.Throws<StateRestoreException>(() => h2.Dev.Restore(bad));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(before, Json(h2.Dev.Save()));
        h2.Dev.Restore(s); // the record as saved is fine
        Assert.Equal(Json(s), Json(h2.Dev.Save()));
    }

    private static byte[] SetByte(byte[] a, int at, byte v) { a[at] = v; return a; }

    [Fact]
    public void ResetReturnsTheDeviceToTheStateOfAFreshOne()
    {
        var disk = RandomDisk();
        using var h = new VirtioHarness(new VirtioBlock(disk, "s", useWorkerThread: false));
        h.EnableMsix();
        h.ProgramMsixVector(0, 0x22);
        h.Start(Features(h), msixVector: 1);
        h.Publish(WriteRead(h, 0, 1));
        Assert.NotEqual(0, h.Dev.Status);
        ((ILifecycle)h.Dev).Reset();

        var bus = new PciBus(new MmioBus(), new FakeInterruptSink(), 0xE000_0000, 0x1000_0000);
        bus.Attach(new PciHostBridge(), 0);
        var fresh = new VirtioPciDevice(new VirtioBlock(disk, "s", useWorkerThread: false), h.Mem);
        bus.Attach(fresh, Slot);
        Assert.Equal(Json(fresh.Save()), Json(h.Dev.Save()));
        Assert.Equal(0UL, h.Bus.MappedBase(h.Dev, 0)); // memory space decoding off, as at power-on
    }
}
