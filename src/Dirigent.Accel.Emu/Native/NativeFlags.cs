using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Native;

/// <summary>The native tier's guest flags in the host's: replaying the block's last flag record, or reading CF off a record from before the block.</summary>
internal sealed partial class NativeCompiler
{
    /// <summary>
    /// Makes the host's flags the guest's (FlagsAvailable must hold): the last ALU template's operation again, on the
    /// values its lazy record kept (CMP for SUB/CMP, ADD, and AND of the result with itself for the logic group,
    /// which gives its ZF, SF and PF with CF = OF = 0). Uses r10 and r11.
    /// </summary>
    private void EnsureHostFlags()
    {
        if (_hostFlags) return;
        System.Diagnostics.Debug.Assert(_flagSource != null, "host flags asked for where the record cannot give them");
        if (_flagSource == LazyOp.None)
        {
            // The guest's arithmetic flags are in _flags: into the host's RFLAGS, its other bits untouched.
            _a.ReadFlags(R10);
            _a.AluImm(X64Emitter.OpAnd, true, R10, ~(int)Cpu.ArithFlags);
            _a.Load(8, R11, Rsi, 0);
            _a.AluImm(X64Emitter.OpAnd, true, R11, (int)Cpu.ArithFlags);
            _a.Alu(X64Emitter.OpOr, 8, R10, R11);
            _a.WriteFlags(R10);
        }
        else if (_flagSource is LazyOp.Inc or LazyOp.Dec)
        {
            // CF from the record's carry-in (0xFF + 1 carries), then the same INC/DEC of its operand.
            _a.Load(1, R10, Rsi, _l.LazyCarryIn);
            _a.MovImm(R11, 0xFF);
            _a.Alu(X64Emitter.OpAdd, 1, R10, R11);
            _a.Load(8, R11, Rsi, _l.LazyA);
            _a.IncDec(_flagSource == LazyOp.Dec, _flagSize, R11);
        }
        else if (_flagSource == LazyOp.Logic)
        {
            _a.Load(8, R10, Rsi, _l.LazyRes);
            _a.Alu(X64Emitter.OpAnd, _flagSize, R10, R10);
        }
        else
        {
            _a.Load(8, R10, Rsi, _l.LazyA);
            _a.Load(8, R11, Rsi, _l.LazyB);
            _a.Alu(_flagSource == LazyOp.Add ? X64Emitter.OpAdd : X64Emitter.OpCmp, _flagSize, R10, R11);
        }
        _hostFlags = true;
    }

    /// <summary>
    /// cl = the guest's CF, from a flag state this block's code did not write (it came from before the block): read off
    /// the lazy record at run time as Cpu.GetCF does, for the records ALU templates, INC/DEC and shifts leave; ADC, SBB
    /// and NEG records leave through instruction k's exit for the interpreter. Operands are compared shifted left by
    /// 64 - 8 * size, which compares their low size bytes. Clobbers rcx, r10, r11 and the host's flags.
    /// </summary>
    private void CarryFromRecord(int k)
    {
        int none = _a.NewLabel(), logic = _a.NewLabel(), add = _a.NewLabel(), sub = _a.NewLabel(), carry = _a.NewLabel(),
            done = _a.NewLabel();
        _a.Load(1, R10, Rsi, _l.LazyOp);
        void When(LazyOp op, int label)
        {
            _a.AluImm(X64Emitter.OpCmp, false, R10, (int)op);
            _a.Jcc(X64Emitter.CcE, label);
        }
        When(LazyOp.None, none);
        When(LazyOp.Logic, logic);
        When(LazyOp.Add, add);
        When(LazyOp.Sub, sub);
        When(LazyOp.Inc, carry);
        When(LazyOp.Dec, carry);
        _a.Jmp(Exit(k));
        _a.Bind(none);
        _a.Load(4, Rcx, Rsi, 0);
        _a.AluImm(X64Emitter.OpAnd, false, Rcx, 1);
        _a.Jmp(done);
        _a.Bind(logic);
        _a.Alu(X64Emitter.OpXor, 4, Rcx, Rcx);
        _a.Jmp(done);
        _a.Bind(carry);
        _a.Load(1, Rcx, Rsi, _l.LazyCarryIn);
        _a.Jmp(done);
        // ADD: CF = result < a; SUB: CF = a < b (at the record's size).
        _a.Bind(add);
        _a.Load(8, R10, Rsi, _l.LazyRes);
        _a.Load(8, R11, Rsi, _l.LazyA);
        int cmp = _a.NewLabel();
        _a.Jmp(cmp);
        _a.Bind(sub);
        _a.Load(8, R10, Rsi, _l.LazyA);
        _a.Load(8, R11, Rsi, _l.LazyB);
        _a.Bind(cmp);
        _a.Load(1, Rcx, Rsi, _l.LazySize);
        // cl = -8 * size: a 64-bit shift counts cl mod 64, so that is 64 - 8 * size (0 for 8 bytes).
        _a.Shift(X64Emitter.Shl, false, Rcx, 3);
        _a.Not(false, Rcx);
        _a.AluImm(X64Emitter.OpAdd, false, Rcx, 1);
        _a.ShiftCl(X64Emitter.Shl, true, R10);
        _a.ShiftCl(X64Emitter.Shl, true, R11);
        _a.Alu(X64Emitter.OpCmp, 8, R10, R11);
        _a.Setcc(X64Emitter.CcB, Rcx);
        _a.Bind(done);
        _hostFlags = false;
    }
}
