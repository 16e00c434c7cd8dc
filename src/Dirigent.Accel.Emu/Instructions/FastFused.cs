using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// CMP/TEST/SUB/ADD (register or immediate source) or INC/DEC of a full-width register immediately followed by the block-ending
/// 64-bit Jcc: one handler does both, saving a dispatch per compare-and-branch, the commonest pair in kernel code.
/// The flags are still recorded lazily exactly as the lone CMP/TEST does, so later readers see the same state.
/// The pair is only fused when the branch target is canonical (the Jcc cannot fault), and while the CPU steps
/// (RFLAGS.TF, armed breakpoints) the handler runs the CMP/TEST alone so traps and breakpoints see the boundary.
/// The dispatch loop stops before the Jcc (<see cref="Block.RunCount"/>), so the loop still ends the ordinary
/// way rather than through BlockExit; the Jcc keeps its own handler for when the block runs from it (after a
/// single-step trap between the two).
/// </summary>
internal static unsafe class FastFused
{
    public static delegate*<Cpu, ref Instruction, void> Select(ref Instruction cmp, ref Instruction jcc)
    {
        if (jcc.OpCount != 1 || jcc.Op0Kind != OpKind.NearBranch64 || !jcc.Code.IsJccShortOrNear()) return null;
        ulong t = jcc.NearBranch64;
        if ((ulong)((long)(t << 16) >> 16) != t) return null;
        return FixedCondition.Select<Fuse>(jcc.ConditionCode, ref cmp);
    }

    private struct Fuse : IConditionHandlerPicker
    {
        public static delegate*<Cpu, ref Instruction, void> Pick<T>(ref Instruction cmp) where T : struct, ICc => For<T>(ref cmp);
    }

