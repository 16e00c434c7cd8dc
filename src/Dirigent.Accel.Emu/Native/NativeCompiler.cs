using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Native;

/// <summary>
/// The native first tier: a 64-bit block's leading instructions, as far as their forms are covered, translated to
/// x86-64 host code from fixed templates (QEMU TCG's order of cost: microseconds a block, where the .NET JIT of the
/// IL tier costs hundreds). It runs on the vCPU's own thread when a block has run a few times, and the interpreter
/// runs the block's remaining instructions. Guest registers stay in the CPU's register array (loaded and stored per
/// instruction); arithmetic flags are written as the same lazy record the interpreter writes; memory goes through the
/// same soft TLB, and a miss returns to the interpreter at that instruction with nothing of it done, so faults and
/// slow paths (MMIO, code pages, dirty logging) are the interpreter's, exactly as before.
///
/// The code is called with <c>(ulong* gpr, ulong* anchor, SegmentState* sreg)</c> (System V: rdi, rsi, rdx), where
/// anchor is the address of the CPU's <c>_flags</c> field and the other fields are reached at fixed offsets from it;
/// it returns how many instructions it completed. It calls nothing, allocates nothing and cannot fault: the caller
/// pins what it points at and calls it without a GC transition. Its direct exits may be linked to other blocks' code
/// (NativeChain.cs): it then returns from the last block it ran, named by the CPU's _nativeSlot.
/// </summary>
internal sealed unsafe partial class NativeCompiler
{
    private const int Rax = X64Emitter.Rax, Rcx = X64Emitter.Rcx, Rdx = X64Emitter.Rdx, Rsi = X64Emitter.Rsi,
        Rdi = X64Emitter.Rdi, R8 = X64Emitter.R8, R9 = X64Emitter.R9, R10 = X64Emitter.R10, R11 = X64Emitter.R11;
    private readonly NativeLayout _l;
    private readonly NativeArena _arena;
    private readonly object _owner;
    private readonly X64Emitter _a = new();
    // Per block: the exit labels of instructions that can leave early, and whether the host's flags hold the guest's.
    private readonly List<(int label, int k)> _exits = new();
    private bool _hostFlags;
    // What the last flag writer in this block's code left, for EnsureHostFlags: a lazy record of Add, Sub, Logic, Inc
    // or Dec (replayed), None for flags materialized in _flags (a shift), with its size; null when nothing in this
    // block's code wrote the flags yet.
    private LazyOp? _flagSource;
    private int _flagSize;
    // The shared flags routine (NativeFlags.cs) at the arena's front.
    private readonly nint _flagsRoutine;

    /// <summary>Blocks given code, the instructions it covers, blocks left to the interpreter (under three quarters covered), time.</summary>
    public long BlocksCompiled, InstructionsCovered, BlocksNone, CompileTicks;
    /// <summary>DIRIGENT_JIT_STATS: the instructions blocks' native code stopped before, by form.</summary>
    public readonly Dictionary<Code, int> StopsAt = new();
    /// <summary>DIRIGENT_JIT_STATS: runs of blocks whose native code stopped before an instruction (or that have none for it), by its form.</summary>
    public readonly Dictionary<Code, long> StopRuns = new();

    /// <summary>DIRIGENT_JIT_STATS: a run of b that left the interpreter its instructions from k on.</summary>
    public void CountStop(Block b, int k)
    {
        if (k < 0 || k >= b.Count) return;
        var c = b.Instrs[k].Code;
        StopRuns[c] = StopRuns.GetValueOrDefault(c) + 1;
    }

    public NativeCompiler(NativeLayout layout, NativeArena arena, object owner)
    {
        _l = layout;
        _arena = arena;
        _owner = owner;
        EmitFlagsRoutine();
        if (!_a.Finish()) throw new InvalidOperationException("the flags routine has an unbound label");
        _flagsRoutine = _arena.PlaceFixed(_a.Code);
    }

    public int Gen => _arena.Gen;
    public NativeArena Arena => _arena;

