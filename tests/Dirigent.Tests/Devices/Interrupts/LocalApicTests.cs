using Dirigent.Devices.Interrupts;
using Dirigent.Machine.Time;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Devices.Interrupts.LocalApic;

namespace Dirigent.Tests.Devices.Interrupts;

/// <summary>
/// The local APIC on a <see cref="ManualClock"/>: VM time moves only when a test advances it, so the timer tests
/// say exactly when an interrupt is due (not "within a wall-clock window") and do not depend on the host's speed.
/// One test (<see cref="OneShotTimerFiresOnTheRunningVmClock"/>) runs the timer on the real VM clock.
/// </summary>
public sealed class LocalApicTests
{
    private const ulong TscHz = 2_000_000_000;
    private readonly ManualClock _clock = new();
    private readonly LocalApic _apic;

    public LocalApicTests()
    {
        _apic = new LocalApic(0, _clock, TscHz);
    }

    private uint R(int reg) => (uint)_apic.Read((ulong)reg, 4);
    private void W(int reg, uint v) => _apic.Write((ulong)reg, 4, v);
    private void Enable() => W(RegSvr, 0x1FF);
    private void SelfIpi(int vector) => W(RegIcrLow, 0x0004_4000u | (uint)vector); // shorthand self, fixed, assert

    private static bool Bit(LocalApic a, int baseReg, int vector) =>
        ((uint)a.Read((ulong)(baseReg + (vector / 32) * 0x10), 4) & (1u << (vector % 32))) != 0;

    /// <summary>What the vCPU does when the APIC kicks it: take the interrupt (INTA) if one is deliverable.</summary>
    private int TakeInterrupt() => _apic.HasPendingInterrupt ? _apic.AcknowledgeInterrupt() : -1;

    /// <summary>Moves VM time on by <paramref name="ms"/> (running the timers that fall due) and says whether the
    /// APIC then has something deliverable.</summary>
    private bool AdvancePending(double ms)
    {
        _clock.AdvanceMs(ms);
        return _apic.HasPendingInterrupt;
    }

    [Fact]
    public void ResetStateMatchesSdmAndFirmware()
    {
        Assert.Equal(0u, R(RegId));
        Assert.Equal(0x0005_0014u, R(RegVersion));
        Assert.Equal(0xFFu, R(RegSvr));
        Assert.Equal(0xFFFF_FFFFu, R(RegDfr));
        Assert.Equal(0x10000u, R(RegLvtTimer));
        Assert.Equal(0x700u, R(RegLvtLint0)); // BSP: virtual wire through LINT0
        Assert.Equal(0x400u, R(RegLvtLint1));
        var ap = new LocalApic(3, _clock, TscHz);
        Assert.Equal(0x0300_0000u, (uint)ap.Read(RegId, 4));
        Assert.Equal(0x10000u, (uint)ap.Read(RegLvtLint0, 4));
    }

    [Fact]
    public void SoftwareDisabledApicIgnoresFixedInterruptsAndMasksLvts()
    {
        SelfIpi(0x45);
        Assert.False(_apic.HasPendingInterrupt);
        W(RegLvtTimer, 0x40);
        Assert.Equal(0x10040u, R(RegLvtTimer));
        Enable();
        W(RegLvtTimer, 0x40);
        Assert.Equal(0x40u, R(RegLvtTimer));
        W(RegSvr, 0xFF);
        Assert.Equal(0x10040u, R(RegLvtTimer));
        Assert.Equal(0x10700u, R(RegLvtLint0));
    }

    [Fact]
    public void TprMasksByPriorityClass()
    {
        Enable();
        W(RegTpr, 0x50);
        SelfIpi(0x45);
        Assert.True(Bit(_apic, RegIrr, 0x45));
        Assert.False(_apic.HasPendingInterrupt);
        W(RegTpr, 0x4F);
        Assert.False(_apic.HasPendingInterrupt); // same class as TPR: still blocked
        Assert.Equal(0x4Fu, R(RegPpr));
        W(RegTpr, 0x3F);
        Assert.True(_apic.HasPendingInterrupt);
        Assert.Equal(0x45, _apic.AcknowledgeInterrupt());
        Assert.True(Bit(_apic, RegIsr, 0x45));
        Assert.False(Bit(_apic, RegIrr, 0x45));
        Assert.Equal(0x40u, R(RegPpr)); // the in-service class now dominates TPR
        W(RegEoi, 0);
        Assert.False(Bit(_apic, RegIsr, 0x45));
        Assert.Equal(0x3Fu, R(RegPpr));
    }

