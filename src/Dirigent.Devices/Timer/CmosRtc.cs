using Dirigent.Devices.Misc;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;

namespace Dirigent.Devices.Timer;

/// <summary>
/// Motorola MC146818 real-time clock with 128 bytes of CMOS RAM at ports 0x70 (index; bit 7 = NMI disable) and
/// 0x71 (data). The time registers are computed on every read from the host wall clock plus a guest-settable
/// offset (anchored to <see cref="VirtualClock"/> so seconds tick in step with the other timers), so there is no
/// per-second thread. Register A's UIP bit, register C's flags and the IRQ8 edges all follow from that time.
/// </summary>
public sealed partial class CmosRtc : IPortDevice, IStateful<CmosRtcState>
{
    public const int PortCount = 2;

    // Register indexes (MC146818 datasheet)
    private const int RegSeconds = 0x00, RegSecondsAlarm = 0x01, RegMinutes = 0x02, RegMinutesAlarm = 0x03;
    private const int RegHours = 0x04, RegHoursAlarm = 0x05, RegDayOfWeek = 0x06, RegDayOfMonth = 0x07;
    private const int RegMonth = 0x08, RegYear = 0x09, RegA = 0x0A, RegB = 0x0B, RegC = 0x0C, RegD = 0x0D;
    public const int RegCentury = 0x32;

    private const byte RegAUip = 0x80;
    private const byte RegBSet = 0x80, RegBPie = 0x40, RegBAie = 0x20, RegBUie = 0x10, RegBBinary = 0x04,
        RegB24Hour = 0x02;
    private const byte RegCIrqf = 0x80, RegCPf = 0x40, RegCAf = 0x20, RegCUf = 0x10;
    private const byte RegDVrt = 0x80;

    /// <summary>The update cycle lasts 1984 us; UIP rises 244 us before it begins (datasheet timing).</summary>
    private const long UipLeadTicks = 2_440;
    private const long TicksPerSecond = TimeSpan.TicksPerSecond; // guest time is kept in DateTime ticks (100 ns)
    private const long NsPerSecond = 1_000_000_000;

    private readonly DeviceClock _clock;
    private readonly IIrqLine? _irq;
    private readonly object _lock = new();
    private readonly byte[] _cmos = new byte[128];
    private byte _index;
    private bool _nmiDisabled;

    // Guest time (DateTime ticks, UTC) = _anchorWallTicks + (NowNs - _anchorNs) / 100 + _offsetTicks
    private long _anchorWallTicks;
    private long _anchorNs;
    private long _offsetTicks;

    private bool _frozen;           // SET bit: the time registers hold what the guest writes, the clock stops
    private long _lastEventCheckNs; // virtual ns up to which PF/UF/AF have been accounted
    private bool _irqLevel;
    private Action? _cancelTimer;
    private int _timerGeneration;

    /// <param name="ramBelow4G">RAM below the 4 GiB hole in bytes (reported in CMOS like QEMU's PC does).</param>
    /// <param name="ramAbove4G">RAM mapped above 4 GiB in bytes.</param>
    public CmosRtc(VirtualClock clock, IIrqLine? irq8, ulong ramBelow4G, ulong ramAbove4G = 0)
        : this(DeviceClock.From(clock), irq8, ramBelow4G, ramAbove4G) { }

    internal CmosRtc(DeviceClock clock, IIrqLine? irq8, ulong ramBelow4G, ulong ramAbove4G = 0)
    {
        _clock = clock;
        _irq = irq8;
        _anchorNs = clock.NowNs;
        _anchorWallTicks = DateTime.UtcNow.Ticks;
        _lastEventCheckNs = _anchorNs;
        _cmos[RegA] = 0x26;              // 32.768 kHz time base, 1024 Hz periodic rate
        _cmos[RegB] = RegB24Hour;        // BCD, 24-hour, no interrupts
        _cmos[RegD] = RegDVrt;
        FillMemorySize(ramBelow4G, ramAbove4G);
    }

