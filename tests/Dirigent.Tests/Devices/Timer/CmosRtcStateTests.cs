using Dirigent.Devices.Timer;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Timer;

/// <summary>RTC reset (time and CMOS RAM survive), save and restore (guest time continues in VM time).</summary>
public sealed class CmosRtcStateTests
{
    private const ulong Ram = 128UL << 20;

    private sealed class Rig
    {
        public readonly ManualClock Clock;
        public readonly FakeIrqLine Irq8 = new();
        public readonly CmosRtc Rtc;

        public Rig(ManualClock? clock = null)
        {
            Clock = clock ?? new ManualClock();
            Rtc = new CmosRtc(Clock, Irq8, Ram);
        }

        public byte Get(int index) { Rtc.Write(0, 1, (uint)index); return (byte)Rtc.Read(1, 1); }
        public void Set(int index, byte v) { Rtc.Write(0, 1, (uint)index); Rtc.Write(1, 1, v); }

        /// <summary>Sets 2001-02-03 04:05:06 the way hwclock does (SET, fields, SET off), BCD 24 h.</summary>
        public void SetTime()
        {
            Set(0x0B, 0x82);
            Set(0x00, 0x06); Set(0x02, 0x05); Set(0x04, 0x04);
            Set(0x07, 0x03); Set(0x08, 0x02); Set(0x09, 0x01); Set(0x32, 0x20);
            Set(0x0B, 0x02);
        }

        public string TimeFields() =>
            string.Join(":", new[] { 0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00 }.Select(i => Get(i).ToString("x2")));
    }

    [Fact]
    public void ResetKeepsTimeAndRamButNotTheRegisters()
    {
        var r = new Rig();
        r.SetTime();
        r.Set(0x0A, 0x2F);               // 2 Hz periodic rate
        r.Set(0x0B, 0x02 | 0x40 | 0x10); // PIE + UIE
        r.Set(0x01, 0x30); r.Set(0x03, 0x05); r.Set(0x05, 0xC0);
        r.Set(0x40, 0x5A);               // plain CMOS RAM
        r.Clock.AdvanceMs(1200);
        Assert.True(r.Irq8.Level);
        r.Rtc.Write(0, 1, 0x8F);         // index 0x0F with NMIs off
        r.Rtc.Reset();
        Assert.False(r.Irq8.Level);
        // Everything but the running time and the RAM byte is a fresh RTC's.
        var fresh = new CmosRtc(r.Clock, null, Ram).Save();
        var after = r.Rtc.Save();
        fresh.Cmos[0x40] = 0x5A;
        Assert.Equal(Json(fresh with { GuestTimeTicks = after.GuestTimeTicks }), Json(after));
        Assert.Equal("20:01:02:03:04:05:07", r.TimeFields()); // the clock ran on through the reset
        Assert.Equal(0x5A, r.Get(0x40));
        Assert.Equal(0x26, r.Get(0x0A));
        Assert.Equal(0x02, r.Get(0x0B));
        int edges = r.Irq8.RisingEdges;
        r.Clock.AdvanceMs(3000);
        Assert.Equal(edges, r.Irq8.RisingEdges); // no interrupt source left enabled
    }

    [Fact]
    public void HeldClockResumesFromTheWrittenTimeAfterReset()
    {
        var r = new Rig();
        r.Set(0x0B, 0x82);
        r.Set(0x00, 0x59); r.Set(0x02, 0x59); r.Set(0x04, 0x23);
        r.Set(0x07, 0x31); r.Set(0x08, 0x12); r.Set(0x09, 0x99); r.Set(0x32, 0x19);
        r.Rtc.Reset();
        Assert.Equal("19:99:12:31:23:59:59", r.TimeFields());
        r.Clock.AdvanceMs(1000);
        Assert.Equal("20:00:01:01:00:00:00", r.TimeFields());
    }

    [Fact]
    public void RestoredRtcContinuesTimeAndInterruptsInStep()
    {
        var a = new Rig();
        a.SetTime();
        a.Set(0x0A, 0x2E);               // 4 Hz periodic
        a.Set(0x0B, 0x02 | 0x40 | 0x20 | 0x10);
        a.Set(0x01, 0x09); a.Set(0x03, 0xC0); a.Set(0x05, 0xC0); // alarm at every :09
        a.Set(0x30, 0x77);
        a.Clock.AdvanceNs(1_300_000_100);
        a.Rtc.Write(0, 1, 0x0C);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Rtc, b.Rtc);
        Assert.Equal(a.Irq8.Level, b.Irq8.Level);
        Assert.Equal(a.TimeFields(), b.TimeFields());
        int edgesA = a.Irq8.RisingEdges, edgesB = b.Irq8.RisingEdges;
        for (int step = 0; step < 40; step++)
        {
            a.Clock.AdvanceMs(100); b.Clock.AdvanceMs(100);
            Assert.Equal(a.Irq8.RisingEdges - edgesA, b.Irq8.RisingEdges - edgesB);
            Assert.Equal(a.TimeFields(), b.TimeFields());
            Assert.Equal(a.Get(0x0A) & 0x80, b.Get(0x0A) & 0x80);
            Assert.Equal(a.Get(0x0C), b.Get(0x0C)); // also acknowledges, so the next period raises a fresh edge
        }
        Assert.Equal("20:01:02:03:04:05:11", b.TimeFields()); // 5.3 s after 04:05:06
        Assert.Equal(0x77, b.Get(0x30));
        Assert.True(b.Irq8.RisingEdges - edgesB >= 15);
    }

    [Fact]
    public void GuestTimeFollowsVmTimeNotHostTime()
    {
        var a = new Rig();
        a.SetTime();
        var saved = a.Rtc.Save();
        // Restored (host time passes meanwhile, VM time does not) on a machine whose VM clock is where the snapshot
        // left it: the guest's time is the saved one and then advances with VM time only.
        var b = new Rig(ClockAt(a.Clock.NowNs));
        b.Rtc.Restore(saved);
        Assert.Equal("20:01:02:03:04:05:06", b.TimeFields());
        b.Clock.AdvanceMs(2000);
        Assert.Equal("20:01:02:03:04:05:08", b.TimeFields());
    }

    [Fact]
    public void HostileRecordsAreRefused()
    {
        var r = new Rig();
        var good = r.Rtc.Save();
        CmosRtcState Edit(Action<CmosRtcState> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(r.Rtc, Edit(s => s.Cmos = new byte[64]));
        AssertRefused(r.Rtc, Edit(s => s.Cmos = null!));
        AssertRefused(r.Rtc, Edit(s => s.Index = 0x80));
        AssertRefused(r.Rtc, Edit(s => s.GuestTimeTicks = -1));
        AssertRefused(r.Rtc, Edit(s => s.GuestTimeTicks = long.MaxValue));
        AssertRefused(r.Rtc, Edit(s => s.NsSinceEventCheck = -1));
        AssertRefused(r.Rtc, Edit(s => s.Cmos[0x0D] = 0x7F));
    }
}
