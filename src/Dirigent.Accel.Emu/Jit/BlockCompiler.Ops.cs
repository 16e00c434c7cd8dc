using System.Reflection.Emit;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>The instructions the compiler emits inline.</summary>
internal sealed partial class BlockCompiler
{
    private enum Kind { None, Nop, Alu, Store, Load, Lea, IncDec, Not, Push, Pop, Cmov, Imul, Shift, Rotate, Setcc, MovByte, Sse }

    /// <summary>What an instruction compiles to inline; None: it calls its interpreter handler.</summary>
    private static Kind Classify(ref Instruction i)
    {
        if (i.HasLockPrefix || i.HasRepPrefix || i.HasRepnePrefix) return Kind.None;
        if (i.Mnemonic == Mnemonic.Nop) return Kind.Nop;
        bool mem0 = i.Op0Kind == OpKind.Memory, mem1 = i.OpCount > 1 && i.Op1Kind == OpKind.Memory;
        if ((mem0 || mem1) && !Instructions.FastMem.SimpleAddress(ref i)) return Kind.None;
        if (IsSseInline(ref i)) return Kind.Sse;
        switch (i.Mnemonic)
        {
            case Mnemonic.Mov or Mnemonic.Add or Mnemonic.Sub or Mnemonic.And or Mnemonic.Or or Mnemonic.Xor or Mnemonic.Cmp or Mnemonic.Test:
                {
                    if (i.OpCount != 2) return Kind.None;
                    bool readOnly = i.Mnemonic is Mnemonic.Cmp or Mnemonic.Test;
                    if (i.Op0Kind == OpKind.Register)
                    {
                        if (DestGpr(i.Op0Register, out _, out int size))
                        {
                            if (i.Mnemonic == Mnemonic.Mov && i.Op1Kind == OpKind.Register && !DestGpr(i.Op1Register, out _, out _)) return Kind.None;
                            return SourceOk(ref i, size) ? Kind.Alu : Kind.None;
                        }
                        // 8/16-bit registers: compared or tested (nothing written), or MOV into a low byte.
                        if (!SrcGpr(i.Op0Register, out _, out size)) return Kind.None;
                        if (readOnly) return SourceOk(ref i, size) ? Kind.Alu : Kind.None;
                        return i.Mnemonic == Mnemonic.Mov && size == 1 && SourceOk(ref i, 1) ? Kind.MovByte : Kind.None;
                    }
                    if (mem0)
                    {
                        int size = Cpu.MemSize(ref i);
                        if (i.Mnemonic == Mnemonic.Mov) return size is 1 or 2 or 4 or 8 && SourceOk(ref i, size) ? Kind.Store : Kind.None;
                        if (readOnly) return size is 1 or 2 or 4 or 8 && SourceOk(ref i, size) ? Kind.Alu : Kind.None;
                        // Read-modify-write of memory (not LOCKed: those were refused above).
                        return size is 1 or 2 or 4 or 8 && SourceOk(ref i, size) ? Kind.Alu : Kind.None;
                    }
                    return Kind.None;
                }
            case Mnemonic.Shl or Mnemonic.Shr or Mnemonic.Sar or Mnemonic.Rol or Mnemonic.Ror:
                if (i.OpCount != 2 || i.Op0Kind != OpKind.Register || i.Op1Kind != OpKind.Immediate8 || !DestGpr(i.Op0Register, out _, out _))
                    return Kind.None;
                return i.Mnemonic is Mnemonic.Rol or Mnemonic.Ror ? Kind.Rotate : Kind.Shift;
            case Mnemonic.Seta or Mnemonic.Setae or Mnemonic.Setb or Mnemonic.Setbe or Mnemonic.Sete or Mnemonic.Setg or Mnemonic.Setge
                or Mnemonic.Setl or Mnemonic.Setle or Mnemonic.Setne or Mnemonic.Setno or Mnemonic.Setnp or Mnemonic.Setns or Mnemonic.Seto
                or Mnemonic.Setp or Mnemonic.Sets:
                if (i.Op0Kind == OpKind.Register) return SrcGpr(i.Op0Register, out _, out int rs) && rs == 1 ? Kind.Setcc : Kind.None;
                return mem0 ? Kind.Setcc : Kind.None;
            case Mnemonic.Movzx or Mnemonic.Movsx or Mnemonic.Movsxd:
                {
                    if (i.Op0Kind != OpKind.Register || !DestGpr(i.Op0Register, out _, out int size)) return Kind.None;
                    if (i.Code == Code.Movsxd_r32_rm32 || i.Code == Code.Movsxd_r16_rm16) return Kind.None;
                    int srcSize = mem1 ? Cpu.MemSize(ref i) : SrcGpr(i.Op1Register, out _, out int s) ? s : 0;
                    return srcSize is 1 or 2 or 4 && srcSize < size ? Kind.Load : Kind.None;
                }
            case Mnemonic.Imul when i.OpCount >= 2:
                {
                    if (!DestGpr(i.Op0Register, out _, out int size)) return Kind.None;
                    if (mem1) return Cpu.MemSize(ref i) == size ? Kind.Imul : Kind.None;
                    return DestGpr(i.Op1Register, out _, out int s) && s == size ? Kind.Imul : Kind.None;
                }
            case Mnemonic.Lea:
                return i.Op0Kind == OpKind.Register && DestGpr(i.Op0Register, out _, out _) && mem1 ? Kind.Lea : Kind.None;
            case Mnemonic.Inc or Mnemonic.Dec:
                if (mem0) return Cpu.MemSize(ref i) is 4 or 8 ? Kind.IncDec : Kind.None;
                return i.Op0Kind == OpKind.Register && DestGpr(i.Op0Register, out _, out _) ? Kind.IncDec : Kind.None;
            case Mnemonic.Not:
                return i.Op0Kind == OpKind.Register && DestGpr(i.Op0Register, out _, out _) ? Kind.Not : Kind.None;
            case Mnemonic.Push:
                return i.Code is Code.Push_r64 or Code.Pushq_imm8 or Code.Pushq_imm32 ? Kind.Push : Kind.None;
            case Mnemonic.Pop:
                return i.Code == Code.Pop_r64 && i.Op0Register != Register.RSP ? Kind.Pop : Kind.None;
            case Mnemonic.Cmova or Mnemonic.Cmovae or Mnemonic.Cmovb or Mnemonic.Cmovbe or Mnemonic.Cmove or Mnemonic.Cmovg
                or Mnemonic.Cmovge or Mnemonic.Cmovl or Mnemonic.Cmovle or Mnemonic.Cmovne or Mnemonic.Cmovno or Mnemonic.Cmovnp
                or Mnemonic.Cmovns or Mnemonic.Cmovo or Mnemonic.Cmovp or Mnemonic.Cmovs:
                {
                    if (!DestGpr(i.Op0Register, out _, out int size)) return Kind.None;
                    if (mem1) return Cpu.MemSize(ref i) == size ? Kind.Cmov : Kind.None;
                    return DestGpr(i.Op1Register, out _, out int s) && s == size ? Kind.Cmov : Kind.None;
                }
        }
        return Kind.None;
    }

