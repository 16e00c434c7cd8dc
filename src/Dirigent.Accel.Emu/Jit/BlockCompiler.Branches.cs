using System.Reflection.Emit;
using System.Reflection;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>Conditions from the pending flag record, and the block-ending branches (JMP/Jcc/CALL/RET, the self-loop's back edge).</summary>
internal sealed partial class BlockCompiler
{
    /// <summary>Pushes the condition (0/1), from the pending record when it allows, else through the CPU's flags.</summary>
    private void PushCondition(ConditionCode cc)
    {
        if (TryInlineCondition(cc)) return;
        SpillFlags();
        _fop = LazyOp.None;
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldc_I4, (int)cc);
        _il.Emit(OpCodes.Call, MTestCondition);
    }

    private bool TryInlineCondition(ConditionCode cc)
    {
        Materialize();
        // Result-based conditions (ZF/SF) hold for every record we make; the rest need the operation.
        void Res() { _il.Emit(OpCodes.Ldloc, _fr); ZeroExtend(_fsize); }
        void Zero(bool isZero) { Res(); _il.Emit(OpCodes.Ldc_I8, 0L); _il.Emit(OpCodes.Ceq); if (!isZero) Not(); }
        void Sign(bool set)
        {
            Res();
            _il.Emit(OpCodes.Ldc_I4, _fsize * 8 - 1);
            _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Conv_I4);
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.And);
            if (!set) Not();
        }
        void Not() { _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Ceq); }
        void Signed(LocalBuilder x)
        {
            _il.Emit(OpCodes.Ldloc, x);
            if (_fsize == 8) return;
            _il.Emit(_fsize switch { 4 => OpCodes.Conv_I4, 2 => OpCodes.Conv_I2, _ => OpCodes.Conv_I1 });
            _il.Emit(OpCodes.Conv_I8);
        }
        switch (_fop)
        {
            case LazyOp.None: return false;
            case LazyOp.Sub:
                // a and b are the size-masked operands: compare them directly, as TestCondition does.
                switch (cc)
                {
                    case ConditionCode.e: _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Ldloc, _fb); _il.Emit(OpCodes.Ceq); return true;
                    case ConditionCode.ne: _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Ldloc, _fb); _il.Emit(OpCodes.Ceq); Not(); return true;
                    case ConditionCode.b: _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Ldloc, _fb); _il.Emit(OpCodes.Clt_Un); return true;
                    case ConditionCode.ae: _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Ldloc, _fb); _il.Emit(OpCodes.Clt_Un); Not(); return true;
                    case ConditionCode.a: _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Ldloc, _fb); _il.Emit(OpCodes.Cgt_Un); return true;
                    case ConditionCode.be: _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Ldloc, _fb); _il.Emit(OpCodes.Cgt_Un); Not(); return true;
                    case ConditionCode.l: Signed(_fa); Signed(_fb); _il.Emit(OpCodes.Clt); return true;
                    case ConditionCode.ge: Signed(_fa); Signed(_fb); _il.Emit(OpCodes.Clt); Not(); return true;
                    case ConditionCode.g: Signed(_fa); Signed(_fb); _il.Emit(OpCodes.Cgt); return true;
                    case ConditionCode.le: Signed(_fa); Signed(_fb); _il.Emit(OpCodes.Cgt); Not(); return true;
                    case ConditionCode.s: Sign(true); return true;
                    case ConditionCode.ns: Sign(false); return true;
                }
                return false;
            case LazyOp.Logic:
                // CF = OF = 0: every condition is one of ZF, SF or a constant.
                switch (cc)
                {
                    case ConditionCode.e or ConditionCode.be: Zero(true); return true;
                    case ConditionCode.ne or ConditionCode.a: Zero(false); return true;
                    case ConditionCode.s or ConditionCode.l: Sign(true); return true;
                    case ConditionCode.ns or ConditionCode.ge: Sign(false); return true;
                    case ConditionCode.b or ConditionCode.o: _il.Emit(OpCodes.Ldc_I4_0); return true;
                    case ConditionCode.ae or ConditionCode.no: _il.Emit(OpCodes.Ldc_I4_1); return true;
                }
                return false;
            case ShiftRecord:
                // ZF/SF/PF from the result, CF in _fa, OF in _fb.
                switch (cc)
                {
                    case ConditionCode.e: Zero(true); return true;
                    case ConditionCode.ne: Zero(false); return true;
                    case ConditionCode.s: Sign(true); return true;
                    case ConditionCode.ns: Sign(false); return true;
                    case ConditionCode.b: PushCarry(); return true;
                    case ConditionCode.ae: PushCarry(); Not(); return true;
                }
                return false;
            case MulRecord:
                // CF = OF = overflow; ZF/SF/PF from the low product (as the interpreter sets them).
                switch (cc)
                {
                    case ConditionCode.e: Zero(true); return true;
                    case ConditionCode.ne: Zero(false); return true;
                    case ConditionCode.s: Sign(true); return true;
                    case ConditionCode.ns: Sign(false); return true;
                    case ConditionCode.b or ConditionCode.o: PushCarry(); return true;
                    case ConditionCode.ae or ConditionCode.no: PushCarry(); Not(); return true;
                }
                return false;
            default:
                switch (cc)
                {
                    case ConditionCode.e: Zero(true); return true;
                    case ConditionCode.ne: Zero(false); return true;
                    case ConditionCode.s: Sign(true); return true;
                    case ConditionCode.ns: Sign(false); return true;
                    case ConditionCode.b when _fop == LazyOp.Add: PushCarry(); return true;
                    case ConditionCode.ae when _fop == LazyOp.Add: PushCarry(); Not(); return true;
                }
                return false;
        }
    }

    // ---------------- the block's last instruction ----------------

    /// <summary>A final instruction <see cref="EmitBranchEnd"/> compiles inline.</summary>
    private static bool IsInlineBranch(ref Instruction i)
    {
        if (i.HasLockPrefix) return false;
        if ((i.Code.IsJmpShortOrNear() || i.Code.IsJccShortOrNear()) && i.Op0Kind == OpKind.NearBranch64) return Cpu.IsCanonical(i.NearBranch64);
        if (i.Code == Code.Call_rel32_64) return Cpu.IsCanonical(i.NearBranch64);
        // JMP/CALL through a register or a plainly addressed qword (jump tables, function pointers, PLT-style stubs).
        if (i.Code is Code.Jmp_rm64 or Code.Call_rm64)
            return i.Op0Kind == OpKind.Register || (i.Op0Kind == OpKind.Memory && Instructions.FastMem.SimpleAddress(ref i));
        return i.Code is Code.Retnq or Code.Retnq_imm16;
    }

    /// <summary>Leaves with RIP = the value in <paramref name="target"/>: into the compiled block the jump cache has for it, if any.</summary>
    private void ExitDynamic(LocalBuilder target, int count)
    {
        SpillRegs();
        SpillFlags();
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Stfld, FRip);
        AddInstret(count);
        if (_chainable)
        {
            // First the blocks this exit went to before (LinkB: the last one through the dispatcher; LinkC: the last
            // one the jump cache gave, so a function's RET alternating between two call sites stays inline), each
            // through the method's shared chaining tail with ChainTo's checks; then the jump cache (ChainLookup). The
            // jump cache alone missed a third of the time (its slot held another block, as it is filled only by the
            // dispatcher's lookups) and each miss was a round trip through the dispatcher.
            _b.DynamicExit = true;
            Label plain = _il.DefineLabel(), tryC = _il.DefineLabel(), lookup = _il.DefineLabel();
            _tailOtherPage ??= _il.DefineLabel();
            foreach (var (link, next) in new[] { (FLinkB, tryC), (FLinkC, lookup) })
            {
                EmitLdBlock();
                _il.Emit(OpCodes.Ldfld, link);
                _il.Emit(OpCodes.Stloc, _nb);
                _il.Emit(OpCodes.Ldloc, _nb);
                _il.Emit(OpCodes.Brfalse, next);
                _il.Emit(OpCodes.Ldloc, _nb);
                _il.Emit(OpCodes.Ldfld, FLinear);
                _il.Emit(OpCodes.Ldloc, target);
                _il.Emit(OpCodes.Beq, _tailOtherPage.Value);
                _il.MarkLabel(next);
            }
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldloc, target);
            EmitLdBlock();
            _il.Emit(OpCodes.Call, MChainLookup);
            _il.Emit(OpCodes.Stloc, _nb);
            _il.Emit(OpCodes.Ldloc, _nb);
            _il.Emit(OpCodes.Brfalse, plain);
            EmitTailJump(plain);
            _il.MarkLabel(plain);
        }
        EmitReturn();
    }

    /// <summary>#GP(0) at instruction i unless the value in <paramref name="target"/> is canonical.</summary>
    private void CheckCanonical(ref Instruction i, LocalBuilder target, Action? beforeFault = null)
    {
        Label ok = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Ldc_I4, 16);
        _il.Emit(OpCodes.Shl);
        _il.Emit(OpCodes.Ldc_I4, 16);
        _il.Emit(OpCodes.Shr);
        _il.Emit(OpCodes.Ldloc, target);
        _il.Emit(OpCodes.Beq, ok);
        beforeFault?.Invoke();
        Sync(ref i);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Call, MRaiseGp);
        EmitReturn(); // not reached: RaiseGp0 throws
        _il.MarkLabel(ok);
    }

    /// <summary>JMP/CALL r/m64: the target read (it may fault), checked canonical, the return address pushed (CALL), then left for the target.</summary>
    private void EmitIndirectBranch(ref Instruction i, int n)
    {
        _target ??= _il.DeclareLocal(typeof(ulong));
        if (i.Op0Kind == OpKind.Register) PushReg(Cpu.RegIndex(i.Op0Register));
        else
        {
            PushAddress(ref i);
            _il.Emit(OpCodes.Stloc, _la);
            EmitRead(ref i, 8);
            _il.Emit(OpCodes.Ldloc, _val);
        }
        _il.Emit(OpCodes.Stloc, _target);
        CheckCanonical(ref i, _target);
        if (i.Code == Code.Call_rm64)
        {
            _il.Emit(OpCodes.Ldc_I8, (long)i.NextIP);
            _il.Emit(OpCodes.Stloc, _val);
            // A push that ends the block (a store into this code) leaves for the target: RIP from _target.
            _dynamicRipAfter = _target;
            EmitPushVal(ref i, 0);
            _dynamicRipAfter = null;
        }
        ExitDynamic(_target, n);
    }

    /// <summary>Compiles a final JMP/Jcc/CALL/RET inline; false leaves it to the generic paths.</summary>
    private bool EmitBranchEnd(ref Instruction i)
    {
        if (!IsInlineBranch(ref i)) return false;
        int n = _b.Count;
        if (i.Code.IsJmpShortOrNear() || i.Code.IsJccShortOrNear())
        {
            ulong target = i.NearBranch64;
            Label notTaken = _il.DefineLabel();
            bool backEdge = _selfLoop && target == _b.Ip;
            // A way into this method's region takes the branch path below (no write-back before the test).
            bool inner = _regionLabels != null && (_regionLabels.ContainsKey(target) || _regionLabels.ContainsKey(i.NextIP));
            if (i.Code.IsJccShortOrNear())
            {
                if (!backEdge && !inner)
                {
                    // Both ways leave the block with the same state: write it back once, before the test (the flag
                    // record stays in its locals for the test).
                    SpillRegs();
                    SpillFlags();
                    if (!TryInlineCondition(i.ConditionCode))
                    {
                        _fop = LazyOp.None;
                        _il.Emit(OpCodes.Ldarg_1);
                        _il.Emit(OpCodes.Ldc_I4, (int)i.ConditionCode);
                        _il.Emit(OpCodes.Call, MTestCondition);
                    }
                    _il.Emit(OpCodes.Brfalse, notTaken);
                    ExitTo(target, n, Slot.A, spill: false);
                    _il.MarkLabel(notTaken);
                    ExitTo(i.NextIP, n, Slot.B, spill: false);
                    return true;
                }
                PushCondition(i.ConditionCode);
                _il.Emit(OpCodes.Brfalse, notTaken);
            }
            if (backEdge) BackEdge(n);
            else ExitTo(target, n, Slot.A);
            _il.MarkLabel(notTaken);
            if (i.Code.IsJccShortOrNear()) ExitTo(i.NextIP, n, Slot.B);
            return true;
        }
        if (i.Code == Code.Call_rel32_64)
        {
            _il.Emit(OpCodes.Ldc_I8, (long)i.NextIP);
            _il.Emit(OpCodes.Stloc, _val);
            EmitPushVal(ref i, i.NearBranch64);
            ExitTo(i.NearBranch64, n, Slot.A);
            return true;
        }
        if (i.Code is Code.Jmp_rm64 or Code.Call_rm64)
        {
            EmitIndirectBranch(ref i, n);
            return true;
        }
        {
            // RET / RET imm16
            EmitPopVal(ref i, i.Code == Code.Retnq_imm16 ? i.Immediate16 : 0);
            // A non-canonical return address is #GP(0) at the RET, before RSP moves: undo the pop's RSP change.
            CheckCanonical(ref i, _val, () => { _il.Emit(OpCodes.Ldloc, _la); EmitStReg(Cpu.RSP); });
            // A return goes straight into the compiled block the jump cache has for its target, if any.
            ExitDynamic(_val, n);
            return true;
        }
    }

    /// <summary>
    /// An edge inside the method (a self-loop's back edge, a region's inner edge): to <paramref name="stay"/> when
    /// nothing is pending and the method's block is still valid, else on at the next instruction, which leaves
    /// (<paramref name="leave"/> is where a pending event goes).
    /// </summary>
    private void EmitStayChecks(Label stay, Label leave)
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, FPending);
        _il.Emit(OpCodes.Brtrue, leave);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Volatile);
        _il.Emit(OpCodes.Ldfld, FValid);
        _il.Emit(OpCodes.Brtrue, stay);
    }

    /// <summary>The jump back to the block's own start: go round again unless something needs the dispatcher.</summary>
    private void BackEdge(int n)
    {
        Label leave = _il.DefineLabel();
        if (_pass == 1) _headFlags = (_fop, _fsize);
        else if (_headFlags != (_fop, _fsize)) throw new PeelMismatch();
        AddInstret(n);
        EmitStayChecks(_loopHead, leave);
        _il.MarkLabel(leave);
        SpillRegs();
        SpillFlags();
        StoreConst(FRip, _b.Ip);
        EmitReturn();
    }
}
