using Dirigent.Devices.Pci;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Block;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

public class VirtioPciTransportTests
{
    [Fact]
    public void ModernIdsAndVendorCapabilitiesDescribeTheBarLayout()
    {
        using var h = new VirtioHarness(new VirtioBlock(new MemoryDisk(4096), "x", useWorkerThread: false));
        Assert.Equal(0x1042_1AF4u, h.ConfigRead(0));
        Assert.Equal(1u, h.ConfigRead(PciConfig.RevisionId, 1));
        Assert.Equal(0x01_80_00u, h.ConfigRead(PciConfig.RevisionId) >> 8);
        Assert.Equal(0x1042_1AF4u, h.ConfigRead(PciConfig.SubsystemVendorId));
        Assert.Equal(1u, h.ConfigRead(PciConfig.InterruptPin, 1));
        var caps = new Dictionary<int, (uint Offset, uint Length, int At)>();
        bool msix = false;
        for (int p = (int)h.ConfigRead(PciConfig.CapabilitiesPointer, 1); p != 0; p = (int)h.ConfigRead(p + 1, 1))
        {
            uint id = h.ConfigRead(p, 1);
            if (id == PciConfig.CapIdMsix) { msix = true; Assert.Equal(1u, (h.ConfigRead(p + 2, 2) & 0x7FF)); continue; }
            Assert.Equal(PciConfig.CapIdVendor, (byte)id);
            Assert.Equal(0u, h.ConfigRead(p + 4, 1)); // BAR 0
            caps[(int)h.ConfigRead(p + 3, 1)] = (h.ConfigRead(p + 8), h.ConfigRead(p + 12), p);
        }
        Assert.True(msix);
        Assert.Equal((VirtioPciDevice.CommonOffset, 0x40u), (caps[1].Offset, caps[1].Length));
        Assert.Equal(VirtioPciDevice.NotifyOffset, caps[2].Offset);
        Assert.Equal(4u, h.ConfigRead(caps[2].At + 16));   // notify_off_multiplier
        Assert.Equal(20u, h.ConfigRead(caps[2].At + 2, 1)); // cap_len of virtio_pci_notify_cap
        Assert.Equal(VirtioPciDevice.IsrOffset, caps[3].Offset);
        Assert.Equal((VirtioPciDevice.DeviceCfgOffset, (uint)VirtioBlock.ConfigSize), (caps[4].Offset, caps[4].Length));
        Assert.True(caps.ContainsKey(5));                    // VIRTIO_PCI_CAP_PCI_CFG
        Assert.Equal(VirtioPciDevice.Bar0Size, (uint)(-(int)(SizeBar(h))));
    }

    private static uint SizeBar(VirtioHarness h)
    {
        uint old = h.ConfigRead(PciConfig.Bar0);
        h.ConfigWrite(PciConfig.Bar0, 0xFFFF_FFFF);
        uint mask = h.ConfigRead(PciConfig.Bar0) & ~0xFu;
        h.ConfigWrite(PciConfig.Bar0, old);
        return mask;
    }

    [Fact]
    public void FeaturesOkIsRefusedWithoutVersion1OrWithUnofferedBitsAndFeaturesFreezeAfterwards()
    {
        var d = new RecordingDevice();
        using var h = new VirtioHarness(d);
        ulong offered = h.DeviceFeatures();
        Assert.Equal(Version1 | RingIndirectDesc | RingEventIdx | 1UL << 3, offered);
        Assert.False(h.Negotiate(RingIndirectDesc));            // legacy driver: no VERSION_1
        h.Common(0x14, 1, 0);
        Assert.False(h.Negotiate(Version1 | 1UL << 34));        // RING_PACKED was not offered
        h.Common(0x14, 1, 0);
        Assert.True(h.Negotiate(Version1 | 1UL << 3));
        Assert.Equal(Version1 | 1UL << 3, h.Dev.NegotiatedFeatures);
        h.Common(0x08, 4, 0);
        h.Common(0x0C, 4, 0);                                    // too late: ignored
        Assert.Equal(1UL << 3, h.Common(0x0C, 4));
    }