    private static bool CanInline(ref Instruction i) => Classify(ref i) != Kind.None;

    /// <summary>A full-width destination: a 32- or 64-bit GPR.</summary>
    private static bool DestGpr(Register r, out int idx, out int size)
    {
        idx = size = 0;
        if (r is >= Register.EAX and <= Register.R15D) { idx = r - Register.EAX; size = 4; return true; }
        if (r is >= Register.RAX and <= Register.R15) { idx = r - Register.RAX; size = 8; return true; }
        return false;
    }

    /// <summary>A source GPR of any width except AH/CH/DH/BH (whose bits are not the register's low ones).</summary>
    private static bool SrcGpr(Register r, out int idx, out int size)
    {
        if (DestGpr(r, out idx, out size)) return true;
        if (r is >= Register.AX and <= Register.R15W) { idx = r - Register.AX; size = 2; return true; }
        if (r is >= Register.AL and <= Register.BL) { idx = r - Register.AL; size = 1; return true; }
        if (r is >= Register.SPL and <= Register.R15L) { idx = r - Register.SPL + 4; size = 1; return true; }
        return false;
    }

    private static bool IsImmediate(OpKind k) => k is OpKind.Immediate8 or OpKind.Immediate16 or OpKind.Immediate32 or
        OpKind.Immediate64 or OpKind.Immediate8to16 or OpKind.Immediate8to32 or OpKind.Immediate8to64 or OpKind.Immediate32to64;

