using Dirigent.Devices;
using Dirigent.Devices.Acpi;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;

namespace Dirigent.Tests.Devices.Acpi;

public sealed class AcpiPmTests : IDisposable
{
    private readonly MachineModel _vm = new(1 << 20);
    private readonly FakeIrqLine _sci = new();
    private readonly AcpiPm _pm;

    public AcpiPmTests()
    {
        _pm = new AcpiPm(_vm, _sci);
        _vm.Io.Register(PcPlatform.AcpiPmBase, AcpiPm.PortCount, _pm);
    }

    public void Dispose() => _vm.Dispose();

    private uint Timer() => _vm.Io.Read(PcPlatform.AcpiPmTmrBlk, 4);

    [Fact]
    public void PmTimerIs24BitMonotonicAtTheRightRate()
    {
        long a0 = _vm.Clock.NowNs;
        uint t0 = Timer();
        long a1 = _vm.Clock.NowNs;
        uint prev = t0;
        // Sample for 200 ms of VM time; the rate is checked against the VM clock, so host speed does not matter.
        while (_vm.Clock.NowNs - a1 < 200_000_000)
        {
            uint t = Timer();
            Assert.Equal(0u, t & 0xFF00_0000);
            Assert.True(((t - prev) & 0xFF_FFFF) < 0x80_0000, $"timer went backwards {prev:x} -> {t:x}");
            prev = t;
        }
        long b0 = _vm.Clock.NowNs;
        uint t1 = Timer();
        long b1 = _vm.Clock.NowNs;
        long ticks = (t1 - t0) & 0xFF_FFFF;
        double hz = PcPlatform.AcpiPmTimerHz / 1e9;
        Assert.InRange(ticks, (long)((b0 - a1) * hz) - 1, (long)((b1 - a0) * hz) + 1);
    }

    [Fact]
    public void PmTimerCountsExactlyAtItsFrequencyAndSetsTmrStsOnBit23()
    {
        var clock = new ManualClock();
        var sci = new FakeIrqLine();
        var pm = new AcpiPm(_vm, clock, sci);
        uint t0 = pm.Read(8, 4);
        clock.AdvanceMs(1000);
        uint t1 = pm.Read(8, 4);
        Assert.InRange((t1 - t0) & 0xFF_FFFF, PcPlatform.AcpiPmTimerHz - 1, PcPlatform.AcpiPmTimerHz + 1);
        // Byte reads of the timer agree with the dword.
        Assert.Equal(t1 & 0xFF, pm.Read(8, 1));
        // TMR_EN: an SCI each time bit 23 flips (every 2^23 ticks, ~2.34 s).
        pm.Write(2, 2, AcpiPm.TmrSts);
        Assert.False(sci.Level);
        clock.AdvanceMs(2400);
        Assert.True(sci.Level);
        Assert.Equal(AcpiPm.TmrSts, pm.Read(0, 2) & AcpiPm.TmrSts);
        pm.Write(0, 2, AcpiPm.TmrSts);
        Assert.False(sci.Level);
    }

    [Fact]
    public void SciEnReadsSetAndS5PowersOff()
    {
        Assert.Equal(1u, _vm.Io.Read(PcPlatform.AcpiPm1aCntBlk, 2) & 1);
        // Some other sleep type is ignored.
        _vm.Io.Write(PcPlatform.AcpiPm1aCntBlk, 2, (1u << 10) | (1u << 13));
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        // SLP_TYP without SLP_EN does nothing either.
        _vm.Io.Write(PcPlatform.AcpiPm1aCntBlk, 2, (uint)PcPlatform.AcpiS5SlpTyp << 10);
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        Assert.Equal(0u, _vm.Io.Read(PcPlatform.AcpiPm1aCntBlk, 2) & (1u << 13)); // SLP_EN reads 0
        _vm.Io.Write(PcPlatform.AcpiPm1aCntBlk, 2, ((uint)PcPlatform.AcpiS5SlpTyp << 10) | (1u << 13) | 1);
        Assert.Equal(PowerEventKind.PowerOff, _vm.PowerEvent);
    }

    [Fact]
    public void PowerButtonRaisesSciUntilStatusCleared()
    {
        _pm.PressPowerButton();
        Assert.False(_sci.Level); // not enabled yet
        Assert.NotEqual(0u, _vm.Io.Read(PcPlatform.AcpiPm1aEvtBlk, 2) & AcpiPm.PwrBtnSts);
        _vm.Io.Write((ushort)(PcPlatform.AcpiPm1aEvtBlk + 2), 2, AcpiPm.PwrBtnSts);
        Assert.True(_sci.Level);
        Assert.Equal(AcpiPm.PwrBtnSts, (ushort)_vm.Io.Read((ushort)(PcPlatform.AcpiPm1aEvtBlk + 2), 2));
        // Writing 0 to a status bit leaves it; writing 1 clears it.
        _vm.Io.Write(PcPlatform.AcpiPm1aEvtBlk, 2, 0);
        Assert.True(_sci.Level);
        _vm.Io.Write(PcPlatform.AcpiPm1aEvtBlk, 2, AcpiPm.PwrBtnSts);
        Assert.False(_sci.Level);
        Assert.Equal(0u, _vm.Io.Read(PcPlatform.AcpiPm1aEvtBlk, 2) & AcpiPm.PwrBtnSts);
    }

    [Fact]
    public void Gpe0BlockHasNoEventsAndKeepsEnables()
    {
        Assert.Equal(0u, _vm.Io.Read(PcPlatform.AcpiGpe0Blk, 4));
        _vm.Io.Write((ushort)(PcPlatform.AcpiGpe0Blk + 4), 4, 0x0000_00F0);
        Assert.Equal(0xF0u, _vm.Io.Read((ushort)(PcPlatform.AcpiGpe0Blk + 4), 4));
        Assert.Equal(0xF0u, _vm.Io.Read((ushort)(PcPlatform.AcpiGpe0Blk + 4), 1));
        Assert.False(_sci.Level);
    }
}
