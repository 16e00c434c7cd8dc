using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Introspection.RecordReplay;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

public sealed unsafe partial class Cpu
{
    // Record and replay (Machine/Introspection/RecordReplay): the run loop below replaces RunLoop when a session is
    // attached. It runs the interpreter only (no compiled tier, no chaining), one handler at a time with the retired
    // count kept exact after each, and fused compare-and-branch pairs split (Stepping): so replay can stop at any
    // instruction count, and every read is logged with the count of the instruction that made it. Without a session
    // the only cost elsewhere is a null check at device reads and writes and at interrupt delivery.
    private readonly RecordReplaySession? _rr;
    // Replay: the count of the next boundary event (0: look now).
    private ulong _replayNext;

    private VcpuExit RrLoop()
    {
        var rr = _rr!;
        bool replay = rr.Replaying;
        // Device writes into guest RAM are logged from here (recording) or written from the log (replay).
        rr.Bind(_mem, () => _instret, () => _wake.Set());
        while (true)
        {
            if (_pendingEvents != 0)
            {
                if (_startupPending) HonourStartup();
                if (_stopRequested)
                {
                    _stopRequested = false;
                    _pendingEvents = 0;
                    if (_vm.PowerEvent != Dirigent.Machine.PowerEventKind.None) return new VcpuExit(VcpuExitReason.PowerEvent, _vm.PowerEvent.ToString());
                    return new VcpuExit(VcpuExitReason.Stopped);
                }
                if (_safePointPending) RunSafePointWork();
                if (_pendingException is { } pe && !DeliverRestoredException(pe))
                    return new VcpuExit(VcpuExitReason.Shutdown, $"triple fault delivering restored exception {pe.Vector} at {Sreg[CS].Selector:x4}:{Rip:x}");
                if (replay && _pendingEvents != 0)
                {
                    // Nothing live is delivered in replay: only stops and safe points (hooks, state queries) count.
                    Interlocked.Exchange(ref _pendingEvents, 0);
                    if (_stopRequested || _safePointPending) _pendingEvents = 1;
                }
            }
            try
            {
                ulong limit = ulong.MaxValue;
                if (replay)
                {
                    if (rr.Divergence != null) return Diverged(rr.Divergence);
                    if (rr.Ended && rr.EndKind is not (RecordedEnd.TripleFault or RecordedEnd.HaltedForever))
                    {
                        // A power-off or debug exit was requested at the end (the loop's top returns it); a stopped
                        // recording waits here for the VMM's stop.
                        if (!_stopRequested) Idle();
                        continue;
                    }
                    // Boundary events are looked at only when the count reaches the next one (cached per block).
                    if (_instret >= _replayNext)
                    {
                        if (rr.Ended)
                            throw rr.Diverge(_instret, $"the recording ended with a {rr.EndKind} shortly before; the replay did not");
                        ReplayBoundary(rr);
                        if (rr.Ended) continue;
                        _replayNext = rr.NextBoundary(_instret);
                        if (_replayNext == ulong.MaxValue)
                            throw rr.Diverge(_instret, "the log ends here without the end of the run (truncated?)");
                    }
                    if (Halted && rr.Ended && rr.EndKind == RecordedEnd.HaltedForever && !InterruptsEnabled)
                        return new VcpuExit(VcpuExitReason.HaltedForever, $"HLT with IF=0 at {Sreg[CS].Selector:x4}:{InstrIp:x}");
                    if (Halted)
                        throw rr.Diverge(_instret, $"the guest halted; the recording continues with {rr.PeekDescription()}");
                    // A boundary still at this count sits behind reads the next instruction makes (it faulted in
                    // the recording, e.g. a triple fault): run that one instruction; if it retires, the boundary
                    // was passed and that is a divergence.
                    limit = _replayNext == _instret ? _instret + 1 : _replayNext;
                }
                else
                {
                    // Instruction time: device timers fire here, at instruction boundaries, as the count says.
                    var clock = _vm.Clock;
                    if (clock.InstructionTime && clock.NowNs >= clock.NextDeadlineNs) clock.RunDueTimers();
                    // Input from the host (received frames) reaches its device here, between instructions.
                    if (rr.HostWorkPending) rr.RunHostWork();
                    if (Halted)
                    {
                        if (!HasDeliverableEvent())
                        {
                            if (_stopRequested || _startupPending) continue;
                            if (!InterruptsEnabled && !_nmiPending && HaltIsForever)
                                return new VcpuExit(VcpuExitReason.HaltedForever, $"HLT with IF=0 at {Sreg[CS].Selector:x4}:{InstrIp:x}");
                            long next = clock.NextDeadlineNs;
                            if (clock.InstructionTime && next != long.MaxValue)
                            {
                                // Nothing to do but wait for a timer (QEMU's -icount sleep=on): sleep in host time
                                // until its deadline or a host event (console input), then move VM time on by as
                                // much (logged, so replay's clock jumps the same, without the sleep).
                                long want = next - clock.NowNs;
                                long skip = want >= 1_000_000 ? Math.Min(want, IdleUpTo(want)) : want;
                                if (skip > 0)
                                {
                                    rr.LogTimeSkip(_instret, skip);
                                    clock.Advance(skip);
                                }
                                clock.RunDueTimers();
                                continue;
                            }
                            // No timer at all: only the host (console input) can wake it.
                            Idle();
                            continue;
                        }
                        Halted = false;
                    }
                    // Before any delivery at this count: replay checks it first too (events keep their log order).
                    if (_instret >= rr.NextCheckpoint) rr.LogCheckpoint(_instret, StateHash());
                    bool shadow = InterruptShadow;
                    if (_pendingEvents != 0 && !shadow) DeliverPendingEvents();
                    // The STI/MOV SS shadow covers one instruction: with an event waiting, run just that one.
                    if (shadow && _pendingEvents != 0) limit = _instret + 1;
                }
                InterruptShadow = false;
                InstrIp = Rip;
                Block b = GetBlock();
                if (_instrumented)
                {
                    _blockTrace?.Invoke(this, b.Linear, b.Count);
                    if (_hooks.ExecArmed && ExecHookStep(b)) limit = Math.Min(limit, _instret + 1);
                }
                if (((_flags & (TF | RF)) != 0 || _dbgStep) && limit > _instret && DebugStep(b)) { }
                else RrExecute(b, limit);
            }
            catch (CpuException ex)
            {
                if (DeliverFault(ex) is { } exit) return exit;
            }
            catch (TripleFaultException tf)
            {
                return new VcpuExit(VcpuExitReason.Shutdown, tf.Message);
            }
            catch (ReplayDivergenceException d)
            {
                // Where it happened: the instruction that made the read is not retired (RIP stays at it).
                Rip = InstrIp;
                return Diverged(d);
            }
        }
    }

