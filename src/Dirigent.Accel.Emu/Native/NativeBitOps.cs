using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Native;

/// <summary>
/// The native tier's shifts, rotates, bit tests, IMUL, NEG and BSWAP. Where the interpreter sets flags the SDM leaves
/// undefined, the templates set the same values it does (Instructions/IntegerShift.cs, IntegerBit.cs,
/// IntegerMulDiv.cs), never the host's: every tier must leave a guest the same state.
/// </summary>
internal sealed partial class NativeCompiler
{
    /// <summary>
    /// SHL/SHR/SAR r32/r64 by an immediate or by CL, the flags as the interpreter sets them (IntegerShift.Compute): SF,
    /// ZF, PF and CF from the host's shift (all defined for a non-zero count), OF as for a count of 1 (SHL: the result's
    /// sign XOR CF; SHR: the operand's sign; SAR: 0), AF clear; stored in _flags with no lazy record. A zero count (CL
    /// only; a zero immediate is left to the interpreter) changes no flags but still writes the register, so a 32-bit
    /// destination is zero-extended.
    /// </summary>
    private bool EmitShift(ref Instruction i)
    {
        if (i.OpCount != 2 || i.Op0Kind != OpKind.Register) return false;
        bool byCl = i.Op1Kind == OpKind.Register && i.Op1Register == Register.CL;
        if (!byCl && i.Op1Kind != OpKind.Immediate8) return false;
        var (dd, size) = Gpr(i.Op0Register);
        if (size < 4) return false;
        int bits = size * 8, count = byCl ? 0 : i.Immediate8 & (bits - 1);
        if (!byCl && count == 0) return false;
        int kind = i.Mnemonic == Mnemonic.Shl ? X64Emitter.Shl : i.Mnemonic == Mnemonic.Shr ? X64Emitter.Shr : X64Emitter.Sar;
        LoadReg(R8, dd, size);
        _a.Mov(R11, R8);
        int zero = -1, done = -1;
        if (byCl)
        {
            zero = _a.NewLabel();
            done = _a.NewLabel();
            LoadReg(Rcx, Cpu.RCX * 8, 1);
            _a.AluImm(X64Emitter.OpAnd, false, Rcx, bits - 1);
            _a.Jcc(X64Emitter.CcE, zero);
            _a.ShiftCl(kind, size == 8, R8);
        }
        else _a.Shift(kind, size == 8, R8, count);
        _a.ReadFlags(R9);
        StoreReg(dd, size, R8);
        _a.AluImm(X64Emitter.OpAnd, true, R9, (int)(Cpu.CF | Cpu.PF | Cpu.ZF | Cpu.SF));
        if (kind != X64Emitter.Sar)
        {
            // SHL: sign(result) ^ CF; SHR: sign(operand). (Registers hold the values zero-extended from their size.)
            _a.Mov(R10, kind == X64Emitter.Shl ? R8 : R11);
            _a.Shift(X64Emitter.Shr, true, R10, bits - 1);
            if (kind == X64Emitter.Shl)
            {
                _a.Mov(Rcx, R9);
                _a.AluImm(X64Emitter.OpAnd, true, Rcx, 1);
                _a.Alu(X64Emitter.OpXor, 8, R10, Rcx);
            }
            _a.Shift(X64Emitter.Shl, true, R10, 11);
            _a.Alu(X64Emitter.OpOr, 8, R9, R10);
        }
        StoreArithFlags(R9);
        if (byCl)
        {
            _a.Jmp(done);
            _a.Bind(zero);
            StoreReg(dd, size, R11);
            _a.Bind(done);
            // Either the flags above or the record from before, untouched: only the run time knows which.
            _flagSource = null;
        }
        return true;
    }

    /// <summary>
    /// _flags' arithmetic bits = those of reg (which holds no others), with no lazy record; the compiler then knows the
    /// flags are there (and not in the host's, which this clobbers). Uses r10.
    /// </summary>
    private void StoreArithFlags(int reg)
    {
        _a.Load(8, R10, Rsi, 0);
        _a.AluImm(X64Emitter.OpAnd, true, R10, ~(int)Cpu.ArithFlags);
        _a.Alu(X64Emitter.OpOr, 8, R10, reg);
        _a.Store(8, Rsi, 0, R10);
        _a.StoreImm(1, Rsi, _l.LazyOp, (int)LazyOp.None);
        _hostFlags = false;
        _flagSource = LazyOp.None;
    }