    [Fact]
    public void HigherClassPreemptsAndOrderFollowsPriority()
    {
        Enable();
        SelfIpi(0x31);
        SelfIpi(0x71);
        SelfIpi(0x51);
        Assert.Equal(0x71, TakeInterrupt());
        Assert.Equal(-1, TakeInterrupt()); // 0x51 waits for 0x71's EOI
        SelfIpi(0x81);
        Assert.Equal(0x81, TakeInterrupt()); // nests above 0x71
        W(RegEoi, 0); // retires 0x81
        Assert.True(Bit(_apic, RegIsr, 0x71));
        Assert.Equal(-1, TakeInterrupt());
        W(RegEoi, 0);
        Assert.Equal(0x51, TakeInterrupt());
        W(RegEoi, 0);
        Assert.Equal(0x31, TakeInterrupt());
        W(RegEoi, 0);
        Assert.Equal(-1, TakeInterrupt());
    }

    [Fact]
    public void IllegalVectorsSetEsr()
    {
        Enable();
        W(RegIcrLow, 0x0004_4005); // self-IPI with vector 5
        Assert.False(_apic.HasPendingInterrupt);
        W(RegEsr, 0);
        Assert.Equal(0x20u, R(RegEsr)); // send illegal vector
        W(RegEsr, 0);
        Assert.Equal(0u, R(RegEsr));
    }

    [Fact]
    public void OneShotTimerFiresOnceAfterItsCount()
    {
        Enable();
        W(RegTimerDivide, 0x3); // divide by 16
        W(RegLvtTimer, 0x40);
        W(RegTimerInitial, 1_250_000); // 1.25M * 16 / 1 GHz = 20 ms
        Assert.Equal(1_250_000u, R(RegTimerCurrent)); // no VM time has passed
        Assert.False(AdvancePending(10));
        Assert.Equal(625_000u, R(RegTimerCurrent)); // half-way
        Assert.False(AdvancePending(9.9));
        Assert.True(AdvancePending(0.2)); // due at 20 ms of VM time, not before
        Assert.Equal(0u, R(RegTimerCurrent));
        Assert.Equal(0x40, _apic.AcknowledgeInterrupt());
        W(RegEoi, 0);
        Assert.False(AdvancePending(1000)); // one-shot: nothing more
        Assert.Equal(0u, R(RegTimerCurrent));
    }

    [Fact]
    public void PeriodicTimerKeepsFiring()
    {
        Enable();
        W(RegTimerDivide, 0xB); // divide by 1
        W(RegLvtTimer, 0x20041);
        W(RegTimerInitial, 10_000_000); // 10 ms
        for (int period = 1; period <= 3; period++)
        {
            Assert.False(AdvancePending(9.9), $"period {period}: fired early");
            Assert.True(AdvancePending(0.1), $"period {period}: did not fire at its 10 ms");
            Assert.Equal(0x41, _apic.AcknowledgeInterrupt());
            W(RegEoi, 0);
        }
        _clock.AdvanceMs(2.5);
        Assert.Equal(7_500_000u, R(RegTimerCurrent)); // reloaded: 2.5 ms into the fourth period
        W(RegTimerInitial, 0); // stops the timer
        Assert.Equal(0u, R(RegTimerCurrent));
        Assert.False(AdvancePending(100));
    }

