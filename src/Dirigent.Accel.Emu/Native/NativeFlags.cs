using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Native;

/// <summary>The native tier's guest flags in the host's: replaying the block's last flag record, or, for a record from before the block, a shared routine that replays it at run time.</summary>
internal sealed partial class NativeCompiler
{
    /// <summary>
    /// Makes the host's flags the guest's: the last flag-writing template's operation again, on the values its lazy
    /// record kept (CMP for SUB/CMP and NEG, ADD, CMP with 0 of a logic result, INC/DEC, ADC and SBB after CF = the
    /// carry-in), the flags a shift left in _flags, or, when this block's code wrote no record the compiler knows, a
    /// call of the shared routine that does the same at run time from whatever record is there. Uses r10 and r11.
    /// </summary>
    private void EnsureHostFlags()
    {
        if (_hostFlags) return;
        if (_flagSource == null)
        {
            // A record from before the block (or one only the routine replays): the shared routine reads it at run time.
            _a.MovImm(R11, (ulong)_flagsRoutine);
            _a.CallReg(R11);
        }
        else if (_flagSource == LazyOp.None) ArithFlagsToHost();
        else if (_flagSource is LazyOp.Inc or LazyOp.Dec)
        {
            // CF from the record's carry-in, then the same INC/DEC of its operand.
            CarryInToCf();
            _a.Load(8, R11, Rsi, _l.LazyA);
            _a.IncDec(_flagSource == LazyOp.Dec, _flagSize, R11);
        }
        else if (_flagSource == LazyOp.Logic) LogicFlags(_flagSize);
        else if (_flagSource is LazyOp.Add or LazyOp.Sub or LazyOp.Neg)
        {
            // (NEG is recorded as 0 - operand.)
            _a.Load(8, R10, Rsi, _l.LazyA);
            _a.Load(8, R11, Rsi, _l.LazyB);
            _a.Alu(_flagSource == LazyOp.Add ? X64Emitter.OpAdd : X64Emitter.OpCmp, _flagSize, R10, R11);
        }
        else
        {
            // ADC/SBB: CF = the carry-in, then the same operation.
            CarryInToCf();
            _a.Load(8, R10, Rsi, _l.LazyA);
            _a.Load(8, R11, Rsi, _l.LazyB);
            _a.Alu(_flagSource == LazyOp.Adc ? X64Emitter.OpAdc : X64Emitter.OpSbb, _flagSize, R10, R11);
        }
        _hostFlags = true;
    }

    /// <summary>
    /// The shared routine (at the arena's front, called with CALL) that makes the host's arithmetic flags the guest's
    /// from a flag state this block's code did not write (it came from before the block, or from an instruction whose
    /// record no template replays): the lazy record's operation again, at its size, on the operands it kept, which gives
    /// exactly the flags the interpreter derives from it (Cpu.ComputeArith): CMP for SUB (and NEG, recorded as 0 - b),
    /// ADD, ADC and SBB with CF = the carry-in first, INC/DEC with CF = the carry-in, CMP of a logic result with 0;
    /// with no record, the arithmetic flags of _flags. Clobbers r10 and r11 only; RET leaves the flags as they are.
    /// </summary>
    private void EmitFlagsRoutine()
    {
        var a = _a;
        a.Reset();
        int none = a.NewLabel();
        a.Load(1, R10, Rsi, _l.LazyOp);
        a.AluImm(X64Emitter.OpCmp, false, R10, (int)LazyOp.None);
        a.Jcc(X64Emitter.CcE, none);
        a.Load(1, R11, Rsi, _l.LazySize);
        int[] sized = [a.NewLabel(), a.NewLabel(), a.NewLabel(), a.NewLabel()];
        a.AluImm(X64Emitter.OpCmp, false, R11, 8);
        a.Jcc(X64Emitter.CcE, sized[3]);
        a.AluImm(X64Emitter.OpCmp, false, R11, 4);
        a.Jcc(X64Emitter.CcE, sized[2]);
        a.AluImm(X64Emitter.OpCmp, false, R11, 2);
        a.Jcc(X64Emitter.CcE, sized[1]);
        a.Jmp(sized[0]);
        for (int s = 0; s < 4; s++)
        {
            int size = 1 << s;
            a.Bind(sized[s]);
            int logic = a.NewLabel(), inc = a.NewLabel(), dec = a.NewLabel(), add = a.NewLabel(), adc = a.NewLabel(), sbb = a.NewLabel();
            foreach (var (op, label) in new[] { (LazyOp.Logic, logic), (LazyOp.Inc, inc), (LazyOp.Dec, dec), (LazyOp.Add, add), (LazyOp.Adc, adc), (LazyOp.Sbb, sbb) })
            {
                a.AluImm(X64Emitter.OpCmp, false, R10, (int)op);
                a.Jcc(X64Emitter.CcE, label);
            }
            // SUB and NEG.
            a.Load(8, R10, Rsi, _l.LazyA);
            a.Load(8, R11, Rsi, _l.LazyB);
            a.Alu(X64Emitter.OpCmp, size, R10, R11);
            a.Ret();
            a.Bind(add);
            a.Load(8, R10, Rsi, _l.LazyA);
            a.Load(8, R11, Rsi, _l.LazyB);
            a.Alu(X64Emitter.OpAdd, size, R10, R11);
            a.Ret();
            foreach (var (label, op) in new[] { (adc, X64Emitter.OpAdc), (sbb, X64Emitter.OpSbb) })
            {
                a.Bind(label);
                CarryInToCf();
                a.Load(8, R10, Rsi, _l.LazyA);
                a.Load(8, R11, Rsi, _l.LazyB);
                a.Alu(op, size, R10, R11);
                a.Ret();
            }
            a.Bind(logic);
            LogicFlags(size);
            a.Ret();
            foreach (var (label, isDec) in new[] { (inc, false), (dec, true) })
            {
                a.Bind(label);
                CarryInToCf();
                a.Load(8, R11, Rsi, _l.LazyA);
                a.IncDec(isDec, size, R11);
                a.Ret();
            }
        }
        a.Bind(none);
        ArithFlagsToHost();
        a.Ret();
    }

    /// <summary>
    /// A logic result's flags: CMP of it with 0 at its size, which gives its ZF, SF and PF with CF = OF = 0 and, unlike
    /// AND of it with itself (AF undefined), AF = 0 as the interpreter has it. Uses r10 and r11.
    /// </summary>
    private void LogicFlags(int size)
    {
        _a.Load(8, R10, Rsi, _l.LazyRes);
        _a.MovImm(R11, 0);
        _a.Alu(X64Emitter.OpCmp, size, R10, R11);
    }

    /// <summary>The host's CF = the record's carry-in (0xFF + 1 carries, 0xFF + 0 does not). Uses r10 and r11.</summary>
    private void CarryInToCf()
    {
        _a.Load(1, R10, Rsi, _l.LazyCarryIn);
        _a.MovImm(R11, 0xFF);
        _a.Alu(X64Emitter.OpAdd, 1, R10, R11);
    }

    /// <summary>The guest's arithmetic flags in _flags (no record) into the host's RFLAGS, its other bits untouched. Uses r10 and r11.</summary>
    private void ArithFlagsToHost()
    {
        _a.ReadFlags(R10);
        _a.AluImm(X64Emitter.OpAnd, true, R10, ~(int)Cpu.ArithFlags);
        _a.Load(8, R11, Rsi, 0);
        _a.AluImm(X64Emitter.OpAnd, true, R11, (int)Cpu.ArithFlags);
        _a.Alu(X64Emitter.OpOr, 8, R10, R11);
        _a.WriteFlags(R10);
    }
}