    /// <summary>
    /// dst = the guest's arithmetic flags with the bits in <paramref name="clear"/> cleared. After a logic operation the
    /// host's AF is undefined where the interpreter's is 0, so that record is replayed (its replay defines AF as 0)
    /// rather than read off the host. Uses r10 and r11; the host's flags are then clobbered.
    /// </summary>
    private void GuestFlagsInto(int dst, int clear)
    {
        if (_flagSource == LazyOp.Logic) _hostFlags = false;
        EnsureHostFlags();
        _a.ReadFlags(dst);
        _a.AluImm(X64Emitter.OpAnd, true, dst, (int)Cpu.ArithFlags & ~clear);
        _hostFlags = false;
    }

    /// <summary>
    /// ROL/ROR r32/r64, imm8 with a non-zero count: only CF and OF change (the interpreter's SetCfOf), computed from the
    /// result as it does (ROL: CF = bit 0, OF = the sign XOR CF; ROR: CF = the sign, OF = the sign XOR the bit below).
    /// </summary>
    private bool EmitRotate(ref Instruction i)
    {
        if (i.OpCount != 2 || i.Op0Kind != OpKind.Register || i.Op1Kind != OpKind.Immediate8) return false;
        var (dd, size) = Gpr(i.Op0Register);
        if (size < 4) return false;
        int bits = size * 8, count = i.Immediate8 & (bits - 1);
        if (count == 0) return false;
        bool rol = i.Mnemonic == Mnemonic.Rol;
        GuestFlagsInto(Rcx, (int)(Cpu.CF | Cpu.OF));
        LoadReg(R8, dd, size);
        _a.Shift(rol ? X64Emitter.Rol : X64Emitter.Ror, size == 8, R8, count);
        StoreReg(dd, size, R8);
        // r10 = CF, r11 = the other bit OF compares it with.
        _a.Mov(R10, R8);
        _a.Mov(R11, R8);
        if (rol)
        {
            _a.AluImm(X64Emitter.OpAnd, true, R10, 1);
            _a.Shift(X64Emitter.Shr, true, R11, bits - 1);
        }
        else
        {
            _a.Shift(X64Emitter.Shr, true, R10, bits - 1);
            _a.Shift(X64Emitter.Shr, true, R11, bits - 2);
            _a.AluImm(X64Emitter.OpAnd, true, R11, 1);
        }
        _a.Alu(X64Emitter.OpOr, 8, Rcx, R10);
        _a.Alu(X64Emitter.OpXor, 8, R11, R10);
        _a.Shift(X64Emitter.Shl, true, R11, 11);
        _a.Alu(X64Emitter.OpOr, 8, Rcx, R11);
        StoreArithFlags(Rcx);
        return true;
    }

    /// <summary>
    /// BT/BTS/BTR/BTC on a 32- or 64-bit register or memory operand (no LOCK), the offset an immediate or a register:
    /// CF = the bit, every other flag as it was (the interpreter's SetFlag materializes them). A register offset into
    /// memory is signed and selects the operand-sized word it falls in (SDM "bit base, bit offset").
    /// </summary>
    private bool EmitBitTest(ref Instruction i, int k)
    {
        if (i.OpCount != 2) return false;
        int op = i.Mnemonic switch
        {
            Mnemonic.Bt => X64Emitter.OpBt, Mnemonic.Bts => X64Emitter.OpBts, Mnemonic.Btr => X64Emitter.OpBtr,
            _ => X64Emitter.OpBtc,
        };
        bool mem = i.Op0Kind == OpKind.Memory;
        int size, dd = 0;
        if (mem) size = MemSize(ref i);
        else if (i.Op0Kind == OpKind.Register) (dd, size) = Gpr(i.Op0Register);
        else return false;
        if (size < 4) return false;
        // A register offset from an absolute address: the interpreter wraps the sum at the address size; left to it.
        if (mem && i.Op1Kind == OpKind.Register && i.MemoryBase == Register.None && i.MemoryIndex == Register.None) return false;
        bool w = size == 8;
        // The offset in r9 (a register's value, or the immediate modulo the size).
        if (i.Op1Kind == OpKind.Register)
        {
            var (od, os) = Gpr(i.Op1Register);
            if (os != size) return false;
            LoadReg(R9, od, size);
        }
        else if (i.Op1Kind == OpKind.Immediate8) _a.MovImm(R9, (ulong)(i.Immediate8 & (size * 8 - 1)));
        else return false;
        if (mem)
        {
            if (!Address(ref i)) return false;
            if (i.Op1Kind == OpKind.Register)
            {
                // The word the signed offset selects: offset >> log2(bits), times the size.
                if (size == 4) _a.Movsx(4, R10, R9); else _a.Mov(R10, R9);
                _a.Shift(X64Emitter.Sar, true, R10, size == 8 ? 6 : 5);
                _a.Lea(Rax, Rax, R10, size, 0);
            }
            Probe(size, op != X64Emitter.OpBt, k);
            _a.Load(size, R8, Rax, 0);
        }
        else LoadReg(R8, dd, size);
        // The guest's other flags (the flags routine leaves r8, r9 and rax alone), then the host's bit test.
        GuestFlagsInto(Rcx, (int)Cpu.CF);
        _a.Alu(X64Emitter.OpXor, 4, R10, R10);
        _a.BitTest(op, w, R8, R9);
        _a.Setcc(X64Emitter.CcB, R10);
        _a.Alu(X64Emitter.OpOr, 8, Rcx, R10);
        if (op != X64Emitter.OpBt)
        {
            if (mem) _a.Store(size, Rax, 0, R8);
            else StoreReg(dd, size, R8);
        }
        StoreArithFlags(Rcx);
        return true;
    }

