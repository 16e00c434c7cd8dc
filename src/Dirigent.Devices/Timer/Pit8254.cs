using Dirigent.Devices.Misc;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;

namespace Dirigent.Devices.Timer;

/// <summary>
/// Intel 8254 programmable interval timer at ports 0x40-0x43 (counters 0-2 and the control word register).
/// Counters are not decremented by a thread: each counter remembers when its count was loaded and derives the
/// current count and OUT level from <see cref="VirtualClock.NowNs"/> at the 1.193182 MHz input clock, so polling
/// loops (Linux's PIT TSC calibration) see real elapsed time. Counter 0's OUT drives IRQ0 through timer callbacks
/// at the computed edge times; counter 2's GATE and OUT are reached through port 0x61
/// (<see cref="SystemControlPortB"/>), whose writable bits are kept here so that <see cref="PitState"/> carries
/// the speaker-data bit with the counters (the accelerator-neutral record KVM's in-kernel PIT also fills).
/// </summary>
public sealed partial class Pit8254 : IPortDevice, IStateful<PitState>
{
    public const long InputHz = 1_193_182;
    public const int PortCount = 4;

    private readonly DeviceClock _clock;
    private readonly IIrqLine? _irq0;
    private readonly object _lock = new();
    private readonly Counter[] _counters = [new(), new(), new()];
    private Action? _cancelIrqTimer;
    private int _irqGeneration;
    /// <summary>Port 0x61 bits 0-3 as written (bit 0 is counter 2's GATE, bit 1 the speaker data enable).</summary>
    private byte _portBControl;

    private sealed class Counter
    {
        public int Mode;            // 0..5 (6/7 alias 2/3)
        public int ReadWrite = 3;   // RW bits: 1 = LSB, 2 = MSB, 3 = LSB then MSB
        public bool Bcd;            // stored and reported in status; counting stays binary
        public long Reload;         // initial count, 1..65536 (a written 0 means 65536)
        public bool Loaded;         // a count has been written since the last control word
        public long StartNs;        // when counting (re)started from Reload
        public bool Gate = true;
        public bool Halted;         // GATE low stops counting (modes 0, 2, 3, 4)
        public long HaltedTicks;    // elapsed ticks frozen while halted
        public bool Triggered;      // modes 1 and 5: a GATE rising edge started the count
        public bool WriteMsbNext;
        public byte WriteLsb;
        public bool ReadMsbNext;
        public bool CountLatched;
        public ushort LatchedCount;
        public bool LatchMsbNext;
        public bool StatusLatched;
        public byte LatchedStatus;
        public bool NullCount = true;
        public bool Irq0Raised;     // mode 0: the terminal-count level is already on the line
    }

    public Pit8254(VirtualClock clock, IIrqLine? irq0) : this(DeviceClock.From(clock), irq0) { }

    internal Pit8254(DeviceClock clock, IIrqLine? irq0)
    {
        _clock = clock;
        _irq0 = irq0;
        // Power-on state is undefined; the BIOS leaves counter 0 in mode 3 at 18.2 Hz and Linux reprograms it.
        // We start with every counter idle (no count loaded) so nothing fires until the guest programs it.
        // Counter 2's GATE follows port 0x61 bit 0, which powers on clear (KVM's PIT starts it low too).
        _counters[2].Gate = false;
    }

    public static long NsToTicks(long ns) => ns <= 0 ? 0 : (long)((Int128)ns * InputHz / 1_000_000_000);
    public static long TicksToNs(long ticks) => (long)(((Int128)ticks * 1_000_000_000 + InputHz - 1) / InputHz);

    // Byte accesses (all a driver does) skip the splitting helper: calibration loops poll these ports hard.
    public uint Read(ushort offset, int size) =>
        size == 1 && offset < PortCount ? ReadByte(offset) : PortBytes.Read(offset, size, PortCount, ReadByte);

    public void Write(ushort offset, int size, uint value)
    {
        if (size == 1 && offset < PortCount) WriteByte(offset, (byte)value);
        else PortBytes.Write(offset, size, value, PortCount, WriteByte);
    }

