using Dirigent.Devices.Interrupts;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Devices.Interrupts.LocalApic;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Interrupts;

/// <summary>Local APIC reset, save and restore: the register page, and the timer continuing in VM time.</summary>
public sealed class LocalApicStateTests
{
    private const ulong TscHz = 2_000_000_000;
    private const uint OneShot = 0, Periodic = 1u << 17, TscDeadlineMode = 2u << 17;

    private sealed class Rig
    {
        public readonly ManualClock Clock;
        public readonly LocalApic Apic;

        public Rig(ManualClock? clock = null, int index = 0)
        {
            Clock = clock ?? new ManualClock();
            Apic = new LocalApic(index, Clock, TscHz);
        }

        public uint R(int reg) => (uint)Apic.Read((ulong)reg, 4);
        public void W(int reg, uint v) => Apic.Write((ulong)reg, 4, v);
        public bool Irr(int vector) => (R(RegIrr + (vector / 32) * 0x10) & (1u << (vector % 32))) != 0;
        public ulong Tsc => (ulong)((UInt128)(ulong)Clock.NowNs * TscHz / 1_000_000_000);

        /// <summary>Takes the timer interrupt if it is requested and EOIs it; true when one was there.</summary>
        public bool TakeAndEoi(int vector)
        {
            if (!Irr(vector)) return false;
            Assert.Equal(vector, Apic.AcknowledgeInterrupt());
            W(RegEoi, 0);
            return true;
        }
    }

    [Fact]
    public void ResetGivesTheFreshState()
    {
        var r = new Rig();
        r.W(RegSvr, 0x1FF);
        r.W(RegTpr, 0x20);
        r.W(RegLdr, 0x0100_0000);
        r.W(RegDfr, 0x0FFF_FFFF);
        r.W(RegTimerDivide, 0x3);
        r.W(RegLvtTimer, Periodic | 0x40);
        r.W(RegTimerInitial, 100_000);
        r.W(RegIcrLow, 0x0004_4000 | 0x55);   // self IPI
        Assert.Equal(0x55, r.Apic.AcknowledgeInterrupt());
        r.W(RegIcrLow, 0x0004_4000 | 0x66);
        r.Clock.AdvanceMs(2);
        r.Apic.Reset();
        Assert.Equal(Json(new LocalApic(0, r.Clock, TscHz).Save()), Json(r.Apic.Save()));
        r.Clock.AdvanceMs(10);
        Assert.False(r.Apic.HasPendingInterrupt);
    }

