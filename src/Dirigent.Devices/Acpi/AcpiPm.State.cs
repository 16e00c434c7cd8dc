using Dirigent.Machine.State;

namespace Dirigent.Devices.Acpi;

// Reset, save and restore. The PM timer derives from VM time, so it continues across a restore by itself; only
// the TMR_STS bookkeeping and the overflow callback follow it.
public sealed partial class AcpiPm
{
    private const ushort Pm1StsMask = TmrSts | BmSts | GblSts | PwrBtnSts | SlpBtnSts | RtcSts | WakSts;
    private const ushort Pm1CntMask = 0xFFFF & ~(GblRls | SlpEn);

    /// <summary>Power-on state: no status, no enables, SCI_EN set (ACPI mode is always on), SCI low.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _pm1Sts = 0; _pm1En = 0; _pm1Cnt = SciEn;
            _gpe0Sts = 0; _gpe0En = 0;
            _tmrMsbToggles = PmTicks(_clock.NowNs) >> 23;
            ArmTimerOverflow();
            UpdateSci();
        }
    }

    public AcpiPmState Save()
    {
        lock (_lock)
        {
            return new AcpiPmState
            {
                Pm1Status = _pm1Sts, Pm1Enable = _pm1En, Pm1Control = _pm1Cnt,
                Gpe0Status = _gpe0Sts, Gpe0Enable = _gpe0En,
                TimerMsbToggles = _tmrMsbToggles,
            };
        }
    }

    public void Restore(AcpiPmState s)
    {
        if ((s.Pm1Status & ~Pm1StsMask) != 0 || (s.Pm1Enable & ~Pm1EnMask) != 0 || (s.Pm1Control & ~Pm1CntMask) != 0 ||
            (s.Pm1Control & SciEn) == 0)
            throw new StateRestoreException($"acpi-pm: PM1 status/enable/control {s.Pm1Status:x4}/{s.Pm1Enable:x4}/{s.Pm1Control:x4} not possible here");
        if (s.Gpe0Status != 0) throw new StateRestoreException("acpi-pm: GPE0 status set but there are no GPE sources");
        lock (_lock)
        {
            long toggles = PmTicks(_clock.NowNs) >> 23;
            if (s.TimerMsbToggles < 0 || s.TimerMsbToggles > toggles)
                throw new StateRestoreException($"acpi-pm: timer toggles {s.TimerMsbToggles} ahead of the VM clock ({toggles})");
            _pm1Sts = s.Pm1Status; _pm1En = s.Pm1Enable; _pm1Cnt = s.Pm1Control;
            _gpe0Sts = s.Gpe0Status; _gpe0En = s.Gpe0Enable;
            _tmrMsbToggles = s.TimerMsbToggles;
            AccountTimerStatus(_clock.NowNs);
            // Drive SCI to what status and enables say (a freshly built machine's line starts low).
            ArmTimerOverflow();
            UpdateSci();
        }
    }
}
