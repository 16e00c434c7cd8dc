using System.Numerics;
using Dirigent.Devices.Misc;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;

namespace Dirigent.Devices.Interrupts;

/// <summary>
/// One vCPU's xAPIC (Intel SDM vol.3 ch.11): the 4 KiB register page, interrupt acceptance with IRR/ISR/TMR and
/// task/processor priority, EOI (broadcast to the IOAPICs for level-triggered vectors), IPIs through the ICR,
/// the local vector table with LINT0 as the 8259's virtual wire, and the timer (one-shot, periodic, TSC-deadline)
/// driven by the <see cref="VirtualClock"/>. The vCPU pulls interrupts through <see cref="IInterruptController"/>.
/// </summary>
public sealed partial class LocalApic : IInterruptController, IMmioDevice, ILocalApicRegisters, IStateful<LocalApicState>
{
    /// <summary>The clock the divided timer counts (KVM uses the same 1 GHz).</summary>
    public const long TimerHz = 1_000_000_000;
    /// <summary>Periodic timers faster than this are slowed to it, so a guest cannot flood the host.</summary>
    public const long MinPeriodicNs = 100_000;
    /// <summary>Version register: integrated APIC (0x14), max LVT entry 5 (six LVTs), no EOI-broadcast suppression.</summary>
    public const uint VersionValue = 0x0005_0014;

    // Register offsets (SDM table 11-1)
    public const int RegId = 0x20, RegVersion = 0x30, RegTpr = 0x80, RegApr = 0x90, RegPpr = 0xA0, RegEoi = 0xB0,
        RegRrd = 0xC0, RegLdr = 0xD0, RegDfr = 0xE0, RegSvr = 0xF0, RegIsr = 0x100, RegTmr = 0x180, RegIrr = 0x200,
        RegEsr = 0x280, RegIcrLow = 0x300, RegIcrHigh = 0x310, RegLvtTimer = 0x320, RegLvtThermal = 0x330,
        RegLvtPerf = 0x340, RegLvtLint0 = 0x350, RegLvtLint1 = 0x360, RegLvtError = 0x370, RegTimerInitial = 0x380,
        RegTimerCurrent = 0x390, RegTimerDivide = 0x3E0;

    private const int LvtTimer = 0, LvtThermal = 1, LvtPerf = 2, LvtLint0 = 3, LvtLint1 = 4, LvtError = 5;
    private static readonly uint[] LvtWritable = [0x700FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF];
    private const uint LvtMasked = 1u << 16, LvtLevel = 1u << 15;
    private const uint SvrEnable = 1u << 8;
    private const uint EsrSendIllegalVector = 1u << 5, EsrReceiveIllegalVector = 1u << 6;
    private const int TimerOneShot = 0, TimerPeriodic = 1, TimerTscDeadline = 2;

    private readonly object _lock = new();
    private readonly DeviceClock _clock;
    private readonly ulong _tscHz;
    private readonly IApicBus? _bus;

    // Register state
    private uint _id, _tpr, _ldr, _dfr, _svr, _esr, _esrPending, _icrLow, _icrHigh, _timerInitial, _timerDivide;
    private readonly uint[] _lvt = new uint[6];
    private readonly ulong[] _irr = new ulong[4], _isr = new ulong[4], _tmr = new ulong[4];
    private readonly bool[] _lintLevel = new bool[2];
    private bool _extIntPending;

    // Timer state: the count is derived from the clock, never decremented.
    private bool _timerArmed;
    private long _timerStartNs, _timerPeriodNs;
    private ulong _tscDeadline;
    private int _timerGen;
    private Action? _cancelTimer;

    /// <summary>The vCPU index this APIC belongs to; its power-on APIC ID.</summary>
    public int Index { get; }

    /// <summary>Set by the vCPU: called (outside the APIC's lock) whenever an interrupt may have become pending.</summary>
    public Action? Kick { get; set; }
    /// <summary>An NMI for this vCPU (LINT1, NMI IPI, IOAPIC NMI entry): hook to the vCPU's InjectNmi.</summary>
    public Action? OnNmi { get; set; }
    /// <summary>This APIC received INIT (asserted): (its APIC ID, vector). The APIC has already reset itself.</summary>
    public Action<int, int>? OnInitIpi { get; set; }
    /// <summary>This APIC received STARTUP: (its APIC ID, vector); the AP starts at vector * 0x1000.</summary>
    public Action<int, int>? OnStartupIpi { get; set; }
    /// <summary>The INTA cycle of the 8259 behind LINT0 / ExtINT messages: returns the vector.</summary>
    public Func<int>? ExtIntAcknowledge { get; set; }

