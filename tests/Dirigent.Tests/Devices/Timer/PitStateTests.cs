using Dirigent.Devices.Timer;
using Dirigent.Machine.Interrupts;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Timer;

/// <summary>PIT reset, save and restore (with port 0x61's bits), on hand-advanced clocks.</summary>
public sealed class PitStateTests
{
    private sealed class Rig
    {
        public readonly ManualClock Clock;
        public readonly FakeIrqLine Irq0 = new();
        public readonly Pit8254 Pit;
        public readonly SystemControlPortB PortB;

        public Rig(ManualClock? clock = null)
        {
            Clock = clock ?? new ManualClock();
            Pit = new Pit8254(Clock, Irq0);
            PortB = new SystemControlPortB(Pit);
        }

        public void Out(int port, byte v) { if (port == 0x61) PortB.Write(0, 1, v); else Pit.Write((ushort)(port - 0x40), 1, v); }
        public byte In(int port) => port == 0x61 ? (byte)PortB.Read(0, 1) : (byte)Pit.Read((ushort)(port - 0x40), 1);
        public int LatchedCount(int ch) { Out(0x43, (byte)(ch << 6)); return In(0x40 + ch) | (In(0x40 + ch) << 8); }
        public byte Status(int ch) { Out(0x43, (byte)(0xE0 | (2 << ch))); return In(0x40 + ch); }
    }

    /// <summary>Linux-like use: counter 0 periodic (mode 2, ~1 ms), counter 2 one-shot through port 0x61.</summary>
    private static void Program(Rig r)
    {
        r.Out(0x43, 0x34); r.Out(0x40, 1193 & 0xFF); r.Out(0x40, 1193 >> 8);
        r.Out(0x61, 0x03);                                 // gate 2 on, speaker data on
        r.Out(0x43, 0xB0); r.Out(0x42, 0x2C); r.Out(0x42, 0x2E); // counter 2: mode 0, 11820
        r.Out(0x43, 0x76); r.Out(0x41, 0x12);              // counter 1: mode 3, LSB written, MSB pending
    }

    [Fact]
    public void ResetGivesTheFreshDevicesState()
    {
        var r = new Rig();
        Program(r);
        r.Clock.AdvanceUs(2500);
        _ = r.LatchedCount(0);
        Assert.True(r.Irq0.RisingEdges >= 2);
        r.Pit.Reset();
        var fresh = new Pit8254(r.Clock, null);
        Assert.Equal(Json(fresh.Save()), Json(r.Pit.Save()));
        Assert.Equal(0, r.In(0x61) & 0x0F);
        // Nothing is armed any more: no IRQ0 edge follows.
        int edges = r.Irq0.RisingEdges;
        r.Clock.AdvanceMs(20);
        Assert.Equal(edges, r.Irq0.RisingEdges);
        Assert.False(r.Irq0.Level);
    }

