using Dirigent.Machine.Memory;

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
/// <para>Device DMA: in a recording the devices serve their queues on the vCPU thread, inside the port/MMIO access
/// that notified them (virtio-blk without its worker thread), so every write a device makes into guest RAM happens
/// at a known point: during the access of the instruction at the current count, or between instructions (a device
/// timer). <see cref="GuestMemory.DeviceWrites"/> shows each one to the session, which logs its address and bytes
/// there; the replay writes the same bytes at the same point and needs neither the disk image nor the entropy.</para>
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

    // DMA: guest memory (both modes), and in a recording the vCPU's count and thread.
    private GuestMemory? _memory;
    private Func<ulong>? _icount;
    private int _vcpuThread;
    /// <summary>Recording: above 0 while the vCPU is inside a port/MMIO access (a device write then belongs to the
    /// instruction at the current count; otherwise it happens between instructions).</summary>
    public int DeviceAccess;
    /// <summary>Recording: why the log misses a device write (made on a thread other than the vCPU's, so at no
    /// known instruction count), or null. The recording is then not replayable and says so at the end.</summary>
    public string? RecordError { get; private set; }
    /// <summary>Device writes into guest RAM logged (recording) or applied (replay), and their bytes.</summary>
    public long DmaWrites { get; private set; }
    public long DmaBytes { get; private set; }

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

    /// <summary>
    /// The vCPU, when it starts running (on its own thread): gives the session guest memory and, in a recording,
    /// the retired-instruction count, and from here logs the devices' writes into guest RAM.
    /// </summary>
    public void Bind(GuestMemory memory, Func<ulong> icount, Action? wake = null)
    {
        _memory = memory;
        if (Replaying) return;
        _icount = icount;
        _wake = wake;
        _vcpuThread = Environment.CurrentManagedThreadId;
        memory.DeviceWrites = OnDeviceWrite;
    }

    // ---------------- host work (recording) ----------------

    private readonly System.Collections.Concurrent.ConcurrentQueue<Action> _hostWork = new();
    private volatile bool _hostWorkPending;
    private Action? _wake;

    /// <summary>
    /// Recording: runs <paramref name="work"/> on the vCPU thread at the next instruction boundary (waking a halted
    /// vCPU): how input that arrives from the host on its own thread (a received network frame) reaches a device,
    /// so that what the device then writes into guest RAM is logged between instructions. Any thread.
    /// </summary>
    public void PostHostWork(Action work)
    {
        _hostWork.Enqueue(work);
        _hostWorkPending = true;
        _wake?.Invoke();
    }

    /// <summary>Recording: whether host work waits for the vCPU (checked at every boundary; a volatile read).</summary>
    public bool HostWorkPending => _hostWorkPending;

    /// <summary>Recording, on the vCPU thread at an instruction boundary: runs the host work posted so far.</summary>
    public void RunHostWork()
    {
        _hostWorkPending = false;
        while (_hostWork.TryDequeue(out var work)) work();
    }

    private void Unbind()
    {
        if (_memory != null && _writer != null) _memory.DeviceWrites = null;
    }

    // ---------------- recording ----------------

    private void OnDeviceWrite(ulong gpa, ReadOnlySpan<byte> bytes)
    {
        if (Environment.CurrentManagedThreadId != _vcpuThread)
        {
            // Not at a point of the instruction stream the replay could find again: the log cannot be trusted.
            RecordError ??= $"a device wrote {bytes.Length} bytes of guest memory at 0x{gpa:x} outside the vCPU thread";
            return;
        }
        ulong icount = _icount!();
        bool between = DeviceAccess == 0;
        for (int off = 0; off < bytes.Length; off += EventLogFormat.MaxDmaBytes)
        {
            int n = Math.Min(EventLogFormat.MaxDmaBytes, bytes.Length - off);
            _writer!.WriteDma(icount, between, gpa + (ulong)off, bytes.Slice(off, n));
            DmaWrites++;
        }
        DmaBytes += bytes.Length;
    }

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
        Unbind();
        _writer!.Write(new ReplayEvent { Icount = icount, Kind = EventKind.End, Address = (ulong)kind, Value = (ulong)code });
        _writer.Flush();
    }

    // ---------------- replay ----------------

    /// <summary>The value the instruction at <paramref name="icount"/> read in the recording; diverges when the
    /// recording's next event is not this read.</summary>
    public ulong Take(ulong icount, EventKind kind, ulong address, int size)
    {
        // Device writes the recording made while serving this read come first (its value was logged after them).
        ApplyDma(icount);
        if (!Fill()) throw Diverge(icount, $"the guest made {Describe(kind, address, size)} after the end of the log");
        var e = _ahead.Peek();
        if (e.Icount != icount || e.Kind != kind || e.Address != address || e.Size != size)
            throw Diverge(icount, $"the guest made {Describe(kind, address, size)}; the recording has {e} at instruction {e.Icount}");
        _ahead.Dequeue();
        return e.Value;
    }

    /// <summary>
    /// Replay: writes into guest RAM what the devices wrote during the instruction at <paramref name="icount"/> up to
    /// this point of it (called after each device write the replay drops, and before a read takes its value).
    /// </summary>
    public void ApplyDma(ulong icount)
    {
        while (Fill() && _ahead.Peek() is { Kind: EventKind.DmaWrite } e && e.Icount == icount)
        {
            _ahead.Dequeue();
            WriteDma(icount, e);
        }
    }

    /// <summary>Replay: one logged device write into guest RAM (code caches see it as they saw the device's).</summary>
    public void WriteDma(ulong icount, in ReplayEvent e)
    {
        if (_memory == null || !_memory.TryWrite(e.Address, e.Data ?? []))
            throw Diverge(icount, $"the recording has {e}, which is not guest RAM");
        DmaWrites++;
        DmaBytes += e.Data?.Length ?? 0;
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
        Unbind();
        _writer?.Dispose();
        _reader?.Dispose();
    }
}