    private void FillMemorySize(ulong below4G, ulong above4G)
    {
        // Base memory: 640 KiB.
        _cmos[0x15] = 0x80;
        _cmos[0x16] = 0x02;
        // Extended memory above 1 MiB in KiB, capped at 0xFFFF (65 MiB).
        ulong ext = below4G > 0x10_0000 ? (below4G - 0x10_0000) / 1024 : 0;
        if (ext > 0xFFFF) ext = 0xFFFF;
        _cmos[0x17] = _cmos[0x30] = (byte)ext;
        _cmos[0x18] = _cmos[0x31] = (byte)(ext >> 8);
        // Memory above 16 MiB (below 4 GiB) in 64 KiB units.
        ulong hi = below4G > 0x100_0000 ? (below4G - 0x100_0000) / 0x1_0000 : 0;
        if (hi > 0xFFFF) hi = 0xFFFF;
        _cmos[0x34] = (byte)hi;
        _cmos[0x35] = (byte)(hi >> 8);
        // Memory above 4 GiB in 64 KiB units, three bytes.
        ulong top = above4G / 0x1_0000;
        if (top > 0xFF_FFFF) top = 0xFF_FFFF;
        _cmos[0x5B] = (byte)top;
        _cmos[0x5C] = (byte)(top >> 8);
        _cmos[0x5D] = (byte)(top >> 16);
        UpdateChecksum();
    }

    private void UpdateChecksum()
    {
        // The standard checksum covers 0x10-0x2D, stored big-endian at 0x2E-0x2F.
        int sum = 0;
        for (int i = 0x10; i <= 0x2D; i++) sum += _cmos[i];
        _cmos[0x2E] = (byte)(sum >> 8);
        _cmos[0x2F] = (byte)sum;
    }

    /// <summary>
    /// Sets a plain CMOS RAM byte (firmware configuration such as boot order or CPU count) and keeps the
    /// 0x10-0x2D checksum valid. Clock and status registers (0x00-0x0D) are not settable this way.
    /// </summary>
    public void SetCmosByte(int index, byte value)
    {
        if (index is < 0x0E or > 0x7F || index == RegCentury) return;
        lock (_lock)
        {
            _cmos[index] = value;
            if (index is >= 0x10 and <= 0x2D) UpdateChecksum();
        }
    }

    /// <summary>True while the guest holds NMIs off through port 0x70 bit 7 (stored only: we raise no NMIs).</summary>
    public bool NmiDisabled { get { lock (_lock) return _nmiDisabled; } }

    public uint Read(ushort offset, int size)
    {
        uint v = 0xFF;
        if (offset == 1)
        {
            lock (_lock)
            {
                v = ReadRegister(_index, out bool lower);
                if (lower) _irq?.Set(false);
            }
        }
        // The index port is write-only; wider accesses see open bus above the byte.
        return size switch { 2 => v | 0xFF00, 4 => v | 0xFFFF_FF00, _ => v };
    }

    public void Write(ushort offset, int size, uint value)
    {
        if (offset == 0)
        {
            lock (_lock)
            {
                _index = (byte)(value & 0x7F);
                _nmiDisabled = (value & 0x80) != 0;
            }
            return;
        }
        if (offset != 1) return;
        // The line is driven with the lock held so that levels reach the interrupt router in order.
        lock (_lock)
        {
            if (WriteRegister(_index, (byte)value) is bool level) _irq?.Set(level);
        }
    }

    private long GuestTicks(long now) => _anchorWallTicks + (now - _anchorNs) / 100 + _offsetTicks;

    /// <summary>The virtual time at which guest time reaches the given tick count.</summary>
    private long VirtualNsAt(long guestTicks) => _anchorNs + (guestTicks - _anchorWallTicks - _offsetTicks) * 100;

    private DateTime GuestTime(long now) =>
        new(Math.Clamp(GuestTicks(now), 0, DateTime.MaxValue.Ticks), DateTimeKind.Utc);

    private byte ReadRegister(int index, out bool lowerIrq)
    {
        lowerIrq = false;
        long now = _clock.NowNs;
        switch (index)
        {
            case RegSeconds or RegMinutes or RegHours or RegDayOfWeek or RegDayOfMonth or RegMonth or RegYear
                or RegCentury:
                return _frozen ? _cmos[index] : EncodeField(index, GuestTime(now));
            case RegA:
            {
                byte a = (byte)(_cmos[RegA] & 0x7F);
                if (!_frozen && GuestTicks(now) % TicksPerSecond >= TicksPerSecond - UipLeadTicks) a |= RegAUip;
                return a;
            }
            case RegC:
            {
                AccountEvents(now);
                byte c = _cmos[RegC];
                _cmos[RegC] = 0;
                if (_irqLevel) { _irqLevel = false; lowerIrq = true; }
                Reschedule(now);
                return c;
            }
            case RegD:
                return RegDVrt;
            default:
                return _cmos[index];
        }
    }

