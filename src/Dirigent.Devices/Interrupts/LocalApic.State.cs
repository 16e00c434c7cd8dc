using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Interrupts;

// Save and restore through the accelerator-neutral LocalApicState: the SDM register page (KVM's kvm_lapic_state)
// plus IA32_APIC_BASE and IA32_TSC_DEADLINE.
// - The APIC timer continues from the saved current count: restore re-arms it so that the rest of the current
//   period (counted at the saved divide configuration) runs from the restored VM time, and periodic mode goes on
//   from there. The count has the timer's resolution (one count = divisor ns), so the phase is kept to within one
//   count. An armed one-shot that was due but not yet delivered saves a current count of 1, so it still fires.
// - TSC-deadline mode re-arms from TscDeadline as if the guest TSC were the clock-derived TSC (no IA32_TSC write);
//   a vCPU whose TSC carries an offset re-arms it after its own restore with WriteTscDeadline(ReadTscDeadline(), offset).
// - Not on the page and not restored: errors recorded since the last ESR write, an ExtINT message accepted but not
//   yet acknowledged; LINT0/LINT1 levels are the wires' and come back when their sources drive them.
public sealed partial class LocalApic
{
    private const int PageSize = 1024;
    private const ulong ApicBaseBsp = 1UL << 8, ApicBaseX2Apic = 1UL << 10, ApicBaseEnable = 1UL << 11;

    public LocalApicState Save()
    {
        lock (_lock)
        {
            var page = new byte[PageSize];
            void Put(int reg, uint v) => BitConverter.TryWriteBytes(page.AsSpan(reg, 4), v);
            foreach (int reg in (ReadOnlySpan<int>)[RegId, RegVersion, RegTpr, RegApr, RegPpr, RegLdr, RegDfr, RegSvr,
                         RegEsr, RegIcrLow, RegIcrHigh, RegTimerInitial, RegTimerDivide])
                Put(reg, ReadRegisterLocked(reg));
            for (int i = 0; i < 8; i++)
            {
                Put(RegIsr + 16 * i, (uint)(_isr[i >> 1] >> (32 * (i & 1))));
                Put(RegTmr + 16 * i, (uint)(_tmr[i >> 1] >> (32 * (i & 1))));
                Put(RegIrr + 16 * i, (uint)(_irr[i >> 1] >> (32 * (i & 1))));
            }
            for (int i = 0; i < _lvt.Length; i++) Put(RegLvtTimer + 16 * i, _lvt[i]);
            Put(0x2F0, LvtMasked); // LVT CMCI: not implemented, reads as masked
            uint current = CurrentCountLocked();
            if (current == 0 && _timerArmed && TimerModeLocked != TimerTscDeadline) current = 1;
            Put(RegTimerCurrent, current);
            return new LocalApicState
            {
                Page = page,
                ApicBase = PcPlatform.LocalApicBase | ApicBaseEnable | (Index == 0 ? ApicBaseBsp : 0),
                TscDeadline = _tscDeadline,
            };
        }
    }

    public void Restore(LocalApicState state)
    {
        if (state.Page is not { Length: PageSize })
            throw new StateRestoreException($"lapic {Index}: register page of {state.Page?.Length ?? 0} bytes, expected {PageSize}");
        if ((state.ApicBase & ~0xFFFUL) != PcPlatform.LocalApicBase)
            throw new StateRestoreException($"lapic {Index}: APIC base {state.ApicBase & ~0xFFFUL:x} (only {PcPlatform.LocalApicBase:x} is modelled)");
        if ((state.ApicBase & ApicBaseX2Apic) != 0)
            throw new StateRestoreException($"lapic {Index}: x2APIC mode is not modelled");
        var page = state.Page;
        uint Get(int reg) => BitConverter.ToUInt32(page, reg);
        var isr = new ulong[4];
        var tmr = new ulong[4];
        var irr = new ulong[4];
        for (int i = 0; i < 8; i++)
        {
            isr[i >> 1] |= (ulong)Get(RegIsr + 16 * i) << (32 * (i & 1));
            tmr[i >> 1] |= (ulong)Get(RegTmr + 16 * i) << (32 * (i & 1));
            irr[i >> 1] |= (ulong)Get(RegIrr + 16 * i) << (32 * (i & 1));
        }
        // Vectors 0-15 are never accepted (illegal-vector error), so a record with them set is not from an APIC.
        if (((isr[0] | irr[0]) & 0xFFFF) != 0)
            throw new StateRestoreException($"lapic {Index}: vectors 0-15 in service or requested");
        uint initial = Get(RegTimerInitial), current = Get(RegTimerCurrent);
        if (current > initial)
            throw new StateRestoreException($"lapic {Index}: timer current count {current} above the initial count {initial}");
        lock (_lock)
        {
            StopTimerLocked();
            _id = Get(RegId) & 0xFF00_0000;
            _tpr = Get(RegTpr) & 0xFF;
            _ldr = Get(RegLdr) & 0xFF00_0000;
            _dfr = Get(RegDfr) | 0x0FFF_FFFF;
            _svr = Get(RegSvr) & 0x3FF;
            _esr = Get(RegEsr);
            _esrPending = 0;
            _icrLow = Get(RegIcrLow) & 0x000C_CFFF;
            _icrHigh = Get(RegIcrHigh) & 0xFF00_0000;
            _timerDivide = Get(RegTimerDivide) & 0xB;
            for (int i = 0; i < _lvt.Length; i++)
            {
                uint v = Get(RegLvtTimer + 16 * i) & LvtWritable[i];
                if ((_svr & SvrEnable) == 0) v |= LvtMasked;
                _lvt[i] = v;
            }
            isr.CopyTo(_isr, 0);
            tmr.CopyTo(_tmr, 0);
            irr.CopyTo(_irr, 0);
            _extIntPending = false;
            _timerInitial = initial;
            _tscDeadline = 0;
            if (TimerModeLocked == TimerTscDeadline) ArmTscDeadlineLocked(state.TscDeadline, 0);
            else if (initial != 0 && (current != 0 || TimerModeLocked == TimerPeriodic))
            {
                long period = CountToNsLocked(initial);
                if (TimerModeLocked == TimerPeriodic) period = Math.Max(period, MinPeriodicNs);
                _timerPeriodNs = Math.Max(period, 1);
                long elapsed = (long)((Int128)(initial - current) * _timerPeriodNs / initial);
                _timerStartNs = _clock.NowNs - elapsed;
                _timerArmed = true;
                ScheduleLocked(_timerStartNs + _timerPeriodNs);
            }
        }
        KickIfPending();
    }
}