    /// <summary>The block's native code, or null when its templates cover under three quarters of it.</summary>
    public NativeCode? Compile(Block b)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            _a.Reset();
            _exits.Clear();
            _sites.Clear();
            _hostFlags = false;
            _flagSource = null;
            int m = 0;
            for (; m < b.Count; m++)
                if (!Emit(ref b.Instrs[m], m, last: m == b.Count - 1)) break;
            if (m < b.Count && Jit.JitCompiler.Stats)
            {
                var c = b.Instrs[m].Code;
                StopsAt[c] = StopsAt.GetValueOrDefault(c) + 1;
                b.NativeStop = m;
            }
            // Leaving native code for the interpreter mid-block costs about what a few interpreted instructions do,
            // so a short covered prefix gains nothing: a block gets native code when it covers all of it or three
            // quarters.
            if (m == 0 || (m < b.Count && 4 * m < 3 * b.Count)) { BlocksNone++; return null; }
            // The block ends without a branch (page end, length cap, an instruction that ends blocks): RIP moves on,
            // through a link site like a JMP's.
            if (m == b.Count && b.Instrs[m - 1].FlowControl == FlowControl.Next) ExitTo(b.Instrs[m - 1].NextIP);
            // A block whose last instruction is a direct branch has left through its sites; RET and partial blocks return.
            if (_sites.Count == 0)
            {
                _a.MovEaxImm(m);
                _a.Ret();
            }
            for (int s = 0; s < _sites.Count; s++)
            {
                _a.Bind(_sites[s].label);
                SiteEpilogue(_sites[s].target, s, m);
            }
            foreach (var (label, k) in _exits)
            {
                _a.Bind(label);
                _a.MovEaxImm(k);
                _a.Ret();
            }
            if (!_a.Finish()) return null;
            nint entry = _arena.Place(_a.Code);
            if (entry == 0) return null;
            BlocksCompiled++;
            InstructionsCovered += m;
            return NewCode(b, entry);
        }
        finally { CompileTicks += System.Diagnostics.Stopwatch.GetTimestamp() - t0; }
    }

    /// <summary>Emits instruction k; false when its form is not covered (the block's native code ends before it).</summary>
    private bool Emit(ref Instruction i, int k, bool last)
    {
        if (i.HasRepPrefix || i.HasRepnePrefix) return false;
        if (i.HasLockPrefix) return i.Mnemonic is Mnemonic.Cmpxchg or Mnemonic.Xadd && EmitCmpxchgXadd(ref i, k);
        // A near branch to a non-canonical target is #GP(0) at the branch (Cpu.JumpTo): the interpreter's to raise.
        if (i.FlowControl is FlowControl.UnconditionalBranch or FlowControl.ConditionalBranch or FlowControl.Call
            && !Cpu.IsCanonical(i.NearBranch64)) return false;
        switch (i.Mnemonic)
        {
            case Mnemonic.Nop: return true; // in every encoding (the ModRM forms touch no memory)
            // Prefetches are hints that never fault (SDM PREFETCHh): nothing to do.
            case Mnemonic.Prefetcht0: case Mnemonic.Prefetcht1: case Mnemonic.Prefetcht2: case Mnemonic.Prefetchnta:
            case Mnemonic.Prefetchw: return true;
            case Mnemonic.Mov: return EmitMov(ref i, k);
            case Mnemonic.Movzx: case Mnemonic.Movsx: case Mnemonic.Movsxd: return EmitMovx(ref i, k);
            case Mnemonic.Lea: return EmitLea(ref i);
            case Mnemonic.Add: return EmitAlu(ref i, k, AluOp.Add);
            case Mnemonic.Sub: return EmitAlu(ref i, k, AluOp.Sub);
            case Mnemonic.Cmp: return EmitAlu(ref i, k, AluOp.Cmp);
            case Mnemonic.And: return EmitAlu(ref i, k, AluOp.And);
            case Mnemonic.Or: return EmitAlu(ref i, k, AluOp.Or);
            case Mnemonic.Xor: return EmitAlu(ref i, k, AluOp.Xor);
            case Mnemonic.Test: return EmitAlu(ref i, k, AluOp.Test);
            case Mnemonic.Adc: return EmitAlu(ref i, k, AluOp.Adc);
            case Mnemonic.Sbb: return EmitAlu(ref i, k, AluOp.Sbb);
            case Mnemonic.Push: return EmitPush(ref i, k);
            case Mnemonic.Pop: return EmitPop(ref i, k);
            case Mnemonic.Jmp:
                if (!last) return false;
                if (i.Code == Code.Jmp_rm64) return EmitJmpIndirect(ref i, k);
                if (i.Code != Code.Jmp_rel8_64 && i.Code != Code.Jmp_rel32_64) return false;
                ExitTo(i.NearBranch64);
                return true;
            case Mnemonic.Shl: case Mnemonic.Shr: case Mnemonic.Sar: return EmitShift(ref i);
            case Mnemonic.Rol: case Mnemonic.Ror: return EmitRotate(ref i);
            case Mnemonic.Bt: case Mnemonic.Bts: case Mnemonic.Btr: case Mnemonic.Btc: return EmitBitTest(ref i, k);
            case Mnemonic.Imul: return EmitImul(ref i, k);
            case Mnemonic.Neg: return EmitNeg(ref i, k);
            case Mnemonic.Bswap: return EmitBswap(ref i);
            case Mnemonic.Leave: return i.Code == Code.Leaveq && EmitLeave(k);
            case Mnemonic.Cmpxchg: case Mnemonic.Xadd: return EmitCmpxchgXadd(ref i, k);
            case Mnemonic.Pushfq: return EmitPushfq(k);
            case Mnemonic.Not: return EmitNot(ref i);
            case Mnemonic.Cdqe:
                _a.Load(4, R8, Rdi, 0);
                _a.Movsx(4, R8, R8);
                _a.Store(8, Rdi, 0, R8);
                return true;
            case Mnemonic.Inc: return EmitIncDec(ref i, k, dec: false);
            case Mnemonic.Dec: return EmitIncDec(ref i, k, dec: true);
            case Mnemonic.Call: return last && EmitCall(ref i, k);
            case Mnemonic.Ret: return last && i.Code == Code.Retnq && EmitRet(k);
        }
        if (i.FlowControl == FlowControl.ConditionalBranch && last && i.Code.IsJccShortOrNear())
            return EmitJcc(ref i);
        if (i.Mnemonic is >= Mnemonic.Cmova and <= Mnemonic.Cmovs) return EmitCmov(ref i, k);
        if (i.Mnemonic is >= Mnemonic.Seta and <= Mnemonic.Sets) return EmitSetcc(ref i, k);
        return false;
    }

    // ---------------- registers ----------------

    /// <summary>A general-purpose register operand: its byte offset in the register array and its size (0: not a GPR).</summary>
    private static (int disp, int size) Gpr(Register r)
    {
        int size = Cpu.RegSize(r);
        if (size == 0) return (0, 0);
        bool high = r is Register.AH or Register.CH or Register.DH or Register.BH;
        return (Cpu.RegIndex(r) * 8 + (high ? 1 : 0), size);
    }

    /// <summary>Loads a register slot zero-extended into a host register.</summary>
    private void LoadReg(int dst, int disp, int size) => _a.Load(size, dst, Rdi, disp);

    /// <summary>Stores src into a register slot with x86's merge rules (32-bit writes clear the upper half).</summary>
    private void StoreReg(int disp, int size, int src)
    {
        _a.Store(size, Rdi, disp, src);
        if (size == 4) _a.StoreImm(4, Rdi, disp + 4, 0);
    }

    private static ulong Mask(int size) => size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    // ---------------- memory ----------------

    /// <summary>
    /// Puts the memory operand's linear address in rax; false for forms left to the interpreter (32-bit addressing).
    /// FS and GS add their base (the kernel's per-CPU data, user TLS); the others have base 0 in 64-bit mode.
    /// </summary>
    private bool Address(ref Instruction i)
    {
        Register b = i.MemoryBase, x = i.MemoryIndex;
        if (b != Register.None && b != Register.RIP && Cpu.RegSize(b) != 8) return false;
        if (x != Register.None && Cpu.RegSize(x) != 8) return false;
        ulong disp = i.MemoryDisplacement64;
        bool fits = (long)disp == (int)disp;
        int scale = i.MemoryIndexScale;
        if (b == Register.None || b == Register.RIP || !fits)
        {
            // RIP-relative (Iced gives the absolute address: the block was decoded at its own IP), absolute, or a
            // displacement beyond 32 bits.
            _a.MovImm(Rax, disp);
            if (b != Register.None && b != Register.RIP)
            {
                _a.Load(8, R10, Rdi, Cpu.RegIndex(b) * 8);
                _a.Lea(Rax, Rax, R10, 1, 0);
            }
            if (x != Register.None)
            {
                _a.Load(8, R10, Rdi, Cpu.RegIndex(x) * 8);
                _a.Lea(Rax, Rax, R10, scale, 0);
            }
        }
        else
        {
            _a.Load(8, Rax, Rdi, Cpu.RegIndex(b) * 8);
            if (x != Register.None)
            {
                _a.Load(8, R10, Rdi, Cpu.RegIndex(x) * 8);
                _a.Lea(Rax, Rax, R10, scale, (int)disp);
            }
            else if (disp != 0) _a.Lea(Rax, Rax, -1, 1, (int)disp);
        }
        int seg = Cpu.SegIndex(i.MemorySegment);
        if (seg >= Cpu.FS)
        {
            _a.AluLoad64(X64Emitter.OpAdd, Rax, Rdx, _l.SegBase(seg));
            _hostFlags = false;
        }
        return true;
    }

    /// <summary>
    /// The soft-TLB probe of an access of size bytes at rax (write: the write table): rax becomes the host address;
    /// a miss leaves through instruction k's exit. Clobbers r10, r11 and the host's flags.
    /// </summary>
    private void Probe(int size, bool write, int k)
    {
        _a.Load(8, R11, Rsi, write ? _l.TlbW : _l.TlbR);
        _a.Mov(R10, Rax);
        _a.Shift(X64Emitter.Shr, true, R10, 12);
        _a.AluImm(X64Emitter.OpAnd, false, R10, (int)Cpu.TlbIndexMask);
        _a.Shift(X64Emitter.Shl, false, R10, 5);
        _a.Lea(R11, R11, R10, 1, 0);
        // The tag against the page of the access's last byte: one compare checks both the page and a page crossing
        // (an access running into page+1 meets page's slot, which never holds page+1).
        _a.Lea(R10, Rax, -1, 1, size - 1);
        _a.Shift(X64Emitter.Shr, true, R10, 12);
        _a.AluLoad64(X64Emitter.OpCmp, R10, R11, 0);
        _a.Jcc(X64Emitter.CcNe, Exit(k));
        _a.AluLoad64(X64Emitter.OpAdd, Rax, R11, 8);
        _hostFlags = false;
    }

    private int Exit(int k)
    {
        int l = _a.NewLabel();
        _exits.Add((l, k));
        return l;
    }

    /// <summary>
    /// dst = the second operand, a register or memory of size bytes (zero-extended); false for other forms. A memory
    /// operand is probed for a read (a miss leaves through instruction k's exit; rax then holds its host address).
    /// </summary>
    private bool LoadSource(ref Instruction i, int k, int size, int dst)
    {
        if (i.Op1Kind == OpKind.Register)
        {
            var (sd, ss) = Gpr(i.Op1Register);
            if (ss != size) return false;
            LoadReg(dst, sd, size);
            return true;
        }
        if (i.Op1Kind != OpKind.Memory || MemSize(ref i) != size || !Address(ref i)) return false;
        Probe(size, false, k);
        _a.Load(size, dst, Rax, 0);
        return true;
    }

    /// <summary>The memory operand's size when the templates handle it (1, 2, 4 or 8 bytes), else 0.</summary>
    private static int MemSize(ref Instruction i) => Cpu.MemSize(ref i) is var s && s is 1 or 2 or 4 or 8 ? s : 0;

    private static bool IsImm(OpKind k) => k is OpKind.Immediate8 or OpKind.Immediate16 or OpKind.Immediate32 or OpKind.Immediate64
        or OpKind.Immediate8to16 or OpKind.Immediate8to32 or OpKind.Immediate8to64 or OpKind.Immediate32to64;

    // ---------------- instructions ----------------

    private bool EmitMov(ref Instruction i, int k)
    {
        if (i.OpCount != 2) return false;
        OpKind k0 = i.Op0Kind, k1 = i.Op1Kind;
        if (k0 == OpKind.Register)
        {
            var (dd, ds) = Gpr(i.Op0Register);
            if (ds == 0) return false;
            if (k1 == OpKind.Register)
            {
                var (sd, ss) = Gpr(i.Op1Register);
                if (ss != ds) return false;
                LoadReg(R8, sd, ss);
            }
            else if (IsImm(k1)) _a.MovImm(R8, i.GetImmediate(1) & Mask(ds));
            else if (k1 == OpKind.Memory)
            {
                if (MemSize(ref i) != ds || !Address(ref i)) return false;
                Probe(ds, false, k);
                _a.Load(ds, R8, Rax, 0);
            }
            else return false;
            StoreReg(dd, ds, R8);
            return true;
        }
        if (k0 == OpKind.Memory)
        {
            int size = MemSize(ref i);
            if (size == 0) return false;
            if (k1 == OpKind.Register)
            {
                var (sd, ss) = Gpr(i.Op1Register);
                if (ss != size || !Address(ref i)) return false;
                LoadReg(R8, sd, ss);
            }
            else if (IsImm(k1))
            {
                if (!Address(ref i)) return false;
                _a.MovImm(R8, i.GetImmediate(1) & Mask(size));
            }
            else return false;
            Probe(size, true, k);
            _a.Store(size, Rax, 0, R8);
            return true;
        }
        return false;
    }

    private bool EmitMovx(ref Instruction i, int k)
    {
        if (i.OpCount != 2 || i.Op0Kind != OpKind.Register) return false;
        var (dd, ds) = Gpr(i.Op0Register);
        if (ds < 2) return false;
        int ss;
        if (i.Op1Kind == OpKind.Register)
        {
            int sd;
            (sd, ss) = Gpr(i.Op1Register);
            if (ss == 0) return false;
            LoadReg(R8, sd, ss);
        }
        else if (i.Op1Kind == OpKind.Memory)
        {
            ss = MemSize(ref i);
            if (ss == 0 || !Address(ref i)) return false;
            Probe(ss, false, k);
            _a.Load(ss, R8, Rax, 0);
        }
        else return false;
        if (i.Mnemonic != Mnemonic.Movzx && ss < 8) _a.Movsx(ss, R8, R8);
        StoreReg(dd, ds, R8);
        return true;
    }

    private bool EmitLea(ref Instruction i)
    {
        if (i.Op0Kind != OpKind.Register) return false;
        var (dd, ds) = Gpr(i.Op0Register);
        if (ds < 4 || Cpu.SegIndex(i.MemorySegment) >= Cpu.FS) return false;
        if (!Address(ref i)) return false;
        StoreReg(dd, ds, Rax);
        return true;
    }

    private enum AluOp { Add, Sub, Cmp, And, Or, Xor, Test, Adc, Sbb }

    /// <summary>
    /// ADD/SUB/CMP/AND/OR/XOR/TEST/ADC/SBB in their register, immediate and memory forms: a in r8, b in r9, a's old
    /// value in rcx (ADC/SBB: the carry-in in r10); the host runs the same operation at the same width (so its flags
    /// are the guest's, for a Jcc that follows), the result is stored, and the lazy flag record is written as the
    /// interpreter writes it.
    /// </summary>
    private bool EmitAlu(ref Instruction i, int k, AluOp op)
    {
        if (i.OpCount != 2) return false;
        OpKind k0 = i.Op0Kind, k1 = i.Op1Kind;
        bool writes = op is not (AluOp.Cmp or AluOp.Test);
        int size, dd = 0;
        bool memDst = false;
        if (k0 == OpKind.Register)
        {
            (dd, size) = Gpr(i.Op0Register);
            if (size == 0) return false;
        }
        else if (k0 == OpKind.Memory)
        {
            size = MemSize(ref i);
            if (size == 0 || k1 == OpKind.Memory) return false;
            memDst = true;
        }
        else return false;
        // b first (a memory source's probe uses rax), then a.
        if (k1 == OpKind.Register)
        {
            var (sd, ss) = Gpr(i.Op1Register);
            if (ss != size) return false;
            if (memDst && !Address(ref i)) return false;
            LoadReg(R9, sd, ss);
        }
        else if (IsImm(k1))
        {
            if (memDst && !Address(ref i)) return false;
            _a.MovImm(R9, i.GetImmediate(1) & Mask(size));
        }
        else if (k1 == OpKind.Memory)
        {
            if (MemSize(ref i) != size || !Address(ref i)) return false;
            Probe(size, false, k);
            _a.Load(size, R9, Rax, 0);
        }
        else return false;
        if (memDst)
        {
            // One probe of the write table when the result is stored (a writable page is readable at the same address).
            Probe(size, writes, k);
            _a.Load(size, R8, Rax, 0);
        }
        else LoadReg(R8, dd, size);
        bool carry = op is AluOp.Adc or AluOp.Sbb;
        if (carry)
        {
            // The carry-in: the guest's CF into the host's (the flags routine leaves rax, r8 and r9 alone), kept in r10
            // for the record; SETcc and MOV leave it for the ADC/SBB.
            EnsureHostFlags();
            _a.Setcc(X64Emitter.CcB, R10);
        }
        _a.Mov(Rcx, R8);
        _a.Alu(op switch
        {
            AluOp.Adc => X64Emitter.OpAdc,
            AluOp.Sbb => X64Emitter.OpSbb,
            AluOp.Add => X64Emitter.OpAdd,
            AluOp.Sub or AluOp.Cmp => X64Emitter.OpSub,
            AluOp.And or AluOp.Test => X64Emitter.OpAnd,
            AluOp.Or => X64Emitter.OpOr,
            _ => X64Emitter.OpXor,
        }, size, R8, R9);
        // Nothing below changes the host's flags (MOV only).
        if (writes)
        {
            if (memDst) _a.Store(size, Rax, 0, R8);
            else StoreReg(dd, size, R8);
        }
        LazyOp lop = op switch
        {
            AluOp.Add => LazyOp.Add, AluOp.Sub or AluOp.Cmp => LazyOp.Sub, AluOp.Adc => LazyOp.Adc, AluOp.Sbb => LazyOp.Sbb,
            _ => LazyOp.Logic,
        };
        RecordFlags(lop, size, R8, Rcx, R9, carry ? R10 : null);
        return true;
    }

    /// <summary>An operand of <see cref="RecordFlags"/> that is the constant 0 or 1 rather than a register.</summary>
    private const int Const0 = ~0, Const1 = ~1;

    /// <summary>
    /// Writes the lazy flag record as the interpreter's handlers write it: the operation, its size, the result and the
    /// operands a and b (registers, or <see cref="Const0"/>/<see cref="Const1"/>), and for ADC/SBB/INC/DEC the carry-in
    /// (a register's low byte). The caller ran that operation on the host last, with nothing since that changes the
    /// host's flags (these stores do not either): they are the guest's, and the record is the one to replay.
    /// </summary>
    private void RecordFlags(LazyOp op, int size, int res, int a, int b, int? carryIn = null)
    {
        _a.StoreImm(1, Rsi, _l.LazyOp, (int)op);
        _a.StoreImm(1, Rsi, _l.LazySize, size);
        _a.Store(8, Rsi, _l.LazyRes, res);
        Operand(_l.LazyA, a);
        Operand(_l.LazyB, b);
        if (carryIn is { } c) _a.Store(1, Rsi, _l.LazyCarryIn, c);
        _hostFlags = true;
        _flagSource = op;
        _flagSize = size;

        void Operand(int disp, int v)
        {
            if (v < 0) _a.StoreImm(8, Rsi, disp, ~v);
            else _a.Store(8, Rsi, disp, v);
        }
    }

    /// <summary>Pushes r8 (64-bit): RSP - 8 probed for a write, the store, then RSP; a miss leaves with nothing done.</summary>
    private void PushR8(int k)
    {
        _a.Load(8, Rax, Rdi, Cpu.RSP * 8);
        _a.Lea(Rax, Rax, -1, 1, -8);
        _a.Mov(R9, Rax);
        Probe(8, true, k);
        _a.Store(8, Rax, 0, R8);
        _a.Store(8, Rdi, Cpu.RSP * 8, R9);
    }

    /// <summary>Reads the 64-bit value at RSP into r8 and RSP + 8 into r9; the caller stores them.</summary>
    private void PeekR8(int k)
    {
        _a.Load(8, Rax, Rdi, Cpu.RSP * 8);
        _a.Lea(R9, Rax, -1, 1, 8);
        Probe(8, false, k);
        _a.Load(8, R8, Rax, 0);
    }

    private bool EmitPush(ref Instruction i, int k)
    {
        if (i.Code == Code.Push_r64) LoadReg(R8, Cpu.RegIndex(i.Op0Register) * 8, 8);
        else if (i.Code is Code.Pushq_imm8 or Code.Pushq_imm32) _a.MovImm(R8, i.GetImmediate(0));
        else return false;
        PushR8(k);
        return true;
    }

    /// <summary>PUSHFQ: RFLAGS with VM and RF read as 0 (the interpreter's Pushf; 64-bit code is never virtual-8086).</summary>
    private bool EmitPushfq(int k)
    {
        GuestFlagsInto(R8, 0);
        _a.Load(8, R10, Rsi, 0);
        _a.AluImm(X64Emitter.OpAnd, true, R10, ~(int)(Cpu.ArithFlags | Cpu.VM | Cpu.RF));
        _a.Alu(X64Emitter.OpOr, 8, R8, R10);
        _a.AluImm(X64Emitter.OpOr, true, R8, 2);
        PushR8(k);
        return true;
    }

    private bool EmitPop(ref Instruction i, int k)
    {
        if (i.Code != Code.Pop_r64) return false;
        PeekR8(k);
        // RSP is incremented before the register is written: POP RSP loads the popped value (SDM POP).
        _a.Store(8, Rdi, Cpu.RSP * 8, R9);
        _a.Store(8, Rdi, Cpu.RegIndex(i.Op0Register) * 8, R8);
        return true;
    }

    /// <summary>LEAVE: RSP = RBP, then RBP = the value popped (read first: a miss leaves with nothing done).</summary>
    private bool EmitLeave(int k)
    {
        _a.Load(8, Rax, Rdi, Cpu.RBP * 8);
        _a.Lea(R9, Rax, -1, 1, 8);
        Probe(8, false, k);
        _a.Load(8, R8, Rax, 0);
        _a.Store(8, Rdi, Cpu.RSP * 8, R9);
        _a.Store(8, Rdi, Cpu.RBP * 8, R8);
        return true;
    }

    private bool EmitCall(ref Instruction i, int k)
    {
        if (i.Code == Code.Call_rm64)
        {
            // The target first (read with the old RSP), then the push; the target waits in rcx.
            if (!IndirectTarget(ref i, k)) return false;
            _a.Mov(Rcx, R8);
            _a.MovImm(R8, i.NextIP);
            PushR8(k);
            _a.Mov(R8, Rcx);
            _a.Store(8, Rsi, _l.Rip, R8);
            DynamicExit();
            return true;
        }
        if (i.Code != Code.Call_rel32_64) return false;
        _a.MovImm(R8, i.NextIP);
        PushR8(k);
        ExitTo(i.NearBranch64);
        return true;
    }

    /// <summary>JMP r/m64: RIP from a register or memory.</summary>
    private bool EmitJmpIndirect(ref Instruction i, int k)
    {
        if (!IndirectTarget(ref i, k)) return false;
        _a.Store(8, Rsi, _l.Rip, R8);
        DynamicExit();
        return true;
    }

    /// <summary>r8 = an indirect JMP's or CALL's target (register or memory operand), leaving through k's exit when it is
    /// not canonical (#GP at the branch: the interpreter runs it and raises it). Nothing of the instruction is done.</summary>
    private bool IndirectTarget(ref Instruction i, int k)
    {
        if (i.Op0Kind == OpKind.Register) LoadReg(R8, Cpu.RegIndex(i.Op0Register) * 8, 8);
        else if (i.Op0Kind == OpKind.Memory && MemSize(ref i) == 8 && Address(ref i))
        {
            Probe(8, false, k);
            _a.Load(8, R8, Rax, 0);
        }
        else return false;
        CanonicalOrExit(R8, k);
        return true;
    }

    /// <summary>Leaves through k's exit when reg holds a non-canonical address. Uses r10 and the host's flags.</summary>
    private void CanonicalOrExit(int reg, int k)
    {
        _a.Mov(R10, reg);
        _a.Shift(X64Emitter.Shl, true, R10, 16);
        _a.Shift(X64Emitter.Sar, true, R10, 16);
        _a.Alu(X64Emitter.OpCmp, 8, R10, reg);
        _a.Jcc(X64Emitter.CcNe, Exit(k));
        _hostFlags = false;
    }

    private bool EmitRet(int k)
    {
        PeekR8(k);
        // A non-canonical return address is #GP at the RET: the interpreter runs it again and raises it.
        CanonicalOrExit(R8, k);
        _a.Store(8, Rdi, Cpu.RSP * 8, R9);
        _a.Store(8, Rsi, _l.Rip, R8);
        DynamicExit();
        return true;
    }

    /// <summary>NOT r32/r64 (no flags).</summary>
    private bool EmitNot(ref Instruction i)
    {
        if (i.Op0Kind != OpKind.Register) return false;
        var (dd, size) = Gpr(i.Op0Register);
        if (size < 4) return false;
        LoadReg(R8, dd, size);
        _a.Not(size == 8, R8);
        StoreReg(dd, size, R8);
        return true;
    }

    private static int Cc(ConditionCode c) => c switch
    {
        ConditionCode.o => X64Emitter.CcO, ConditionCode.no => X64Emitter.CcNo, ConditionCode.b => X64Emitter.CcB,
        ConditionCode.ae => X64Emitter.CcAe, ConditionCode.e => X64Emitter.CcE, ConditionCode.ne => X64Emitter.CcNe,
        ConditionCode.be => X64Emitter.CcBe, ConditionCode.a => X64Emitter.CcA, ConditionCode.s => X64Emitter.CcS,
        ConditionCode.ns => X64Emitter.CcNs, ConditionCode.p => X64Emitter.CcP, ConditionCode.np => X64Emitter.CcNp,
        ConditionCode.l => X64Emitter.CcL, ConditionCode.ge => X64Emitter.CcGe, ConditionCode.le => X64Emitter.CcLe,
        ConditionCode.g => X64Emitter.CcG, _ => -1,
    };

    /// <summary>CMOVcc r32/r64, r/m: the source is read (and may miss) whatever the condition; a 32-bit destination is
    /// zero-extended even when nothing moves (SDM CMOVcc), as the host's CMOV does.</summary>
    private bool EmitCmov(ref Instruction i, int k)
    {
        int cc = Cc(i.ConditionCode);
        if (cc < 0 || i.Op0Kind != OpKind.Register) return false;
        var (dd, size) = Gpr(i.Op0Register);
        if (size < 4 || !LoadSource(ref i, k, size, Rcx)) return false;
        EnsureHostFlags();
        LoadReg(R8, dd, size);
        _a.Cmov(cc, R8, Rcx, size == 8);
        StoreReg(dd, size, R8);
        return true;
    }

    /// <summary>SETcc r/m8.</summary>
    private bool EmitSetcc(ref Instruction i, int k)
    {
        int cc = Cc(i.ConditionCode);
        if (cc < 0) return false;
        if (i.Op0Kind == OpKind.Register)
        {
            var (dd, size) = Gpr(i.Op0Register);
            if (size != 1) return false;
            EnsureHostFlags();
            _a.Setcc(cc, R8);
            _a.Store(1, Rdi, dd, R8);
            return true;
        }
        if (i.Op0Kind != OpKind.Memory || !Address(ref i)) return false;
        Probe(1, true, k);
        EnsureHostFlags();
        _a.Setcc(cc, R8);
        _a.Store(1, Rax, 0, R8);
        return true;
    }

    /// <summary>
    /// INC/DEC r/m: CF is left as it was, so the record keeps it as its carry-in (Cpu.SetLazyIncDec); the host's INC or
    /// DEC, run with the guest's flags in place, leaves exactly the guest's flags.
    /// </summary>
    private bool EmitIncDec(ref Instruction i, int k, bool dec)
    {
        if (i.OpCount != 1) return false;
        int size, dd = 0;
        bool mem = i.Op0Kind == OpKind.Memory;
        if (i.Op0Kind == OpKind.Register) (dd, size) = Gpr(i.Op0Register);
        else if (mem) size = MemSize(ref i);
        else return false;
        if (size == 0) return false;
        // CF (kept by INC/DEC) into cl first: the memory operand's address and probe clobber the host's flags.
        EnsureHostFlags();
        _a.Setcc(X64Emitter.CcB, Rcx);
        if (mem)
        {
            if (!Address(ref i)) return false;
            Probe(size, true, k);
            _a.Load(size, R8, Rax, 0);
        }
        else LoadReg(R8, dd, size);
        _a.Mov(R9, R8);
        // CF = cl again (0xFF + cl carries exactly when cl is 1); the host's INC/DEC then leaves every flag the guest's.
        _a.MovImm(R10, 0xFF);
        _a.Mov(R11, Rcx);
        _a.Alu(X64Emitter.OpAdd, 1, R11, R10);
        _a.IncDec(dec, size, R8);
        // Nothing below changes the host's flags (MOV only).
        if (mem) _a.Store(size, Rax, 0, R8);
        else StoreReg(dd, size, R8);
        RecordFlags(dec ? LazyOp.Dec : LazyOp.Inc, size, R8, R9, Const1, Rcx);
        return true;
    }

    /// <summary>A Jcc at the block's end: with the guest's flags in the host's, the host's Jcc takes one of two link sites.</summary>
    private bool EmitJcc(ref Instruction i)
    {
        int cc = Cc(i.ConditionCode);
        if (cc < 0) return false;
        EnsureHostFlags();
        ExitTo(i.NearBranch64, cc);
        ExitTo(i.NextIP);
        return true;
    }
}

/// <summary>Offsets of the CPU's fields from its <c>_flags</c> field, and of segment bases in the segment array.</summary>
internal sealed class NativeLayout
{
    public int Rip, LazyOp, LazySize, LazyRes, LazyA, LazyB, LazyCarryIn, TlbR, TlbW;
    /// <summary>For chaining: the pending-events word, the execute TLB and its entries' layout, the chain's own fields.</summary>
    public int PendingEvents, TlbX, TlbEntrySize, TlbTag, TlbPhysPage, Chained, Slot, LinkSite;
    public int SegSize, SegBaseOffset;
    public int SegBase(int seg) => seg * SegSize + SegBaseOffset;
}