    /// <returns>The new IRQ level when it changed.</returns>
    private bool? WriteRegister(int index, byte value)
    {
        long now = _clock.NowNs;
        switch (index)
        {
            case RegSeconds or RegMinutes or RegHours or RegDayOfWeek or RegDayOfMonth or RegMonth or RegYear
                or RegCentury:
                if (_frozen) { _cmos[index] = value; return null; }
                // Writing a time register of a running clock sets that field immediately.
                AccountEvents(now);
                SnapshotTime(now);
                _cmos[index] = value;
                CommitTime(now);
                AccountFromNow(now);
                return Reschedule(now);
            case RegA:
                AccountEvents(now);
                _cmos[RegA] = (byte)(value & 0x7F);
                return Reschedule(now);
            case RegB:
            {
                AccountEvents(now);
                byte old = _cmos[RegB];
                if ((value & RegBSet) != 0 && !_frozen)
                {
                    SnapshotTime(now);
                    _frozen = true;
                }
                // SET also clears UIE (datasheet); 12/24 and BCD changes while frozen apply to what is written next.
                if ((value & RegBSet) != 0) value = (byte)(value & ~RegBUie);
                _cmos[RegB] = value;
                if ((old & RegBSet) != 0 && (value & RegBSet) == 0 && _frozen)
                {
                    _frozen = false;
                    CommitTime(now);
                    AccountFromNow(now);
                }
                return Reschedule(now);
            }
            case RegC or RegD:
                return null; // read-only
            default:
                _cmos[index] = value;
                return null;
        }
    }

    private byte ToGuestFormat(int value)
    {
        if ((_cmos[RegB] & RegBBinary) != 0) return (byte)value;
        return (byte)(((value / 10) << 4) | (value % 10));
    }

    private int FromGuestFormat(byte value)
    {
        if ((_cmos[RegB] & RegBBinary) != 0) return value;
        return (value >> 4) * 10 + (value & 0x0F);
    }

    private byte EncodeField(int index, DateTime t)
    {
        switch (index)
        {
            case RegSeconds: return ToGuestFormat(t.Second);
            case RegMinutes: return ToGuestFormat(t.Minute);
            case RegHours:
                if ((_cmos[RegB] & RegB24Hour) != 0) return ToGuestFormat(t.Hour);
                int h12 = t.Hour % 12 == 0 ? 12 : t.Hour % 12;
                return (byte)(ToGuestFormat(h12) | (t.Hour >= 12 ? 0x80 : 0));
            case RegDayOfWeek: return ToGuestFormat((int)t.DayOfWeek + 1);
            case RegDayOfMonth: return ToGuestFormat(t.Day);
            case RegMonth: return ToGuestFormat(t.Month);
            case RegYear: return ToGuestFormat(t.Year % 100);
            default: return ToGuestFormat(t.Year / 100);
        }
    }

    /// <summary>Copies the running time into the time registers (the clock is about to be stopped or edited).</summary>
    private void SnapshotTime(long now)
    {
        var t = GuestTime(now);
        foreach (int r in (ReadOnlySpan<int>)[RegSeconds, RegMinutes, RegHours, RegDayOfWeek, RegDayOfMonth, RegMonth,
                     RegYear, RegCentury])
            _cmos[r] = EncodeField(r, t);
    }

    /// <summary>Restarts the clock from the time registers: the second just written starts now.</summary>
    private void CommitTime(long now)
    {
        int sec = FromGuestFormat(_cmos[RegSeconds]), min = FromGuestFormat(_cmos[RegMinutes]);
        int hour;
        if ((_cmos[RegB] & RegB24Hour) != 0) hour = FromGuestFormat(_cmos[RegHours]);
        else
        {
            byte raw = _cmos[RegHours];
            hour = FromGuestFormat((byte)(raw & 0x7F)) % 12 + ((raw & 0x80) != 0 ? 12 : 0);
        }
        int day = FromGuestFormat(_cmos[RegDayOfMonth]), month = FromGuestFormat(_cmos[RegMonth]);
        int year = FromGuestFormat(_cmos[RegCentury]) * 100 + FromGuestFormat(_cmos[RegYear]);
        if (year < 1 || year > 9999) year = 2000 + year % 100;
        // Nonsense values (a guest writing garbage) clamp into range instead of throwing.
        month = Math.Clamp(month, 1, 12);
        day = Math.Clamp(day, 1, DateTime.DaysInMonth(year, month));
        var t = new DateTime(year, month, day, Math.Clamp(hour, 0, 23), Math.Clamp(min, 0, 59),
            Math.Clamp(sec, 0, 59), DateTimeKind.Utc);
        _offsetTicks = t.Ticks - (_anchorWallTicks + (now - _anchorNs) / 100);
    }

