namespace Dirigent.Machine.Introspection.RecordReplay;

/// <summary>
/// What the event log holds. Inline events are values an instruction consumed from outside the CPU (a device read,
/// the TSC); boundary events happen between instructions (an interrupt taken, a state checkpoint, the end).
/// </summary>
public enum EventKind : byte
{
    /// <summary>IN: Address = port, Value = what the device returned.</summary>
    PortRead = 1,
    /// <summary>A load from MMIO (the local APIC page included): Address = guest-physical address.</summary>
    MmioRead = 2,
    /// <summary>RDTSC, RDTSCP, RDMSR/WRMSR of IA32_TSC: the TSC the instruction saw, when VM time is the host's (not
    /// under instruction time, where the replay computes the same TSC from the count).</summary>
    Tsc = 3,
    /// <summary>A local-APIC register read through the CPU: Address 0 = CR8 (TPR), 1 = IA32_TSC_DEADLINE.</summary>
    ApicRegister = 4,
    /// <summary>A device wrote guest RAM (DMA) while serving a port/MMIO access of the instruction at this count:
    /// Address = guest-physical address, Data = the bytes. Replay writes them at the same point of the instruction
    /// (after a write, before a read's value).</summary>
    DmaWrite = 5,
    /// <summary>An external interrupt delivered before the instruction at this count: Address = vector.</summary>
    Interrupt = 16,
    /// <summary>An NMI delivered before the instruction at this count.</summary>
    Nmi = 17,
    /// <summary>A hash of the registers at this count (<see cref="RecordReplaySession.CheckpointInterval"/>).</summary>
    Checkpoint = 18,
    /// <summary>The recording ends here: Address = <see cref="RecordedEnd"/>, Value = its exit code.</summary>
    End = 19,
    /// <summary>The vCPU was halted with nothing to do but wait: VM time jumped Value ns to the next timer deadline.</summary>
    TimeSkip = 20,
    /// <summary>A device wrote guest RAM between instructions (a device timer, e.g. a rate limiter resuming a queue),
    /// before the instruction at this count: Address and Data as <see cref="DmaWrite"/>.</summary>
    DmaWriteBetween = 21,
}

/// <summary>How the recorded run ended (the replay ends the same way at the same count).</summary>
public enum RecordedEnd : byte { Stopped = 0, PowerOff = 1, DebugExit = 2, TripleFault = 3, HaltedForever = 4, Reset = 5 }

/// <summary>One decoded event: at <see cref="Icount"/> retired instructions.</summary>
public struct ReplayEvent
{
    public ulong Icount;
    public EventKind Kind;
    public ulong Address;
    public int Size;
    public ulong Value;
    /// <summary>DMA writes: the bytes written at <see cref="Address"/>.</summary>
    public byte[]? Data;

    public readonly bool IsBoundary => Kind >= EventKind.Interrupt;

    public override readonly string ToString() => Kind switch
    {
        EventKind.PortRead => $"a {Size}-byte read of port 0x{Address:x}",
        EventKind.MmioRead => $"a {Size}-byte read of MMIO 0x{Address:x}",
        EventKind.Tsc => "a TSC read",
        EventKind.ApicRegister => Address == 0 ? "a CR8 read" : "an IA32_TSC_DEADLINE read",
        EventKind.Interrupt => $"interrupt 0x{Address:x2}",
        EventKind.Nmi => "an NMI",
        EventKind.Checkpoint => "a register checkpoint",
        EventKind.End => $"the end ({(RecordedEnd)Address})",
        EventKind.TimeSkip => $"a skip of {Value} ns of idle VM time",
        EventKind.DmaWrite => $"a device write (DMA) of {Data?.Length ?? 0} bytes at 0x{Address:x}",
        EventKind.DmaWriteBetween => $"a device write (DMA) of {Data?.Length ?? 0} bytes at 0x{Address:x} between instructions",
        _ => $"event kind {(byte)Kind}",
    };
}

/// <summary>
/// The binary event log (events.bin): an 8-byte magic, then per event a LEB128 varint of the instruction count
/// since the previous event, one kind byte, and the kind's payload (varint address, size byte, varint value for
/// reads; varint vector for interrupts; varint hash for checkpoints; varint nanoseconds for time skips; end kind byte and varint code for the end;
/// varint address, varint length and the bytes for DMA writes).
/// Deltas keep a busy log small: most events are a few bytes.
/// </summary>
public static class EventLogFormat
{
    /// <summary>Version 2 added the DMA writes; a version-1 log (no DMA kinds) reads the same way.</summary>
    public static ReadOnlySpan<byte> Magic => "DRRLOG2\n"u8;
    public static ReadOnlySpan<byte> MagicV1 => "DRRLOG1\n"u8;
    /// <summary>The most bytes one DMA event carries (the writer splits longer writes; the reader refuses more).</summary>
    public const int MaxDmaBytes = 1 << 20;
}

/// <summary>Writes events.bin; one writer thread (the single vCPU's, then the VMM's for the end).</summary>
public sealed class EventLogWriter : IDisposable
{
    private readonly Stream _s;
    private ulong _last;
    public long Events { get; private set; }
    public long Bytes => _s.Position;