    private byte ReadByte(int offset)
    {
        if (offset == 3) return 0xFF; // the control word register is write-only
        lock (_lock)
        {
            var c = _counters[offset];
            long now = _clock.NowNs;
            if (c.StatusLatched)
            {
                c.StatusLatched = false;
                return c.LatchedStatus;
            }
            if (c.CountLatched)
            {
                byte b;
                switch (c.ReadWrite)
                {
                    case 1: b = (byte)c.LatchedCount; c.CountLatched = false; break;
                    case 2: b = (byte)(c.LatchedCount >> 8); c.CountLatched = false; break;
                    default:
                        if (!c.LatchMsbNext) { b = (byte)c.LatchedCount; c.LatchMsbNext = true; }
                        else { b = (byte)(c.LatchedCount >> 8); c.LatchMsbNext = false; c.CountLatched = false; }
                        break;
                }
                return b;
            }
            int count = CurrentCount(c, now);
            switch (c.ReadWrite)
            {
                case 1: return (byte)count;
                case 2: return (byte)(count >> 8);
                default:
                    byte r = c.ReadMsbNext ? (byte)(count >> 8) : (byte)count;
                    c.ReadMsbNext = !c.ReadMsbNext;
                    return r;
            }
        }
    }

    private void WriteByte(int offset, byte value)
    {
        // The line is driven with the lock held so that levels reach the interrupt router in order.
        lock (_lock)
        {
            long now = _clock.NowNs;
            var irqAction = offset == 3 ? WriteControl(value, now) : WriteCount(offset, value, now);
            irqAction?.Invoke();
        }
    }

    private Action? WriteControl(byte value, long now)
    {
        int sc = value >> 6;
        if (sc == 3)
        {
            // Read-back command: bit 5 low latches counts, bit 4 low latches status, bits 3..1 select counters.
            for (int i = 0; i < 3; i++)
            {
                if ((value & (2 << i)) == 0) continue;
                var c = _counters[i];
                if ((value & 0x20) == 0) LatchCount(c, now);
                if ((value & 0x10) == 0 && !c.StatusLatched)
                {
                    c.StatusLatched = true;
                    c.LatchedStatus = (byte)((Out(c, now) ? 0x80 : 0) | (c.NullCount ? 0x40 : 0) |
                                             (c.ReadWrite << 4) | (c.Mode << 1) | (c.Bcd ? 1 : 0));
                }
            }
            return null;
        }
        var ch = _counters[sc];
        int rw = (value >> 4) & 3;
        if (rw == 0)
        {
            LatchCount(ch, now);
            return null;
        }
        int mode = (value >> 1) & 7;
        if (mode > 5) mode -= 4;
        ch.ReadWrite = rw;
        ch.Mode = mode;
        ch.Bcd = (value & 1) != 0;
        ch.Loaded = false;
        ch.Triggered = false;
        ch.Halted = false;
        ch.NullCount = true;
        ch.WriteMsbNext = false;
        ch.ReadMsbNext = false;
        ch.CountLatched = false;
        ch.StatusLatched = false;
        if (sc != 0) return null;
        // Writing the control word sets OUT low in mode 0 and high otherwise; our IRQ0 line idles low between the
        // pulses of the periodic modes, so every reprogramming starts from a low line.
        CancelIrqTimer();
        ch.Irq0Raised = false;
        var irq = _irq0;
        return irq == null ? null : () => irq.Set(false);
    }

    private Action? WriteCount(int index, byte value, long now)
    {
        var c = _counters[index];
        long count;
        switch (c.ReadWrite)
        {
            case 1: count = value; break;
            case 2: count = value << 8; break;
            default:
                if (!c.WriteMsbNext) { c.WriteLsb = value; c.WriteMsbNext = true; return null; }
                c.WriteMsbNext = false;
                count = c.WriteLsb | (value << 8);
                break;
        }
        c.Reload = count == 0 ? 0x10000 : count;
        c.Loaded = true;
        c.NullCount = false;
        if (c.Mode is 1 or 5)
        {
            // Hardware-triggered modes wait for a GATE rising edge; the new count applies at the next trigger.
        }
        else
        {
            c.StartNs = now;
            c.Halted = !c.Gate;
            c.HaltedTicks = 0;
        }
        if (index != 0) return null;
        bool wasRaised = c.Irq0Raised;
        c.Irq0Raised = false;
        ScheduleIrq(now);
        var irq = _irq0;
        // Mode 0 drops OUT while a new count is loaded, so a second terminal count can raise a fresh edge.
        return irq != null && wasRaised ? () => irq.Set(false) : null;
    }

    private void LatchCount(Counter c, long now)
    {
        if (c.CountLatched) return; // a second latch before the first is read is ignored
        c.CountLatched = true;
        c.LatchMsbNext = false;
        c.LatchedCount = (ushort)CurrentCount(c, now);
    }

