namespace Dirigent.Machine.Introspection.RecordReplay;

/// <summary>Replay found the guest doing something the recording did not: it stops at <see cref="Instruction"/>.</summary>
public sealed class ReplayDivergenceException(ulong instruction, string what)
    : Exception($"replay diverged at instruction {instruction}: {what}")
{
    public ulong Instruction { get; } = instruction;
}

/// <summary>
/// One recording or one replay, attached to a <see cref="MachineModel"/> before its (single) vCPU is created.
/// Recording: the devices run as usual and every value the vCPU takes from outside itself (device reads, the TSC,
/// APIC registers) is logged with the retired-instruction count at which it was consumed, and every interrupt with
/// the count before which it was delivered. Replay: the devices are cut off (writes go nowhere, nothing is injected)
/// and the vCPU takes all of that from the log, at the same counts; COM1's transmitter is mirrored from the port
/// writes so the console output comes back. Register checkpoints every <see cref="CheckpointInterval"/> instructions
/// and the check of each read's port/address against the log detect divergence. Only the vCPU thread calls the
/// event methods.
/// </summary>
public sealed class RecordReplaySession : IDisposable
{
    public const ulong DefaultCheckpointInterval = 1 << 20;
    /// <summary>VM time per retired instruction in both modes (the VM clock's instruction time; 1 GHz-like).</summary>
    public const long NsPerInstruction = 1;

    private readonly EventLogWriter? _writer;
    private readonly EventLogReader? _reader;
    // Replay: events decoded ahead of the vCPU, and the counts of the boundary events among them (in order).
    private readonly Queue<ReplayEvent> _ahead = new();
    private readonly Queue<ulong> _boundaries = new();
    private bool _eof;

    public bool Replaying => _reader != null;
    public ulong CheckpointInterval { get; }
    /// <summary>Recording: the count at or after which the next checkpoint is logged.</summary>
    public ulong NextCheckpoint;
    /// <summary>Replay: the first divergence (the run stopped there), or null.</summary>
    public ReplayDivergenceException? Divergence { get; private set; }
    /// <summary>Replay: the End event was reached (the vCPU ends the run as the recording did).</summary>
    public bool Ended { get; private set; }
    public RecordedEnd EndKind { get; private set; }
    public int EndCode { get; private set; }
    /// <summary>Replay: raised on the vCPU thread when the end is reached; for a stopped recording the VMM stops the VM.</summary>
    public event Action<RecordedEnd>? EndReached;
    /// <summary>Replay: the bytes the guest transmits on COM1 (mirrored from its port writes).</summary>
    public Action<byte>? ConsoleOutput;
    /// <summary>COM1's base port (the PC's 0x3F8); set by the VMM.</summary>
    public ushort ConsolePort = 0x3F8;
    private byte _lcr, _mcr;

    public long EventsWritten => _writer?.Events ?? 0;
    public long LogBytes => _writer?.Bytes ?? 0;

    private RecordReplaySession(EventLogWriter? w, EventLogReader? r, ulong interval)
    {
        _writer = w;
        _reader = r;
        CheckpointInterval = interval == 0 ? DefaultCheckpointInterval : interval;
        NextCheckpoint = CheckpointInterval;
    }

    public static RecordReplaySession Record(Stream log, ulong checkpointInterval = DefaultCheckpointInterval) =>
        new(new EventLogWriter(log), null, checkpointInterval);

    public static RecordReplaySession Replay(Stream log, ulong checkpointInterval = DefaultCheckpointInterval) =>
        new(null, new EventLogReader(log), checkpointInterval);

    // ---------------- recording ----------------

    /// <summary>Logs a value consumed by the instruction at <paramref name="icount"/> and returns it.</summary>
    public ulong Log(ulong icount, EventKind kind, ulong address, int size, ulong value)
    {
        _writer!.Write(new ReplayEvent { Icount = icount, Kind = kind, Address = address, Size = size, Value = value });
        return value;
    }

    public void LogInterrupt(ulong icount, int vector) =>
        _writer!.Write(vector < 0
            ? new ReplayEvent { Icount = icount, Kind = EventKind.Nmi }
            : new ReplayEvent { Icount = icount, Kind = EventKind.Interrupt, Address = (ulong)vector });

    public void LogCheckpoint(ulong icount, ulong hash)
    {
        _writer!.Write(new ReplayEvent { Icount = icount, Kind = EventKind.Checkpoint, Value = hash });
        NextCheckpoint = icount + CheckpointInterval;
    }

