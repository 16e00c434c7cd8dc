using Dirigent.Devices.Virtio;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

public class VirtqueueTests
{
    private const ulong AllRing = Version1 | RingIndirectDesc | RingEventIdx;

    private static (VirtioHarness H, RecordingDevice D) Started(ulong features = AllRing, bool msix = true)
    {
        var d = new RecordingDevice();
        var h = new VirtioHarness(d);
        if (msix)
        {
            h.EnableMsix();
            h.ProgramMsixVector(0, 0x40);
            h.ProgramMsixVector(1, 0x41);
            h.Common(0x10, 2, 1); // configuration changes on vector 1
        }
        h.Start(features, 16, msix ? (ushort)0 : NoVector);
        return (h, d);
    }

    [Fact]
    public void DirectChainGivesReadableThenWritableBuffersAndIsReturnedInTheUsedRing()
    {
        var (h, d) = Started();
        d.WrittenPerChain = 77;
        h.Desc(0, DataBase, 16, DescFlagNext, 5);
        h.Desc(5, DataBase + 0x100, 32, DescFlagNext | DescFlagWrite, 2);
        h.Desc(2, DataBase + 0x200, 100, DescFlagWrite);
        h.Publish(0);
        var seg = Assert.Single(d.Chains);
        Assert.Equal(
            [new(DataBase, 16, false), new(DataBase + 0x100, 32, true), new(DataBase + 0x200, 100, true)],
            seg);
        Assert.Equal(1, h.UsedIdx);
        Assert.Equal((0u, 77u), h.Used(0));
        Assert.Equal([(0xFEE0_0000UL, 0x40u)], h.Sink.Msis);
        Assert.Equal(0, h.Status & StatusNeedsReset);
    }

    [Fact]
    public void IndirectTableIsWalkedInItsOwnIndexSpace()
    {
        var (h, d) = Started();
        const ulong table = 0x5000;
        h.Desc(table, 0, DataBase, 16, DescFlagNext, 2);
        h.Desc(table, 2, DataBase + 0x40, 8, DescFlagNext, 1);
        h.Desc(table, 1, DataBase + 0x80, 1, DescFlagWrite);
        h.Desc(3, table, 3 * 16, DescFlagIndirect);
        h.Publish(3);
        Assert.Equal([new(DataBase, 16, false), new(DataBase + 0x40, 8, false), new(DataBase + 0x80, 1, true)], Assert.Single(d.Chains));
        Assert.Equal((3u, 0u), h.Used(0));
    }

    public static TheoryData<string, string> MalformedCases => new()
    {
        { "loop", "loops" },
        { "head-out-of-range", "head index" },
        { "next-out-of-range", "next index" },
        { "readable-after-writable", "readable descriptor after" },
        { "buffer-outside-ram", "outside guest RAM" },
        { "indirect-not-negotiated", "without VIRTIO_F_INDIRECT_DESC" },
        { "nested-indirect", "inside an indirect table" },
        { "indirect-with-next", "both INDIRECT and NEXT" },
        { "indirect-not-first", "not the chain's only one" },
        { "indirect-length-not-multiple", "indirect table of" },
        { "indirect-too-long", "indirect table of" },
        { "indirect-table-outside-ram", "indirect table outside" },
        { "indirect-loop", "loops" },
        { "avail-index-jump", "avail index" },
    };