    /// <summary>Sets a counter's GATE input (counter 2: port 0x61 bit 0; counters 0 and 1 are tied high).</summary>
    public void SetGate(int counter, bool level)
    {
        if ((uint)counter > 2) return;
        lock (_lock)
        {
            var c = _counters[counter];
            if (c.Gate == level) return;
            long now = _clock.NowNs;
            c.Gate = level;
            if (!c.Loaded) return;
            switch (c.Mode)
            {
                case 0:
                case 4:
                    if (!level) { c.HaltedTicks = Elapsed(c, now); c.Halted = true; }
                    else if (c.Halted) { c.StartNs = now - TicksToNs(c.HaltedTicks); c.Halted = false; }
                    break;
                case 2:
                case 3:
                    // GATE low forces OUT high and stops counting; the rising edge reloads the count.
                    if (!level) { c.Halted = true; c.HaltedTicks = 0; }
                    else { c.Halted = false; c.StartNs = now; }
                    break;
                default:
                    if (level) { c.Triggered = true; c.StartNs = now; }
                    break;
            }
            if (counter == 0) ScheduleIrq(now);
        }
    }

    /// <summary>The OUT pin of a counter now (counter 2 shows up in port 0x61 bit 5).</summary>
    public bool GetOut(int counter)
    {
        if ((uint)counter > 2) return false;
        lock (_lock) return Out(_counters[counter], _clock.NowNs);
    }

    internal DeviceClock Clock => _clock;

    public bool GetGate(int counter)
    {
        if ((uint)counter > 2) return false;
        lock (_lock) return _counters[counter].Gate;
    }

    private static long Elapsed(Counter c, long now) => c.Halted ? c.HaltedTicks : NsToTicks(now - c.StartNs);

    private static int CurrentCount(Counter c, long now)
    {
        if (!c.Loaded) return 0;
        long n = c.Reload;
        long d = Elapsed(c, now);
        switch (c.Mode)
        {
            case 0:
            case 4:
                return (int)((n - d) & 0xFFFF);
            case 1:
            case 5:
                return c.Triggered ? (int)((n - d) & 0xFFFF) : (int)(n & 0xFFFF);
            case 2:
                return (int)((n - d % n) & 0xFFFF);
            default:
            {
                // Mode 3 decrements by two: each half period counts down from the (even) reload value.
                long p = d % n;
                long high = (n + 1) / 2;
                long even = n & ~1L;
                long v = p < high ? even - 2 * p : even - 2 * (p - high);
                if (v <= 0) v += even == 0 ? 2 : even;
                return (int)(v & 0xFFFF);
            }
        }
    }

    private static bool Out(Counter c, long now)
    {
        if (!c.Loaded) return c.Mode != 0;
        long n = c.Reload;
        long d = Elapsed(c, now);
        switch (c.Mode)
        {
            case 0: return d >= n;
            case 1: return !c.Triggered || d >= n;
            case 2: return c.Halted || n < 2 || d % n != n - 1;
            case 3: return c.Halted || d % n < (n + 1) / 2;
            case 4: return d != n;
            default: return !c.Triggered || d != n;
        }
    }

    private void CancelIrqTimer()
    {
        _irqGeneration++;
        _cancelIrqTimer?.Invoke();
        _cancelIrqTimer = null;
    }

    /// <summary>Arms a callback at counter 0's next OUT rising edge. Called with the lock held.</summary>
    private void ScheduleIrq(long now)
    {
        CancelIrqTimer();
        if (_irq0 == null) return;
        var c = _counters[0];
        if (!c.Loaded || c.Halted) return;
        long n = c.Reload;
        long d = Elapsed(c, now);
        long edgeTick;
        switch (c.Mode)
        {
            case 0:
                if (c.Irq0Raised) return;
                edgeTick = n;
                break;
            case 2:
            case 3:
                edgeTick = (d / n + 1) * n;
                // A guest programming a tiny period must not flood the timer thread: keep edges >= ~20 us apart.
                const long minTicks = 24;
                if (edgeTick - d < minTicks) edgeTick += (minTicks - (edgeTick - d) + n - 1) / n * n;
                break;
            case 4:
                if (d > n) return;
                edgeTick = n + 1;
                break;
            default:
                if (!c.Triggered || d > n) return;
                edgeTick = n + 1;
                break;
        }
        int gen = _irqGeneration;
        _cancelIrqTimer = _clock.Schedule(c.StartNs + TicksToNs(edgeTick), () => OnIrqTimer(gen));
    }

    private void OnIrqTimer(int generation)
    {
        var irq = _irq0;
        if (irq == null) return;
        lock (_lock)
        {
            if (generation != _irqGeneration) return;
            var c = _counters[0];
            long now = _clock.NowNs;
            _cancelIrqTimer = null;
            // Periodic modes deliver one edge per callback: ticks missed while the host was descheduled are
            // dropped, as they would be by a PIC whose IRR bit is already set.
            if (c.Mode == 0)
            {
                c.Irq0Raised = true;
                irq.Set(true);
            }
            else irq.Pulse();
            ScheduleIrq(now);
        }
    }
}
