using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.Memory;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// One software x86-64 vCPU. Its architectural state is spread over partial files by concern (flags, memory/TLB,
/// segmentation, exceptions, FPU); instruction semantics live under Instructions/, one static class per group,
/// registered into <see cref="Dispatch"/> by Iced <see cref="Code"/>.
/// </summary>
public sealed unsafe partial class Cpu : IVcpu, IDisposable
{
    private readonly MachineModel _vm;
    private readonly GuestMemory _mem;
    private readonly CodeCache _codeCache;
    // The background compiler, when hot blocks are to be queued (JitMode.On).
    private readonly Jit.JitCompiler? _jit;

    public int Index { get; }
    public MachineModel Machine => _vm;

    // ---------------- architectural state ----------------
    /// <summary>RAX..R15 in encoding order.</summary>
    public readonly ulong[] Gpr = new ulong[16];
    /// <summary>Offset of the next instruction in CS (set before each handler runs; branches overwrite it).</summary>
    public ulong Rip;
    /// <summary>Offset of the instruction now executing: faults report it, and it is where they resume.</summary>
    public ulong InstrIp;
    public readonly SegmentState[] Sreg = new SegmentState[6];
    public SegmentState Ldtr, Tr;
    public TableRegister Gdtr, Idtr;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer;
    public readonly ulong[] Dr = new ulong[8];
    public readonly Vector128<byte>[] Xmm = new Vector128<byte>[16];
    public uint Mxcsr = 0x1F80;

    // MSRs the CPU itself interprets; everything else it accepts lives in OtherMsrs.
    public ulong Star, Lstar, Cstar, Sfmask, KernelGsBase, SysenterCs, SysenterEsp, SysenterEip, TscAux, Pat = 0x0007040600070406UL;
    /// <summary>IA32_APIC_BASE; <see cref="ResetApicBase"/> (the BSP flag on vCPU 0 only) until the guest writes it.</summary>
    public ulong ApicBase;
    public ulong MiscEnable = 1; // fast strings
    public readonly Dictionary<uint, ulong> OtherMsrs = new();

    public const ulong Cr0PE = 1, Cr0MP = 2, Cr0EM = 4, Cr0TS = 8, Cr0ET = 0x10, Cr0NE = 0x20, Cr0WP = 0x1_0000,
        Cr0AM = 0x4_0000, Cr0NW = 0x2000_0000, Cr0CD = 0x4000_0000, Cr0PG = 0x8000_0000;
    public const ulong Cr4VME = 1, Cr4PVI = 2, Cr4TSD = 4, Cr4DE = 8, Cr4PSE = 0x10, Cr4PAE = 0x20, Cr4MCE = 0x40,
        Cr4PGE = 0x80, Cr4PCE = 0x100, Cr4OSFXSR = 0x200, Cr4OSXMMEXCPT = 0x400;
    public const ulong EferSCE = 1, EferLME = 0x100, EferLMA = 0x400, EferNXE = 0x800;

    // ---------------- derived mode (recomputed by UpdateMode) ----------------
    /// <summary>Current privilege level.</summary>
    public int Cpl { get; private set; }
    /// <summary>16, 32 or 64: the default operand/address size of the code segment, i.e. the decoder's bitness.</summary>
    public int CodeBits { get; private set; } = 16;
    /// <summary>8 in 64-bit mode, else 4 or 2 from SS.B: the width of pushes' stack pointer.</summary>
    public int StackAddrSize { get; private set; } = 2;
    public bool LongModeActive => (Efer & EferLMA) != 0;
    public bool ProtectedMode => (Cr0 & Cr0PE) != 0;
    public bool Is64BitMode => CodeBits == 64;
    public bool IsRealMode => (Cr0 & Cr0PE) == 0;
    public bool IsV86Mode => (_flags & VM) != 0;