    private static delegate*<Cpu, ref Instruction, void> For<T>(ref Instruction cmp) where T : struct, ICc
    {
        if (cmp.HasLockPrefix || cmp.Op0Kind != OpKind.Register) return null;
        if (cmp.OpCount == 1)
        {
            return cmp.Code switch
            {
                Code.Dec_rm64 => &DecR64<T>,
                Code.Dec_rm32 => &DecR32<T>,
                Code.Inc_rm64 => &IncR64<T>,
                Code.Inc_rm32 => &IncR32<T>,
                _ => null,
            };
        }
        if (cmp.OpCount != 2) return null;
        if (cmp.Op1Kind == OpKind.Register)
        {
            return cmp.Code switch
            {
                Code.Sub_rm64_r64 or Code.Sub_r64_rm64 => &SubRR64<T>,
                Code.Sub_rm32_r32 or Code.Sub_r32_rm32 => &SubRR32<T>,
                Code.Add_rm64_r64 or Code.Add_r64_rm64 => &AddRR64<T>,
                Code.Add_rm32_r32 or Code.Add_r32_rm32 => &AddRR32<T>,
                Code.Cmp_rm64_r64 or Code.Cmp_r64_rm64 => &CmpRR64<T>,
                Code.Cmp_rm32_r32 or Code.Cmp_r32_rm32 => &CmpRR32<T>,
                Code.Test_rm64_r64 => &TestRR64<T>,
                Code.Test_rm32_r32 => &TestRR32<T>,
                _ => null,
            };
        }
        int size = Cpu.RegSize(cmp.Op0Register);
        if (size != 8 && size != 4) return null;
        return cmp.Code switch
        {
            Code.Sub_rm64_imm8 or Code.Sub_rm64_imm32 or Code.Sub_RAX_imm32 => &SubRI64<T>,
            Code.Sub_rm32_imm8 or Code.Sub_rm32_imm32 or Code.Sub_EAX_imm32 => &SubRI32<T>,
            Code.Add_rm64_imm8 or Code.Add_rm64_imm32 or Code.Add_RAX_imm32 => &AddRI64<T>,
            Code.Add_rm32_imm8 or Code.Add_rm32_imm32 or Code.Add_EAX_imm32 => &AddRI32<T>,
            Code.Cmp_rm64_imm8 or Code.Cmp_rm64_imm32 or Code.Cmp_RAX_imm32 => &CmpRI64<T>,
            Code.Cmp_rm32_imm8 or Code.Cmp_rm32_imm32 or Code.Cmp_EAX_imm32 => &CmpRI32<T>,
            Code.Test_rm64_imm32 or Code.Test_RAX_imm32 => &TestRI64<T>,
            Code.Test_rm32_imm32 or Code.Test_EAX_imm32 => &TestRI32<T>,
            _ => null,
        };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong R0(Cpu c, ref Instruction i) => c.GprRef(Cpu.RegInfo(i.Op0Register));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong R1(Cpu c, ref Instruction i) => c.GprRef(Cpu.RegInfo(i.Op1Register));

    /// <summary>Runs the Jcc that follows i in the block (its Instruction is the next array element).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Branch<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        if (c.Stepping) return;
        ref Instruction j = ref Unsafe.Add(ref i, 1);
        c.Rip = c.TestCondition(T.Cc) ? j.NearBranch64 : j.NextIP;
        c.RetireFused();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref ulong D(Cpu c, ref Instruction i) => ref c.GprRef(Cpu.RegInfo(i.Op0Register));

    // Writers mirror FastRegReg/FastMem/IntegerAlu: 32-bit results zero-extend, the lazy record is the same.
    private static void DecR64<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = d, r = a - 1; d = r; c.SetLazyIncDec(false, 8, r, a); Branch<T>(c, ref i); }
    private static void DecR32<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = (uint)d, r = a - 1; d = (uint)r; c.SetLazyIncDec(false, 4, r, a); Branch<T>(c, ref i); }
    private static void IncR64<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = d, r = a + 1; d = r; c.SetLazyIncDec(true, 8, r, a); Branch<T>(c, ref i); }
    private static void IncR32<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = (uint)d, r = a + 1; d = (uint)r; c.SetLazyIncDec(true, 4, r, a); Branch<T>(c, ref i); }

    private static void SubRR64<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = d, b = R1(c, ref i), r = a - b; d = r; c.SetLazyFlags(LazyOp.Sub, 8, r, a, b); Branch<T>(c, ref i); }
    private static void SubRR32<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = (uint)d, b = (uint)R1(c, ref i), r = a - b; d = (uint)r; c.SetLazyFlags(LazyOp.Sub, 4, r, a, b); Branch<T>(c, ref i); }
    private static void AddRR64<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = d, b = R1(c, ref i), r = a + b; d = r; c.SetLazyFlags(LazyOp.Add, 8, r, a, b); Branch<T>(c, ref i); }
    private static void AddRR32<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = (uint)d, b = (uint)R1(c, ref i), r = a + b; d = (uint)r; c.SetLazyFlags(LazyOp.Add, 4, r, a, b); Branch<T>(c, ref i); }
    private static void SubRI64<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = d, b = i.GetImmediate(1), r = a - b; d = r; c.SetLazyFlags(LazyOp.Sub, 8, r, a, b); Branch<T>(c, ref i); }
    private static void SubRI32<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = (uint)d, b = (uint)i.GetImmediate(1), r = a - b; d = (uint)r; c.SetLazyFlags(LazyOp.Sub, 4, r, a, b); Branch<T>(c, ref i); }
    private static void AddRI64<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = d, b = i.GetImmediate(1), r = a + b; d = r; c.SetLazyFlags(LazyOp.Add, 8, r, a, b); Branch<T>(c, ref i); }
    private static void AddRI32<T>(Cpu c, ref Instruction i) where T : struct, ICc { ref ulong d = ref D(c, ref i); ulong a = (uint)d, b = (uint)i.GetImmediate(1), r = a + b; d = (uint)r; c.SetLazyFlags(LazyOp.Add, 4, r, a, b); Branch<T>(c, ref i); }

    private static void CmpRR64<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = R0(c, ref i), b = R1(c, ref i);
        c.SetLazyFlags(LazyOp.Sub, 8, a - b, a, b);
        Branch<T>(c, ref i);
    }

    private static void CmpRR32<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = (uint)R0(c, ref i), b = (uint)R1(c, ref i);
        c.SetLazyFlags(LazyOp.Sub, 4, a - b, a, b);
        Branch<T>(c, ref i);
    }

    private static void TestRR64<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = R0(c, ref i), b = R1(c, ref i);
        c.SetLazyFlags(LazyOp.Logic, 8, a & b, a, b);
        Branch<T>(c, ref i);
    }

    private static void TestRR32<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = (uint)R0(c, ref i), b = (uint)R1(c, ref i);
        c.SetLazyFlags(LazyOp.Logic, 4, a & b, a, b);
        Branch<T>(c, ref i);
    }

    private static void CmpRI64<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = R0(c, ref i), b = i.GetImmediate(1);
        c.SetLazyFlags(LazyOp.Sub, 8, a - b, a, b);
        Branch<T>(c, ref i);
    }

    private static void CmpRI32<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = (uint)R0(c, ref i), b = (uint)i.GetImmediate(1);
        c.SetLazyFlags(LazyOp.Sub, 4, a - b, a, b);
        Branch<T>(c, ref i);
    }

    private static void TestRI64<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = R0(c, ref i), b = i.GetImmediate(1);
        c.SetLazyFlags(LazyOp.Logic, 8, a & b, a, b);
        Branch<T>(c, ref i);
    }

    private static void TestRI32<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        ulong a = (uint)R0(c, ref i), b = (uint)i.GetImmediate(1);
        c.SetLazyFlags(LazyOp.Logic, 4, a & b, a, b);
        Branch<T>(c, ref i);
    }

}
