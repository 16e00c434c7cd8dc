using Dirigent.Devices.Pci;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Net;
using Dirigent.Devices.Virtio.Rng;
using Dirigent.Tests.Virtio;
using Xunit.Abstractions;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Fuzz;

/// <summary>
/// Every virtio device (blk, net, rng) behind the real PCI bus, driven by random guest traffic: PCI config space
/// through 0xCF8/0xCFC (any register, width and value, BARs and MSI-X included) and the BAR's MMIO (common config,
/// notify, ISR, device config, MSI-X table and PBA), or random virtqueues (descriptor chains with loops, addresses
/// outside RAM, huge lengths, indirect tables, random ring indices) under random feature sets. After each case the
/// guest's driver re-initialises the function (BAR and command register back, reset, feature negotiation, one queue)
/// and one valid request must be served correctly. Device writes must stay inside guest RAM, and never land in the
/// driver-owned descriptor table or available ring.
/// </summary>
public sealed class VirtioPciFuzzTests(ITestOutputHelper output)
{
    private const ulong IndirectBase = 0x4000;
    private const int ServiceBufferBase = 0x30000;

    private sealed class Rig : IDisposable
    {
        public readonly VirtioHarness H;
        public readonly MemoryDisk? Disk;
        public readonly FakeBackend? Net;
        public readonly string Kind;
        public readonly ulong OriginalBar;
        public readonly List<(ulong Gpa, ulong Len)> Writes = new();
        /// <summary>Set while the device runs: the test's own writes (rings, descriptors) are not the device's.</summary>
        public bool Recording;

        public Rig(string kind, Random rnd)
        {
            Kind = kind;
            IVirtioDevice dev;
            switch (kind)
            {
                case "blk":
                    Disk = new MemoryDisk(64 * 1024);
                    rnd.NextBytes(Disk.Data);
                    dev = new VirtioBlock(Disk, "fuzz", useWorkerThread: false);
                    break;
                case "net":
                    Net = new FakeBackend();
                    dev = new VirtioNet(Net, [0x52, 0x54, 0, 1, 2, 3]);
                    break;
                default: dev = new VirtioRng(); break;
            }
            H = new VirtioHarness(dev);
            OriginalBar = H.Bar;
            H.Mem.ExternalWrite += (gpa, len) => { if (Recording) Writes.Add((gpa, len)); };
        }

        public void Dispose() => H.Dispose();

        /// <summary>No device write outside RAM, or into the descriptor table, available ring or indirect tables.</summary>
        public void CheckWrites()
        {
            foreach (var (gpa, len) in Writes)
            {
                FuzzBudget.Check(gpa + len <= RamSize && gpa + len >= gpa, $"device wrote 0x{gpa:x}+{len} outside guest RAM");
                FuzzBudget.Check(!Overlaps(gpa, len, DescBase, UsedBase) && !Overlaps(gpa, len, IndirectBase, DataBase),
                    $"device wrote 0x{gpa:x}+{len} into driver-owned ring memory");
            }
            Writes.Clear();
        }

        private static bool Overlaps(ulong a, ulong len, ulong start, ulong end) => a < end && a + len > start;

        /// <summary>
        /// What a driver does after a reboot: BAR 0 and the command register back, device reset, negotiation,
        /// one queue, DRIVER_OK; then one valid request must complete with the right contents.
        /// </summary>
        public void ReinitAndServe(Random rnd)
        {
            H.ConfigWrite(PciConfig.Command, 0, 2);
            H.ConfigWrite(0x10, (uint)OriginalBar);
            H.ConfigWrite(0x14, (uint)(OriginalBar >> 32));
            H.ConfigWrite(PciConfig.Command, PciConfig.CommandMemory | PciConfig.CommandBusMaster, 2);
            FuzzBudget.Check(H.ConfigRead(0, 2) == 0x1AF4, "vendor ID unreadable after the traffic");
            H.Common(0x14, 1, 0);
            FuzzBudget.Check(H.Status == 0, $"status {H.Status} after a reset");
            FuzzBudget.Check(H.Negotiate(Version1), "device refused VERSION_1 after a reset");
            H.SetupQueue(16);
            H.Common(0x14, 1, StatusAcknowledge | StatusDriver | StatusFeaturesOk | StatusDriverOk);
            FuzzBudget.Check((H.Status & StatusNeedsReset) == 0, "device needs reset right after initialisation");
            ushort used = H.UsedIdx;
            switch (Kind)
            {
                case "rng":
                    H.Desc(0, ServiceBufferBase, 64, DescFlagWrite);
                    H.Publish(0, kick: false);
                    Recording = true;
                    H.Kick(0);
                    Recording = false;
                    FuzzBudget.Check(H.UsedIdx == (ushort)(used + 1) && H.Used(used).Len == 64, "rng request not served");
                    break;
                case "blk":
                    int sector = rnd.Next(128);
                    H.Mem.WriteU32(ServiceBufferBase, VirtioBlock.TypeIn);
                    H.Mem.WriteU32(ServiceBufferBase + 4, 0);
                    H.Mem.WriteU64(ServiceBufferBase + 8, (ulong)sector);
                    H.Desc(0, ServiceBufferBase, 16, DescFlagNext, 1);
                    H.Desc(1, ServiceBufferBase + 0x1000, 512, DescFlagWrite | DescFlagNext, 2);
                    H.Desc(2, ServiceBufferBase + 0x2000, 1, DescFlagWrite);
                    H.Publish(0, kick: false);
                    Recording = true;
                    H.Kick(0);
                    Recording = false;
                    FuzzBudget.Check(H.UsedIdx == (ushort)(used + 1) && H.Mem.ReadU16(ServiceBufferBase + 0x2000) % 256 == VirtioBlock.StatusOk,
                        "blk read not served");
                    var got = new byte[512];
                    H.Mem.Read(ServiceBufferBase + 0x1000, got);
                    FuzzBudget.Check(got.AsSpan().SequenceEqual(Disk!.Data.AsSpan(sector * 512, 512)), "blk read returned the wrong data");
                    break;
                default:
                    H.Desc(0, ServiceBufferBase, 2048, DescFlagWrite);
                    H.Publish(0);
                    var pkt = new byte[INetBackendHeader + 60];
                    rnd.NextBytes(pkt.AsSpan(INetBackendHeader));
                    Recording = true;
                    bool taken = Net!.Receiver != null && Net.Receiver.TryReceive(pkt);
                    Recording = false;
                    FuzzBudget.Check(taken, "net device refused a packet with a buffer posted");
                    FuzzBudget.Check(H.UsedIdx == (ushort)(used + 1), "net receive not completed");
                    var frame = new byte[60];
                    H.Mem.Read(ServiceBufferBase + INetBackendHeader, frame);
                    FuzzBudget.Check(frame.AsSpan().SequenceEqual(pkt.AsSpan(INetBackendHeader)), "net frame arrived damaged");
                    break;
            }
            CheckWrites();
        }