    // ---------------- run control ----------------
    private volatile bool _stopRequested;
    // The vCPU thread is inside Run (executing, or asleep in HLT / wait-for-SIPI): its state is its own.
    private volatile bool _inRun;
    private volatile int _pendingEvents;
    private readonly ulong[] _pendingVectors = new ulong[4];
    private volatile bool _nmiPending;
    private bool _nmiBlocked;
    // Spin count 10: a short busy spin before sleeping, and none of the sched_yield rounds the default (35) adds;
    // those cost an idle VM a burst of syscalls at every HLT.
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 10);
    /// <summary>Set by handlers that change state the current block was decoded or translated under.</summary>
    public bool BlockExit;
    /// <summary>STI / MOV SS / POP SS: interrupts are held off until after the next instruction.</summary>
    public bool InterruptShadow;
    public bool Halted;
    /// <summary>An AP after INIT: executes nothing until a STARTUP IPI (Cpu.Startup.cs).</summary>
    public bool WaitingForSipi;
    // A SIPI accepted and not yet taken, or -1 (under _startupSync; see Cpu.Startup.cs).
    private int _sipiVector = -1;
    /// <summary>An exception a restored state had in delivery; delivered first when Run resumes.</summary>
    private PendingException? _pendingException;
    private ulong _instret;
    /// <summary>Id of the block running now (0: none), for <see cref="OnBlockInvalidated"/>.</summary>
    private long _currentBlockId;

    public ulong InstructionsRetired => _instret;

    /// <summary>A fused handler ran a second instruction (the Jcc after a CMP/TEST) in one dispatch.</summary>
    internal void RetireFused() => _instret++;

    /// <summary>
    /// Set while <see cref="DebugStep"/> runs one instruction (TF or an armed breakpoint): fused handlers then run
    /// their first instruction alone, so traps and instruction breakpoints see the boundary between the two.
    /// </summary>
    internal bool Stepping;

    /// <summary>Called once per undefined/unimplemented opcode (first occurrence), for logging.</summary>
    public Action<string>? Log;

    internal Cpu(MachineModel vm, CodeCache cache, int index)
    {
        _vm = vm;
        _mem = vm.Memory;
        _hooks = vm.Hooks;
        _rr = vm.RecordReplay;
        _codeCache = cache;
        _jit = cache.Jit is { Mode: Jit.JitMode.On } j ? j : null;
        Index = index;
        ApicBase = ResetApicBase(index);
        AllocTlb();
        InitNative();
        cache.Register(this);
        UpdateInstrumented();
        SetState(CpuState.Reset());
    }

    public void Dispose()
    {
        _codeCache.Unregister(this);
        FreeTlb();
        _native?.Arena.Dispose();
        _wake.Dispose();
    }

    // ---------------- IVcpu ----------------

    public void RequestStop()
    {
        _stopRequested = true;
        _pendingEvents = 1;
        _wake.Set();
    }

    public void InjectInterrupt(byte vector)
    {
        Interlocked.Or(ref _pendingVectors[vector >> 6], 1UL << (vector & 63));
        _pendingEvents = 1;
        _wake.Set();
    }

    public void InjectNmi()
    {
        _nmiPending = true;
        _pendingEvents = 1;
        _wake.Set();
    }

    /// <summary>Guest-visible TSC frequency (CPUID 0x15/0x16 advertise it).</summary>
    public const ulong TscHz = 2_000_000_000;
    public long TscOffset;
    /// <summary>IA32_TSC_ADJUST: the sum of adjustments made to this vCPU's TSC by guest writes.</summary>
    public ulong TscAdjust;

    /// <summary>The TSC from the VM's clock (host monotonic time), scaled to <see cref="TscHz"/>.</summary>
    public ulong ReadTsc()
    {
        UInt128 t = (UInt128)(ulong)_vm.Clock.NowNs * TscHz / 1_000_000_000UL;
        return (ulong)t + (ulong)TscOffset;
    }

    private IInterruptController? _intCtrl;

    /// <summary>CR8 and IA32_TSC_DEADLINE live in the attached local APIC when there is one.</summary>
    public ILocalApicRegisters? ApicRegisters { get; private set; }

    /// <summary>
    /// The local APIC (with the PIC behind it) this vCPU takes maskable interrupts from, and its MMIO page: each
    /// vCPU sees its own APIC at IA32_APIC_BASE, so those accesses bypass the shared MMIO bus.
    /// </summary>
    public void AttachInterruptController(IInterruptController ctrl, IMmioDevice? apicMmio)
    {
        _intCtrl = ctrl;
        _apicMmio = apicMmio;
        ApicRegisters = ctrl as ILocalApicRegisters;
        ctrl.Kick = () => { _pendingEvents = 1; _wake.Set(); };
        _pendingEvents = 1;
    }

    public void PrepareRun() => _stopRequested = false;

    public VcpuExit Run()
    {
        // The stop that ended the last Run cleared this with events still queued (an interrupt injected just before
        // the pause, a restored exception): look at them again first.
        _pendingEvents = 1;
        _inRun = true;
        t_self = this;
        EnterExecution();
        try { return _rr != null ? RrLoop() : RunLoop(); }
        finally
        {
            LeaveExecution();
            t_self = null;
            _inRun = false;
        }
    }

    private VcpuExit RunLoop()
    {
        while (true)
        {
            if (_pendingEvents != 0)
            {
                // Before a stop, so that an INIT/SIPI that raced with it is not left pending in a saved state.
                if (_startupPending) HonourStartup();
                if (_stopRequested)
                {
                    _stopRequested = false;
                    _pendingEvents = 0;
                    if (_vm.PowerEvent != PowerEventKind.None) return new VcpuExit(VcpuExitReason.PowerEvent, _vm.PowerEvent.ToString());
                    return new VcpuExit(VcpuExitReason.Stopped);
                }
                if (_safePointPending) RunSafePointWork();
                if (_pendingException is { } pe && !DeliverRestoredException(pe))
                    return new VcpuExit(VcpuExitReason.Shutdown, $"triple fault delivering restored exception {pe.Vector} at {Sreg[CS].Selector:x4}:{Rip:x}");
            }
            if (WaitingForSipi)
            {
                // An AP after INIT executes nothing until a STARTUP IPI (or INIT, or a stop) wakes it.
                if (!_startupPending && !_stopRequested) Idle();
                continue;
            }
            if (Halted)
            {
                if (!HasDeliverableEvent())
                {
                    // A stop or INIT is taken at the top of the loop; the vCPU stays halted until then.
                    if (_stopRequested || _startupPending) continue;
                    if (!InterruptsEnabled && !_nmiPending && HaltIsForever)
                        return new VcpuExit(VcpuExitReason.HaltedForever, $"HLT with IF=0 at {Sreg[CS].Selector:x4}:{InstrIp:x}");
                    // HLT sleeps the thread; InjectInterrupt/InjectNmi/InjectInit/RequestStop wake it.
                    Idle();
                    continue;
                }
                Halted = false;
            }
            try
            {
                bool shadow = InterruptShadow;
                if (_pendingEvents != 0 && !shadow) DeliverPendingEvents();
                InterruptShadow = false;
                InstrIp = Rip;
                Block b = GetBlock();
                bool step1 = false;
                if (_instrumented)
                {
                    _blockTrace?.Invoke(this, b.Linear, b.Count);
                    // Execution hooks (Cpu.Introspection.cs): one instruction at a time through a hooked range.
                    step1 = _hooks.ExecArmed && ExecHookStep(b);
                }
                // TF, RF or an enabled breakpoint: one instruction at a time (Cpu.Debug.cs).
                // The STI/MOV SS shadow covers one instruction: with an event waiting, run just that one.
                if (((_flags & (TF | RF)) != 0 || _dbgStep) && DebugStep(b)) { }
                else if (step1 || (shadow && _pendingEvents != 0)) ExecuteBlock(b, 0, 1);
                else RunChained(b);
            }
            catch (CpuException ex)
            {
                if (DeliverFault(ex) is { } exit) return exit;
            }
            catch (TripleFaultException tf)
            {
                return new VcpuExit(VcpuExitReason.Shutdown, tf.Message);
            }
        }
    }

    private bool HasDeliverableEvent()
    {
        if (_nmiPending && !_nmiBlocked) return true;
        if (!InterruptsEnabled) return false;
        for (int k = 0; k < 4; k++) if (Volatile.Read(ref _pendingVectors[k]) != 0) return true;
        return _intCtrl != null && _intCtrl.HasPendingInterrupt;
    }

    /// <summary>Delivers an NMI or the highest pending external interrupt, if the guest can take it now.</summary>
    private void DeliverPendingEvents()
    {
        // A full fence, so the sources read below are read after the clear: a request posted concurrently (its
        // source set before _pendingEvents) is either seen here or leaves _pendingEvents set.
        Interlocked.Exchange(ref _pendingEvents, 0);
        if (_nmiPending && !_nmiBlocked)
        {
            _nmiPending = false;
            _nmiBlocked = true;
            InstrIp = Rip;
            _rr?.LogInterrupt(_instret, -1);
            DeliverInterrupt(Vec.NMI);
            return;
        }
        bool any = _nmiPending;
        for (int k = 3; k >= 0; k--)
        {
            ulong bits = Volatile.Read(ref _pendingVectors[k]);
            if (bits == 0) continue;
            any = true;
            if (!InterruptsEnabled) break;
            int bit = 63 - System.Numerics.BitOperations.LeadingZeroCount(bits);
            Interlocked.And(ref _pendingVectors[k], ~(1UL << bit));
            InstrIp = Rip;
            _rr?.LogInterrupt(_instret, k * 64 + bit);
            DeliverInterrupt(k * 64 + bit);
            for (int j = 0; j < 4; j++) if (Volatile.Read(ref _pendingVectors[j]) != 0) any = true;
            break;
        }
        if (!any && _intCtrl != null && _intCtrl.HasPendingInterrupt)
        {
            any = true;
            if (InterruptsEnabled)
            {
                int v = _intCtrl.AcknowledgeInterrupt();
                if (v >= 0)
                {
                    InstrIp = Rip;
                    _rr?.LogInterrupt(_instret, v);
                    DeliverInterrupt(v);
                }
            }
        }
        // Keep polling while something is still waiting (masked by IF, or more vectors queued).
        if (any || _stopRequested || _safePointPending || _startupPending) _pendingEvents = 1;
    }

    private void DeliverInterrupt(int vector)
    {
        if (!DeliverException(vector, 0, false, softwareInt: false, external: true))
            throw new TripleFaultException($"triple fault delivering interrupt {vector} at {Sreg[CS].Selector:x4}:{Rip:x}");
    }

    /// <summary>Called when IF becomes 1 (STI, POPF, IRET) so that pending interrupts are looked at again.</summary>
    public void OnInterruptsMaybeEnabled() => _pendingEvents = 1;

    /// <summary>NMI blocking ends at the next IRET (SDM 6.7.1).</summary>
    public void OnIret() { if (_nmiBlocked) { _nmiBlocked = false; if (_nmiPending) _pendingEvents = 1; } }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void ExecuteBlock(Block b, int start, int n)
    {
        _currentBlockId = b.Id;
        // n never exceeds b.Count (the arrays' length), so the per-instruction bounds checks can go.
        ref Instruction instrs = ref MemoryMarshal.GetArrayDataReference(b.Instrs);
        int k = start;
        try
        {
            fixed (delegate*<Cpu, ref Instruction, void>* handlers = b.Handlers)
            {
                for (; k < n; k++)
                {
                    ref Instruction i = ref Unsafe.Add(ref instrs, k);
                    InstrIp = Rip;
                    Rip = i.NextIP;
                    handlers[k](this, ref i);
                    if (BlockExit)
                    {
                        BlockExit = false;
                        if (_rmwNotifyPa != ulong.MaxValue) FinishRmwNotify();
                        k++;
                        break;
                    }
                }
            }
        }
        finally
        {
            _instret += (ulong)(k - start);
            _currentBlockId = 0;
        }
    }

    /// <summary>Runs a compiled block (Jit/BlockCompiler.cs); it keeps RIP, InstrIp and the retired count as ExecuteBlock does.</summary>
    private Block ExecuteCompiled(Block b, Jit.CompiledCode code)
    {
        _currentBlockId = b.Id;
        try
        {
            // The code returns the last block of its chain: where the dispatcher continues.
            return code(this);
        }
        // A filter, not catch-and-rethrow: the fault is dispatched once (guest page faults are frequent).
        catch (CpuException) when (CountFaultedPass()) { return b; }
        finally { _currentBlockId = 0; }
    }

    /// <summary>
    /// Compiled code after a RET or an indirect jump of <paramref name="src"/> that neither of its links matched: the
    /// compiled block the jump cache holds for <paramref name="rip"/>, checked as a successor link is (and nothing
    /// pending), made current and kept as src's LinkC (tried inline next time); null sends the vCPU to the dispatcher.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal Block? ChainLookup(ulong rip, Block src)
    {
        if (Jit.JitCompiler.Stats) JitChainLookups++;
        if (_pendingEvents != 0) return null;
        Block? b = _jmpCache[JmpCacheIndex(rip)];
        if (b == null || b.CompiledPtr == 0 || !LinkValid(b, rip))
        {
            if (Jit.JitCompiler.Stats)
            {
                JitChainLookupMisses++;
                if (b == null || b.Linear != rip) JitMissSlot++;
                else if (b.CompiledPtr == 0) JitMissNotCompiled++;
            }
            return null;
        }
        _currentBlockId = b.Id;
        // (Stored only when it changes: a reference store costs a GC write barrier.)
        if (src.LinkC != b) src.LinkC = b;
        return b;
    }

    /// <summary>
    /// Compiled code, before jumping from a block into its linked successor n: what the dispatcher would check
    /// (nothing pending, n still valid and still mapped at the same guest-physical page). Sets it current.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal bool ChainTo(Block n)
    {
        if (_pendingEvents != 0 || !n.Valid || !FetchMapped(n.Linear, n)) return false;
        _currentBlockId = n.Id;
        return true;
    }

    /// <summary>Exception filter: adds the instructions of the pass that completed before the fault; never catches.</summary>
    private bool CountFaultedPass()
    {
        _instret += (ulong)JitDone;
        return false;
    }

    /// <summary>Blocks run through RunChained compiled and interpreted (for DIRIGENT_JIT_STATS).</summary>
    public long JitRunsCompiled, JitRunsInterpreted;
    /// <summary>DIRIGENT_JIT_STATS: interpreted runs of blocks queued for (and waiting for) the compiler.</summary>
    public long JitRunsWhileQueued;
    /// <summary>DIRIGENT_JIT_STATS: ChainLookup calls (RET and indirect JMP/CALL exits of compiled code) and those that found nothing.</summary>
    public long JitChainLookups, JitChainLookupMisses, JitMissSlot, JitMissNotCompiled;

    // ---- entry points of compiled code ----
    /// <summary>Compiled code: instructions of the current pass completed before a call that may fault.</summary>
    internal int JitDone;

    /// <summary>A bundled block's entries ran out (BlockCompiler.Bundle.cs): the compiler gives it a method of its own.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void JitTierUp(Block b) => _codeCache.Jit?.TierUp(b);

    /// <summary>Compiled code leaves after an instruction that set BlockExit, as ExecuteBlock does.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void JitBlockExit()
    {
        BlockExit = false;
        if (_rmwNotifyPa != ulong.MaxValue) FinishRmwNotify();
    }

    /// <summary>
    /// Compiled code: instruction k of b through its interpreter handler <paramref name="handler"/>, with the state
    /// the interpreter would have (InstrIp, RIP after it, the pass's count so far); true when it ended the block
    /// (BlockExit, handled as <see cref="JitBlockExit"/>). One call in the compiled block instead of the stores,
    /// which kept the block's IL, and the .NET JIT's time, larger.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal bool JitHandler(Block b, int k, nint handler)
    {
        ref Instruction i = ref JitAt(b, k);
        ((delegate*<Cpu, ref Instruction, void>)handler)(this, ref i);
        if (!BlockExit) return false;
        JitBlockExit();
        return true;
    }

    /// <summary>
    /// Compiled code: instructions k..k+m-1 of b (a PUSH or POP run whose one soft-TLB check missed) through their
    /// interpreter handlers, one by one, each with the state the interpreter would have; true when one ended the block,
    /// with the instructions up to it counted here (the caller returns).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal bool JitHandlerRun(Block b, int k, int m)
    {
        for (int j = k; j < k + m; j++)
        {
            if (!JitHandler(b, j, (nint)CodeCache.HandlerFor(ref b.Instrs[j], 64))) continue;
            _instret += (ulong)(j + 1);
            return true;
        }
        return false;
    }

    /// <summary>The state the interpreter has at instruction k of b: InstrIp, RIP after it, the pass's count so far.</summary>
    private ref Instruction JitAt(Block b, int k)
    {
        ref Instruction i = ref b.Instrs[k];
        JitDone = k;
        InstrIp = i.IP;
        Rip = i.NextIP;
        return ref i;
    }

    /// <summary>Compiled code: a soft-TLB miss of a read by instruction k of b (state set as for <see cref="JitHandler"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal ulong JitReadSlow(ulong la, int size, Block b, int k)
    {
        JitAt(b, k);
        return ReadSlow(la, size);
    }

    /// <summary>
    /// Compiled code: a soft-TLB miss of a write by instruction k of b; true when the store ended the block (into this
    /// block's code, or an MMIO write that stops it), handled as <see cref="JitBlockExit"/>: the caller leaves after k.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal bool JitWriteSlow(ulong la, int size, ulong v, Block b, int k)
    {
        JitAt(b, k);
        WriteSlow(la, size, v);
        if (!BlockExit) return false;
        JitBlockExit();
        return true;
    }

    // The entry points of compiled code are not inlined into it: the .NET JIT's inlining attempts at every call site
    // cost compile time (the tier's main cost), and these are off the hot path or too big to gain from it.
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal ulong SegmentBase(int seg) => Sreg[seg].Base;

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal bool JitTestCondition(ConditionCode cc) => TestCondition(cc);

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal bool JitGetCF() => GetCF();

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void JitSetCfOf(ulong cf, ulong of) => SetCfOf(cf, of);

    /// <summary>Compiled code: #GP(0) at the current instruction (a non-canonical RET target).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void RaiseGp0() => throw new CpuException(Vec.GP, 0);

    /// <summary>
    /// Runs b and then, while nothing needs the outer loop (an event, HLT, an interrupt shadow, TF, tracing), the
    /// blocks that follow it, found through b's successor links before the jump cache. (Arming a breakpoint sets
    /// _pendingEvents, so it ends the chain too.) Only 64-bit code chains:
    /// there the linear address is RIP and no CS limit applies, so a link is valid exactly when the jump cache
    /// would accept the block.
    /// </summary>
    private void RunChained(Block b)
    {
        while (true)
        {
            var code = b.Compiled;
            if (code != null && !_instrumented)
            {
                // Compiled blocks may have chained into others: continue from the last one that ran.
                b = ExecuteCompiled(b, code);
                JitRunsCompiled++;
            }
            else
            {
                // The native tier's code first (Cpu.Native.cs), then the interpreter for what it did not do: from the
                // instruction it stopped at, through the fused last pair's handler when it stopped before that pair,
                // else the last handler alone.
                int k = _native != null && b.Bits == 64 && !_instrumented ? RunNative(ref b, _native) : 0;
                if (k < b.Count) ExecuteBlock(b, k, k >= b.RunCount ? b.Count : b.RunCount);
                JitRunsInterpreted++;
                if (Jit.JitCompiler.Stats) { b.InterpRuns++; if (b.JitQueued != 0) JitRunsWhileQueued++; }
                // (>=, and not queued: a count that raced with the compiler's reset of a cold block is not lost.)
                if (_jit != null && b.Bits == 64 && ++b.Heat >= _jit.ThresholdFor(b) && b.JitQueued == 0) _jit.Enqueue(b);
            }
            if (_pendingEvents != 0 || Halted || InterruptShadow || (_flags & (TF | RF)) != 0 || CodeBits != 64 || _instrumented)
                return;
            ulong rip = Rip;
            Block? n = b.Succ0;
            if (n == null || !LinkValid(n, rip))
            {
                n = b.Succ1;
                if (n == null || !LinkValid(n, rip))
                {
                    InstrIp = rip;
                    n = GetBlock();
                    b.Succ1 = b.Succ0;
                    b.Succ0 = n;
                }
            }
            if (_linkFrom != null) LinkNative(b, n, rip, _native!);
            // Let a compiled block jump straight into its compiled successor next time.
            // (Stored only when it changes: a reference store costs a GC write barrier.) A successor on b's own page is
            // entered with lighter checks (BlockCompiler.ExitTo): it is linked only if it does not run onto the next page.
            if (n.CompiledPtr != 0 && (b.CompiledPtr != 0 || b.RegionMember) && (n.Page1 == ulong.MaxValue || (rip >> 12) != (b.Linear >> 12)))
            {
                if (rip == b.TargetA) { if (b.LinkA != n) b.LinkA = n; }
                else if (rip == b.TargetB || b.DynamicExit) { if (b.LinkB != n) b.LinkB = n; }
            }
            b = n;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool LinkValid(Block n, ulong rip) => n.Linear == rip && n.Ip == rip && n.Bits == 64 && n.Valid && FetchMapped(rip, n);

    /// <summary>Ends the current block after this instruction (mode, paging or code changed).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void EndBlock() => BlockExit = true;

    /// <summary>The code cache tells the vCPU that wrote (on its own thread) that the block it is running was overwritten.</summary>
    internal void OnBlockInvalidated(Block b)
    {
        if (b.Id == _currentBlockId) BlockExit = true;
    }

    // ---------------- block lookup ----------------

    private const int JmpCacheBits = 14;
    private readonly Block?[] _jmpCache = new Block?[2 << JmpCacheBits];

    internal void FlushJmpCache() => Array.Clear(_jmpCache);

    /// <summary>The jump-cache slot of a linear address (user and supervisor code have separate halves).</summary>
    private int JmpCacheIndex(ulong linear) =>
        (int)((linear ^ (linear >> JmpCacheBits)) & ((1 << JmpCacheBits) - 1)) + (Cpl == 3 ? 1 << JmpCacheBits : 0);

    private Block GetBlock()
    {
        ulong linear = Is64BitMode ? Rip : (uint)(Sreg[CS].Base + Rip);
        int idx = JmpCacheIndex(linear);
        Block? b = _jmpCache[idx];
        // A jump-cache hit is only trusted while the execute TLB still maps the block's page(s) to the same
        // guest-physical frames, so CR3 switches and INVLPG need no jump-cache flush: the TLB flush suffices.
        if (b != null && b.Valid && b.Linear == linear && b.Ip == Rip && b.Bits == CodeBits && FetchMapped(linear, b))
            return b;
        if (!Is64BitMode && Rip > Sreg[CS].Limit) throw new CpuException(Vec.GP, 0);
        ulong phys = TranslateFetch(linear);
        b = _codeCache.Lookup(phys, Rip, CodeBits);
        if (b == null || !b.Valid || b.Linear != linear ||
            (b.Page1 != ulong.MaxValue && (TranslateFetch((linear | 0xFFF) + 1) & ~0xFFFUL) != b.Page1))
        {
            b = _codeCache.Translate(this, linear, phys, Rip, CodeBits);
        }
        _jmpCache[idx] = b;
        return b;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool FetchMapped(ulong linear, Block b)
    {
        ulong page = linear >> 12;
        TlbEntry* e = _tlbX + (page & TlbMask);
        if (e->Tag != page || e->PhysPage != b.Page0) return false;
        if (b.Page1 == ulong.MaxValue) return true;
        TlbEntry* e2 = _tlbX + ((page + 1) & TlbMask);
        return e2->Tag == page + 1 && e2->PhysPage == b.Page1;
    }

    internal void SetCr2Raw(ulong v) => Cr2 = v;

    public void Halt()
    {
        Halted = true;
        EndBlock();
    }

    public void LogOnce(string message) => Log?.Invoke(message);

    /// <summary>
    /// An instruction's fault, delivered precisely at it (RIP back at the instruction, a pending read-modify-write
    /// notification finished); the exit when delivery itself fails (triple fault), else null.
    /// </summary>
    private VcpuExit? DeliverFault(CpuException ex)
    {
        Rip = InstrIp;
        if (_rmwNotifyPa != ulong.MaxValue) FinishRmwNotify();
        BlockExit = false;
        // A fault's handler sees RF=1 in the pushed RFLAGS, so that returning to the instruction does not
        // hit an instruction breakpoint there again (SDM 17.3.1.1); delivery then clears RF.
        if (IsFaultClass(ex.Vector)) _flags |= RF;
        if (!DeliverException(ex.Vector, ex.ErrorCode, ex.HasErrorCode, softwareInt: false))
            return new VcpuExit(VcpuExitReason.Shutdown, $"triple fault ({ex.Message}) at {Sreg[CS].Selector:x4}:{InstrIp:x}");
        return null;
    }
}

/// <summary>A fault while delivering a double fault: the CPU shuts down (a PC resets).</summary>
public sealed class TripleFaultException(string message) : Exception(message);
