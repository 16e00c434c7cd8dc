using Dirigent.Devices;
using Dirigent.Devices.Timer;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;

namespace Dirigent.Tests.Devices.Timer;

/// <summary>PIT and port 0x61 driven through their ports, on a hand-advanced clock (exact timing).</summary>
public sealed class PitTests : IDisposable
{
    private readonly MachineModel _vm = new(1 << 20);
    private readonly ManualClock _clock = new();
    private readonly FakeIrqLine _irq0 = new();
    private readonly Pit8254 _pit;

    public PitTests()
    {
        _pit = new Pit8254(_clock, _irq0);
        _vm.Io.Register(PcPlatform.PitPort, Pit8254.PortCount, _pit);
        _vm.Io.Register(PcPlatform.SystemControlPortB, 1, new SystemControlPortB(_pit));
    }

    public void Dispose() => _vm.Dispose();

    private byte In(ushort port) => (byte)_vm.Io.Read(port, 1);
    private void Out(ushort port, byte v) => _vm.Io.Write(port, 1, v);
    private int ReadCount(ushort port) => In(port) | (In(port) << 8);

    private static long Ns(long ticks) => Pit8254.TicksToNs(ticks);

    [Fact]
    public void Channel2Mode0OutRisesExactlyAtTerminalCount()
    {
        const int count = 11932; // the 10 ms latch of pit_calibrate_tsc
        Out(0x61, (byte)((In(0x61) & ~0x02) | 0x01)); // gate on, speaker off
        Out(0x43, 0xB0);                               // channel 2, LSB/MSB, mode 0, binary
        Out(0x42, count & 0xFF);
        Out(0x42, count >> 8);
        Assert.Equal(0, In(0x61) & 0x20);
        _clock.AdvanceNs(Ns(count) - 2000);
        Assert.Equal(0, In(0x61) & 0x20);
        Assert.InRange(ReadCount(0x42), 1, 3);
        _clock.AdvanceNs(3000);
        Assert.NotEqual(0, In(0x61) & 0x20);
        // Mode 0 keeps OUT high and the counter wraps past zero.
        _clock.AdvanceNs(Ns(100));
        Assert.NotEqual(0, In(0x61) & 0x20);
        Assert.InRange(ReadCount(0x42), 0xFFFF - 101, 0xFFFF - 98);
    }

    [Fact]
    public void QuickCalibrationMsbSequenceCountsDown()
    {
        // quick_pit_calibrate: count 0xFFFF, then the MSB must step down by one every 256 ticks (~214 us).
        Out(0x61, 0x01);
        Out(0x43, 0xB0);
        Out(0x42, 0xFF);
        Out(0x42, 0xFF);
        for (int expectMsb = 0xFF; expectMsb > 0xF0; expectMsb--)
        {
            In(0x42);
            Assert.Equal(expectMsb, In(0x42));
            _clock.AdvanceNs(Ns(256));
        }
    }

    [Fact]
    public void LatchCommandFreezesTheReadValue()
    {
        Out(0x61, 0x01);
        Out(0x43, 0xB0);
        Out(0x42, 0x00);
        Out(0x42, 0x40); // 0x4000
        _clock.AdvanceNs(Ns(0x100));
        Out(0x43, 0x80); // latch counter 2
        _clock.AdvanceNs(Ns(0x1000));
        Out(0x43, 0x80); // a second latch before reading is ignored
        Assert.Equal(0x3F00, ReadCount(0x42));
        Assert.Equal(0x2F00, ReadCount(0x42)); // live again
    }

    [Fact]
    public void ReadBackReportsStatusAndCount()
    {
        Out(0x43, 0x34); // channel 0, LSB/MSB, mode 2
        Out(0x40, 0x9C);
        Out(0x40, 0x2E); // 11932
        _clock.AdvanceNs(Ns(1000));
        Out(0x43, 0xC2); // read-back count and status of counter 0
        byte status = In(0x40);
        Assert.Equal(0x80 | 0x34, status);          // OUT high, count loaded, RW=3, mode 2, binary
        Assert.Equal(11932 - 1000, ReadCount(0x40));
        // A fresh control word: null count set; OUT high in mode 2, low in mode 0. BCD flag is reported.
        Out(0x43, 0x35);
        Out(0x43, 0xE2);
        Assert.Equal(0xC0 | 0x35, In(0x40));
        Out(0x43, 0x30);
        Out(0x43, 0xE2);
        Assert.Equal(0x40 | 0x30, In(0x40));
    }

    [Fact]
    public void GateControlsChannel2()
    {
        Out(0x61, 0x00); // gate low before programming
        Out(0x43, 0xB0);
        Out(0x42, 0x00);
        Out(0x42, 0x80);
        _clock.AdvanceMs(5);
        Assert.Equal(0x8000, ReadCount(0x42));
        Out(0x61, 0x01);
        _clock.AdvanceNs(Ns(0x100));
        Assert.Equal(0x7F00, ReadCount(0x42));
        Out(0x61, 0x00); // mode 0 pauses with the gate
        _clock.AdvanceMs(5);
        Assert.Equal(0x7F00, ReadCount(0x42));
        Assert.Equal(0, In(0x61) & 0x01);
    }

