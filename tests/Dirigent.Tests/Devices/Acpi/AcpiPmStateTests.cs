using Dirigent.Devices;
using Dirigent.Devices.Acpi;
using Dirigent.Devices.Firmware;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Acpi;

/// <summary>ACPI PM: the fixed power button, reset, save and restore (the PM timer is VM time).</summary>
public sealed class AcpiPmStateTests : IDisposable
{
    private const int Pm1Sts = 0, Pm1En = 2, Pm1Cnt = 4, PmTmr = 8, Gpe0En = 0x24;
    private readonly MachineModel _vm = new(1 << 20);

    public void Dispose() => _vm.Dispose();

    private sealed class Rig
    {
        public readonly ManualClock Clock;
        public readonly FakeIrqLine Sci = new();
        public readonly AcpiPm Pm;

        public Rig(MachineModel vm, ManualClock? clock = null)
        {
            Clock = clock ?? new ManualClock();
            Pm = new AcpiPm(vm, Clock, Sci);
        }

        public uint Get(int offset, int size = 2) => Pm.Read((ushort)offset, size);
        public void Set(int offset, uint v, int size = 2) => Pm.Write((ushort)offset, size, v);
    }

    [Fact]
    public void PowerButtonRaisesSciOnlyWhileEnabledAndUntilAcknowledged()
    {
        var r = new Rig(_vm);
        r.Set(Pm1En, AcpiPm.PwrBtnSts);      // what Linux's fixed power button driver enables
        r.Pm.PressPowerButton();
        Assert.True(r.Sci.Level);
        Assert.Equal(AcpiPm.PwrBtnSts, r.Get(Pm1Sts) & AcpiPm.PwrBtnSts);
        r.Set(Pm1Sts, AcpiPm.PwrBtnSts);     // write 1 to clear
        Assert.False(r.Sci.Level);
        Assert.Equal(0u, r.Get(Pm1Sts) & AcpiPm.PwrBtnSts);

        r.Set(Pm1En, 0);
        r.Pm.PressPowerButton();
        Assert.False(r.Sci.Level);           // not enabled: no SCI, status still visible
        Assert.Equal(AcpiPm.PwrBtnSts, r.Get(Pm1Sts) & AcpiPm.PwrBtnSts);
        Assert.Equal(1, r.Sci.RisingEdges);
    }

    [Fact]
    public void FadtDescribesTheFixedPowerButtonAndAcpiModeIsOn()
    {
        byte[] fadt = AcpiTables.BuildFadt(0x1000, 0x2000);
        uint flags = BitConverter.ToUInt32(fadt, 112);
        Assert.Equal(0u, flags & (1u << 4));                  // PWR_BUTTON clear: fixed-feature power button
        Assert.NotEqual(0u, flags & (1u << 5));               // SLP_BUTTON set: no sleep button
        Assert.Equal(0u, BitConverter.ToUInt32(fadt, 48));    // SMI_CMD 0: no ACPI enable handshake
        var r = new Rig(_vm);
        Assert.Equal(1u, r.Get(Pm1Cnt) & 1);                  // SCI_EN reads set
        r.Set(Pm1Cnt, 0);
        Assert.Equal(1u, r.Get(Pm1Cnt) & 1);                  // and cannot be cleared
    }

    [Fact]
    public void ResetGivesTheFreshDevicesState()
    {
        var r = new Rig(_vm);
        r.Set(Pm1En, AcpiPm.PwrBtnSts | AcpiPm.TmrSts);
        r.Set(Pm1Cnt, 1 | (1u << 2));                         // GBL_RLS strobe sets GBL_STS
        r.Set(Gpe0En, 0x0F, 4);
        r.Pm.PressPowerButton();
        r.Clock.AdvanceMs(2500);                              // the timer's bit 23 flips: TMR_STS
        Assert.True(r.Sci.Level);
        r.Pm.Reset();
        Assert.False(r.Sci.Level);
        Assert.Equal(Json(new AcpiPm(_vm, r.Clock, null).Save()), Json(r.Pm.Save()));
        r.Clock.AdvanceMs(5000);
        Assert.False(r.Sci.Level);
    }

    [Fact]
    public void RestoredPmKeepsStatusTimerAndOverflowInterrupt()
    {
        var a = new Rig(_vm);
        a.Set(Pm1En, AcpiPm.TmrSts | AcpiPm.PwrBtnSts);
        a.Clock.AdvanceMs(1700);
        a.Pm.PressPowerButton();
        a.Set(Pm1Sts, AcpiPm.PwrBtnSts | AcpiPm.TmrSts);       // both acknowledged (bit 23 flipped at 2.34 s)
        Assert.False(a.Sci.Level);
        a.Set(Gpe0En, 0x3, 4);
        var b = new Rig(_vm, ClockAt(a.Clock.NowNs));
        Transfer(a.Pm, b.Pm);
        Assert.Equal(Json(a.Pm.Save()), Json(b.Pm.Save()));
        Assert.Equal(a.Get(PmTmr, 4), b.Get(PmTmr, 4));
        long firedA = -1, firedB = -1;
        for (int i = 0; i < 400 && (firedA < 0 || firedB < 0); i++)
        {
            a.Clock.AdvanceMs(10); b.Clock.AdvanceMs(10);
            if (firedA < 0 && a.Sci.Level) firedA = a.Clock.NowNs;
            if (firedB < 0 && b.Sci.Level) firedB = b.Clock.NowNs;
        }
        Assert.True(firedB > 0);
        Assert.Equal(firedA, firedB);
        Assert.Equal(a.Get(Pm1Sts), b.Get(Pm1Sts));
        Assert.Equal(a.Get(PmTmr, 4), b.Get(PmTmr, 4));
        // A pressed, unacknowledged button is still signalled on the restored machine.
        a.Set(Pm1Sts, AcpiPm.TmrSts);
        a.Pm.PressPowerButton();
        var c = new Rig(_vm, ClockAt(a.Clock.NowNs));
        Transfer(a.Pm, c.Pm);
        Assert.True(c.Sci.Level);
    }

    [Fact]
    public void HostileRecordsAreRefused()
    {
        var r = new Rig(_vm);
        var good = r.Pm.Save();
        AcpiPmState Edit(Action<AcpiPmState> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(r.Pm, Edit(s => s.Pm1Control = 0));             // SCI_EN is hard-wired on
        AssertRefused(r.Pm, Edit(s => s.Pm1Enable = 0x8000));
        AssertRefused(r.Pm, Edit(s => s.Gpe0Status = 1));
        AssertRefused(r.Pm, Edit(s => s.TimerMsbToggles = -1));
        AssertRefused(r.Pm, Edit(s => s.TimerMsbToggles = long.MaxValue));
    }
}
