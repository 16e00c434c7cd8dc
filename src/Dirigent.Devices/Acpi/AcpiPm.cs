using Dirigent.Devices.Misc;
using Dirigent.Machine;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;

namespace Dirigent.Devices.Acpi;

/// <summary>
/// ACPI fixed hardware in I/O space, laid out like the PIIX4 power-management function (register the whole
/// <see cref="PortCount"/>-port window at <see cref="PcPlatform.AcpiPmBase"/>): PM1a event block (status W1C +
/// enable), PM1a control (SCI_EN hard-wired on: there is no SMM to hand ACPI over), the 24-bit PM timer at
/// <see cref="PcPlatform.AcpiPmTimerHz"/> derived from <see cref="VirtualClock"/>, and a GPE0 block with no event
/// sources. Writing SLP_EN with the \_S5 SLP_TYP powers the machine off. SCI goes out on the IRQ9 line, level
/// triggered, while any enabled status bit is set.
/// </summary>
public sealed partial class AcpiPm : IPortDevice, IStateful<AcpiPmState>
{
    public const int PortCount = 0x40;

    private const int Pm1StsOffset = PcPlatform.AcpiPm1aEvtBlk - PcPlatform.AcpiPmBase;      // 2 bytes
    private const int Pm1EnOffset = Pm1StsOffset + 2;                                          // 2 bytes
    private const int Pm1CntOffset = PcPlatform.AcpiPm1aCntBlk - PcPlatform.AcpiPmBase;        // 2 bytes
    private const int PmTmrOffset = PcPlatform.AcpiPmTmrBlk - PcPlatform.AcpiPmBase;           // 4 bytes
    private const int Gpe0StsOffset = PcPlatform.AcpiGpe0Blk - PcPlatform.AcpiPmBase;          // 4 bytes
    private const int Gpe0EnOffset = Gpe0StsOffset + 4;                                        // 4 bytes

    // PM1 status / enable bits (ACPI 6.x, 4.8.3.1)
    public const ushort TmrSts = 1 << 0, BmSts = 1 << 4, GblSts = 1 << 5, PwrBtnSts = 1 << 8, SlpBtnSts = 1 << 9,
        RtcSts = 1 << 10, WakSts = 1 << 15;
    private const ushort Pm1EnMask = TmrSts | GblSts | PwrBtnSts | SlpBtnSts | RtcSts;
    // PM1 control bits
    private const ushort SciEn = 1 << 0, GblRls = 1 << 2, SlpEn = 1 << 13;
    private const int SlpTypShift = 10;

    private readonly MachineModel _vm;
    private readonly DeviceClock _clock;
    private readonly IIrqLine? _sci;
    private readonly object _lock = new();
    private ushort _pm1Sts, _pm1En, _pm1Cnt = SciEn;
    private uint _gpe0Sts, _gpe0En;
    private long _tmrMsbToggles; // bit-23 transitions of the PM timer already reported through TMR_STS
    private bool _sciLevel;
    private Action? _cancelTmrTimer;

    public AcpiPm(MachineModel vm, IIrqLine? sci) : this(vm, DeviceClock.From(vm.Clock), sci) { }

    internal AcpiPm(MachineModel vm, DeviceClock clock, IIrqLine? sci)
    {
        _vm = vm;
        _clock = clock;
        _sci = sci;
        _tmrMsbToggles = PmTicks(_clock.NowNs) >> 23;
    }

    private static long PmTicks(long ns) =>
        ns <= 0 ? 0 : (long)((Int128)ns * PcPlatform.AcpiPmTimerHz / 1_000_000_000);

    private static long PmTicksToNs(long ticks) =>
        (long)(((Int128)ticks * 1_000_000_000 + PcPlatform.AcpiPmTimerHz - 1) / PcPlatform.AcpiPmTimerHz);

    /// <summary>The PM timer value now (24 bits).</summary>
    public uint TimerValue => (uint)(PmTicks(_clock.NowNs) & 0xFF_FFFF);

    /// <summary>
    /// Presses the fixed-feature power button (the FADT leaves PWR_BUTTON clear, so the OS's ACPI button driver
    /// owns it): sets PWRBTN_STS, and SCI stays raised while PWRBTN_EN is set too, until the OS writes 1 to the
    /// status bit. With PWRBTN_EN clear nothing is signalled (the status bit is still visible to a poller).
    /// </summary>
    public void PressPowerButton()
    {
        lock (_lock)
        {
            _pm1Sts |= PwrBtnSts;
            UpdateSci();
        }
    }

