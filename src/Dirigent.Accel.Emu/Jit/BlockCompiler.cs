using System.Reflection;
using System.Reflection.Emit;
using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>A compiled block: runs the block's instructions (and loops on itself while it may), as ExecuteBlock would;
/// returns the last block it ran (itself, or the last one it chained into).</summary>
internal delegate Block CompiledCode(Cpu c);

/// <summary>
/// Translates one decoded 64-bit block to IL (a DynamicMethod closed over its <see cref="Block"/>), which the .NET
/// JIT turns into host code. Guest registers live in IL locals from first use to the block's exits; the arithmetic
/// flags of the last flag-writing instruction live in locals too (op, size, operands and result, the same record as
/// the interpreter's lazy flags) and are written to the CPU only at exits and before anything that can fault or
/// look at them; a Jcc/CMOVcc after CMP/SUB/TEST/logic/INC/DEC tests the operands directly. Memory operands inline
/// the soft-TLB hit path and call the interpreter's slow path only on a miss. Instructions the compiler does not
/// know run through the interpreter's own handler (a direct <c>calli</c>, with the registers written back first and
/// reloaded after), so every instruction is supported and behaves exactly as interpreted. A block whose last
/// instruction jumps back to its own start, and which is all inline, loops inside the method (registers stay in
/// locals) until an event is pending, the block is invalidated or it falls out.
/// Precision: before any call that can fault, RIP/InstrIp, the registers, the flags and the retired count are
/// those of the faulting instruction; so the exception is delivered as from the interpreter.
/// </summary>
internal sealed partial class BlockCompiler
{
    private static readonly Type CpuT = typeof(Cpu);
    private static readonly FieldInfo FGpr = Field("Gpr"), FRip = Field("Rip"), FInstrIp = Field("InstrIp"),
        FBlockExit = Field("BlockExit"), FPending = Field("_pendingEvents"), FTlbR = Field("_tlbR"), FTlbW = Field("_tlbW"), FTlbX = Field("_tlbX"),
        FInstret = Field("_instret"), FJitDone = Field("JitDone"), FLazyOp = Field("_lazyOp"), FLazySize = Field("_lazySize"),
        FLazyRes = Field("_lazyRes"), FLazyA = Field("_lazyA"), FLazyB = Field("_lazyB"), FLazyCarryIn = Field("_lazyCarryIn");
    private static readonly FieldInfo FValid = typeof(Block).GetField(nameof(Block.Valid))!,
        FLinkA = typeof(Block).GetField(nameof(Block.LinkA))!, FLinkB = typeof(Block).GetField(nameof(Block.LinkB))!,
        FLinkC = typeof(Block).GetField(nameof(Block.LinkC))!, FPage0 = typeof(Block).GetField(nameof(Block.Page0))!,
        FPage1 = typeof(Block).GetField(nameof(Block.Page1))!,
        FCompiledPtr = typeof(Block).GetField(nameof(Block.CompiledPtr))!, FInstrs = typeof(Block).GetField(nameof(Block.Instrs))!,
        FBlockId = typeof(Block).GetField(nameof(Block.Id))!, FLinear = typeof(Block).GetField(nameof(Block.Linear))!;
    private static readonly FieldInfo FCurrentBlockId = Field("_currentBlockId"), FSreg = Field(nameof(Cpu.Sreg)),
        FSegBase = typeof(SegmentState).GetField(nameof(SegmentState.Base))!;
    private static readonly MethodInfo MChainTo = Method(nameof(Cpu.ChainTo)), MChainLookup = Method(nameof(Cpu.ChainLookup));
    private static readonly MethodInfo MReadSlow = Method(nameof(Cpu.JitReadSlow)), MWriteSlow = Method(nameof(Cpu.JitWriteSlow)),
        MHandler = Method(nameof(Cpu.JitHandler)),
        MTestCondition = Method(nameof(Cpu.JitTestCondition)), MGetCF = Method(nameof(Cpu.JitGetCF)),
        MJitExit = Method(nameof(Cpu.JitBlockExit)),
        MRaiseGp = Method(nameof(Cpu.RaiseGp0));
    private static readonly MethodInfo MSetMulFlags = typeof(Instructions.IntegerMulDiv).GetMethod(nameof(Instructions.IntegerMulDiv.SetMulFlagsForJit),
        BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)!;
    private static readonly MethodInfo MBigMul = typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(long), typeof(long), typeof(long).MakeByRefType()])!;
    /// <summary>Compile-time only: the pending record is an IMUL's (_fr the product, _fb 1 on overflow), never stored as a LazyOp.</summary>
    private const LazyOp MulRecord = (LazyOp)200;
    /// <summary>Compile-time only: an SHL/SHR/SAR's record (_fr the result, _fa CF, _fb OF).</summary>
    private const LazyOp ShiftRecord = (LazyOp)201;
    private static readonly MethodInfo MSetShiftFlags = typeof(Instructions.IntegerShift).GetMethod(nameof(Instructions.IntegerShift.SetShiftFlagsForJit),
        BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)!;
    private static readonly MethodInfo MSetCfOf = Method(nameof(Cpu.JitSetCfOf));
    private static readonly Type[] Params = [typeof(Block), typeof(Cpu)];
    private static readonly Type[] HandlerParams = [typeof(Cpu), typeof(Instruction).MakeByRefType()];

    private static FieldInfo Field(string name) =>
        CpuT.GetField(name, BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
        ?? throw new MissingFieldException(CpuT.Name, name);

    private static MethodInfo Method(string name) =>
        CpuT.GetMethod(name, BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
        ?? throw new MissingMethodException(CpuT.Name, name);

    // ---- per compilation ----
    /// <summary>The block being emitted: the head, or a region member while its instructions are emitted.</summary>
    private Block _b;
    private readonly Block _head;
    private readonly ILGenerator _il;
    private readonly DynamicMethod _dm;
    private readonly LocalBuilder?[] _reg = new LocalBuilder?[16];
    private readonly bool[] _loaded = new bool[16], _dirty = new bool[16];
    private readonly LocalBuilder _gpr, _la, _page, _ent, _val, _tmp, _fa, _fb, _fr, _fcin, _nb, _ptr;
    /// <summary>
    /// Registers in memory: a guest register the block touches fewer than <see cref="LocalUses"/> times is loaded and
    /// stored in the CPU's register array at each access (through <see cref="_gp"/>, a byref to its first element)
    /// instead of living in an IL local that exits, fault paths and handler calls must write back. Fewer locals and less
    /// write-back IL is less for the .NET JIT to do (its time is ~0.7 us per IL byte plus ~140 us per method, and
    /// compiling is what a boot waits for); a register used more stays in a local. Self-loops, where run time is what
    /// counts, keep every register in locals.
    /// </summary>
    private readonly bool[] _inMemory = new bool[16];
    private LocalBuilder? _gp, _regTmp;
    /// <summary>Every instruction is inline or a handler that keeps chaining (<see cref="HandlerKeepsChaining"/>): nothing
    /// in the block can change TF, the interrupt shadow or the mode, so its exits may jump straight into the next
    /// compiled block.</summary>
    private bool _chainable;
    private enum Slot { None, A, B }
    // The pending flag record held in _fa/_fb/_fr/_fcin (None: the CPU's fields are current).
    private LazyOp _fop = LazyOp.None;
    private int _fsize;
    private int _k;              // instruction being compiled
    private bool _selfLoop;
    /// <summary>An indirect branch's target (declared when needed).</summary>
    private LocalBuilder? _target;
    /// <summary>Set while an indirect CALL pushes: an exit after that store leaves for the target in this local.</summary>
    private LocalBuilder? _dynamicRipAfter;

    /// <summary>IL bytes of the method (the code budget's measure).</summary>
    public int IlBytes { get; private set; }
    /// <summary>Instructions compiled inline (the rest call their interpreter handler).</summary>
    public int Inlined { get; private set; }

    private sealed class PeelMismatch : Exception;

    private readonly bool _allowLoop;
    // Self-loops are emitted twice: a first pass entered with the CPU's flags, then the loop proper, entered from
    // either pass's back edge with the flag record in locals (so no pass writes the flags back to the CPU).
    private Label _loopHead;
    private int _pass = 1;
    private (LazyOp Op, int Size) _headFlags;

    private BlockCompiler(Block b, bool allowLoop, Block[]? members = null)
    {
        _b = _head = b;
        _members = members;
        _allowLoop = allowLoop;
        _dm = new DynamicMethod($"jit_{b.Ip:x}", typeof(Block), Params, typeof(Cpu).Module, skipVisibility: true);
        _il = _dm.GetILGenerator(256 + b.Count * 64);
        _gpr = _il.DeclareLocal(typeof(ulong[]));
        _la = _il.DeclareLocal(typeof(ulong));
        _page = _il.DeclareLocal(typeof(ulong));
        _ent = _il.DeclareLocal(typeof(nint));
        _val = _il.DeclareLocal(typeof(ulong));
        _tmp = _il.DeclareLocal(typeof(ulong));
        _fa = _il.DeclareLocal(typeof(ulong));
        _fb = _il.DeclareLocal(typeof(ulong));
        _fr = _il.DeclareLocal(typeof(ulong));
        _fcin = _il.DeclareLocal(typeof(bool));
        _nb = _il.DeclareLocal(typeof(Block));
        _ptr = _il.DeclareLocal(typeof(nint));
    }

    /// <summary>Compiles a 64-bit block; null when the block cannot be compiled (other bitness, nothing to run).</summary>
    /// <paramref name="lookup"/> finds decoded blocks (guest-physical address, IP) for a region around b (see
    /// BlockCompiler.Region.cs); without it, or when there is none, b is compiled alone.
    public static (CompiledCode Code, int IlBytes, int Inlined, DynamicMethod Method)? Compile(Block b, Func<ulong, ulong, Block?>? lookup = null, int minHeat = 0)
    {
        if (b.Bits != 64 || b.Count == 0 || !b.Valid) return null;
        // A block that already runs inside another block's region is compiled alone (it is entered here from elsewhere):
        // compiling its neighbours again would double the .NET JIT's work for code that already has a method.
        if (lookup != null && !(b.RegionMember && b.Region == null) && BuildRegion(b, lookup, minHeat) is { } members)
        {
            var rc = new BlockCompiler(b, allowLoop: false, members);
            rc.EmitRegion();
            // Published before the method can run: its IL reads the members through b.Region.
            b.Region = members;
            for (int j = 1; j < members.Length; j++) members[j].RegionMember = true;
            return ((CompiledCode)rc._dm.CreateDelegate(typeof(CompiledCode), b), rc.IlBytes, rc.Inlined, rc._dm);
        }
        var c = new BlockCompiler(b, allowLoop: true);
        try { c.Emit(); }
        catch (PeelMismatch)
        {
            // The loop body's flag state at its back edge differs between passes (not expected): compile it without
            // the in-method loop.
            c = new BlockCompiler(b, allowLoop: false);
            c.Emit();
        }
        var code = (CompiledCode)c._dm.CreateDelegate(typeof(CompiledCode), b);
        return (code, c.IlBytes, c.Inlined, c._dm);
    }

    private void Emit()
    {
        EmitGprInit();
        if (HasInlineSse(_b)) LoadXmmArray();
        EmitBlock();
        EmitChainTails();
        IlBytes = _il.ILOffset;
    }

    private static bool HasInlineSse(Block b)
    {
        for (int k = 0; k < b.Count; k++)
            if (Classify(ref b.Instrs[k]) == Kind.Sse) return true;
        return false;
    }

    /// <summary>Block _b's code, after the method's entry (EmitGprInit, and LoadXmmArray if it has inline SSE); its
    /// chaining exits branch to the method's shared tails (EmitChainTails, after every block of the method).</summary>
    private void EmitBlock()
    {
        int n = _b.Count;
        var ins = _b.Instrs;
        // A self-loop: the last instruction branches back to the block's start and everything is inline.
        ref Instruction last = ref ins[n - 1];
        _selfLoop = _allowLoop && (last.Code.IsJccShortOrNear() || last.Code.IsJmpShortOrNear()) && last.Op0Kind == OpKind.NearBranch64 &&
                    last.NearBranch64 == _b.Ip;
        for (int k = 0; k < n - 1 && _selfLoop; k++) if (!CanInline(ref ins[k])) _selfLoop = false;
        _chainable = true;
        for (int k = 0; k < n - 1 && _chainable; k++) if (!CanInline(ref ins[k]) && !HandlerKeepsChaining(ref ins[k])) _chainable = false;
        if (!CanInline(ref last) && !IsInlineBranch(ref last)) _chainable = false;
        if (!_selfLoop && LocalUses > 0)
        {
            var uses = GprUses(ins, n);
            for (int r = 0; r < 16; r++) _inMemory[r] = uses[r] > 0 && uses[r] < LocalUses;
        }
        if (_selfLoop)
        {
            // Every register the block uses is loaded before the loop head, so the locals are valid on every pass (and
            // written back at every exit).
            foreach (int r in GprsUsed(ins, n)) { Load(r); _dirty[r] = true; }
        }
        _loopHead = _il.DefineLabel();
        EmitBody();
        if (_selfLoop)
        {
            _pass = 2;
            (_fop, _fsize) = _headFlags;
            _il.MarkLabel(_loopHead);
            EmitBody();
        }
    }

    private void EmitBody()
    {
        int n = _b.Count;
        var ins = _b.Instrs;
        int counted = _pass == 1 ? 1 : 0;
        for (_k = 0; _k < n; _k++)
        {
            ref Instruction i = ref ins[_k];
            bool isLast = _k == n - 1;
            int off0 = _il.ILOffset;
            if (!isLast && StackRun(ins, _k, n) is int m and >= 2) { EmitStackRun(ins, _k, m); Inlined += counted * m; IlStat(IlStatKind.Inline, ref i, off0); _k += m - 1; continue; }
            if (isLast && EmitBranchEnd(ref i)) { Inlined += counted; IlStat(IlStatKind.End, ref i, off0); break; }
            if (EmitInline(ref i)) { Inlined += counted; IlStat(IlStatKind.Inline, ref i, off0); if (!isLast) continue; off0 = _il.ILOffset; ExitTo(i.NextIP, n, Slot.A); IlStat(IlStatKind.FallExit, ref i, off0); break; }
            EmitHandlerCall(ref i);
            IlStat(IlStatKind.Handler, ref i, off0);
            if (isLast)
            {
                // The handler set RIP (a branch, or the next instruction); registers were written back before it.
                AddInstret(n);
                EmitReturn();
            }
        }
    }

    /// <summary>DIRIGENT_JIT_ILSTATS=1: IL bytes per instruction form and per block end (printed by `bench jit-compile`).</summary>
    internal static readonly System.Collections.Concurrent.ConcurrentDictionary<string, (long N, long Bytes)>? IlStats =
        Environment.GetEnvironmentVariable("DIRIGENT_JIT_ILSTATS") == "1" ? new() : null;
    private enum IlStatKind { Inline, End, FallExit, Handler }

    /// <summary>DIRIGENT_JIT_ILSTATS: the IL bytes emitted since <paramref name="off0"/>, under the instruction's form
    /// (the key is made only when the statistics are on: the compiler's own time is what they measure).</summary>
    private void IlStat(IlStatKind kind, ref Instruction i, int off0)
    {
        if (IlStats == null || _pass != 1) return;
        string key = kind switch
        {
            IlStatKind.End => "end:" + i.Mnemonic,
            IlStatKind.FallExit => "fallexit",
            IlStatKind.Handler => "handler",
            _ => i.Mnemonic + (i.OpCount > 0 && (i.Op0Kind == OpKind.Memory || (i.OpCount > 1 && i.Op1Kind == OpKind.Memory)) ? "/m" : ""),
        };
        int d = _il.ILOffset - off0;
        IlStats.AddOrUpdate(key, (1, d), (_, v) => (v.N + 1, v.Bytes + d));
    }

    /// <summary>
    /// A mid-block instruction left to its handler that cannot change what the dispatcher checks between blocks (TF,
    /// the interrupt shadow, HLT, the code segment): the block's exits may still chain. Handlers that end the block
    /// early (BlockExit) leave through the dispatcher anyway; STI/POPF/IRET and segment loads are excluded.
    /// </summary>
    private static bool HandlerKeepsChaining(ref Instruction i)
    {
        if (i.FlowControl != Iced.Intel.FlowControl.Next) return false;
        switch (i.Mnemonic)
        {
            case Mnemonic.Popf or Mnemonic.Popfd or Mnemonic.Popfq or Mnemonic.Sti or Mnemonic.Cli or Mnemonic.Hlt or Mnemonic.Lss
                or Mnemonic.Lfs or Mnemonic.Lgs or Mnemonic.Les or Mnemonic.Lds or Mnemonic.Iret or Mnemonic.Iretd or Mnemonic.Iretq
                or Mnemonic.Swapgs or Mnemonic.Wrmsr or Mnemonic.Lgdt or Mnemonic.Lidt or Mnemonic.Lldt or Mnemonic.Ltr or Mnemonic.Invlpg:
                return false;
        }
        // Segment register writes (MOV Sreg, POP Sreg) change the code/stack segment or start a shadow; control and
        // debug register writes change the mode or paging.
        if (i.Op0Kind != OpKind.Register) return true;
        Register r = i.Op0Register;
        return !r.IsSegmentRegister() && !r.IsCR() && !r.IsDR();
    }

    // ---------------- registers ----------------

    private static readonly InstructionInfoFactory s_info = new();

    /// <summary>How many times the block's instructions read or write each GPR (by index; stack operations count RSP).</summary>
    private static int[] GprUses(Instruction[] ins, int n)
    {
        var uses = new int[16];
        lock (s_info)
            for (int k = 0; k < n; k++)
                foreach (var u in s_info.GetInfo(ins[k]).GetUsedRegisters())
                {
                    Register full = u.Register.GetFullRegister();
                    if (full is >= Register.RAX and <= Register.R15) uses[full - Register.RAX]++;
                }
        return uses;
    }

    /// <summary>The GPRs (by index) the block's instructions read or write, RSP included for stack operations.</summary>
    private static IEnumerable<int> GprsUsed(Instruction[] ins, int n)
    {
        var uses = GprUses(ins, n);
        return Enumerable.Range(0, 16).Where(r => uses[r] > 0);
    }

    /// <summary>The IL local of guest register r, declared at its first use (fewer locals: less for the .NET JIT to allocate).</summary>
    private LocalBuilder Reg(int r) => _reg[r] ??= _il.DeclareLocal(typeof(ulong));

    /// <summary>
    /// Accesses from which a register gets an IL local (<see cref="_inMemory"/>); DIRIGENT_JIT_LOCAL_USES=N overrides it
    /// (0: every register in a local, a large N: every register in memory), to compare.
    /// </summary>
    internal static readonly int LocalUses =
        int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_LOCAL_USES"), out int u) ? u : 3;

    /// <summary>Pushes guest register r's current value.</summary>
    private void EmitLdReg(int r)
    {
        if (!_inMemory[r]) { _il.Emit(OpCodes.Ldloc, Reg(r)); return; }
        EmitRegAddress(r);
        _il.Emit(OpCodes.Ldind_I8);
    }

    /// <summary>Stores the value on the stack into guest register r (no bookkeeping: see <see cref="StoreReg"/>).</summary>
    private void EmitStReg(int r)
    {
        if (!_inMemory[r]) { _il.Emit(OpCodes.Stloc, Reg(r)); return; }
        _il.Emit(OpCodes.Stloc, _regTmp!);
        EmitRegAddress(r);
        _il.Emit(OpCodes.Ldloc, _regTmp!);
        _il.Emit(OpCodes.Stind_I8);
    }

    private void EmitRegAddress(int r)
    {
        _il.Emit(OpCodes.Ldloc, _gp!);
        if (r == 0) return;
        _il.Emit(OpCodes.Ldc_I4, r * 8);
        _il.Emit(OpCodes.Add);
    }

    private void Load(int r)
    {
        if (_inMemory[r] || _loaded[r]) return;
        EmitGprToLocal(r);
        _loaded[r] = true;
    }

    /// <summary>
    /// At the method's start: _gp = a byref to the CPU's register array's first element. Registers are read and
    /// written through it at constant offsets, with no bounds check per access (ldelem/stelem checked each index).
    /// </summary>
    private void EmitGprInit()
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, FGpr);
        _il.Emit(OpCodes.Stloc, _gpr);
        _gp = _il.DeclareLocal(typeof(ulong).MakeByRefType());
        _regTmp = _il.DeclareLocal(typeof(ulong));
        _il.Emit(OpCodes.Ldloc, _gpr);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Ldelema, typeof(ulong));
        _il.Emit(OpCodes.Stloc, _gp);
    }

    /// <summary>Guest register r from the CPU into its local (no bookkeeping).</summary>
    private void EmitGprToLocal(int r)
    {
        EmitRegAddress(r);
        _il.Emit(OpCodes.Ldind_I8);
        _il.Emit(OpCodes.Stloc, Reg(r));
    }

    /// <summary>Guest register r's local to the CPU (no bookkeeping).</summary>
    private void EmitLocalToGpr(int r)
    {
        EmitRegAddress(r);
        _il.Emit(OpCodes.Ldloc, Reg(r));
        _il.Emit(OpCodes.Stind_I8);
    }

    private void PushReg(int r) { Load(r); EmitLdReg(r); }

    /// <summary>Stores the value on the stack to register r (the caller has zero-extended 32-bit results).</summary>
    private void StoreReg(int r)
    {
        EmitStReg(r);
        _loaded[r] = true;
        _dirty[r] = true;
    }

    /// <summary>Writes dirty registers back to the CPU (they stay dirty: this may be on a conditional path).</summary>
    private void SpillRegs()
    {
        for (int r = 0; r < 16; r++)
        {
            if (!_dirty[r] || _inMemory[r]) continue;
            EmitLocalToGpr(r);
        }
    }

    /// <summary>Writes the pending flag record to the CPU's lazy-flag fields.</summary>
    private void SpillFlags()
    {
        if (_fop == LazyOp.None) return;
        if (_fop == DynamicRecord) { EmitDynamicSpill(); return; }
        if (_fop == ShiftRecord)
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldc_I4, _fsize);
            _il.Emit(OpCodes.Ldloc, _fa);
            _il.Emit(OpCodes.Ldloc, _fb);
            _il.Emit(OpCodes.Call, MSetShiftFlags);
            return;
        }
        if (_fop == MulRecord)
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldc_I4, _fsize);
            _il.Emit(OpCodes.Ldloc, _fb);
            _il.Emit(OpCodes.Conv_I4);
            _il.Emit(OpCodes.Call, MSetMulFlags);
            return;
        }
        StoreField(FLazyOp, () => _il.Emit(OpCodes.Ldc_I4, (int)_fop));
        StoreField(FLazySize, () => _il.Emit(OpCodes.Ldc_I4, _fsize));
        StoreField(FLazyRes, () => _il.Emit(OpCodes.Ldloc, _fr));
        StoreField(FLazyA, () => _il.Emit(OpCodes.Ldloc, _fa));
        StoreField(FLazyB, () => _il.Emit(OpCodes.Ldloc, _fb));
        if (_fop is LazyOp.Inc or LazyOp.Dec) StoreField(FLazyCarryIn, () => _il.Emit(OpCodes.Ldloc, _fcin));
    }

    private void StoreField(FieldInfo f, Action value)
    {
        _il.Emit(OpCodes.Ldarg_1);
        value();
        _il.Emit(OpCodes.Stfld, f);
    }

    private void StoreConst(FieldInfo f, ulong v) => StoreField(f, () => _il.Emit(OpCodes.Ldc_I8, (long)v));

    /// <summary>State for a call that may fault or read the CPU: registers, flags, RIP/InstrIp, the retired count.</summary>
    private void Sync(ref Instruction i)
    {
        SpillRegs();
        SpillFlags();
        StoreField(FJitDone, () => _il.Emit(OpCodes.Ldc_I4, _k));
        StoreConst(FInstrIp, i.IP);
        StoreConst(FRip, i.NextIP);
    }

    private void AddInstret(int count)
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, FInstret);
        _il.Emit(OpCodes.Ldc_I8, (long)count);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stfld, FInstret);
    }

    /// <summary>
    /// Leaves the block with RIP = target after <paramref name="count"/> instructions; through a chain slot, straight
    /// into the compiled block linked there when the dispatcher's checks pass (a tail call: chains do not grow the stack).
    /// </summary>
    private void ExitTo(ulong target, int count, Slot slot = Slot.None, bool spill = true)
    {
        if (TryRegionEdge(target, count, slot)) return;
        if (spill)
        {
            SpillRegs();
            SpillFlags();
        }
        if (_dynamicRipAfter != null) StoreField(FRip, () => _il.Emit(OpCodes.Ldloc, _dynamicRipAfter));
        else StoreConst(FRip, target);
        AddInstret(count);
        if (_chainable && slot != Slot.None)
        {
            if (slot == Slot.A) _b.TargetA = target; else _b.TargetB = target;
            EmitLdBlock();
            _il.Emit(OpCodes.Ldfld, slot == Slot.A ? FLinkA : FLinkB);
            _il.Emit(OpCodes.Stloc, _nb);
            // The checks and the jump are emitted once per method (see EmitChainTails), not at every exit.
            bool samePage = (target >> 12) == (_b.Linear >> 12);
            ref Label? tail = ref samePage ? ref _tailSamePage : ref _tailOtherPage;
            tail ??= _il.DefineLabel();
            _il.Emit(OpCodes.Br, tail.Value);
            return;
        }
        EmitReturn();
    }

    // The shared ends of the chaining exits (ExitTo): _nb holds the linked successor (or null), RIP and the count are stored.
    private Label? _tailSamePage, _tailOtherPage;

    /// <summary>Emits the chaining exits' shared ends that were used, after the body.</summary>
    private void EmitChainTails()
    {
        if (_tailSamePage is { } same) EmitChainTail(same, samePage: true);
        if (_tailOtherPage is { } other) EmitChainTail(other, samePage: false);
    }

    private void EmitChainTail(Label at, bool samePage)
    {
        _il.MarkLabel(at);
        Label plain = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _nb);
        _il.Emit(OpCodes.Brfalse, plain);
        EmitChainChecks(plain, samePage);
        EmitTailJump(plain);
        _il.MarkLabel(plain);
        EmitReturn();
    }

    /// <summary>
    /// ChainTo's checks of the successor in _nb, inline (emitted once per method, in a shared tail), then it is made
    /// current; branches to <paramref name="fail"/> when the dispatcher must decide. Nothing may be pending and the
    /// successor must still be valid. A successor on another page must also still be mapped by the execute TLB to the
    /// frame it was decoded from (one that runs onto a second page, rare, is left to ChainTo itself; as a call,
    /// ChainTo was 5.6% of a shell loop's time). One on this block's own page needs no more: the dispatcher links
    /// only those that do not run onto the next page, and this block runs, so the page maps to the frame both were
    /// decoded from.
    /// </summary>
    private void EmitChainChecks(Label fail, bool samePage)
    {
        Label viaCall = _il.DefineLabel(), ok = _il.DefineLabel();
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, FPending);
        _il.Emit(OpCodes.Brtrue, fail);
        if (!samePage)
        {
            _il.Emit(OpCodes.Ldloc, _nb);
            _il.Emit(OpCodes.Ldfld, FPage1);
            _il.Emit(OpCodes.Ldc_I8, -1L);
            _il.Emit(OpCodes.Bne_Un, viaCall);
        }
        _il.Emit(OpCodes.Ldloc, _nb);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, FValid);
        _il.Emit(OpCodes.Brfalse, fail);
        if (!samePage)
        {
            // The execute TLB's entry for nb.Linear's page: ent->Tag == page && ent->PhysPage == nb.Page0
            _il.Emit(OpCodes.Ldloc, _nb);
            _il.Emit(OpCodes.Ldfld, FLinear);
            EmitTlbEntry(FTlbX);
            _il.Emit(OpCodes.Ldloc, _ent);
            _il.Emit(OpCodes.Ldind_I8);
            _il.Emit(OpCodes.Ldloc, _page);
            _il.Emit(OpCodes.Bne_Un, fail);
            _il.Emit(OpCodes.Ldloc, _ent);
            _il.Emit(OpCodes.Ldc_I4, 16); // TlbEntry.PhysPage, the third field
            _il.Emit(OpCodes.Add);
            _il.Emit(OpCodes.Ldind_I8);
            _il.Emit(OpCodes.Ldloc, _nb);
            _il.Emit(OpCodes.Ldfld, FPage0);
            _il.Emit(OpCodes.Bne_Un, fail);
        }
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _nb);
        _il.Emit(OpCodes.Ldfld, FBlockId);
        _il.Emit(OpCodes.Stfld, FCurrentBlockId);
        if (samePage) return;
        _il.Emit(OpCodes.Br, ok);
        _il.MarkLabel(viaCall);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _nb);
        _il.Emit(OpCodes.Call, MChainTo);
        _il.Emit(OpCodes.Brfalse, fail);
        _il.MarkLabel(ok);
    }

    /// <summary>Returns to the dispatcher with this block as the last one run.</summary>
    private void EmitReturn()
    {
        EmitLdBlock();
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>Jumps (a tail call) into block _nb's compiled code, or to <paramref name="plain"/> if it has none now.</summary>
    private void EmitTailJump(Label plain)
    {
        _il.Emit(OpCodes.Ldloc, _nb);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, FCompiledPtr);
        _il.Emit(OpCodes.Stloc, _ptr);
        _il.Emit(OpCodes.Ldloc, _ptr);
        _il.Emit(OpCodes.Brfalse, plain);
        _il.Emit(OpCodes.Ldloc, _nb);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _ptr);
        _il.Emit(OpCodes.Tailcall);
        _il.EmitCalli(OpCodes.Calli, CallingConventions.Standard, typeof(Block), Params, null);
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>After a call that may set BlockExit (an SSE slow-path store; the state synced before it): leave after this instruction if it did.</summary>
    private void ExitIfBlockExit(ulong ripAfter)
    {
        Label go = _il.DefineLabel();
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, FBlockExit);
        _il.Emit(OpCodes.Brfalse, go);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Call, MJitExit);
        LeaveSynced(ripAfter, _k + 1);
        _il.MarkLabel(go);
    }

    /// <summary>
    /// Leaves for <paramref name="ripAfter"/> after <paramref name="count"/> instructions, through the dispatcher, when
    /// the registers and flags were written back just before (a slow-path call): only RIP and the count are stored,
    /// which keeps the IL of every store site short (the .NET JIT's time goes with the IL's size).
    /// </summary>
    private void LeaveSynced(ulong ripAfter, int count)
    {
        if (_dynamicRipAfter != null) StoreField(FRip, () => _il.Emit(OpCodes.Ldloc, _dynamicRipAfter));
        else StoreConst(FRip, ripAfter);
        AddInstret(count);
        EmitReturn();
    }

    // ---------------- interpreter handlers ----------------

    /// <summary>DIRIGENT_JIT_STATS=1: how often each instruction form was left to its handler in compiled blocks.</summary>
    internal static readonly System.Collections.Concurrent.ConcurrentDictionary<string, int>? HandlerForms =
        JitCompiler.Stats ? new() : null;

    /// <summary>Calls instruction i's interpreter handler (a direct calli on its entry), the state already synced.</summary>
    private unsafe void EmitCallHandler(ref Instruction i)
    {
        _il.Emit(OpCodes.Ldarg_1);
        EmitLdBlock();
        _il.Emit(OpCodes.Ldfld, FInstrs);
        _il.Emit(OpCodes.Ldc_I4, _k);
        _il.Emit(OpCodes.Ldelema, typeof(Instruction));
        _il.Emit(OpCodes.Ldc_I8, (long)(nint)CodeCache.HandlerFor(ref i, 64));
        _il.Emit(OpCodes.Conv_I);
        _il.EmitCalli(OpCodes.Calli, CallingConventions.Standard, typeof(void), HandlerParams, null);
    }

    private unsafe void EmitHandlerCall(ref Instruction i)
    {
        if (HandlerForms != null && _pass == 1) HandlerForms.AddOrUpdate(i.Code.ToString(), 1, (_, n) => n + 1);
        SpillRegs();
        SpillFlags();
        // Registers and flags are the CPU's again after the handler: forget the locals.
        Array.Clear(_loaded);
        Array.Clear(_dirty);
        _fop = LazyOp.None;
        _sseChecked = false; // a handler may have changed CR0/CR4
        // Cpu.JitHandler sets InstrIp/RIP/JitDone, runs the handler and says whether it ended the block (HLT, mode and
        // paging changes, stores to this block's code: the interpreter would stop here too).
        Label go = _il.DefineLabel();
        _il.Emit(OpCodes.Ldarg_1);
        EmitLdBlock();
        _il.Emit(OpCodes.Ldc_I4, _k);
        _il.Emit(OpCodes.Ldc_I8, (long)(nint)CodeCache.HandlerFor(ref i, 64));
        _il.Emit(OpCodes.Conv_I);
        _il.Emit(OpCodes.Call, MHandler);
        _il.Emit(OpCodes.Brfalse, go);
        AddInstret(_k + 1);
        EmitReturn();
        _il.MarkLabel(go);
    }
}
