using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Native;

/// <summary>The native tier's guest flags in the host's: replaying the block's last flag record, or, for a record from before the block, a shared routine that replays it at run time.</summary>
internal sealed partial class NativeCompiler
{
    /// <summary>
    /// Makes the host's flags the guest's: <see cref="Replay"/> of the record the last flag-writing template in this
    /// block left (or the flags a shift left in _flags), or, when this block's code wrote no record the compiler knows,
    /// a call of the shared routine that replays at run time whatever record is there. Uses r10 and r11.
    /// </summary>
    private void EnsureHostFlags()
    {
        if (_hostFlags) return;
        if (_flagSource is { } op) Replay(op, _flagSize);
        else
        {
            // A record from before the block (or one only the routine replays): the shared routine reads it at run time.
            _a.MovImm(R11, (ulong)_flagsRoutine);
            _a.CallReg(R11);
        }
        _hostFlags = true;
    }

    /// <summary>
    /// The host's arithmetic flags = those the interpreter derives from a record of <paramref name="op"/> at
    /// <paramref name="size"/> bytes (Cpu.ComputeArith), by running the recorded operation again on the operands it
    /// kept: CMP for SUB (and NEG, recorded as 0 - operand), ADD, ADC and SBB after CF = the carry-in, INC/DEC after
    /// CF = the carry-in, CMP with 0 of a logic result; with no record (None), the arithmetic flags of _flags. Uses r10
    /// and r11.
    /// </summary>
    private void Replay(LazyOp op, int size)
    {
        switch (op)
        {
            case LazyOp.None: ArithFlagsToHost(); break;
            case LazyOp.Logic: LogicFlags(size); break;
            case LazyOp.Inc or LazyOp.Dec:
                CarryInToCf();
                _a.Load(8, R11, Rsi, _l.LazyA);
                _a.IncDec(op == LazyOp.Dec, size, R11);
                break;
            default:
                if (op is LazyOp.Adc or LazyOp.Sbb) CarryInToCf();
                _a.Load(8, R10, Rsi, _l.LazyA);
                _a.Load(8, R11, Rsi, _l.LazyB);
                _a.Alu(op switch
                {
                    LazyOp.Add => X64Emitter.OpAdd, LazyOp.Adc => X64Emitter.OpAdc, LazyOp.Sbb => X64Emitter.OpSbb,
                    _ => X64Emitter.OpCmp, // SUB, NEG
                }, size, R10, R11);
                break;
        }
    }

    /// <summary>
    /// The shared routine (at the arena's front, called with CALL) that makes the host's arithmetic flags the guest's
    /// from a flag state this block's code did not write (it came from before the block, or from an instruction whose
    /// record no template replays): <see cref="Replay"/> of whatever record is there, at its size. Clobbers r10 and r11
    /// only; RET leaves the flags as they are.
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
        for (int s = 3; s > 0; s--)
        {
            a.AluImm(X64Emitter.OpCmp, false, R11, 1 << s);
            a.Jcc(X64Emitter.CcE, sized[s]);
        }
        a.Jmp(sized[0]);
        // Per size: the op in r10 picks its replay; SUB and NEG (both CMP) are what is left.
        LazyOp[] ops = [LazyOp.Logic, LazyOp.Inc, LazyOp.Dec, LazyOp.Add, LazyOp.Adc, LazyOp.Sbb];
        for (int s = 0; s < 4; s++)
        {
            a.Bind(sized[s]);
            int[] labels = new int[ops.Length];
            for (int n = 0; n < ops.Length; n++)
            {
                labels[n] = a.NewLabel();
                a.AluImm(X64Emitter.OpCmp, false, R10, (int)ops[n]);
                a.Jcc(X64Emitter.CcE, labels[n]);
            }
            Replay(LazyOp.Sub, 1 << s);
            a.Ret();
            for (int n = 0; n < ops.Length; n++)
            {
                a.Bind(labels[n]);
                Replay(ops[n], 1 << s);
                a.Ret();
            }
        }
        a.Bind(none);
        Replay(LazyOp.None, 0);
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
