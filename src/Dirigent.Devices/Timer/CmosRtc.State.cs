using Dirigent.Machine.State;

namespace Dirigent.Devices.Timer;

// Reset, save and restore. Guest wall-clock time follows VM time, as QEMU's "-rtc clock=vm": a restored RTC
// continues from the saved guest time plus the VM time that elapses after the restore, so a paused or snapshotted
// VM sees no jump (its clock falls behind the host's by the time it spent paused or saved; the guest's NTP or
// hwclock corrects that as after a suspend). The periodic interrupt's phase is VM time itself, so it continues
// unchanged; update and alarm interrupts are re-armed from the restored guest time.
public sealed partial class CmosRtc
{
    private const int CmosSize = 128;
    private static readonly byte[] RegisterIndexes =
        [RegSeconds, RegSecondsAlarm, RegMinutes, RegMinutesAlarm, RegHours, RegHoursAlarm, RegDayOfWeek,
         RegDayOfMonth, RegMonth, RegYear, RegA, RegB, RegC, RegD, RegCentury];

    /// <summary>
    /// System reset: the clock registers (A-D, alarms, the SET hold) return to their power-on values and the IRQ
    /// drops, while the battery-backed parts survive as on a PC: the running wall-clock time and the CMOS RAM
    /// (memory size, checksum, whatever the guest stored).
    /// </summary>
    public void Reset()
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            // A clock held by SET restarts from what the guest last wrote.
            if (_frozen) { CommitTime(now); _frozen = false; }
            foreach (int r in RegisterIndexes) _cmos[r] = 0;
            _cmos[RegA] = 0x26;
            _cmos[RegB] = RegB24Hour;
            _cmos[RegD] = RegDVrt;
            _index = 0;
            _nmiDisabled = false;
            _lastEventCheckNs = now;
            if (Reschedule(now) is bool level) _irq?.Set(level);
        }
    }

    public CmosRtcState Save()
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            return new CmosRtcState
            {
                Cmos = (byte[])_cmos.Clone(),
                Index = _index,
                NmiDisabled = _nmiDisabled,
                GuestTimeTicks = GuestTicks(now),
                Frozen = _frozen,
                NsSinceEventCheck = now - _lastEventCheckNs,
            };
        }
    }

    public void Restore(CmosRtcState state)
    {
        if (state.Cmos is not { Length: CmosSize })
            throw new StateRestoreException($"rtc: CMOS has {state.Cmos?.Length ?? 0} bytes, expected {CmosSize}");
        if (state.Index >= CmosSize) throw new StateRestoreException($"rtc: register index {state.Index} above 0x7F");
        if (state.GuestTimeTicks < 0 || state.GuestTimeTicks > DateTime.MaxValue.Ticks)
            throw new StateRestoreException($"rtc: guest time {state.GuestTimeTicks} out of range");
        if (state.NsSinceEventCheck < 0 || state.NsSinceEventCheck > 1_000_000_000_000_000_000)
            throw new StateRestoreException($"rtc: event time {state.NsSinceEventCheck} ns out of range");
        if ((state.Cmos[RegA] & RegAUip) != 0 || (state.Cmos[RegD] & ~RegDVrt) != 0 || (state.Cmos[RegC] & 0x0F) != 0)
            throw new StateRestoreException("rtc: register A, C or D has bits the chip never holds");
        lock (_lock)
        {
            long now = _clock.NowNs;
            state.Cmos.CopyTo(_cmos, 0);
            _index = state.Index;
            _nmiDisabled = state.NmiDisabled;
            // Guest time = the saved time + VM time since now (see the note above).
            _anchorNs = now;
            _anchorWallTicks = state.GuestTimeTicks;
            _offsetTicks = 0;
            _frozen = state.Frozen;
            _lastEventCheckNs = now - state.NsSinceEventCheck;
            // Drive IRQ8 to what register C says (a restored device drives its line again: the machine's starts low).
            if (Reschedule(now) is bool level) _irq?.Set(level);
        }
    }
}