        private const int INetBackendHeader = Dirigent.Devices.Net.INetBackend.HeaderLength;
    }

    [Fact] public void BlkRegisters() => Registers("blk");
    [Fact] public void NetRegisters() => Registers("net");
    [Fact] public void RngRegisters() => Registers("rng");
    [Fact] public void BlkQueues() => Queues("blk");
    [Fact] public void NetQueues() => Queues("net");
    [Fact] public void RngQueues() => Queues("rng");

    private void Registers(string kind, [System.Runtime.CompilerServices.CallerMemberName] string test = "")
    {
        FuzzBudget.Run(GetType(), output, 1500, (i, rnd) =>
        {
            using var rig = new Rig(kind, rnd);
            var h = rig.H;
            // Sometimes start from a running device, so that the traffic hits live queues.
            if (rnd.Next(2) == 0) h.Start(Version1 | (rnd.Next(2) == 0 ? RingIndirectDesc : 0), 16);
            // MMIO and port traffic write no guest memory themselves: everything recorded from here is the device's.
            rig.Recording = true;
            for (int k = 0; k < 64; k++)
            {
                int size = DeviceRegisterFuzzTests.Size(rnd), psize = DeviceRegisterFuzzTests.PortSize(rnd);
                ulong v = DeviceRegisterFuzzTests.Value(rnd);
                switch (rnd.Next(12))
                {
                    case 0:
                        // Any CONFIG_ADDRESS (other buses, functions, disabled), any width at the data ports.
                        h.Io.Write(0xCF8, rnd.Next(3) == 0 ? psize : 4, rnd.Next(2) == 0 ? (uint)v : 0x8000_0000u | (uint)(rnd.Next(32) << 11) | (uint)rnd.Next(256));
                        h.Io.Write((ushort)(0xCFC + rnd.Next(4)), psize, (uint)v);
                        break;
                    case 1: h.Io.Read((ushort)(0xCF8 + rnd.Next(8)), psize); break;
                    case 2: h.ConfigWrite(rnd.Next(256), (uint)v, psize); break;
                    case 3: h.ConfigRead(rnd.Next(256), psize); break;
                    case < 8: h.Mmio.Write(h.Bar + BarOffset(rnd), size, v); break;
                    case < 11: h.Mmio.Read(h.Bar + BarOffset(rnd), size); break;
                    default: h.Kick(rnd.Next(4)); break;
                }
            }
            rig.Recording = false;
            rig.CheckWrites();
            rig.ReinitAndServe(rnd);
        }, test);
    }

    /// <summary>An offset in BAR 0, mostly inside one of its structures.</summary>
    private static ulong BarOffset(Random r) => r.Next(7) switch
    {
        0 => VirtioPciDevice.CommonOffset + (ulong)r.Next(0x40),
        1 => VirtioPciDevice.CommonOffset + (ulong)r.Next(0x40),
        2 => VirtioPciDevice.IsrOffset + (ulong)r.Next(8),
        3 => VirtioPciDevice.DeviceCfgOffset + (ulong)r.Next(0x40),
        4 => VirtioPciDevice.NotifyOffset + (ulong)r.Next(0x20),
        5 => VirtioPciDevice.MsixTableOffset + (ulong)r.Next(0x40),
        _ => (ulong)r.Next((int)VirtioPciDevice.Bar0Size + 0x100),
    };