    [Fact]
    public void DivideChangeWhileCountingKeepsTheCount()
    {
        Enable();
        W(RegTimerDivide, 0xB); // divide by 1: 100M counts = 100 ms
        W(RegLvtTimer, 0x40);
        W(RegTimerInitial, 100_000_000);
        _clock.AdvanceMs(10);
        uint before = R(RegTimerCurrent);
        Assert.Equal(90_000_000u, before);
        W(RegTimerDivide, 0xA); // divide by 128: the rest now takes 90M * 128 ns = 11.52 s
        Assert.Equal(before, R(RegTimerCurrent)); // no jump
        Assert.False(AdvancePending(300)); // at the old rate it would have fired after 90 ms
        Assert.InRange(R(RegTimerCurrent), before - 2_400_000u, before - 2_200_000u); // 300 ms / 128 ns ~ 2.34M counts
        Assert.False(AdvancePending(11_000));
        Assert.True(AdvancePending(300)); // 11.52 s after the change
    }

    [Fact]
    public void MaskedTimerCountsWithoutInterrupting()
    {
        Enable();
        W(RegTimerDivide, 0xB);
        W(RegLvtTimer, 0x10040);
        W(RegTimerInitial, 1_000_000); // 1 ms
        _clock.AdvanceMs(0.5);
        Assert.Equal(500_000u, R(RegTimerCurrent)); // counting
        Assert.False(AdvancePending(100));
        Assert.False(Bit(_apic, RegIrr, 0x40));
    }

    [Fact]
    public void TscDeadlineTimerFiresAndClearsMsr()
    {
        Enable();
        _apic.WriteTscDeadline(12345);
        Assert.Equal(0ul, _apic.ReadTscDeadline()); // ignored outside TSC-deadline mode
        W(RegLvtTimer, 0x40042);
        W(RegTimerInitial, 1000);
        Assert.Equal(0u, R(RegTimerInitial)); // the counter ignores writes in this mode
        Assert.Equal(0u, R(RegTimerCurrent));
        ulong now = (ulong)_clock.NowNs * (TscHz / 1_000_000_000);
        ulong deadline = now + 20_000_000 * (TscHz / 1_000_000_000); // 20 ms ahead
        _apic.WriteTscDeadline(deadline);
        Assert.Equal(deadline, _apic.ReadTscDeadline());
        Assert.False(AdvancePending(19.9));
        Assert.Equal(deadline, _apic.ReadTscDeadline());
        Assert.True(AdvancePending(0.1));
        Assert.True((ulong)_clock.NowNs * 2 >= deadline);
        Assert.Equal(0ul, _apic.ReadTscDeadline());
        Assert.Equal(0x42, _apic.AcknowledgeInterrupt());
        W(RegEoi, 0);

        // Re-arming and then leaving TSC-deadline mode disarms the timer.
        _apic.WriteTscDeadline((ulong)_clock.NowNs * 2 + 40_000_000);
        W(RegLvtTimer, 0x42);
        Assert.Equal(0ul, _apic.ReadTscDeadline());
        Assert.False(AdvancePending(100));
    }