    private static bool SourceOk(ref Instruction i, int size)
    {
        OpKind k = i.Op1Kind;
        if (IsImmediate(k)) return true;
        if (k == OpKind.Memory) return i.Op0Kind == OpKind.Register;
        return k == OpKind.Register && SrcGpr(i.Op1Register, out _, out int s) && s == size;
    }

    private void ZeroExtend(int size)
    {
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Conv_U8); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Conv_U8); break;
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); break;
        }
    }

    /// <summary>Pushes operand 1 (register, immediate, or memory already read into _val) zero-extended to size.</summary>
    private void PushSource(ref Instruction i, int size)
    {
        OpKind k = i.Op1Kind;
        if (k == OpKind.Register) { SrcGpr(i.Op1Register, out int r, out _); PushReg(r); ZeroExtend(size); }
        else if (k == OpKind.Memory) _il.Emit(OpCodes.Ldloc, _val);
        else _il.Emit(OpCodes.Ldc_I8, (long)(i.GetImmediate(1) & Cpu.SizeMask(size)));
    }

    private bool EmitInline(ref Instruction i)
    {
        switch (Classify(ref i))
        {
            case Kind.Nop: return true;
            case Kind.Alu: EmitAlu(ref i); return true;
            case Kind.Store:
                {
                    int size = Cpu.MemSize(ref i);
                    PushAddress(ref i);
                    _il.Emit(OpCodes.Stloc, _la);
                    PushSource(ref i, size);
                    _il.Emit(OpCodes.Stloc, _val);
                    EmitWrite(ref i, size, i.NextIP);
                    return true;
                }
            case Kind.Load: EmitLoadExtend(ref i); return true;
            case Kind.Lea:
                {
                    DestGpr(i.Op0Register, out int d, out int size);
                    PushAddress(ref i, lea: true);
                    ZeroExtend(size);
                    StoreReg(d);
                    return true;
                }
            case Kind.IncDec: EmitIncDec(ref i); return true;
            case Kind.Not:
                {
                    // NOT changes no flags.
                    DestGpr(i.Op0Register, out int d, out int size);
                    PushReg(d);
                    _il.Emit(OpCodes.Not);
                    ZeroExtend(size);
                    StoreReg(d);
                    return true;
                }
            case Kind.Push:
                {
                    if (i.Op0Kind == OpKind.Register) PushReg(Cpu.RegIndex(i.Op0Register));
                    else _il.Emit(OpCodes.Ldc_I8, (long)i.GetImmediate(0));
                    _il.Emit(OpCodes.Stloc, _val);
                    EmitPushVal(ref i, i.NextIP);
                    return true;
                }
            case Kind.Pop:
                {
                    EmitPopVal(ref i);
                    _il.Emit(OpCodes.Ldloc, _val);
                    StoreReg(Cpu.RegIndex(i.Op0Register));
                    return true;
                }
            case Kind.Cmov: EmitCmov(ref i); return true;
            case Kind.Imul: EmitImul(ref i); return true;
            case Kind.Shift: EmitShift(ref i); return true;
            case Kind.Rotate: EmitRotate(ref i); return true;
            case Kind.Setcc: EmitSetcc(ref i); return true;
            case Kind.Sse: EmitSse(ref i); return true;
            case Kind.MovByte:
                {
                    SrcGpr(i.Op0Register, out int d, out _);
                    ReadMemSource(ref i, 1);
                    PushSource(ref i, 1);
                    _il.Emit(OpCodes.Stloc, _val);
                    MergeLowByte(d);
                    return true;
                }
        }
        return false;
    }

    /// <summary>Reads operand 1 from memory into _val when it is a memory operand (size bytes).</summary>
    private void ReadMemSource(ref Instruction i, int size)
    {
        if (i.Op1Kind != OpKind.Memory) return;
        PushAddress(ref i);
        _il.Emit(OpCodes.Stloc, _la);
        EmitRead(ref i, size);
    }

    private void EmitAlu(ref Instruction i)
    {
        Mnemonic m = i.Mnemonic;
        int size, d = -1;
        if (i.Op0Kind == OpKind.Register) SrcGpr(i.Op0Register, out d, out size);
        else size = Cpu.MemSize(ref i);
        ReadMemSource(ref i, size);
        if (m == Mnemonic.Mov)
        {
            PushSource(ref i, size);
            StoreReg(d);
            return;
        }
        (OpCode op, LazyOp lazy, bool writes) = m switch
        {
            Mnemonic.Add => (OpCodes.Add, LazyOp.Add, true),
            Mnemonic.Sub => (OpCodes.Sub, LazyOp.Sub, true),
            Mnemonic.Cmp => (OpCodes.Sub, LazyOp.Sub, false),
            Mnemonic.And => (OpCodes.And, LazyOp.Logic, true),
            Mnemonic.Or => (OpCodes.Or, LazyOp.Logic, true),
            Mnemonic.Xor => (OpCodes.Xor, LazyOp.Logic, true),
            _ => (OpCodes.And, LazyOp.Logic, false), // TEST
        };
        bool rmw = writes && d < 0;
        // A read-modify-write may fault on its store after the record locals are reused: the previous flags go to
        // the CPU first, so a fault there sees them.
        if (rmw) { SpillFlags(); _fop = LazyOp.None; }
        // a: the destination operand (register, or memory for CMP/TEST [m], x and read-modify-write)
        if (d >= 0) { PushReg(d); ZeroExtend(size); }
        else PushMemDest(ref i, size);
        _il.Emit(OpCodes.Stloc, _fa);
        PushSource(ref i, size);
        _il.Emit(OpCodes.Stloc, _fb);
        _il.Emit(OpCodes.Ldloc, _fa);
        _il.Emit(OpCodes.Ldloc, _fb);
        _il.Emit(op);
        _il.Emit(OpCodes.Stloc, _fr);
        if (rmw) StoreRmwResult(ref i, size, lazy);
        _fop = lazy;
        _fsize = size;
        if (writes && d >= 0)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            ZeroExtend(size);
            StoreReg(d);
        }
    }

    /// <summary>Pushes memory operand 0 (size bytes); its address stays in _la for a read-modify-write's store.</summary>
    private void PushMemDest(ref Instruction i, int size)
    {
        PushAddress(ref i);
        _il.Emit(OpCodes.Stloc, _la);
        EmitRead(ref i, size);
        _il.Emit(OpCodes.Ldloc, _val);
    }

    /// <summary>
    /// A read-modify-write's store of _fr at _la. The caller wrote the previous flags back before the read; if the
    /// store ends the block, the new record <paramref name="op"/> goes to the CPU first (the instruction completed).
    /// </summary>
    private void StoreRmwResult(ref Instruction i, int size, LazyOp op)
    {
        _il.Emit(OpCodes.Ldloc, _fr);
        _il.Emit(OpCodes.Stloc, _val);
        EmitWrite(ref i, size, i.NextIP, () => { _fop = op; _fsize = size; SpillFlags(); _fop = LazyOp.None; });
    }

    /// <summary>Register r's low byte = _val's (the other bits kept).</summary>
    private void MergeLowByte(int r)
    {
        PushReg(r);
        _il.Emit(OpCodes.Ldc_I8, ~0xFFL);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldloc, _val);
        _il.Emit(OpCodes.Ldc_I8, 0xFFL);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Or);
        StoreReg(r);
    }

    private void EmitSetcc(ref Instruction i)
    {
        if (i.Op0Kind == OpKind.Memory)
        {
            PushAddress(ref i);
            _il.Emit(OpCodes.Stloc, _la);
        }
        PushCondition(i.ConditionCode);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _val);
        if (i.Op0Kind == OpKind.Memory) EmitWrite(ref i, 1, i.NextIP);
        else
        {
            SrcGpr(i.Op0Register, out int d, out _);
            MergeLowByte(d);
        }
    }

    /// <summary>SHL/SHR/SAR r, imm8: the result, and a record (result, CF, OF) for the flags.</summary>
    private void EmitShift(ref Instruction i)
    {
        DestGpr(i.Op0Register, out int d, out int size);
        int bits = size * 8, k = i.Immediate8 & (bits - 1);
        if (k == 0)
        {
            // No flags change; a 32-bit destination is still zero-extended.
            if (size == 4) { PushReg(d); ZeroExtend(4); StoreReg(d); }
            return;
        }
        // _fa = a (the operand, zero- or sign-extended as the shift needs)
        PushReg(d);
        if (i.Mnemonic == Mnemonic.Sar && size == 4) { _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Conv_I8); }
        else ZeroExtend(size);
        _il.Emit(OpCodes.Stloc, _tmp);
        void A() => _il.Emit(OpCodes.Ldloc, _tmp);
        void Shift(OpCode op, int n) { _il.Emit(OpCodes.Ldc_I4, n); _il.Emit(op); }
        void Bit0() { _il.Emit(OpCodes.Ldc_I8, 1L); _il.Emit(OpCodes.And); }
        switch (i.Mnemonic)
        {
            case Mnemonic.Shl:
                A(); Shift(OpCodes.Shl, k); ZeroExtend(size); _il.Emit(OpCodes.Stloc, _fr);
                A(); Shift(OpCodes.Shr_Un, bits - k); Bit0(); _il.Emit(OpCodes.Stloc, _fa);
                // OF = top bit of the result ^ CF
                _il.Emit(OpCodes.Ldloc, _fr); Shift(OpCodes.Shr_Un, bits - 1); _il.Emit(OpCodes.Ldloc, _fa); _il.Emit(OpCodes.Xor);
                _il.Emit(OpCodes.Stloc, _fb);
                break;
            case Mnemonic.Shr:
                A(); Shift(OpCodes.Shr_Un, k); _il.Emit(OpCodes.Stloc, _fr);
                A(); Shift(OpCodes.Shr_Un, k - 1); Bit0(); _il.Emit(OpCodes.Stloc, _fa);
                A(); Shift(OpCodes.Shr_Un, bits - 1); _il.Emit(OpCodes.Stloc, _fb);
                break;
            default: // SAR: the operand is sign-extended in _tmp
                A(); Shift(OpCodes.Shr, k); ZeroExtend(size); _il.Emit(OpCodes.Stloc, _fr);
                A(); Shift(OpCodes.Shr, k - 1); Bit0(); _il.Emit(OpCodes.Stloc, _fa);
                _il.Emit(OpCodes.Ldc_I8, 0L); _il.Emit(OpCodes.Stloc, _fb);
                break;
        }
        _fop = ShiftRecord;
        _fsize = size;
        _il.Emit(OpCodes.Ldloc, _fr);
        StoreReg(d);
    }

    /// <summary>
    /// ROL/ROR r, imm8: the result inline; CF and OF (the only flags they change) are written through the CPU unless
    /// the block overwrites all arithmetic flags before anything could read them.
    /// </summary>
    private void EmitRotate(ref Instruction i)
    {
        DestGpr(i.Op0Register, out int d, out int size);
        int bits = size * 8, k = i.Immediate8 & (bits - 1);
        bool left = i.Mnemonic == Mnemonic.Rol;
        if (k == 0)
        {
            if (size == 4) { PushReg(d); ZeroExtend(4); StoreReg(d); }
            return;
        }
        PushReg(d);
        ZeroExtend(size);
        _il.Emit(OpCodes.Stloc, _tmp);
        // res = (a << k | a >> (bits - k)) for ROL, the other way round for ROR
        _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I4, left ? k : bits - k); _il.Emit(OpCodes.Shl);
        _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I4, left ? bits - k : k); _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Or);
        ZeroExtend(size);
        _il.Emit(OpCodes.Stloc, _tmp);
        _il.Emit(OpCodes.Ldloc, _tmp);
        StoreReg(d);
        if (FlagsDeadAfter(_k)) return;
        SpillFlags();
        _fop = LazyOp.None;
        // ROL: CF = bit 0, OF = top ^ CF; ROR: CF = top bit, OF = top ^ next.
        _il.Emit(OpCodes.Ldarg_1);
        if (left)
        {
            _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I8, 1L); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I4, bits - 1); _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I8, 1L); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Xor);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I4, bits - 1); _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I4, bits - 1); _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Ldloc, _tmp); _il.Emit(OpCodes.Ldc_I4, bits - 2); _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Ldc_I8, 1L); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Xor);
        }
        _il.Emit(OpCodes.Call, MSetCfOf);
    }

    /// <summary>
    /// The arithmetic flags written at instruction k are overwritten, all six, by a later instruction of the block
    /// before any instruction reads a flag or could fault, exit or call out (so no one can observe them).
    /// </summary>
    private bool FlagsDeadAfter(int k)
    {
        const RflagsBits all = RflagsBits.OF | RflagsBits.SF | RflagsBits.ZF | RflagsBits.AF | RflagsBits.CF | RflagsBits.PF;
        var ins = _b.Instrs;
        for (int j = k + 1; j < _b.Count - 1; j++)
        {
            ref Instruction x = ref ins[j];
            Kind kind = Classify(ref x);
            if ((x.RflagsRead & all) != 0 || kind == Kind.None) return false;
            for (int o = 0; o < x.OpCount; o++) if (x.GetOpKind(o) == OpKind.Memory) return false;
            if (x.Mnemonic is Mnemonic.Push or Mnemonic.Pop) return false;
            // A shift by a (masked) zero count changes no flags, whatever its static description says.
            if (kind is Kind.Shift or Kind.Rotate && (x.Immediate8 & (Cpu.RegSize(x.Op0Register) * 8 - 1)) == 0) continue;
            if ((x.RflagsModified & all) == all) return true;
        }
        return false;
    }

    private void EmitLoadExtend(ref Instruction i)
    {
        DestGpr(i.Op0Register, out int d, out int size);
        int srcSize;
        if (i.Op1Kind == OpKind.Memory)
        {
            srcSize = Cpu.MemSize(ref i);
            ReadMemSource(ref i, srcSize);
            _il.Emit(OpCodes.Ldloc, _val);
        }
        else
        {
            SrcGpr(i.Op1Register, out int s, out srcSize);
            PushReg(s);
        }
        if (i.Mnemonic == Mnemonic.Movzx) ZeroExtend(srcSize);
        else
        {
            _il.Emit(srcSize switch { 1 => OpCodes.Conv_I1, 2 => OpCodes.Conv_I2, _ => OpCodes.Conv_I4 });
            _il.Emit(OpCodes.Conv_I8);
            ZeroExtend(size);
        }
        StoreReg(d);
    }

    private void EmitIncDec(ref Instruction i)
    {
        bool mem = i.Op0Kind == OpKind.Memory;
        int d = -1, size;
        if (mem) size = Cpu.MemSize(ref i);
        else DestGpr(i.Op0Register, out d, out size);
        bool inc = i.Mnemonic == Mnemonic.Inc;
        // Of memory, a read-modify-write: the previous flags go to the CPU first, so a fault on the store sees them.
        if (mem) { SpillFlags(); _fop = LazyOp.None; }
        // INC/DEC keep CF: the record carries the CF of the flags they replace.
        if (_fop is LazyOp.None or DynamicRecord)
        {
            PushCarryOfUnknownRecord();
            _il.Emit(OpCodes.Stloc, _fcin);
        }
        else if (_fop is not (LazyOp.Inc or LazyOp.Dec))
        {
            PushCarry();
            _il.Emit(OpCodes.Stloc, _fcin);
        }
        if (mem) PushMemDest(ref i, size);
        else PushReg(d);
        ZeroExtend(size);
        _il.Emit(OpCodes.Stloc, _fa);
        _il.Emit(OpCodes.Ldc_I8, 1L);
        _il.Emit(OpCodes.Stloc, _fb);
        _il.Emit(OpCodes.Ldloc, _fa);
        _il.Emit(OpCodes.Ldc_I8, 1L);
        _il.Emit(inc ? OpCodes.Add : OpCodes.Sub);
        ZeroExtend(size);
        _il.Emit(OpCodes.Stloc, _fr);
        LazyOp op = inc ? LazyOp.Inc : LazyOp.Dec;
        if (mem) StoreRmwResult(ref i, size, op);
        _fop = op;
        _fsize = size;
        if (mem) return;
        _il.Emit(OpCodes.Ldloc, _fr);
        StoreReg(d);
    }

    /// <summary>Pushes CF (0/1) of the current flags.</summary>
    private void PushCarry()
    {
        Materialize();
        switch (_fop)
        {
            case LazyOp.Logic: _il.Emit(OpCodes.Ldc_I4_0); return;
            case LazyOp.Sub:
                _il.Emit(OpCodes.Ldloc, _fa);
                _il.Emit(OpCodes.Ldloc, _fb);
                _il.Emit(OpCodes.Clt_Un);
                return;
            case LazyOp.Add:
                _il.Emit(OpCodes.Ldloc, _fr);
                ZeroExtend(_fsize);
                _il.Emit(OpCodes.Ldloc, _fa);
                _il.Emit(OpCodes.Clt_Un);
                return;
            case LazyOp.Inc or LazyOp.Dec:
                _il.Emit(OpCodes.Ldloc, _fcin);
                return;
            case MulRecord:
                _il.Emit(OpCodes.Ldloc, _fb);
                _il.Emit(OpCodes.Conv_I4);
                return;
            case ShiftRecord:
                _il.Emit(OpCodes.Ldloc, _fa);
                _il.Emit(OpCodes.Conv_I4);
                return;
            default:
                _il.Emit(OpCodes.Ldarg_1);
                _il.Emit(OpCodes.Call, MGetCF);
                return;
        }
    }

    /// <summary>PUSH of _val (8 bytes): RSP changes only once the store succeeded.</summary>
    private void EmitPushVal(ref Instruction i, ulong ripAfter)
    {
        Load(Cpu.RSP);
        _dirty[Cpu.RSP] = true;
        EmitLdReg(Cpu.RSP);
        _il.Emit(OpCodes.Ldc_I8, 8L);
        _il.Emit(OpCodes.Sub);
        _il.Emit(OpCodes.Stloc, _la);
        EmitWrite(ref i, 8, ripAfter, () => { _il.Emit(OpCodes.Ldloc, _la); EmitStReg(Cpu.RSP); }, Cpu.RSP);
        _il.Emit(OpCodes.Ldloc, _la);
        StoreReg(Cpu.RSP);
    }

    /// <summary>POP into _val (8 bytes); RSP moves after the read.</summary>
    private void EmitPopVal(ref Instruction i, long extra = 0)
    {
        Load(Cpu.RSP);
        EmitLdReg(Cpu.RSP);
        _il.Emit(OpCodes.Stloc, _la);
        EmitRead(ref i, 8);
        EmitLdReg(Cpu.RSP);
        _il.Emit(OpCodes.Ldc_I8, 8L + extra);
        _il.Emit(OpCodes.Add);
        StoreReg(Cpu.RSP);
    }

    /// <summary>Operand 1 (a full-width register, or memory of the operand size) into _val.</summary>
    private void SourceToVal(ref Instruction i, int size)
    {
        if (i.Op1Kind == OpKind.Memory) { ReadMemSource(ref i, size); return; }
        DestGpr(i.Op1Register, out int s, out _);
        PushReg(s);
        _il.Emit(OpCodes.Stloc, _val);
    }

    /// <summary>IMUL r, r/m and IMUL r, r/m, imm inline: the product, and a record (product, overflow) for the flags.</summary>
    private void EmitImul(ref Instruction i)
    {
        DestGpr(i.Op0Register, out int d, out int size);
        SourceToVal(ref i, size);
        // a → _fa, b → _fb (as signed values of the operand size)
        if (i.OpCount == 3) _il.Emit(OpCodes.Ldc_I8, (long)i.GetImmediate(2));
        else PushReg(d);
        _il.Emit(OpCodes.Stloc, _fa);
        if (size == 8)
        {
            // high = BigMul(a, b, out low); overflow unless high is low's sign extension
            _il.Emit(OpCodes.Ldloc, _val);
            _il.Emit(OpCodes.Ldloc, _fa);
            _il.Emit(OpCodes.Ldloca, _fr);
            _il.Emit(OpCodes.Call, MBigMul);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldc_I4, 63);
            _il.Emit(OpCodes.Shr);
            _il.Emit(OpCodes.Ceq);
        }
        else
        {
            // p = (long)(int)a * (long)(int)b; overflow unless p fits in 32 signed bits
            _il.Emit(OpCodes.Ldloc, _val);
            _il.Emit(OpCodes.Conv_I4);
            _il.Emit(OpCodes.Conv_I8);
            _il.Emit(OpCodes.Ldloc, _fa);
            _il.Emit(OpCodes.Conv_I4);
            _il.Emit(OpCodes.Conv_I8);
            _il.Emit(OpCodes.Mul);
            _il.Emit(OpCodes.Stloc, _fr);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Conv_I4);
            _il.Emit(OpCodes.Conv_I8);
            _il.Emit(OpCodes.Ceq);
        }
        // fb = overflow (1) or not (0)
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Ceq);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _fb);
        _fop = MulRecord;
        _fsize = size;
        _il.Emit(OpCodes.Ldloc, _fr);
        ZeroExtend(size);
        StoreReg(d);
    }

    private void EmitCmov(ref Instruction i)
    {
        DestGpr(i.Op0Register, out int d, out int size);
        SourceToVal(ref i, size);
        Load(d);
        Label no = _il.DefineLabel(), end = _il.DefineLabel();
        PushCondition(i.ConditionCode);
        _il.Emit(OpCodes.Brfalse, no);
        _il.Emit(OpCodes.Ldloc, _val);
        ZeroExtend(size);
        EmitStReg(d);
        _il.Emit(OpCodes.Br, end);
        _il.MarkLabel(no);
        if (size == 4)
        {
            // A 32-bit CMOV zero-extends its destination even when it does not move.
            EmitLdReg(d);
            ZeroExtend(4);
            EmitStReg(d);
        }
        _il.MarkLabel(end);
        _dirty[d] = true;
    }
}