    private void AccountFromNow(long now) => _lastEventCheckNs = now;

    private int PeriodicRate => _cmos[RegA] & 0x0F;

    /// <summary>Periodic interrupt period from register A's rate bits (32.768 kHz time base); 0 = off.</summary>
    private long PeriodicPeriodNs()
    {
        int rs = PeriodicRate;
        if (rs == 0) return 0;
        if (rs <= 2) rs += 7; // rates 1 and 2 alias 8 and 9 with a 32.768 kHz crystal
        return (long)(((Int128)1 << (rs - 1)) * NsPerSecond / 32768);
    }

    /// <summary>Sets PF/UF/AF for whatever happened between the last check and now, and IRQF from the enables.</summary>
    private void AccountEvents(long now)
    {
        long from = _lastEventCheckNs;
        if (now <= from) return;
        _lastEventCheckNs = now;
        long period = PeriodicPeriodNs();
        if (period > 0 && now / period > from / period) _cmos[RegC] |= RegCPf;
        if (!_frozen)
        {
            long g0 = GuestTicks(from), g1 = GuestTicks(now);
            if (g1 / TicksPerSecond > g0 / TicksPerSecond)
            {
                _cmos[RegC] |= RegCUf;
                var t = new DateTime(Math.Clamp(g1 / TicksPerSecond * TicksPerSecond, 0, DateTime.MaxValue.Ticks),
                    DateTimeKind.Utc);
                if (AlarmMatches(t)) _cmos[RegC] |= RegCAf;
            }
        }
        byte b = _cmos[RegB], c = _cmos[RegC];
        if (((c & RegCPf) != 0 && (b & RegBPie) != 0) || ((c & RegCAf) != 0 && (b & RegBAie) != 0) ||
            ((c & RegCUf) != 0 && (b & RegBUie) != 0))
            _cmos[RegC] |= RegCIrqf;
    }

    private bool AlarmMatches(DateTime t)
    {
        // An alarm byte with its two top bits set is "don't care".
        static bool Match(byte alarm, byte now) => (alarm & 0xC0) == 0xC0 || alarm == now;
        return Match(_cmos[RegSecondsAlarm], EncodeField(RegSeconds, t)) &&
               Match(_cmos[RegMinutesAlarm], EncodeField(RegMinutes, t)) &&
               Match(_cmos[RegHoursAlarm], EncodeField(RegHours, t));
    }

    /// <summary>
    /// Re-evaluates the IRQ level and arms a callback at the next event the guest enabled. Returns the new IRQ
    /// level when it changed; the caller drives the line (still holding the lock).
    /// </summary>
    private bool? Reschedule(long now)
    {
        _timerGeneration++;
        _cancelTimer?.Invoke();
        _cancelTimer = null;
        bool? change = null;
        bool want = (_cmos[RegC] & RegCIrqf) != 0;
        if (want != _irqLevel) { _irqLevel = want; change = want; }
        if (_irq == null || want) return change; // IRQF stays set until register C is read: nothing new to raise
        byte b = _cmos[RegB];
        long next = long.MaxValue;
        long period = PeriodicPeriodNs();
        if ((b & RegBPie) != 0 && period > 0) next = (now / period + 1) * period;
        if ((b & (RegBUie | RegBAie)) != 0 && !_frozen)
        {
            long g = GuestTicks(now);
            next = Math.Min(next, Math.Max(now + 1, VirtualNsAt((g / TicksPerSecond + 1) * TicksPerSecond)));
        }
        if (next == long.MaxValue) return change;
        int gen = _timerGeneration;
        _cancelTimer = _clock.Schedule(next, () => OnTimer(gen));
        return change;
    }

    private void OnTimer(int generation)
    {
        lock (_lock)
        {
            if (generation != _timerGeneration) return;
            long now = _clock.NowNs;
            AccountEvents(now);
            if (Reschedule(now) is bool level) _irq?.Set(level);
        }
    }
}