    [Fact]
    public void RestoredPitCountsAndInterruptsInStep()
    {
        var a = new Rig();
        Program(a);
        a.Clock.AdvanceNs(2_345_678);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Pit, b.Pit);
        Assert.Equal(Json(a.Pit.Save()), Json(b.Pit.Save()));
        Assert.Equal(a.In(0x61) & 0x2F, b.In(0x61) & 0x2F);
        // The half-written counter 1 takes its MSB on both.
        a.Out(0x41, 0x34); b.Out(0x41, 0x34);
        int edgesA = a.Irq0.RisingEdges, edgesB = b.Irq0.RisingEdges;
        for (int step = 0; step < 120; step++)
        {
            a.Clock.AdvanceNs(97_000); b.Clock.AdvanceNs(97_000);
            Assert.Equal(a.Irq0.RisingEdges - edgesA, b.Irq0.RisingEdges - edgesB);
            Assert.Equal(a.LatchedCount(0), b.LatchedCount(0));
            Assert.Equal(a.LatchedCount(1), b.LatchedCount(1));
            Assert.Equal(a.In(0x61) & 0x2F, b.In(0x61) & 0x2F); // counter 2's OUT (bit 5) rises at the same time
            Assert.Equal(a.Status(2), b.Status(2));
        }
        Assert.True(b.Irq0.RisingEdges - edgesB >= 10);
    }

    [Fact]
    public void MidWordWriteAndGateLowContinueAfterRestore()
    {
        var a = new Rig();
        a.Out(0x61, 0x01);
        a.Out(0x43, 0xB0); a.Out(0x42, 0x00); a.Out(0x42, 0x40); // counter 2 mode 0, 0x4000
        a.Clock.AdvanceUs(1000);
        a.Out(0x61, 0x00);                                         // gate low: counting suspended
        a.Out(0x43, 0x30); a.Out(0x40, 0x99);                      // counter 0: LSB written
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Pit, b.Pit);
        foreach (var r in new[] { a, b }) { r.Clock.AdvanceUs(5000); r.Out(0x40, 0x00); }
        Assert.Equal(a.LatchedCount(2), b.LatchedCount(2)); // still frozen at the same count
        foreach (var r in new[] { a, b }) { r.Out(0x61, 0x01); r.Clock.AdvanceUs(3000); }
        Assert.Equal(a.LatchedCount(2), b.LatchedCount(2));
        Assert.Equal(a.LatchedCount(0), b.LatchedCount(0));
        a.Clock.AdvanceUs(200); b.Clock.AdvanceUs(200);
        Assert.Equal(a.Irq0.RisingEdges, b.Irq0.RisingEdges);
        Assert.Equal(1, b.Irq0.RisingEdges); // 0x99 ticks of mode 0 have passed: terminal count
    }

    [Fact]
    public void Mode0TerminalCountHoldsTheLineAfterRestore()
    {
        var a = new Rig();
        a.Out(0x43, 0x30); a.Out(0x40, 0x10); a.Out(0x40, 0x00);
        a.Clock.AdvanceUs(100);
        Assert.True(a.Irq0.Level);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Pit, b.Pit);
        Assert.True(b.Irq0.Level);
        b.Out(0x43, 0x30); // reprogramming drops OUT
        Assert.False(b.Irq0.Level);
    }

    [Fact]
    public void TerminalCountDueAtTheSaveStillInterrupts()
    {
        var a = new Rig();
        a.Out(0x43, 0x30); a.Out(0x40, 0x10); a.Out(0x40, 0x00);
        a.Clock.SkipNs(100_000);                 // due, but the clock stopped before the timer ran
        Assert.False(a.Irq0.Level);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Pit, b.Pit);
        Assert.True(b.Irq0.Level);
        Assert.Equal(1, b.Irq0.RisingEdges);
        b.Clock.AdvanceMs(1);
        Assert.Equal(1, b.Irq0.RisingEdges);
    }

    [Fact]
    public void HostileRecordsAreRefused()
    {
        var r = new Rig();
        Program(r);
        var good = r.Pit.Save();
        PitState Edit(Action<PitState> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(r.Pit, Edit(s => s.Channels = [s.Channels[0], s.Channels[1]]));
        AssertRefused(r.Pit, Edit(s => s.Channels[0].Count = 0x10001));
        AssertRefused(r.Pit, Edit(s => s.Channels[1].Mode = 6));
        AssertRefused(r.Pit, Edit(s => s.Channels[2].RwMode = 0));
        AssertRefused(r.Pit, Edit(s => s.Channels[2].ReadState = 1)); // LSB-only state with word access
        AssertRefused(r.Pit, Edit(s => s.Channels[0].Gate = false));
        AssertRefused(r.Pit, Edit(s => s.Channels[0].NsSinceLoad = -5));
        AssertRefused(r.Pit, Edit(s => s.Channels[0].NsSinceLoad = long.MaxValue));
        AssertRefused(r.Pit, Edit(s => s.Channels[1] = null!));
    }
}