    [Fact]
    public void OneShotTimerFiresAtTheSameVmTimeAfterRestore()
    {
        var a = new Rig();
        a.W(RegSvr, 0x1FF);
        a.W(RegTimerDivide, 0xB);             // divide by 1: one count per ns
        a.W(RegLvtTimer, OneShot | 0x40);
        a.W(RegTimerInitial, 1_000_000);
        a.Clock.AdvanceNs(300_000);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Apic, b.Apic);
        Assert.Equal(700_000u, b.R(RegTimerCurrent));
        Assert.Equal(Json(a.Apic.Save()), Json(b.Apic.Save()));
        a.Clock.AdvanceNs(699_999); b.Clock.AdvanceNs(699_999);
        Assert.False(b.Irr(0x40));
        Assert.Equal(a.R(RegTimerCurrent), b.R(RegTimerCurrent));
        a.Clock.AdvanceNs(1); b.Clock.AdvanceNs(1);
        Assert.True(a.Irr(0x40));
        Assert.True(b.Irr(0x40));
        Assert.Equal(0u, b.R(RegTimerCurrent));
        b.Clock.AdvanceMs(5);
        Assert.True(b.TakeAndEoi(0x40));
        b.Clock.AdvanceMs(5);
        Assert.False(b.Irr(0x40));            // one-shot: nothing more
    }

    [Fact]
    public void OneShotDueButNotYetDeliveredStillFiresAfterRestore()
    {
        var a = new Rig();
        a.W(RegSvr, 0x1FF);
        a.W(RegTimerDivide, 0xB);
        a.W(RegLvtTimer, OneShot | 0x40);
        a.W(RegTimerInitial, 1000);
        a.Clock.SkipNs(5000);                  // due, but the clock stopped before the timer ran
        Assert.False(a.Irr(0x40));
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Apic, b.Apic);
        b.Clock.AdvanceNs(1);
        Assert.True(b.Irr(0x40));
    }

    [Fact]
    public void PeriodicTimerKeepsItsPhaseAfterRestore()
    {
        var a = new Rig();
        a.W(RegSvr, 0x1FF);
        a.W(RegTimerDivide, 0x3);             // divide by 16: period 10000 * 16 ns = 160 us
        a.W(RegLvtTimer, Periodic | 0x41);
        a.W(RegTimerInitial, 10_000);
        a.Clock.AdvanceNs(1_234_000);         // 114 us into the 8th period (a whole number of counts)
        Assert.True(a.TakeAndEoi(0x41));
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Apic, b.Apic);
        Assert.Equal(a.R(RegTimerCurrent), b.R(RegTimerCurrent));
        int firesA = 0, firesB = 0;
        for (int step = 0; step < 300; step++)
        {
            a.Clock.AdvanceNs(2_000); b.Clock.AdvanceNs(2_000);
            Assert.Equal(a.Irr(0x41), b.Irr(0x41));
            Assert.Equal(a.R(RegTimerCurrent), b.R(RegTimerCurrent));
            if (a.TakeAndEoi(0x41)) firesA++;
            if (b.TakeAndEoi(0x41)) firesB++;
        }
        Assert.Equal(firesA, firesB);
        Assert.InRange(firesB, 3, 4);          // 600 us of 160 us periods
    }

    [Fact]
    public void TscDeadlineIsReArmedFromTheRecord()
    {
        var a = new Rig();
        a.W(RegSvr, 0x1FF);
        a.W(RegLvtTimer, TscDeadlineMode | 0x42);
        ulong deadline = a.Tsc + 1_000_000;    // 500 us ahead at 2 GHz
        a.Apic.WriteTscDeadline(deadline);
        a.Clock.AdvanceUs(100);
        var saved = a.Apic.Save();
        Assert.Equal(deadline, saved.TscDeadline);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Apic, b.Apic);
        Assert.Equal(deadline, b.Apic.ReadTscDeadline());
        b.Clock.AdvanceNs(399_999);
        Assert.False(b.Irr(0x42));
        b.Clock.AdvanceNs(1);
        Assert.True(b.Irr(0x42));
        Assert.Equal(0UL, b.Apic.ReadTscDeadline());
    }

    [Fact]
    public void PendingAndInServiceVectorsSurviveRestore()
    {
        var a = new Rig(index: 2);
        a.W(RegSvr, 0x1FF);
        a.W(RegIcrLow, 0x0004_4000 | 0x51);
        Assert.Equal(0x51, a.Apic.AcknowledgeInterrupt());
        a.W(RegIcrLow, 0x0004_4000 | 0x52);   // pending behind 0x51 in service (same class)
        a.W(RegIcrLow, 0x0004_4000 | 0x91);   // deliverable
        var b = new Rig(ClockAt(a.Clock.NowNs), index: 2);
        Transfer(a.Apic, b.Apic);
        Assert.Equal(0x0200_0000u, b.R(RegId));
        for (int reg = 0; reg < 0x400; reg += 0x10) Assert.Equal(a.R(reg), b.R(reg));
        var order = new List<int>();
        while (b.Apic.HasPendingInterrupt) { order.Add(b.Apic.AcknowledgeInterrupt()); }
        b.W(RegEoi, 0); b.W(RegEoi, 0);
        while (b.Apic.HasPendingInterrupt) { order.Add(b.Apic.AcknowledgeInterrupt()); }
        Assert.Equal([0x91, 0x52], order);
    }

    [Fact]
    public void RouterControllersRestoreThroughARegistryUnderTheirNames()
    {
        using var clock = new VirtualClock();
        StateRegistry Board(InterruptRouter r)
        {
            var reg = new StateRegistry();
            reg.Add("pic", r.Pics);
            reg.Add("ioapic", r.IoApic);
            for (int i = 0; i < r.LocalApics.Count; i++) reg.Add($"lapic/{i}", r.LocalApics[i]);
            return reg;
        }
        var a = new InterruptRouter(clock, 2, TscHz);
        a.LocalApics[1].Write(RegSvr, 4, 0x1FF);
        a.LocalApics[1].Write(RegTpr, 4, 0x30);
        a.Pic.SetIrq(1, true);
        var saved = Board(a).SaveAll();
        Assert.Equal(["pic", "ioapic", "lapic/0", "lapic/1"], saved.Keys);
        var b = new InterruptRouter(clock, 2, TscHz);
        Board(b).RestoreAll(saved);
        Assert.Equal(0x30u, (uint)b.LocalApics[1].Read(RegTpr, 4));
        Assert.Equal(Json(a.Pic.Save()), Json(b.Pic.Save()));
        var wrong = new InterruptRouter(clock, 1, TscHz);
        Assert.Throws<StateRestoreException>(() => Board(wrong).RestoreAll(saved));
    }

    [Fact]
    public void HostileRecordsAreRefused()
    {
        var r = new Rig();
        r.W(RegSvr, 0x1FF);
        r.W(RegTimerDivide, 0xB);
        r.W(RegTimerInitial, 1000);
        var good = r.Apic.Save();
        LocalApicState Edit(Action<LocalApicState> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(r.Apic, Edit(s => s.Page = new byte[512]));
        AssertRefused(r.Apic, Edit(s => s.Page = null!));
        AssertRefused(r.Apic, Edit(s => s.ApicBase = 0xFED0_0900));
        AssertRefused(r.Apic, Edit(s => s.ApicBase |= 1UL << 10));  // x2APIC
        AssertRefused(r.Apic, Edit(s => s.Page[RegIrr] = 0x08));     // vector 3 requested
        AssertRefused(r.Apic, Edit(s => BitConverter.TryWriteBytes(s.Page.AsSpan(RegTimerCurrent), 5000u)));
    }
}