    [Fact]
    public void QueueRegistersFollowQueueSelectAndVectorsBeyondTheTableReadAsNoVector()
    {
        var d = new RecordingDevice(64);
        using var h = new VirtioHarness(d);
        Assert.Equal(1UL, h.Common(0x12, 2));                    // num_queues
        Assert.Equal(64UL, h.Common(0x18, 2));                   // queue_size starts at the maximum
        h.Common(0x1A, 2, 1);
        Assert.Equal(1UL, h.Common(0x1A, 2));
        h.Common(0x1A, 2, 2);                                    // 2 vectors: 0 and 1
        Assert.Equal((ulong)NoVector, h.Common(0x1A, 2));
        h.Common(0x10, 2, 5);
        Assert.Equal((ulong)NoVector, h.Common(0x10, 2));
        h.Common(0x20, 4, 0x1234_5000);
        h.Common(0x24, 4, 0x9);
        Assert.Equal(0x9_1234_5000UL, h.Common(0x20, 8));
        Assert.Equal(0x1234_5000UL, h.Common(0x20, 4));
        Assert.Equal(0UL, h.Common(0x1E, 2));                    // queue_notify_off
        h.Common(0x16, 2, 1);                                    // no queue 1
        Assert.Equal(0UL, h.Common(0x18, 2));
        // The device configuration region and the PCI_CFG window reach the same registers.
        Assert.Equal(0x11223344u, h.DeviceConfig(0, 4));
        int cfgCap = FindCap(h, 5);
        h.ConfigWrite(cfgCap + 8, VirtioPciDevice.CommonOffset + 0x12);
        h.ConfigWrite(cfgCap + 12, 2);
        Assert.Equal(1u, h.ConfigRead(cfgCap + 16, 2));
    }

    private static int FindCap(VirtioHarness h, int type)
    {
        for (int p = (int)h.ConfigRead(PciConfig.CapabilitiesPointer, 1); p != 0; p = (int)h.ConfigRead(p + 1, 1))
            if (h.ConfigRead(p, 1) == PciConfig.CapIdVendor && h.ConfigRead(p + 3, 1) == type) return p;
        throw new InvalidOperationException("capability not found");
    }

    [Fact]
    public void NotificationsBeforeDriverOkWaitAndResetReturnsEverythingToInitialState()
    {
        var d = new RecordingDevice();
        using var h = new VirtioHarness(d);
        Assert.True(h.Negotiate(Version1));
        h.SetupQueue(16);
        h.Desc(0, DataBase, 8, 0);
        h.Publish(0);
        Assert.Equal(0, d.Notifies);                              // not live yet
        h.Common(0x14, 1, StatusAcknowledge | StatusDriver | StatusFeaturesOk | StatusDriverOk);
        Assert.Equal(1, d.Activations);
        Assert.Single(d.Chains);                                  // picked up at DRIVER_OK
        h.Common(0x14, 1, 0);
        Assert.Equal(1, d.Resets);
        Assert.Equal(0, h.Status);
        Assert.Equal(0UL, h.Common(0x1C, 2));
        Assert.Equal(16UL, h.Common(0x18, 2));
        Assert.Equal(0UL, h.Common(0x20, 8));
        Assert.Equal(0UL, h.Common(0x0C, 4));
        h.Kick(0);
        Assert.Equal(1, d.Notifies);                              // a reset device ignores kicks
    }

    [Fact]
    public void SystemResetOfTheBusResetsTheDeviceAndItsMsixState()
    {
        var d = new RecordingDevice();
        using var h = new VirtioHarness(d);
        h.EnableMsix();
        h.Start(Version1, 16, 0);
        h.Bus.Reset();
        Assert.Equal(1, d.Resets);
        Assert.Equal(0, h.Dev.Status);
        Assert.False(h.Dev.Msix!.Enabled);
        Assert.Equal(0u, h.ConfigRead(PciConfig.Command, 2));
    }
}