    [Fact]
    public void Channel0Mode2At100HzRaisesOneEdgePerPeriod()
    {
        Out(0x43, 0x34);
        Out(0x40, 11932 & 0xFF);
        Out(0x40, 11932 >> 8);
        for (int i = 0; i < 1000; i++) _clock.AdvanceNs(1_000_000);
        Assert.InRange(_irq0.RisingEdges, 99, 100);
        int before = _irq0.RisingEdges;
        _clock.AdvanceMs(100);
        Assert.Equal(before + 10, _irq0.RisingEdges);
        // Reprogramming to mode 0 without a count stops the periodic edges.
        Out(0x43, 0x30);
        int stopped = _irq0.RisingEdges;
        _clock.AdvanceMs(100);
        Assert.Equal(stopped, _irq0.RisingEdges);
        Assert.Equal(0, _clock.PendingTimers);
    }

    [Fact]
    public void Channel0Mode3SquareWaveRaisesEdgesAndOutToggles()
    {
        Out(0x43, 0x36);
        Out(0x40, 0x00);
        Out(0x40, 0x00); // 65536: the BIOS's 18.2 Hz
        for (int i = 0; i < 1000; i++) _clock.AdvanceNs(1_000_000);
        Assert.InRange(_irq0.RisingEdges, 18, 19);
        // Counter 2 in mode 3 shows the square wave on port 0x61 bit 5.
        Out(0x61, 0x01);
        Out(0x43, 0xB6);
        Out(0x42, 100);
        Out(0x42, 0);
        Assert.NotEqual(0, In(0x61) & 0x20);
        _clock.AdvanceNs(Ns(60));
        Assert.Equal(0, In(0x61) & 0x20);
        _clock.AdvanceNs(Ns(50));
        Assert.NotEqual(0, In(0x61) & 0x20);
    }

    [Fact]
    public void Channel0Mode0RaisesOneEdgeAtTerminalCount()
    {
        Out(0x43, 0x30);
        Out(0x40, 1193 & 0xFF);
        Out(0x40, 1193 >> 8); // ~1 ms
        _clock.AdvanceNs(Ns(1193) - 1000);
        Assert.False(_irq0.Level);
        _clock.AdvanceNs(2000);
        Assert.True(_irq0.Level);
        _clock.AdvanceMs(200);
        Assert.Equal(1, _irq0.RisingEdges);
        Assert.True(_irq0.Level);
        // The control word drops OUT; the new terminal count raises a second edge.
        Out(0x43, 0x30);
        Assert.False(_irq0.Level);
        Out(0x40, 0x10);
        Out(0x40, 0x00);
        _clock.AdvanceMs(1);
        Assert.Equal(2, _irq0.RisingEdges);
    }

    [Fact]
    public void LsbOnlyAndMsbOnlyAccessModes()
    {
        Out(0x61, 0x00);
        Out(0x43, 0x90); // channel 2, LSB only, mode 0
        Out(0x42, 0x55);
        Assert.Equal(0x55, In(0x42));
        Assert.Equal(0x55, In(0x42)); // no flip-flop in LSB-only mode
        Out(0x43, 0xA0); // MSB only
        Out(0x42, 0x12);
        Assert.Equal(0x12, In(0x42));
        Assert.Equal(0x12, In(0x42));
    }

    [Fact]
    public void Mode1OneShotTriggeredByGate()
    {
        Out(0x61, 0x00);
        Out(0x43, 0xB2); // channel 2, mode 1
        Out(0x42, 100);
        Out(0x42, 0);
        Assert.NotEqual(0, In(0x61) & 0x20); // OUT high until triggered
        Out(0x61, 0x01);                     // rising gate edge triggers
        Assert.Equal(0, In(0x61) & 0x20);
        _clock.AdvanceNs(Ns(101));
        Assert.NotEqual(0, In(0x61) & 0x20);
    }

    [Fact]
    public void RefreshToggleFlipsOverTime()
    {
        int first = In(0x61) & 0x10;
        _clock.AdvanceNs(15_085);
        Assert.NotEqual(first, In(0x61) & 0x10);
        Out(0x61, 0x0F);
        Assert.Equal(0x0F, In(0x61) & 0x0F);
    }

    [Fact]
    public void RealClockCalibrationLoopSeesRealTime()
    {
        // The same polling loop on the real virtual clock: OUT2 may not rise before the count has elapsed.
        var pit = new Pit8254(_vm.Clock, null);
        var portB = new SystemControlPortB(pit);
        portB.Write(0, 1, 0x01);
        pit.Write(3, 1, 0xB0);
        pit.Write(2, 1, 11932 & 0xFF);
        long start = _vm.Clock.NowNs;
        pit.Write(2, 1, 11932 >> 8);
        while ((portB.Read(0, 1) & 0x20) == 0)
            Assert.True(_vm.Clock.NowNs - start < 10_000_000_000, "OUT2 never rose");
        Assert.True(_vm.Clock.NowNs - start >= Ns(11932) - 1000);
    }

    [Fact]
    public void RealClockPeriodicEdgesArrive()
    {
        var irq = new FakeIrqLine();
        var pit = new Pit8254(_vm.Clock, irq);
        long start = _vm.Clock.NowNs;
        pit.Write(3, 1, 0x34);
        pit.Write(0, 1, 11932 & 0xFF);
        pit.Write(0, 1, 11932 >> 8);
        Assert.True(FakeIrqLine.WaitFor(() => irq.RisingEdges >= 3), "hang guard: fewer than 3 PIT edges");
        // Count first, then take the time: no edge can come before its 10 ms slot.
        int edges = irq.RisingEdges;
        long elapsedMs = (_vm.Clock.NowNs - start) / 1_000_000;
        Assert.True(edges <= elapsedMs / 10 + 1, $"{edges} edges in {elapsedMs} ms");
        pit.Write(3, 1, 0x30);
    }
}