    public void LogTimeSkip(ulong icount, long ns) =>
        _writer!.Write(new ReplayEvent { Icount = icount, Kind = EventKind.TimeSkip, Value = (ulong)ns });

    /// <summary>The VMM, after the vCPU stopped for good: how and where the run ended. Flushes the log.</summary>
    public void LogEnd(ulong icount, RecordedEnd kind, int code)
    {
        _writer!.Write(new ReplayEvent { Icount = icount, Kind = EventKind.End, Address = (ulong)kind, Value = (ulong)code });
        _writer.Flush();
    }

    // ---------------- replay ----------------

    /// <summary>The value the instruction at <paramref name="icount"/> read in the recording; diverges when the
    /// recording's next event is not this read.</summary>
    public ulong Take(ulong icount, EventKind kind, ulong address, int size)
    {
        if (!Fill()) throw Diverge(icount, $"the guest made {Describe(kind, address, size)} after the end of the log");
        var e = _ahead.Peek();
        if (e.Icount != icount || e.Kind != kind || e.Address != address || e.Size != size)
            throw Diverge(icount, $"the guest made {Describe(kind, address, size)}; the recording has {e} at instruction {e.Icount}");
        _ahead.Dequeue();
        return e.Value;
    }

    /// <summary>The count of the next boundary event (the vCPU must stop there), or ulong.MaxValue when none is left.</summary>
    public ulong NextBoundary(ulong icount)
    {
        try
        {
            while (_boundaries.Count == 0 && !_eof) ReadOne();
        }
        catch (EventLogFormatException e) { throw Diverge(icount, e.Message); }
        return _boundaries.Count > 0 ? _boundaries.Peek() : ulong.MaxValue;
    }

    /// <summary>Removes and returns the next event when it is a boundary event at <paramref name="icount"/>.</summary>
    public bool TryTakeBoundary(ulong icount, out ReplayEvent e)
    {
        e = default;
        if (!Fill()) return false;
        var head = _ahead.Peek();
        if (head.IsBoundary && head.Icount == icount)
        {
            e = _ahead.Dequeue();
            _boundaries.Dequeue();
            return true;
        }
        if (head.Icount < icount)
            throw Diverge(icount, $"the recording has {head} at instruction {head.Icount}, which the replay passed");
        if (head.IsBoundary && head.Icount > icount) return false;
        return false;
    }

    /// <summary>The next event not yet consumed, for messages.</summary>
    public string PeekDescription() => Fill() ? $"{_ahead.Peek()} at instruction {_ahead.Peek().Icount}" : "the end of the log";

    public void MarkEnded(RecordedEnd kind, int code)
    {
        Ended = true;
        EndKind = kind;
        EndCode = code;
        EndReached?.Invoke(kind);
    }

    /// <summary>Records the first divergence and returns it, to be thrown.</summary>
    public ReplayDivergenceException Diverge(ulong icount, string what) => Divergence ??= new ReplayDivergenceException(icount, what);

    /// <summary>
    /// A port write during replay: reaches no device; COM1's transmit holding register, line and modem control are
    /// mirrored so that what the guest printed is printed again (not in loopback, not with the divisor latch open).
    /// </summary>
    public void ReplayPortWrite(ushort port, int size, uint value)
    {
        int reg = port - ConsolePort;
        if (reg is < 0 or > 7) return;
        byte v = (byte)value;
        switch (reg)
        {
            case 0 when (_lcr & 0x80) == 0 && (_mcr & 0x10) == 0: ConsoleOutput?.Invoke(v); break;
            case 3: _lcr = v; break;
            case 4: _mcr = (byte)(v & 0x1F); break;
        }
    }

    private bool Fill()
    {
        if (_ahead.Count > 0) return true;
        if (_eof) return false;
        try { ReadOne(); }
        catch (EventLogFormatException e) { throw Diverge(_lastIcount, e.Message); }
        return _ahead.Count > 0;
    }

    private ulong _lastIcount;

    private void ReadOne()
    {
        if (!_reader!.TryRead(out var e)) { _eof = true; return; }
        _lastIcount = e.Icount;
        _ahead.Enqueue(e);
        if (e.IsBoundary) _boundaries.Enqueue(e.Icount);
    }

    private static string Describe(EventKind kind, ulong address, int size) =>
        new ReplayEvent { Kind = kind, Address = address, Size = size }.ToString();

    public void Dispose()
    {
        _writer?.Dispose();
        _reader?.Dispose();
    }
}