    /// <summary>
    /// IMUL r32/r64, r/m and IMUL r, r/m, imm: the truncated product; CF = OF = whether it overflowed (the host's IMUL
    /// says exactly that), SF, ZF and PF of the truncated result, AF clear (IntegerMulDiv.SetMulFlags).
    /// </summary>
    private bool EmitImul(ref Instruction i, int k)
    {
        if (i.OpCount is not (2 or 3) || i.Op0Kind != OpKind.Register) return false;
        var (dd, size) = Gpr(i.Op0Register);
        // r9 = the r/m operand.
        if (size < 4 || !LoadSource(ref i, k, size, R9)) return false;
        if (i.OpCount == 3)
        {
            if (!IsImm(i.Op2Kind)) return false;
            _a.MovImm(R8, i.GetImmediate(2) & Mask(size));
        }
        else LoadReg(R8, dd, size);
        _a.Alu(X64Emitter.OpXor, 4, R10, R10);
        _a.Imul(size == 8, R8, R9);
        _a.Setcc(X64Emitter.CcO, R10);
        StoreReg(dd, size, R8);
        _a.Alu(X64Emitter.OpAnd, size, R8, R8);
        _a.ReadFlags(R9);
        _a.AluImm(X64Emitter.OpAnd, true, R9, (int)(Cpu.SF | Cpu.ZF | Cpu.PF));
        _a.Alu(X64Emitter.OpOr, 8, R9, R10);
        _a.Shift(X64Emitter.Shl, true, R10, 11);
        _a.Alu(X64Emitter.OpOr, 8, R9, R10);
        StoreArithFlags(R9);
        return true;
    }

    /// <summary>NEG r/m: the host's NEG (every flag defined), recorded as the interpreter records it (0 - operand).</summary>
    private bool EmitNeg(ref Instruction i, int k)
    {
        if (i.OpCount != 1) return false;
        int size, dd = 0;
        bool mem = i.Op0Kind == OpKind.Memory;
        if (mem)
        {
            size = MemSize(ref i);
            if (size == 0 || !Address(ref i)) return false;
            Probe(size, true, k);
            _a.Load(size, R8, Rax, 0);
        }
        else if (i.Op0Kind == OpKind.Register)
        {
            (dd, size) = Gpr(i.Op0Register);
            if (size == 0) return false;
            LoadReg(R8, dd, size);
        }
        else return false;
        _a.Mov(R9, R8);
        _a.Neg(size, R8);
        // Nothing below changes the host's flags (MOV only).
        if (mem) _a.Store(size, Rax, 0, R8);
        else StoreReg(dd, size, R8);
        RecordFlags(LazyOp.Neg, size, R8, Const0, R9);
        return true;
    }

    /// <summary>BSWAP r32/r64 (no flags).</summary>
    private bool EmitBswap(ref Instruction i)
    {
        var (dd, size) = Gpr(i.Op0Register);
        if (size < 4) return false;
        LoadReg(R8, dd, size);
        _a.Bswap(size == 8, R8);
        StoreReg(dd, size, R8);
        return true;
    }
}