    /// <summary>Sleeps as HLT does, at most <paramref name="ns"/> of host time; returns the host time slept.</summary>
    private long IdleUpTo(long ns)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        LeaveExecution();
        bool woken;
        try
        {
            OnIdle?.Invoke();
            woken = _wake.Wait(TimeSpan.FromTicks(ns / 100));
            _wake.Reset();
        }
        finally { EnterExecution(); }
        return woken ? (long)System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalNanoseconds : ns;
    }

    private static VcpuExit Diverged(ReplayDivergenceException d) => new(VcpuExitReason.InternalError, d.Message);

    /// <summary>Replay: takes the boundary events at the current count (checkpoints, interrupts, the end) in log order.</summary>
    private void ReplayBoundary(RecordReplaySession rr)
    {
        while (rr.TryTakeBoundary(_instret, out var e))
        {
            switch (e.Kind)
            {
                case EventKind.TimeSkip:
                    _vm.Clock.Advance((long)e.Value);
                    break;
                case EventKind.DmaWriteBetween:
                    rr.WriteDma(_instret, e);
                    break;
                case EventKind.Checkpoint:
                    ulong h = StateHash();
                    if (h != e.Value)
                        throw rr.Diverge(_instret, $"registers differ from the recording's checkpoint (RIP {Rip:x}, hash {h:x16}, recorded {e.Value:x16})");
                    break;
                case EventKind.Nmi:
                    Halted = false;
                    _nmiBlocked = true;
                    InstrIp = Rip;
                    DeliverInterrupt(Vec.NMI);
                    break;
                case EventKind.Interrupt:
                    if (!InterruptsEnabled)
                        throw rr.Diverge(_instret, $"the recording delivers interrupt 0x{e.Address:x2} here, but the guest has interrupts disabled");
                    Halted = false;
                    InstrIp = Rip;
                    DeliverInterrupt((int)e.Address);
                    break;
                case EventKind.End:
                    var kind = (RecordedEnd)e.Address;
                    if (kind is RecordedEnd.PowerOff) _vm.RequestPowerEvent(Dirigent.Machine.PowerEventKind.PowerOff);
                    else if (kind is RecordedEnd.DebugExit) _vm.RequestPowerEvent(Dirigent.Machine.PowerEventKind.DebugExit, (int)e.Value);
                    else if (kind is RecordedEnd.Reset) _vm.RequestPowerEvent(Dirigent.Machine.PowerEventKind.Reset);
                    rr.MarkEnded(kind, (int)e.Value);
                    // A triple fault or an endless HLT is the guest's own doing: let it happen again.
                    if (kind is RecordedEnd.TripleFault or RecordedEnd.HaltedForever) _replayNext = _instret + 1_000_000;
                    return;
            }
        }
    }

    /// <summary>
    /// Runs the block's instructions one handler at a time until it ends or the retired count reaches
    /// <paramref name="limit"/>. Fused pairs run as two instructions (Stepping), so a stop can fall between them.
    /// </summary>
    private void RrExecute(Block b, ulong limit)
    {
        _currentBlockId = b.Id;
        ref Instruction instrs = ref MemoryMarshal.GetArrayDataReference(b.Instrs);
        Stepping = true;
        try
        {
            fixed (delegate*<Cpu, ref Instruction, void>* handlers = b.Handlers)
            {
                for (int k = 0; k < b.Count && _instret < limit; k++)
                {
                    ref Instruction i = ref Unsafe.Add(ref instrs, k);
                    InstrIp = Rip;
                    Rip = i.NextIP;
                    handlers[k](this, ref i);
                    _instret++;
                    if (BlockExit)
                    {
                        BlockExit = false;
                        if (_rmwNotifyPa != ulong.MaxValue) FinishRmwNotify();
                        break;
                    }
                }
            }
        }
        finally
        {
            Stepping = false;
            _currentBlockId = 0;
        }
    }

    /// <summary>A hash of the registers a divergence shows in first (FNV-1a over 64-bit words).</summary>
    public ulong StateHash()
    {
        ulong h = 0xcbf29ce484222325UL;
        for (int k = 0; k < 16; k++) h = (h ^ Gpr[k]) * 0x100000001b3UL;
        h = (h ^ Rip) * 0x100000001b3UL;
        h = (h ^ Rflags) * 0x100000001b3UL;
        h = (h ^ Cr0) * 0x100000001b3UL;
        h = (h ^ Cr3) * 0x100000001b3UL;
        h = (h ^ Cr4) * 0x100000001b3UL;
        h = (h ^ Efer) * 0x100000001b3UL;
        h = (h ^ Sreg[CS].Selector) * 0x100000001b3UL;
        return h;
    }

    // ---------------- values from outside the CPU ----------------

    // Recording: a device access is bracketed (RecordReplaySession.DeviceAccess) so that what the device writes into
    // guest RAM meanwhile is logged as part of this instruction. Replay: after a dropped write, the device writes the
    // recording made while serving it are applied (a read applies them itself before taking its value).

    [MethodImpl(MethodImplOptions.NoInlining)]
    private uint RrPortRead(ushort port, int size)
    {
        var rr = _rr!;
        if (rr.Replaying) return (uint)rr.Take(_instret, EventKind.PortRead, port, size);
        rr.DeviceAccess++;
        uint v;
        try { v = _vm.Io.Read(port, size); }
        finally { rr.DeviceAccess--; }
        return (uint)rr.Log(_instret, EventKind.PortRead, port, size, v);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private ulong RrMmioRead(ulong pa, int size, bool apic)
    {
        var rr = _rr!;
        if (rr.Replaying) return rr.Take(_instret, EventKind.MmioRead, pa, size);
        rr.DeviceAccess++;
        ulong v;
        try { v = apic ? _apicMmio!.Read(pa & 0xFFF, size) : _vm.Mmio.Read(pa, size); }
        finally { rr.DeviceAccess--; }
        return rr.Log(_instret, EventKind.MmioRead, pa, size, v);
    }

    /// <summary>OUT/OUTS under a session: to the device (recording) or COM1's mirror and the logged DMA (replay).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RrPortWrite(ushort port, int size, uint v)
    {
        var rr = _rr!;
        if (rr.Replaying)
        {
            rr.ReplayPortWrite(port, size, v);
            rr.ApplyDma(_instret);
            return;
        }
        rr.DeviceAccess++;
        try { _vm.Io.Write(port, size, v); }
        finally { rr.DeviceAccess--; }
    }

    /// <summary>A store to MMIO under a session (<paramref name="apic"/>: this vCPU's local APIC page).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RrMmioWrite(ulong pa, int size, ulong v, bool apic)
    {
        var rr = _rr!;
        if (rr.Replaying)
        {
            rr.ApplyDma(_instret);
            return;
        }
        rr.DeviceAccess++;
        try
        {
            if (apic) _apicMmio!.Write(pa & 0xFFF, size, v);
            else _vm.Mmio.Write(pa, size, v);
        }
        finally { rr.DeviceAccess--; }
    }

    /// <summary>
    /// The TSC an instruction sees (RDTSC, RDTSCP, IA32_TSC). Under instruction time (always, with the VMM's
    /// record/replay) it is a function of the count and of the logged idle skips, so it is computed again in replay,
    /// not logged (TSC delay loops would otherwise fill the log); on a host-time clock it is logged.
    /// </summary>
    internal ulong GuestTsc()
    {
        if (_rr == null || _vm.Clock.InstructionTime) return ReadTsc();
        return _rr.Replaying ? _rr.Take(_instret, EventKind.Tsc, 0, 8) : _rr.Log(_instret, EventKind.Tsc, 0, 8, ReadTsc());
    }

    /// <summary>A local-APIC register read by an instruction (0: CR8's TPR, 1: IA32_TSC_DEADLINE), through the log when there is one.</summary>
    internal ulong ApicRegisterRead(int which, ulong live)
    {
        if (_rr == null) return live;
        return _rr.Replaying ? _rr.Take(_instret, EventKind.ApicRegister, (ulong)which, 8) : _rr.Log(_instret, EventKind.ApicRegister, (ulong)which, 8, live);
    }

    /// <summary>Replay: writes to devices go nowhere (COM1's output is mirrored); APIC register writes are dropped.</summary>
    internal bool ReplayDropsWrites => _rr is { Replaying: true };
}
