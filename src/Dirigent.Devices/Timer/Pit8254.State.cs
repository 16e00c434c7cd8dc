using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Timer;

// Reset, save and restore of the 8254, through the accelerator-neutral PitState (kvm_pit_channel_state with VM time).
// Encodings shared with the KVM converter:
// - Count 0: no count written since the control word (the counter reads 0 and has never been loaded);
//   otherwise the count loaded, 1..0x10000.
// - ReadState/WriteState use KVM's RW_STATE values: 1 LSB, 2 MSB, 3 word (LSB next), 4 word (MSB next).
// - NsSinceLoad: VM ns since counting (re)started; with GATE low in modes 0 and 4 (counting suspended) the time
//   counted before the gate fell; -1 in modes 1 and 5 for a count still waiting for its GATE trigger.
// A latched 16-bit count restores with its LSB next (the record has no place for "LSB already read"), and port
// 0x61 bits 2-3 (parity/channel-check enables, which do nothing here) restore clear.
public sealed partial class Pit8254
{
    private const int RwStateLsb = 1, RwStateMsb = 2, RwStateWord0 = 3, RwStateWord1 = 4;
    /// <summary>Upper bound for a restored NsSinceLoad (about 31 years): keeps the tick arithmetic in range.</summary>
    private const long MaxNsSinceLoad = 1_000_000_000_000_000_000;

    /// <summary>Port 0x61 bits 0-3 as last written (read by <see cref="SystemControlPortB"/>).</summary>
    internal byte PortBControl { get { lock (_lock) return _portBControl; } }

    /// <summary>A write of port 0x61: keeps bits 0-3 and drives counter 2's GATE from bit 0.</summary>
    internal void WritePortB(byte value)
    {
        lock (_lock)
        {
            _portBControl = (byte)(value & 0x0F);
            SetGate(2, (value & 1) != 0);
        }
    }

