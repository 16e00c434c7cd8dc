using Dirigent.Devices.Interrupts;
using Dirigent.Machine.Bus;

namespace Dirigent.Tests.Devices.Interrupts;

public class Pic8259Tests
{
    private readonly Pic8259 _pic = new();
    private readonly IoBus _io = new();

    public Pic8259Tests() => _pic.RegisterPorts(_io);

    private void Out(ushort port, byte v) => _io.Write(port, 1, v);
    private byte In(ushort port) => (byte)_io.Read(port, 1);

    /// <summary>Linux's init_8259A: mask, ICW1-4 on both chips (vectors 0x30/0x38), then the cached masks.</summary>
    private void InitLikeLinux(bool autoEoi = false, byte masterMask = 0xFB, byte slaveMask = 0xFF)
    {
        Out(0x21, 0xFF);
        Out(0x20, 0x11);
        Out(0x21, 0x30);
        Out(0x21, 0x04);
        Out(0x21, (byte)(autoEoi ? 0x03 : 0x01));
        Out(0xA0, 0x11);
        Out(0xA1, 0x38);
        Out(0xA1, 0x02);
        Out(0xA1, 0x01);
        Out(0x21, masterMask);
        Out(0xA1, slaveMask);
    }

    private byte ReadIsr(ushort cmd) { Out(cmd, 0x0B); byte v = In(cmd); Out(cmd, 0x0A); return v; }
    private byte ReadIrr(ushort cmd) { Out(cmd, 0x0A); return In(cmd); }

    [Fact]
    public void ImrReadsBackAsLinuxProbeExpects()
    {
        InitLikeLinux();
        Out(0xA1, 0xFF);
        Out(0x21, 0xFB);
        Assert.Equal(0xFB, In(0x21));
        Assert.Equal(0xFF, In(0xA1));
    }

    [Fact]
    public void MaskedIrqWaitsInIrrAndIsDeliveredWhenUnmasked()
    {
        InitLikeLinux(masterMask: 0xFB);
        _pic.SetIrq(1, true);
        Assert.False(_pic.Intr);
        Assert.Equal(0x02, ReadIrr(0x20) & 0x02);
        Out(0x21, 0xF9); // unmask IRQ1
        Assert.True(_pic.Intr);
        Assert.Equal(0x31, _pic.Acknowledge());
        Assert.False(_pic.Intr);
        Assert.Equal(0x02, ReadIsr(0x20));
        Assert.Equal(0, ReadIrr(0x20) & 0x02); // edge: INTA cleared the request
        Out(0x20, 0x61); // specific EOI for IRQ1
        Assert.Equal(0, ReadIsr(0x20));
    }

    [Fact]
    public void HigherPriorityWinsAndInServiceBlocksLowerButNotHigher()
    {
        InitLikeLinux(masterMask: 0x00);
        _pic.Pulse(3);
        _pic.Pulse(1);
        Assert.Equal(0x31, _pic.Acknowledge());
        Assert.False(_pic.Intr); // IRQ3 has lower priority than IRQ1 in service
        _pic.Pulse(0);
        Assert.True(_pic.Intr); // IRQ0 nests above IRQ1
        Assert.Equal(0x30, _pic.Acknowledge());
        Assert.Equal(0x03, ReadIsr(0x20));
        Out(0x20, 0x20); // non-specific EOI retires the highest priority in service: IRQ0
        Assert.Equal(0x02, ReadIsr(0x20));
        Assert.False(_pic.Intr);
        Out(0x20, 0x20);
        Assert.True(_pic.Intr);
        Assert.Equal(0x33, _pic.Acknowledge());
    }

    [Fact]
    public void SlaveInterruptCascadesThroughIrq2()
    {
        InitLikeLinux(masterMask: 0xFB, slaveMask: 0xFE); // IRQ8 unmasked
        _pic.Pulse(8);
        Assert.True(_pic.Intr);
        Assert.Equal(0x38, _pic.Acknowledge());
        Assert.Equal(0x04, ReadIsr(0x20));
        Assert.Equal(0x01, ReadIsr(0xA0));
        // A second slave request must wait for both EOIs (master IR2 is in service).
        _pic.SetIrq(8, false);
        _pic.Pulse(8);
        Assert.False(_pic.Intr);
        Out(0xA0, 0x60);
        Assert.False(_pic.Intr);
        Out(0x20, 0x62);
        Assert.True(_pic.Intr);
        Assert.Equal(0x38, _pic.Acknowledge());
    }