    [Fact]
    public void CurrentCountReadsZeroInTscDeadlineMode()
    {
        // SDM 11.5.4.1: in TSC-deadline mode the current-count register reads 0, armed or not; a one-shot count
        // running when the mode changes does not show through.
        Enable();
        W(RegLvtTimer, 0x42);
        W(RegTimerDivide, 0xB); // divide by 1
        W(RegTimerInitial, 1_000_000);
        Assert.NotEqual(0u, R(RegTimerCurrent));
        W(RegLvtTimer, 0x40042);
        Assert.Equal(0u, R(RegTimerCurrent));
        ulong deadline = (ulong)_clock.NowNs * (TscHz / 1_000_000_000) + 10_000_000 * (TscHz / 1_000_000_000); // 10 ms
        _apic.WriteTscDeadline(deadline);
        Assert.Equal(0u, R(RegTimerCurrent));
        Assert.False(AdvancePending(5));
        Assert.Equal(0u, R(RegTimerCurrent));
        Assert.Equal(deadline, _apic.ReadTscDeadline());
        Assert.True(AdvancePending(5));
        Assert.Equal(0u, R(RegTimerCurrent));
        Assert.Equal(0x42, _apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void PastTscDeadlineFiresImmediately()
    {
        Enable();
        W(RegLvtTimer, 0x40043);
        _apic.WriteTscDeadline(1);
        Assert.True(AdvancePending(0)); // no VM time needs to pass
        Assert.Equal(0x43, _apic.AcknowledgeInterrupt());
        W(RegEoi, 0);

        // With a TSC offset (the guest wrote IA32_TSC), the deadline is in the guest's TSC units.
        const long offset = 1L << 50;
        _apic.WriteTscDeadline((ulong)offset + (ulong)_clock.NowNs * 2 + 10_000_000_000UL, offset); // 5 s ahead
        Assert.False(AdvancePending(4_900));
        _apic.WriteTscDeadline((ulong)offset + (ulong)_clock.NowNs * 2, offset);
        Assert.True(AdvancePending(0));
    }

    [Fact]
    public void ReprogrammingCancelsThePreviousCount()
    {
        Enable();
        W(RegTimerDivide, 0xB);
        W(RegLvtTimer, 0x40);
        W(RegTimerInitial, 30_000_000);
        W(RegTimerInitial, 0);
        Assert.False(AdvancePending(1000));
        Assert.Equal(0, _clock.PendingTimers);
    }

    /// <summary>
    /// The same one-shot count on the running VM clock (the adapter from <see cref="VirtualClock"/> and its timer
    /// thread): the APIC kicks the vCPU, and when it does the VM clock has reached the deadline. The wait is an
    /// event with a hang guard, and the assertion is about VM time, so a slow host cannot fail it.
    /// </summary>
    [Fact]
    public void OneShotTimerFiresOnTheRunningVmClock()
    {
        using var clock = new VirtualClock();
        var apic = new LocalApic(0, clock, TscHz);
        using var fired = new ManualResetEventSlim();
        long firedAt = -1;
        // The kick comes from the clock's timer thread once the interrupt is pending: note the VM time it came at.
        apic.Kick = () =>
        {
            if (fired.IsSet || !apic.HasPendingInterrupt) return;
            Volatile.Write(ref firedAt, clock.NowNs);
            fired.Set();
        };
        apic.Write(RegSvr, 4, 0x1FF);
        apic.Write(RegTimerDivide, 4, 0x3); // divide by 16
        apic.Write(RegLvtTimer, 4, 0x40);
        long start = clock.NowNs;
        apic.Write(RegTimerInitial, 4, 1_250_000); // 20 ms of VM time
        var guard = TimeSpan.FromSeconds(60);
        Assert.True(fired.Wait(guard), $"hang guard: no timer interrupt within {guard.TotalSeconds} s of wall time");
        long at = Volatile.Read(ref firedAt) - start;
        Assert.True(at >= 20_000_000, $"fired at {at / 1e6:F3} ms of VM time, before its 20 ms count");
        Assert.True(apic.HasPendingInterrupt);
        Assert.Equal(0u, (uint)apic.Read(RegTimerCurrent, 4));
        Assert.Equal(0x40, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void LintPinsFollowTheirLvt()
    {
        int nmis = 0;
        _apic.OnNmi = () => nmis++;
        _apic.SetLint(1, true); // LINT1 = NMI after reset on the BSP
        _apic.SetLint(1, false);
        Assert.Equal(1, nmis);
        _apic.ExtIntAcknowledge = () => 0x30;
        _apic.SetLint(0, true); // ExtINT works even while the APIC is software-disabled (virtual wire)
        Assert.True(_apic.HasPendingInterrupt);
        Assert.Equal(0x30, _apic.AcknowledgeInterrupt());
        _apic.SetLint(0, false);
        Assert.False(_apic.HasPendingInterrupt);
        Enable();
        W(RegLvtLint0, 0x10700); // masked: the PIC is no longer heard
        _apic.SetLint(0, true);
        Assert.False(_apic.HasPendingInterrupt);
    }

    [Fact]
    public void OddAccessesAreHarmless()
    {
        Assert.Equal(0ul, _apic.Read(0x2000, 4));
        Assert.Equal(0ul, _apic.Read(0x24, 4));
        Assert.Equal(0x14ul, _apic.Read(RegVersion, 1));
        _apic.Write(RegTpr, 1, 0xFF); // byte writes are dropped
        Assert.Equal(0u, R(RegTpr));
        _apic.Write(0xFF0, 4, 0xFFFF_FFFF);
        _apic.Write(RegVersion, 4, 0);
        Assert.Equal(0x0005_0014u, R(RegVersion));
    }
}
