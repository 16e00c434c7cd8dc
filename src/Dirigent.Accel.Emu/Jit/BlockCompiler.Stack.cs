using System.Reflection;
using System.Reflection.Emit;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>
/// Runs of PUSHes or POPs (a function's prologue saving its callee-saved registers, its epilogue restoring them)
/// compiled as one access: one soft-TLB check covering the run's whole stack range, the stores or loads through the
/// host pointer, RSP moved once. Each PUSH or POP compiled alone costs a TLB probe and a miss path of its own (~150
/// IL bytes; the .NET JIT's time goes with the IL's size), and a boot's compiled blocks hold ~1100 such instructions in
/// runs of 2-8. When the check misses (the range is not in the TLB, or it crosses a page), the run's instructions go
/// through their interpreter handlers one by one (<see cref="Cpu.JitHandlerRun"/>), with the state synced as for a
/// handler call, so faults, their order and RSP at each one are exactly the interpreter's.
/// </summary>
internal sealed partial class BlockCompiler
{
    private static readonly MethodInfo MHandlerRun = Method(nameof(Cpu.JitHandlerRun));

    /// <summary>Longest run compiled as one access (128 bytes of stack).</summary>
    private const int MaxStackRun = 16;

    /// <summary>
    /// How many instructions from k form a run of the same kind (all PUSH r64/imm, none of RSP; or all POP r64), not
    /// counting the block's last instruction (its exit is emitted with it); 0 or 1: no run.
    /// </summary>
    private int StackRun(Instruction[] ins, int k, int n)
    {
        Kind kind = Classify(ref ins[k]);
        if (kind is not (Kind.Push or Kind.Pop)) return 0;
        int m = 0;
        while (k + m < n - 1 && m < MaxStackRun && Classify(ref ins[k + m]) == kind &&
               !(kind == Kind.Push && ins[k + m].Op0Kind == OpKind.Register && ins[k + m].Op0Register == Register.RSP))
            m++;
        return m;
    }

    /// <summary>Instructions k..k+m-1, a run <see cref="StackRun"/> found, as one stack access.</summary>
    private void EmitStackRun(Instruction[] ins, int k, int m)
    {
        bool push = Classify(ref ins[k]) == Kind.Push;
        // Every register either path reads is loaded before they part, so both leave the same registers loaded.
        Load(Cpu.RSP);
        if (push)
            for (int j = 0; j < m; j++)
                if (ins[k + j].Op0Kind == OpKind.Register) Load(Cpu.RegIndex(ins[k + j].Op0Register));
        var dirtyBefore = (bool[])_dirty.Clone();
        Label miss = _il.DefineLabel(), done = _il.DefineLabel();
        // _la = the run's lowest address: RSP - 8m for pushes, RSP for pops.
        EmitLdReg(Cpu.RSP);
        if (push)
        {
            _il.Emit(OpCodes.Ldc_I8, 8L * m);
            _il.Emit(OpCodes.Sub);
        }
        _il.Emit(OpCodes.Stloc, _la);
        EmitTlbProbe(push ? FTlbW : FTlbR, 8 * m, miss);
        _il.Emit(OpCodes.Stloc, _ptr);
        for (int j = 0; j < m; j++)
        {
            ref Instruction i = ref ins[k + j];
            // PUSH j writes at RSP - 8(j+1) = _la + 8(m-1-j); POP j reads at RSP + 8j = _la + 8j.
            _il.Emit(OpCodes.Ldloc, _ptr);
            _il.Emit(OpCodes.Ldc_I4, push ? 8 * (m - 1 - j) : 8 * j);
            _il.Emit(OpCodes.Add);
            if (push)
            {
                if (i.Op0Kind == OpKind.Register) EmitLdReg(Cpu.RegIndex(i.Op0Register));
                else _il.Emit(OpCodes.Ldc_I8, (long)i.GetImmediate(0));
                _il.Emit(OpCodes.Stind_I8);
            }
            else
            {
                _il.Emit(OpCodes.Ldind_I8);
                StoreReg(Cpu.RegIndex(i.Op0Register));
            }
        }
        _il.Emit(OpCodes.Ldloc, _la);
        if (!push)
        {
            _il.Emit(OpCodes.Ldc_I8, 8L * m);
            _il.Emit(OpCodes.Add);
        }
        StoreReg(Cpu.RSP);
        _il.Emit(OpCodes.Br, done);

        // The miss: the state as before the run, written back; the handlers run the instructions; then the registers
        // they set are loaded again, so after the join every local holds its register on both paths.
        _il.MarkLabel(miss);
        var dirtyAfter = (bool[])_dirty.Clone();
        Array.Copy(dirtyBefore, _dirty, 16);
        SpillRegs();
        SpillFlags();
        Label go = _il.DefineLabel();
        _il.Emit(OpCodes.Ldarg_1);
        EmitLdBlock();
        _il.Emit(OpCodes.Ldc_I4, k);
        _il.Emit(OpCodes.Ldc_I4, m);
        _il.Emit(OpCodes.Call, MHandlerRun);
        _il.Emit(OpCodes.Brfalse, go);
        EmitReturn(); // a handler ended the block (JitHandlerRun counted what ran)
        _il.MarkLabel(go);
        if (!_inMemory[Cpu.RSP]) EmitGprToLocal(Cpu.RSP);
        if (!push)
            for (int j = 0; j < m; j++)
            {
                int r = Cpu.RegIndex(ins[k + j].Op0Register);
                if (!_inMemory[r]) EmitGprToLocal(r);
            }
        Array.Copy(dirtyAfter, _dirty, 16);
        _il.MarkLabel(done);
    }
}