    public EventLogWriter(Stream s)
    {
        _s = new BufferedStream(s, 1 << 20);
        _s.Write(EventLogFormat.Magic);
    }

    public void Write(in ReplayEvent e)
    {
        if (e.Icount < _last) throw new InvalidOperationException($"event at {e.Icount} after one at {_last}");
        WriteVarint(e.Icount - _last);
        _last = e.Icount;
        _s.WriteByte((byte)e.Kind);
        switch (e.Kind)
        {
            case EventKind.Nmi: break;
            case EventKind.Interrupt: WriteVarint(e.Address); break;
            case EventKind.Checkpoint or EventKind.TimeSkip: WriteVarint(e.Value); break;
            case EventKind.End: _s.WriteByte((byte)e.Address); WriteVarint(e.Value); break;
            case EventKind.DmaWrite or EventKind.DmaWriteBetween:
                WriteDmaPayload(e.Address, e.Data ?? []);
                break;
            default:
                WriteVarint(e.Address);
                _s.WriteByte((byte)e.Size);
                WriteVarint(e.Value);
                break;
        }
        Events++;
    }

    /// <summary>A DMA write without copying its bytes into an event (the recording's hot path for disk reads).</summary>
    public void WriteDma(ulong icount, bool between, ulong gpa, ReadOnlySpan<byte> data)
    {
        if (icount < _last) throw new InvalidOperationException($"event at {icount} after one at {_last}");
        WriteVarint(icount - _last);
        _last = icount;
        _s.WriteByte((byte)(between ? EventKind.DmaWriteBetween : EventKind.DmaWrite));
        WriteDmaPayload(gpa, data);
        Events++;
    }

    private void WriteDmaPayload(ulong gpa, ReadOnlySpan<byte> data)
    {
        if (data.Length > EventLogFormat.MaxDmaBytes) throw new ArgumentException($"DMA event of {data.Length} bytes");
        WriteVarint(gpa);
        WriteVarint((ulong)data.Length);
        _s.Write(data);
    }

    private void WriteVarint(ulong v)
    {
        while (v >= 0x80) { _s.WriteByte((byte)(v | 0x80)); v >>= 7; }
        _s.WriteByte((byte)v);
    }

    public void Flush() => _s.Flush();
    public void Dispose() => _s.Dispose();
}

/// <summary>A log that cannot be decoded (truncated or corrupt): replay stops as for a divergence.</summary>
public sealed class EventLogFormatException(string message) : Exception(message);

/// <summary>Reads events.bin sequentially.</summary>
public sealed class EventLogReader : IDisposable
{
    private readonly Stream _s;
    private ulong _last;

    public EventLogReader(Stream s)
    {
        _s = new BufferedStream(s, 1 << 20);
        Span<byte> m = stackalloc byte[8];
        if (_s.ReadAtLeast(m, 8, throwOnEndOfStream: false) != 8 || !(m.SequenceEqual(EventLogFormat.Magic) || m.SequenceEqual(EventLogFormat.MagicV1)))
            throw new EventLogFormatException("not a Dirigent event log (bad magic)");
    }

    /// <summary>The next event, or false at the end of the file.</summary>
    public bool TryRead(out ReplayEvent e)
    {
        e = default;
        int first = _s.ReadByte();
        if (first < 0) return false;
        ulong delta = ReadVarint(first);
        e.Icount = checked(_last + delta);
        _last = e.Icount;
        e.Kind = (EventKind)ReadByte();
        switch (e.Kind)
        {
            case EventKind.Nmi: break;
            case EventKind.Interrupt: e.Address = ReadVarint(ReadByte()); break;
            case EventKind.Checkpoint or EventKind.TimeSkip: e.Value = ReadVarint(ReadByte()); break;
            case EventKind.End: e.Address = (ulong)ReadByte(); e.Value = ReadVarint(ReadByte()); break;
            case EventKind.PortRead or EventKind.MmioRead or EventKind.Tsc or EventKind.ApicRegister:
                e.Address = ReadVarint(ReadByte());
                e.Size = ReadByte();
                e.Value = ReadVarint(ReadByte());
                break;
            case EventKind.DmaWrite or EventKind.DmaWriteBetween:
                e.Address = ReadVarint(ReadByte());
                ulong n = ReadVarint(ReadByte());
                if (n > EventLogFormat.MaxDmaBytes) throw new EventLogFormatException($"a DMA write of {n} bytes after instruction {_last}");
                e.Data = new byte[n];
                if (_s.ReadAtLeast(e.Data, (int)n, throwOnEndOfStream: false) != (int)n)
                    throw new EventLogFormatException($"the log is truncated after instruction {_last}");
                break;
            default: throw new EventLogFormatException($"unknown event kind {(byte)e.Kind} after instruction {_last}");
        }
        return true;
    }

    private int ReadByte()
    {
        int b = _s.ReadByte();
        if (b < 0) throw new EventLogFormatException($"the log is truncated after instruction {_last}");
        return b;
    }

    private ulong ReadVarint(int b)
    {
        ulong v = 0;
        for (int shift = 0; ; shift += 7)
        {
            if (shift > 63) throw new EventLogFormatException($"a malformed number after instruction {_last}");
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
            b = ReadByte();
        }
    }

    public void Dispose() => _s.Dispose();
}