    private void Queues(string kind, [System.Runtime.CompilerServices.CallerMemberName] string test = "")
    {
        FuzzBudget.Run(GetType(), output, 1500, (i, rnd) =>
        {
            using var rig = new Rig(kind, rnd);
            var h = rig.H;
            ulong features = Version1 | (rnd.Next(2) == 0 ? RingIndirectDesc : 0) | (rnd.Next(2) == 0 ? RingEventIdx : 0);
            ushort qsize = (ushort)(1 << rnd.Next(0, 5));
            h.Start(features, qsize);
            if (kind == "net") StartTxQueue(h, qsize);
            for (int round = rnd.Next(1, 9); round > 0; round--)
            {
                int queue = kind == "net" ? rnd.Next(2) : 0;
                ulong desc = queue == 0 ? DescBase : DescBase + 0x800, avail = queue == 0 ? AvailBase : AvailBase + 0x800;
                for (int d = 0; d < qsize; d++) RandomDescriptor(h, desc, d, rnd, qsize);
                for (int k = 0; k < qsize; k++)
                    h.Mem.WriteU16(avail + 4 + 2UL * (ulong)k, (ushort)(rnd.Next(20) == 0 ? rnd.Next(65536) : rnd.Next(qsize)));
                ushort last = h.Dev.Queue(queue).LastAvailIndex;
                h.Mem.WriteU16(avail + 2, rnd.Next(20) == 0 ? (ushort)rnd.Next(65536) : (ushort)(last + rnd.Next(0, 5)));
                h.Mem.WriteU16(avail, (ushort)rnd.Next(2));
                if (kind == "net" && queue == 0 && rig.Net!.Receiver != null)
                {
                    var pkt = new byte[rnd.Next(0, 3000)];
                    rnd.NextBytes(pkt);
                    rig.Recording = true;
                    rig.Net.Receiver.TryReceive(pkt);
                }
                else
                {
                    rig.Recording = true;
                    h.Kick(queue);
                }
                rig.Recording = false;
                rig.CheckWrites();
            }
            rig.ReinitAndServe(rnd);
        }, test);
    }

    /// <summary>The net device's transmit queue (1), with its rings beside queue 0's.</summary>
    private static void StartTxQueue(VirtioHarness h, ushort size)
    {
        // Queues are configured before DRIVER_OK; set it again afterwards (a repeat of the same status is harmless).
        h.Common(0x16, 2, 1);
        h.Common(0x18, 2, size);
        h.Common(0x20, 4, DescBase + 0x800); h.Common(0x24, 4, 0);
        h.Common(0x28, 4, AvailBase + 0x800); h.Common(0x2C, 4, 0);
        h.Common(0x30, 4, UsedBase + 0x800); h.Common(0x34, 4, 0);
        h.Common(0x1C, 2, 1);
    }

    /// <summary>
    /// A descriptor with random flags and links; writable buffers only at or above <see cref="DataBase"/> (or outside
    /// RAM), so that a device write below it means the device wrote where no descriptor allowed it.
    /// </summary>
    private static void RandomDescriptor(VirtioHarness h, ulong table, int i, Random r, int size)
    {
        ushort flags = (ushort)((r.Next(2) == 0 ? DescFlagNext : 0) | (r.Next(2) == 0 ? DescFlagWrite : 0) | (r.Next(8) == 0 ? DescFlagIndirect : 0));
        uint len = r.Next(10) switch
        {
            < 6 => (uint)r.Next(1, 600),
            < 8 => new uint[] { 0, 1, 16, 512, 513, 0x1_0000 }[r.Next(6)],
            8 => (uint)r.Next(0x4_0000),
            _ => (uint)r.NextInt64(),
        };
        ulong addr;
        if ((flags & DescFlagIndirect) != 0)
        {
            // An indirect table in its own area, filled with random (writable-above-DataBase) descriptors too.
            addr = IndirectBase + (ulong)(0x100 * r.Next(0x38));
            if (r.Next(2) == 0) len = (uint)(16 * r.Next(1, 16));
            if (len <= 0x100 && r.Next(4) != 0)
                for (int k = 0; k < len / 16; k++) RandomDescriptor(h, addr, k, r, (int)(len / 16));
            flags &= unchecked((ushort)~DescFlagWrite);
            if (table != DescBase && table != DescBase + 0x800) flags &= unchecked((ushort)~DescFlagIndirect); // no nesting
        }
        else if ((flags & DescFlagWrite) != 0)
            addr = r.Next(10) == 0 ? (ulong)r.NextInt64() : RamSize - (ulong)r.Next(1, (int)(RamSize - DataBase));
        else addr = r.Next(10) == 0 ? (ulong)r.NextInt64() : (ulong)r.Next((int)RamSize);
        if ((flags & DescFlagIndirect) == 0 && (flags & DescFlagWrite) != 0 && addr < DataBase) addr = DataBase;
        ushort next = r.Next(10) == 0 ? (ushort)r.Next(65536) : (ushort)r.Next(size);
        h.Desc(table, i, addr, len, flags, next);
    }
}