    /// <param name="index">vCPU index, also the APIC ID; APIC 0 is the BSP.</param>
    /// <param name="tscHz">The guest TSC frequency (TSC = VirtualClock.NowNs * tscHz / 1e9), for TSC-deadline mode.</param>
    /// <param name="bus">Where IPIs and EOI broadcasts go; without one, only self-IPIs are delivered.</param>
    public LocalApic(int index, VirtualClock clock, ulong tscHz, IApicBus? bus = null)
        : this(index, DeviceClock.From(clock), tscHz, bus) { }

    internal LocalApic(int index, DeviceClock clock, ulong tscHz, IApicBus? bus = null)
    {
        Index = index;
        _clock = clock;
        _tscHz = tscHz;
        _bus = bus;
        Reset();
    }

    public int ApicId { get { lock (_lock) return (int)(_id >> 24); } }
    public bool SoftwareEnabled { get { lock (_lock) return (_svr & SvrEnable) != 0; } }

    /// <summary>The task priority register; CR8 is TPR[7:4] in 64-bit mode.</summary>
    public uint Tpr
    {
        get { lock (_lock) return _tpr; }
        set { lock (_lock) _tpr = value & 0xFF; KickIfPending(); }
    }

    /// <summary>Power-on (or system reset) state; APIC 0 gets LINT0 = ExtINT and LINT1 = NMI as PC firmware leaves them.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _id = (uint)Index << 24;
            ResetLocked();
            if (Index == 0)
            {
                _lvt[LvtLint0] = (uint)ApicDeliveryMode.ExtInt << 8;
                _lvt[LvtLint1] = (uint)ApicDeliveryMode.Nmi << 8;
            }
        }
    }

    // Must hold _lock. The INIT state: everything but the APIC ID.
    private void ResetLocked()
    {
        StopTimerLocked();
        _tpr = 0; _ldr = 0; _dfr = 0xFFFF_FFFF; _svr = 0xFF; _esr = 0; _esrPending = 0;
        _icrLow = 0; _icrHigh = 0; _timerInitial = 0; _timerDivide = 0; _tscDeadline = 0;
        for (int i = 0; i < _lvt.Length; i++) _lvt[i] = LvtMasked;
        Array.Clear(_irr); Array.Clear(_isr); Array.Clear(_tmr);
        _extIntPending = false;
    }

    // ---------------- priorities ----------------

    private static int Highest(ulong[] bits)
    {
        for (int k = 3; k >= 0; k--)
            if (bits[k] != 0) return k * 64 + 63 - BitOperations.LeadingZeroCount(bits[k]);
        return -1;
    }

    private static bool Test(ulong[] bits, int v) => (bits[v >> 6] & (1UL << (v & 63))) != 0;
    private static void Set(ulong[] bits, int v) => bits[v >> 6] |= 1UL << (v & 63);
    private static void Clear(ulong[] bits, int v) => bits[v >> 6] &= ~(1UL << (v & 63));

    // SDM 11.8.3.1
    private uint PprLocked()
    {
        uint isrv = (uint)Math.Max(Highest(_isr), 0);
        return (_tpr & 0xF0) >= (isrv & 0xF0) ? _tpr : isrv & 0xF0;
    }

    // SDM 11.6.2.4 (used for lowest-priority arbitration)
    private uint AprLocked()
    {
        uint isrv = (uint)Math.Max(Highest(_isr), 0), irrv = (uint)Math.Max(Highest(_irr), 0);
        uint tpr = _tpr & 0xF0;
        if (tpr >= (irrv & 0xF0) && tpr > (isrv & 0xF0)) return _tpr;
        return Math.Max(tpr, Math.Max(isrv & 0xF0, irrv & 0xF0));
    }

    internal uint ArbitrationPriority { get { lock (_lock) return AprLocked(); } }

    private bool ExtIntPendingLocked()
    {
        uint lint0 = _lvt[LvtLint0];
        return _extIntPending || (_lintLevel[0] && (lint0 & LvtMasked) == 0 && ((lint0 >> 8) & 7) == (uint)ApicDeliveryMode.ExtInt);
    }

    private bool HasPendingLocked()
    {
        if (ExtIntPendingLocked()) return true;
        int v = Highest(_irr);
        return v >= 0 && (v & 0xF0) > (PprLocked() & 0xF0);
    }

    private void KickIfPending()
    {
        bool pending;
        lock (_lock) pending = HasPendingLocked();
        if (pending) Kick?.Invoke();
    }

    // ---------------- IInterruptController ----------------

    public bool HasPendingInterrupt { get { lock (_lock) return HasPendingLocked(); } }

    public int AcknowledgeInterrupt()
    {
        int vector;
        lock (_lock)
        {
            if (ExtIntPendingLocked())
            {
                // The 8259 supplies the vector; ExtINT bypasses IRR/ISR and priorities.
                _extIntPending = false;
                vector = -2;
            }
            else
            {
                int v = Highest(_irr);
                if (v < 0) return -1;
                // Raised TPR between signalling and INTA: the APIC answers with the spurious vector (SDM 11.9).
                if ((v & 0xF0) <= (PprLocked() & 0xF0)) return (int)(_svr & 0xFF);
                Clear(_irr, v);
                Set(_isr, v);
                vector = v;
            }
        }
        if (vector == -2) vector = ExtIntAcknowledge?.Invoke() ?? -1;
        KickIfPending();
        return vector;
    }

    // ---------------- acceptance ----------------

    // Must hold _lock. Returns true when an interrupt became pending in the IRR.
    private bool RaiseLocked(int vector, bool level)
    {
        if (vector < 16) { ErrorLocked(EsrReceiveIllegalVector); return false; }
        Set(_irr, vector);
        if (level) Set(_tmr, vector); else Clear(_tmr, vector);
        return true;
    }

    // Must hold _lock. Records an error and raises the error LVT if unmasked.
    private void ErrorLocked(uint bits)
    {
        _esrPending |= bits;
        uint lvt = _lvt[LvtError];
        int v = (int)(lvt & 0xFF);
        if ((lvt & LvtMasked) == 0 && v >= 16) { Set(_irr, v); Clear(_tmr, v); }
    }

    /// <summary>A message from the APIC bus addressed to this APIC; false when it was refused.</summary>
    internal bool Accept(in ApicMessage m)
    {
        switch (m.Mode)
        {
            case ApicDeliveryMode.Fixed:
            case ApicDeliveryMode.LowestPriority:
                lock (_lock)
                {
                    // A software-disabled APIC answers only INIT, NMI, SMI and STARTUP (SDM 11.4.7.2).
                    if ((_svr & SvrEnable) == 0) return false;
                    if (!RaiseLocked(m.Vector, m.LevelTriggered)) return false;
                }
                KickIfPending();
                break;
            case ApicDeliveryMode.Nmi:
                OnNmi?.Invoke();
                break;
            case ApicDeliveryMode.Init:
                // INIT level de-assert only resynchronises arbitration IDs.
                if (m.LevelTriggered && !m.Assert) return false;
                int id;
                lock (_lock) { ResetLocked(); id = (int)(_id >> 24); }
                OnInitIpi?.Invoke(id, m.Vector);
                break;
            case ApicDeliveryMode.Startup:
                OnStartupIpi?.Invoke(ApicId, m.Vector);
                break;
            case ApicDeliveryMode.ExtInt:
                lock (_lock) _extIntPending = true;
                Kick?.Invoke();
                break;
            default:
                return false;
        }
        return true;
    }

    /// <summary>Whether a non-shorthand message with this destination addresses this APIC (SDM 11.6.2).</summary>
    internal bool MatchesDestination(bool logical, byte dest)
    {
        lock (_lock)
        {
            if (!logical) return dest == 0xFF || dest == (byte)(_id >> 24);
            uint ldr = _ldr >> 24;
            if ((_dfr >> 28) == 0xF) return (ldr & dest) != 0; // flat model
            // Cluster model: high nibble selects the cluster (15 = all), low nibble the members.
            return ((dest >> 4) == 0xF || (dest >> 4) == (ldr >> 4)) && (dest & ldr & 0xF) != 0;
        }
    }

    /// <summary>Drives the LINT0 (0) or LINT1 (1) pin: LINT0 is the 8259's INTR, LINT1 the NMI line.</summary>
    public void SetLint(int pin, bool level)
    {
        if ((uint)pin > 1) return;
        bool nmi = false;
        lock (_lock)
        {
            bool rising = level && !_lintLevel[pin];
            _lintLevel[pin] = level;
            uint lvt = _lvt[LvtLint0 + pin];
            // ExtINT needs no latch: it is pending for as long as the line is high (see ExtIntPendingLocked).
            if (rising && (lvt & LvtMasked) == 0)
            {
                var mode = (ApicDeliveryMode)((lvt >> 8) & 7);
                if (mode == ApicDeliveryMode.Fixed) RaiseLocked((int)(lvt & 0xFF), (lvt & LvtLevel) != 0);
                else if (mode == ApicDeliveryMode.Nmi) nmi = true;
            }
        }
        if (nmi) OnNmi?.Invoke();
        KickIfPending();
    }

    // ---------------- timer ----------------

    private int TimerModeLocked => (int)((_lvt[LvtTimer] >> 17) & 3);

    private long DivisorLocked
    {
        get
        {
            uint v = ((_timerDivide >> 1) & 4) | (_timerDivide & 3);
            return v == 7 ? 1 : 2L << (int)v;
        }
    }

    private void StopTimerLocked()
    {
        _cancelTimer?.Invoke();
        _cancelTimer = null;
        _timerArmed = false;
        _timerGen++;
    }

    private void ScheduleLocked(long deadlineNs)
    {
        int gen = _timerGen;
        _cancelTimer = _clock.Schedule(deadlineNs, () => TimerExpired(gen));
    }

    private void StartCountLocked(uint count)
    {
        // In TSC-deadline mode the initial-count register ignores writes (SDM 11.5.4.1).
        if (TimerModeLocked == TimerTscDeadline) return;
        StopTimerLocked();
        _timerInitial = count;
        if (count == 0) return;
        long ns = CountToNsLocked(count);
        if (TimerModeLocked == TimerPeriodic) ns = Math.Max(ns, MinPeriodicNs);
        _timerPeriodNs = Math.Max(ns, 1);
        _timerStartNs = _clock.NowNs;
        _timerArmed = true;
        ScheduleLocked(_timerStartNs + _timerPeriodNs);
    }

    private long CountToNsLocked(long count) => (long)((Int128)count * DivisorLocked * 1_000_000_000 / TimerHz);

    // A new divisor while counting keeps the current count and runs the rest (and later periods) at the new rate.
    private void SetDivideLocked(uint value)
    {
        if (value == _timerDivide) return;
        if (!_timerArmed || TimerModeLocked == TimerTscDeadline) { _timerDivide = value; return; }
        uint current = CurrentCountLocked();
        _timerDivide = value;
        _cancelTimer?.Invoke();
        _timerGen++;
        long period = CountToNsLocked(_timerInitial);
        if (TimerModeLocked == TimerPeriodic) period = Math.Max(period, MinPeriodicNs);
        _timerPeriodNs = Math.Max(period, 1);
        long now = _clock.NowNs;
        _timerStartNs = now - (long)((Int128)(_timerInitial - current) * _timerPeriodNs / Math.Max(_timerInitial, 1u));
        ScheduleLocked(_timerStartNs + _timerPeriodNs);
    }

    private uint CurrentCountLocked()
    {
        if (!_timerArmed || TimerModeLocked == TimerTscDeadline || _timerPeriodNs <= 0) return 0;
        long elapsed = _clock.NowNs - _timerStartNs;
        if (TimerModeLocked == TimerPeriodic) elapsed %= _timerPeriodNs;
        else if (elapsed >= _timerPeriodNs) return 0;
        return (uint)((Int128)_timerInitial * (_timerPeriodNs - elapsed) / _timerPeriodNs);
    }

    private void TimerExpired(int gen)
    {
        lock (_lock)
        {
            if (gen != _timerGen || !_timerArmed) return;
            switch (TimerModeLocked)
            {
                case TimerPeriodic:
                {
                    // Expiries missed while the host lagged coalesce into one, as they would in the IRR.
                    long now = _clock.NowNs;
                    long n = (now - _timerStartNs) / _timerPeriodNs + 1;
                    ScheduleLocked(_timerStartNs + n * _timerPeriodNs);
                    break;
                }
                case TimerTscDeadline:
                    _tscDeadline = 0;
                    _timerArmed = false;
                    break;
                default:
                    _timerArmed = false;
                    break;
            }
            uint lvt = _lvt[LvtTimer];
            if ((lvt & LvtMasked) != 0) return;
            RaiseLocked((int)(lvt & 0xFF), false);
        }
        KickIfPending();
    }

    /// <summary>
    /// Guest write of IA32_TSC_DEADLINE (ignored unless the timer is in TSC-deadline mode; 0 disarms).
    /// <paramref name="tscOffset"/> is what the vCPU adds to the clock-derived TSC (a guest write of IA32_TSC).
    /// </summary>
    public void WriteTscDeadline(ulong tsc, long tscOffset = 0)
    {
        lock (_lock)
        {
            if (TimerModeLocked != TimerTscDeadline) return;
            ArmTscDeadlineLocked(tsc, tscOffset);
        }
    }

    // Must hold _lock, in TSC-deadline mode.
    private void ArmTscDeadlineLocked(ulong tsc, long tscOffset)
    {
        StopTimerLocked();
        _tscDeadline = tsc;
        if (tsc == 0) return;
        _timerArmed = true;
        // A deadline the offset puts before the clock's epoch is simply due now.
        ulong clockTsc = tscOffset >= 0 ? (tsc > (ulong)tscOffset ? tsc - (ulong)tscOffset : 0) : tsc + (ulong)-tscOffset;
        UInt128 ns = (UInt128)clockTsc * 1_000_000_000UL / _tscHz;
        ScheduleLocked(ns > long.MaxValue ? long.MaxValue : (long)ns);
    }

    /// <summary>Guest read of IA32_TSC_DEADLINE: the armed deadline, 0 once it fired or outside TSC-deadline mode.</summary>
    public ulong ReadTscDeadline()
    {
        lock (_lock) return TimerModeLocked == TimerTscDeadline ? _tscDeadline : 0;
    }

    // ---------------- registers ----------------

    private uint ReadRegisterLocked(int reg)
    {
        switch (reg)
        {
            case RegId: return _id;
            case RegVersion: return VersionValue;
            case RegTpr: return _tpr;
            case RegApr: return AprLocked();
            case RegPpr: return PprLocked();
            case RegLdr: return _ldr;
            case RegDfr: return _dfr;
            case RegSvr: return _svr;
            case RegEsr: return _esr;
            case RegIcrLow: return _icrLow;
            case RegIcrHigh: return _icrHigh;
            case RegTimerInitial: return _timerInitial;
            case RegTimerCurrent: return CurrentCountLocked();
            case RegTimerDivide: return _timerDivide;
        }
        if (reg is >= RegLvtTimer and <= RegLvtError) return _lvt[(reg - RegLvtTimer) >> 4];
        if (reg is >= RegIsr and < RegIrr + 0x80)
        {
            var bits = reg < RegTmr ? _isr : reg < RegIrr ? _tmr : _irr;
            int i = ((reg - RegIsr) >> 4) & 7;
            return (uint)(bits[i >> 1] >> (32 * (i & 1)));
        }
        return 0;
    }

    public ulong Read(ulong offset, int size)
    {
        if (offset >= 0x1000 || (offset & 0xF) >= 4) return 0;
        uint v;
        lock (_lock) v = ReadRegisterLocked((int)(offset & 0xFF0));
        v >>= (int)(8 * (offset & 3));
        return size >= 4 ? v : v & ((1u << (size * 8)) - 1);
    }

    public void Write(ulong offset, int size, ulong value)
    {
        // The SDM requires aligned 32-bit accesses; anything else is dropped.
        if (offset >= 0x1000 || (offset & 0xF) != 0 || size < 4) return;
        WriteRegister((int)offset, (uint)value);
    }

    private void WriteRegister(int reg, uint value)
    {
        ApicMessage? ipi = null;
        int eoiVector = -1;
        lock (_lock)
        {
            switch (reg)
            {
                case RegId: _id = value & 0xFF00_0000; break;
                case RegTpr: _tpr = value & 0xFF; break;
                case RegEoi:
                {
                    int v = Highest(_isr);
                    if (v < 0) break;
                    Clear(_isr, v);
                    if (Test(_tmr, v)) eoiVector = v;
                    break;
                }
                case RegLdr: _ldr = value & 0xFF00_0000; break;
                case RegDfr: _dfr = value | 0x0FFF_FFFF; break;
                case RegSvr:
                    _svr = value & 0x3FF;
                    if ((_svr & SvrEnable) == 0)
                        for (int i = 0; i < _lvt.Length; i++) _lvt[i] |= LvtMasked;
                    break;
                case RegEsr: _esr = _esrPending; _esrPending = 0; break;
                case RegIcrHigh: _icrHigh = value & 0xFF00_0000; break;
                case RegIcrLow:
                    _icrLow = value & 0x000C_CFFF;
                    ipi = IpiLocked();
                    break;
                case RegTimerInitial: StartCountLocked(value); break;
                case RegTimerDivide: SetDivideLocked(value & 0xB); break;
                case >= RegLvtTimer and <= RegLvtError when (reg & 0xF) == 0:
                    WriteLvtLocked((reg - RegLvtTimer) >> 4, value);
                    break;
            }
        }
        if (ipi is { } m)
        {
            if (_bus != null) _bus.Deliver(m, this);
            else if (m.Shorthand is ApicShorthand.Self or ApicShorthand.AllIncludingSelf
                     || (m.Shorthand == ApicShorthand.None && MatchesDestination(m.LogicalDestination, m.Destination)))
                Accept(m);
        }
        if (eoiVector >= 0) _bus?.BroadcastEoi(eoiVector);
        KickIfPending();
    }

    private void WriteLvtLocked(int index, uint value)
    {
        value &= LvtWritable[index];
        if ((_svr & SvrEnable) == 0) value |= LvtMasked;
        if (index == LvtTimer)
        {
            int oldMode = TimerModeLocked, newMode = (int)((value >> 17) & 3);
            if ((oldMode == TimerTscDeadline) != (newMode == TimerTscDeadline))
            {
                // Entering or leaving TSC-deadline mode disarms the timer (SDM 11.5.4.1).
                StopTimerLocked();
                _timerInitial = 0;
                _tscDeadline = 0;
            }
        }
        _lvt[index] = value;
    }

    // Must hold _lock. Turns the ICR into a bus message, or null when it is invalid.
    private ApicMessage? IpiLocked()
    {
        var mode = (ApicDeliveryMode)((_icrLow >> 8) & 7);
        var msg = new ApicMessage(
            Vector: (byte)_icrLow,
            Mode: mode,
            LogicalDestination: (_icrLow & (1u << 11)) != 0,
            Destination: (byte)(_icrHigh >> 24),
            LevelTriggered: (_icrLow & (1u << 15)) != 0,
            Assert: (_icrLow & (1u << 14)) != 0,
            Shorthand: (ApicShorthand)((_icrLow >> 18) & 3));
        if (mode is not (ApicDeliveryMode.Fixed or ApicDeliveryMode.LowestPriority or ApicDeliveryMode.Nmi
            or ApicDeliveryMode.Init or ApicDeliveryMode.Startup))
            return null; // SMI is not modelled; 3 and 7 are reserved in the ICR
        if (mode is ApicDeliveryMode.Fixed or ApicDeliveryMode.LowestPriority && msg.Vector < 16)
        {
            ErrorLocked(EsrSendIllegalVector);
            return null;
        }
        // Fixed IPIs are edge-triggered on the wire whatever the trigger bit says; only INIT uses the level bits.
        if (mode != ApicDeliveryMode.Init) msg = msg with { LevelTriggered = false, Assert = true };
        return msg;
    }
}