    public uint Read(ushort offset, int size)
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            AccountTimerStatus(now);
            // One timer sample per access so the bytes of a 32-bit read agree with each other.
            uint tmr = (uint)(PmTicks(now) & 0xFF_FFFF);
            if (offset == PmTmrOffset && size == 4) return tmr; // the clocksource read: no byte splitting
            return PortBytes.Read(offset, size, PortCount, o => ReadByte(o, tmr));
        }
    }

    public void Write(ushort offset, int size, uint value)
    {
        int slpTyp = -1;
        lock (_lock)
        {
            AccountTimerStatus(_clock.NowNs);
            PortBytes.Write(offset, size, value, PortCount, (o, b) => WriteByte(o, b, ref slpTyp));
            UpdateSci();
        }
        if (slpTyp == PcPlatform.AcpiS5SlpTyp) _vm.RequestPowerEvent(PowerEventKind.PowerOff);
    }

    private byte ReadByte(int o, uint tmr)
    {
        return o switch
        {
            Pm1StsOffset => (byte)_pm1Sts,
            Pm1StsOffset + 1 => (byte)(_pm1Sts >> 8),
            Pm1EnOffset => (byte)_pm1En,
            Pm1EnOffset + 1 => (byte)(_pm1En >> 8),
            Pm1CntOffset => (byte)_pm1Cnt,
            Pm1CntOffset + 1 => (byte)(_pm1Cnt >> 8),
            >= PmTmrOffset and < PmTmrOffset + 4 => (byte)(tmr >> (8 * (o - PmTmrOffset))),
            >= Gpe0StsOffset and < Gpe0StsOffset + 4 => (byte)(_gpe0Sts >> (8 * (o - Gpe0StsOffset))),
            >= Gpe0EnOffset and < Gpe0EnOffset + 4 => (byte)(_gpe0En >> (8 * (o - Gpe0EnOffset))),
            _ => 0xFF,
        };
    }

    private void WriteByte(int o, byte b, ref int slpTyp)
    {
        switch (o)
        {
            case Pm1StsOffset:
                _pm1Sts = (ushort)(_pm1Sts & ~b);
                break;
            case Pm1StsOffset + 1:
                _pm1Sts = (ushort)(_pm1Sts & ~(b << 8));
                break;
            case Pm1EnOffset:
            case Pm1EnOffset + 1:
            {
                int shift = 8 * (o - Pm1EnOffset);
                int v = (_pm1En & ~(0xFF << shift)) | (b << shift);
                _pm1En = (ushort)(v & Pm1EnMask);
                ArmTimerOverflow();
                break;
            }
            case Pm1CntOffset:
            case Pm1CntOffset + 1:
            {
                int shift = 8 * (o - Pm1CntOffset);
                int v = (_pm1Cnt & ~(0xFF << shift)) | (b << shift);
                // SCI_EN is hard-wired; GBL_RLS and SLP_EN are write-only strobes.
                _pm1Cnt = (ushort)((v & ~(GblRls | SlpEn)) | SciEn);
                if ((v & GblRls) != 0) _pm1Sts |= GblSts;
                if ((v & SlpEn) != 0) slpTyp = (v >> SlpTypShift) & 7;
                break;
            }
            case >= Gpe0StsOffset and < Gpe0StsOffset + 4:
                _gpe0Sts &= ~((uint)b << (8 * (o - Gpe0StsOffset)));
                break;
            case >= Gpe0EnOffset and < Gpe0EnOffset + 4:
            {
                int shift = 8 * (o - Gpe0EnOffset);
                _gpe0En = (_gpe0En & ~(0xFFu << shift)) | ((uint)b << shift);
                break;
            }
        }
    }

    /// <summary>TMR_STS is set whenever bit 23 of the PM timer changes (every 2^23 ticks, ~2.34 s).</summary>
    private void AccountTimerStatus(long now)
    {
        long toggles = PmTicks(now) >> 23;
        if (toggles != _tmrMsbToggles)
        {
            _tmrMsbToggles = toggles;
            _pm1Sts |= TmrSts;
        }
    }

    private void ArmTimerOverflow()
    {
        _cancelTmrTimer?.Invoke();
        _cancelTmrTimer = null;
        if ((_pm1En & TmrSts) == 0 || _sci == null) return;
        long next = (_tmrMsbToggles + 1) << 23;
        _cancelTmrTimer = _clock.Schedule(PmTicksToNs(next), OnTimerOverflow);
    }

    private void OnTimerOverflow()
    {
        lock (_lock)
        {
            AccountTimerStatus(_clock.NowNs);
            UpdateSci();
            ArmTimerOverflow();
        }
    }

    /// <summary>Drives SCI (with the lock held so levels reach the line in order).</summary>
    private void UpdateSci()
    {
        bool level = (_pm1Cnt & SciEn) != 0 &&
                     ((_pm1Sts & _pm1En & Pm1EnMask) != 0 || (_gpe0Sts & _gpe0En) != 0);
        if (level == _sciLevel) return;
        _sciLevel = level;
        _sci?.Set(level);
    }
}