    /// <summary>Power-on state: every counter idle with no count, GATEs 0/1 high, port 0x61 clear, IRQ0 low.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            CancelIrqTimer();
            for (int i = 0; i < 3; i++) _counters[i] = new Counter { Gate = i != 2 };
            _portBControl = 0;
            _irq0?.Set(false);
        }
    }

    public PitState Save()
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            var s = new PitState { SpeakerDataOn = (_portBControl & 2) != 0 };
            for (int i = 0; i < 3; i++) s.Channels[i] = SaveCounter(_counters[i], now);
            return s;
        }
    }

    private static PitChannelState SaveCounter(Counter c, long now)
    {
        long nsSinceLoad = 0;
        if (c.Loaded)
        {
            if (c.Mode is 1 or 5) nsSinceLoad = c.Triggered ? now - c.StartNs : -1;
            else if (c.Halted) nsSinceLoad = c.Mode is 0 or 4 ? TicksToNs(c.HaltedTicks) : 0;
            else nsSinceLoad = now - c.StartNs;
        }
        int rw = c.ReadWrite;
        return new PitChannelState
        {
            Count = c.Loaded ? (uint)c.Reload : 0,
            LatchedCount = c.LatchedCount,
            CountLatched = c.CountLatched,
            StatusLatched = c.StatusLatched,
            Status = c.LatchedStatus,
            ReadState = (byte)(rw != 3 ? rw : c.ReadMsbNext ? RwStateWord1 : RwStateWord0),
            WriteState = (byte)(rw != 3 ? rw : c.WriteMsbNext ? RwStateWord1 : RwStateWord0),
            WriteLatch = c.WriteLsb,
            RwMode = (byte)rw,
            Mode = (byte)c.Mode,
            Bcd = c.Bcd,
            Gate = c.Gate,
            NsSinceLoad = nsSinceLoad,
        };
    }

    public void Restore(PitState state)
    {
        if (state.Channels is not { Length: 3 })
            throw new StateRestoreException($"pit: {state.Channels?.Length ?? 0} channels, expected 3");
        var counters = new Counter[3];
        for (int i = 0; i < 3; i++)
        {
            var ch = state.Channels[i] ?? throw new StateRestoreException($"pit: channel {i} missing");
            counters[i] = Check(ch, i);
        }
        lock (_lock)
        {
            CancelIrqTimer();
            long now = _clock.NowNs;
            bool wasRaised = _counters[0].Irq0Raised;
            for (int i = 0; i < 3; i++)
            {
                var c = counters[i];
                if (c.Loaded && !c.Halted && !(c.Mode is 1 or 5 && !c.Triggered)) c.StartNs = now - c.StartNs;
                _counters[i] = c;
            }
            _portBControl = (byte)((counters[2].Gate ? 1 : 0) | (state.SpeakerDataOn ? 2 : 0));
            var c0 = _counters[0];
            // Mode 0 past terminal count holds OUT (and IRQ0) high until the counter is reprogrammed; the line is
            // driven again here because a freshly built machine's line starts low.
            if (c0.Loaded && c0.Mode == 0 && Out(c0, now))
            {
                c0.Irq0Raised = true;
                _irq0?.Set(true);
            }
            else
            {
                if (wasRaised) _irq0?.Set(false);
                ScheduleIrq(now);
            }
        }
    }

    /// <summary>Validates one channel record and turns it into a counter (StartNs holds NsSinceLoad for now).</summary>
    private static Counter Check(PitChannelState s, int index)
    {
        string where = $"pit: channel {index}";
        if (s.Count > 0x10000) throw new StateRestoreException($"{where}: count {s.Count} above 0x10000");
        if (s.Mode > 5) throw new StateRestoreException($"{where}: mode {s.Mode} is not 0..5");
        if (s.RwMode is < 1 or > 3) throw new StateRestoreException($"{where}: access mode {s.RwMode} is not 1..3");
        bool ValidState(byte st) => s.RwMode == 3 ? st is RwStateWord0 or RwStateWord1 : st == s.RwMode;
        if (!ValidState(s.ReadState) || !ValidState(s.WriteState))
            throw new StateRestoreException($"{where}: read/write state {s.ReadState}/{s.WriteState} does not fit access mode {s.RwMode}");
        if (index < 2 && !s.Gate) throw new StateRestoreException($"{where}: GATE is tied high on this counter");
        bool loaded = s.Count != 0;
        bool hardwareTriggered = s.Mode is 1 or 5;
        if (s.NsSinceLoad > MaxNsSinceLoad || s.NsSinceLoad < (loaded && hardwareTriggered ? -1 : 0))
            throw new StateRestoreException($"{where}: time since load {s.NsSinceLoad} ns out of range");
        var c = new Counter
        {
            Mode = s.Mode,
            ReadWrite = s.RwMode,
            Bcd = s.Bcd,
            Reload = loaded ? s.Count : 0,
            Loaded = loaded,
            NullCount = !loaded,
            Gate = s.Gate,
            WriteMsbNext = s.WriteState == RwStateWord1,
            WriteLsb = s.WriteLatch,
            ReadMsbNext = s.ReadState == RwStateWord1,
            CountLatched = s.CountLatched,
            LatchedCount = s.LatchedCount,
            StatusLatched = s.StatusLatched,
            LatchedStatus = s.Status,
        };
        if (!loaded) return c;
        if (hardwareTriggered)
        {
            c.Triggered = s.NsSinceLoad >= 0;
            c.StartNs = Math.Max(s.NsSinceLoad, 0);
        }
        else if (!s.Gate)
        {
            // GATE low suspends counting in modes 0 and 4 and holds modes 2 and 3 until the rising edge reloads.
            c.Halted = true;
            c.HaltedTicks = s.Mode is 0 or 4 ? NsToTicks(s.NsSinceLoad) : 0;
        }
        else c.StartNs = s.NsSinceLoad;
        return c;
    }
}