    [Fact]
    public void ElcrMakesLineLevelTriggered()
    {
        InitLikeLinux(masterMask: 0xFB, slaveMask: 0xFD); // IRQ9 unmasked
        Out(0x4D1, 0x02);
        Assert.Equal(0x02, In(0x4D1));
        Out(0x4D0, 0xFF);
        Assert.Equal(0xF8, In(0x4D0)); // IRQ0-2 cannot be level
        Out(0x4D0, 0x00);
        _pic.SetIrq(9, true);
        Assert.Equal(0x39, _pic.Acknowledge());
        Out(0xA0, 0x61); Out(0x20, 0x62);
        Assert.True(_pic.Intr); // still asserted: requests again
        Assert.Equal(0x39, _pic.Acknowledge());
        _pic.SetIrq(9, false);
        Out(0xA0, 0x61); Out(0x20, 0x62);
        Assert.False(_pic.Intr);
        Assert.Equal(0, ReadIrr(0xA0) & 0x02);
    }

    [Fact]
    public void RequestThatGoesAwayBeforeIntaIsSpuriousIrq7()
    {
        InitLikeLinux(masterMask: 0xFB, slaveMask: 0xFD);
        Out(0x4D1, 0x02);
        _pic.SetIrq(9, true);
        Assert.True(_pic.Intr);
        _pic.SetIrq(9, false);
        Assert.False(_pic.Intr);
        Assert.Equal(0x37, _pic.Acknowledge());
        Assert.Equal(0, ReadIsr(0x20)); // spurious: nothing in service
    }

    [Fact]
    public void AutoEoiLeavesNothingInService()
    {
        InitLikeLinux(autoEoi: true, masterMask: 0xF8);
        _pic.Pulse(1);
        Assert.Equal(0x31, _pic.Acknowledge());
        Assert.Equal(0, ReadIsr(0x20));
        _pic.Pulse(1);
        Assert.True(_pic.Intr);
    }

    [Fact]
    public void RotateOnNonSpecificEoiMakesServicedLevelLowest()
    {
        InitLikeLinux(masterMask: 0x00);
        _pic.Pulse(1);
        Assert.Equal(0x31, _pic.Acknowledge());
        Out(0x20, 0xA0); // rotate on non-specific EOI: IRQ1 becomes lowest, IRQ2 highest
        _pic.Pulse(1);
        _pic.Pulse(3);
        Assert.Equal(0x33, _pic.Acknowledge());
    }

    [Fact]
    public void PollCommandAcknowledgesThroughPortRead()
    {
        InitLikeLinux(masterMask: 0x00);
        _pic.Pulse(5);
        Out(0x20, 0x0C);
        Assert.Equal(0x85, In(0x20));
        Assert.Equal(0x20, ReadIsr(0x20));
        Out(0x20, 0x0C);
        Assert.Equal(0x00, In(0x20)); // nothing else requested
    }

    [Fact]
    public void IntrChangedEventFollowsOutput()
    {
        var seen = new List<bool>();
        _pic.IntrChanged += seen.Add;
        InitLikeLinux(masterMask: 0xF8);
        _pic.Pulse(0);
        _pic.Acknowledge();
        Assert.Equal(new[] { true, false }, seen);
    }

    [Fact]
    public void WideAndOutOfRangeAccessesLeaveAWorkingPic()
    {
        _io.Write(0x20, 4, 0xFFFF_FFFF);
        _ = _io.Read(0x20, 4);
        _pic.SetIrq(99, true);
        _pic.SetIrq(-1, true);

        // Not just "did not throw": a driver's initialisation afterwards gets a working pair of chips, the
        // out-of-range lines raise nothing, and IRQ1 is delivered and retired as usual.
        InitLikeLinux(masterMask: 0xF9); // IRQ1 and the cascade unmasked
        _pic.SetIrq(99, true);
        _pic.SetIrq(-1, true);
        Assert.False(_pic.Intr);
        Assert.Equal(0, ReadIrr(0x20));
        Assert.Equal(0, ReadIrr(0xA0));
        Assert.Equal(0xF9, In(0x21));
        _pic.Pulse(1);
        Assert.True(_pic.Intr);
        Assert.Equal(0x31, _pic.Acknowledge());
        Assert.Equal(0x02, ReadIsr(0x20));
        Out(0x20, 0x20);
        Assert.Equal(0, ReadIsr(0x20));
        Assert.False(_pic.Intr);
    }
}

internal static class PicTestExtensions
{
    public static void Pulse(this Pic8259 pic, int irq) { pic.SetIrq(irq, true); pic.SetIrq(irq, false); }
}