    [Theory]
    [MemberData(nameof(MalformedCases))]
    public void MalformedChainSetsNeedsResetRaisesConfigInterruptAndStopsTheQueue(string kind, string reason)
    {
        var (h, d) = Started(kind == "indirect-not-negotiated" ? Version1 | RingEventIdx : AllRing);
        const ulong table = 0x5000;
        ushort head = 0;
        switch (kind)
        {
            case "loop":
                h.Desc(0, DataBase, 8, DescFlagNext, 1);
                h.Desc(1, DataBase, 8, DescFlagNext, 0);
                break;
            case "head-out-of-range": head = 16; break;
            case "next-out-of-range": h.Desc(0, DataBase, 8, DescFlagNext, 16); break;
            case "readable-after-writable":
                h.Desc(0, DataBase, 8, DescFlagNext | DescFlagWrite, 1);
                h.Desc(1, DataBase, 8, 0);
                break;
            case "buffer-outside-ram": h.Desc(0, RamSize - 4, 8, DescFlagWrite); break;
            case "indirect-not-negotiated":
                h.Desc(table, 0, DataBase, 8, 0);
                h.Desc(0, table, 16, DescFlagIndirect);
                break;
            case "nested-indirect":
                h.Desc(table, 0, table + 0x100, 16, DescFlagIndirect);
                h.Desc(0, table, 16, DescFlagIndirect);
                break;
            case "indirect-with-next":
                h.Desc(table, 0, DataBase, 8, 0);
                h.Desc(0, table, 16, DescFlagIndirect | DescFlagNext, 1);
                h.Desc(1, DataBase, 8, 0);
                break;
            case "indirect-not-first":
                h.Desc(table, 0, DataBase, 8, 0);
                h.Desc(0, DataBase, 8, DescFlagNext, 1);
                h.Desc(1, table, 16, DescFlagIndirect);
                break;
            case "indirect-length-not-multiple": h.Desc(0, table, 24, DescFlagIndirect); break;
            case "indirect-too-long": h.Desc(0, table, (MaxIndirectDescriptors + 1) * 16, DescFlagIndirect); break;
            case "indirect-table-outside-ram": h.Desc(0, RamSize - 16, 32, DescFlagIndirect); break;
            case "indirect-loop":
                h.Desc(table, 0, DataBase, 8, DescFlagNext, 1);
                h.Desc(table, 1, DataBase, 8, DescFlagNext, 0);
                h.Desc(0, table, 32, DescFlagIndirect);
                break;
        }
        if (kind == "avail-index-jump")
        {
            h.Mem.WriteU16(AvailBase + 2, 17);
            h.Kick(0);
        }
        else h.Publish(head);

        Assert.Empty(d.Chains);
        Assert.Equal(0, h.UsedIdx);
        Assert.NotEqual(0, h.Status & StatusNeedsReset);
        Assert.Contains(reason, h.Dev.NeedsResetReason);
        Assert.Equal([(0xFEE0_0000UL, 0x41u)], h.Sink.Msis); // configuration vector

        // The queue stays stopped, even for a good chain, until the driver resets the device.
        h.Desc(4, DataBase, 8, 0);
        h.Publish(4);
        Assert.Empty(d.Chains);
        h.Common(0x14, 1, 0);
        Assert.Equal(0, h.Status);
        Assert.Null(h.Dev.NeedsResetReason);
        Assert.Equal(0UL, h.Common(0x1C, 2));
        h.Start(AllRing, 16, 0);
        h.Publish(4);
        Assert.Single(d.Chains);
    }

    [Fact]
    public void EventIdxSuppressesInterruptsUntilUsedEventIsCrossedAndPublishesAvailEvent()
    {
        var (h, d) = Started();
        h.Desc(0, DataBase, 8, 0);
        h.SetUsedEvent(1); // "interrupt me when the second buffer is used"
        h.Publish(0);
        Assert.Equal(1, h.UsedIdx);
        Assert.Equal(0, h.Sink.MsiCount);
        Assert.Equal(1, h.AvailEvent); // "notify me at avail index 1"
        h.Publish(0);
        Assert.Equal(2, h.UsedIdx);
        Assert.Equal(1, h.Sink.MsiCount);
        // A used_event far behind is not crossed again: no interrupt.
        h.Publish(0);
        Assert.Equal(1, h.Sink.MsiCount);
        Assert.Equal(3, h.AvailEvent);
    }

    [Fact]
    public void NoInterruptFlagSuppressesInterruptsWithoutEventIdx()
    {
        var (h, _) = Started(Version1);
        h.Desc(0, DataBase, 8, 0);
        h.SetAvailFlags(AvailFlagNoInterrupt);
        h.Publish(0);
        Assert.Equal(1, h.UsedIdx);
        Assert.Equal(0, h.Sink.MsiCount);
        h.SetAvailFlags(0);
        h.Publish(0);
        Assert.Equal(1, h.Sink.MsiCount);
    }

    [Fact]
    public void WithoutMsixCompletionsUseIsrAndIntxAndReadingIsrClearsBoth()
    {
        var (h, _) = Started(AllRing, msix: false);
        var line = h.Sink.Lines[Dirigent.Devices.Pci.PciBus.IntxGsi(Slot, 1)];
        h.Desc(0, DataBase, 8, 0);
        h.Publish(0);
        Assert.True(line.Level);
        Assert.Equal(IsrQueue, h.ReadIsr());
        Assert.False(line.Level);
        Assert.Equal(0, h.ReadIsr());
        // A malformed chain reports through the configuration bit.
        h.Publish(99);
        Assert.True(line.Level);
        Assert.Equal(IsrConfig, h.ReadIsr());
    }

    [Fact]
    public void QueueEnableChecksSizeAlignmentAndRingPlacement()
    {
        foreach (var (size, desc, reason) in new[] { ((ushort)12, DescBase, "power of two"), ((ushort)32, DescBase, "power of two"),
                     ((ushort)16, DescBase + 8, "misaligned"), ((ushort)16, RamSize - 0x80, "outside guest RAM") })
        {
            var d = new RecordingDevice();
            using var h = new VirtioHarness(d);
            Assert.True(h.Negotiate(AllRing));
            h.Common(0x18, 2, size);
            h.Common(0x20, 8, desc);
            h.Common(0x28, 8, AvailBase);
            h.Common(0x30, 8, UsedBase);
            h.Common(0x1C, 2, 1);
            Assert.Equal(0UL, h.Common(0x1C, 2));
            Assert.NotEqual(0, h.Status & StatusNeedsReset);
            Assert.Contains(reason, h.Dev.NeedsResetReason);
        }
    }
}
