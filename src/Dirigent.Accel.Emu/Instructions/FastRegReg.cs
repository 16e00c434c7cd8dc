using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// Register-to-register MOV and ALU forms at 32 and 64 bits, chosen per decoded instruction when a block is
/// translated. They are the most frequent instructions in kernel code, and knowing both operands are full-width
/// GPRs lets them skip the operand-kind and register-width dispatch of the generic handlers. Semantics match
/// those handlers exactly (32-bit results zero-extend; flags go through the same lazy record).
/// </summary>
internal static unsafe class FastRegReg
{
    /// <summary>The handler for i: a specialised one when it exists, else the generic one from the table.</summary>
    public static delegate*<Cpu, ref Instruction, void> Select(ref Instruction i, delegate*<Cpu, ref Instruction, void> generic)
    {
        if (i.OpCount != 2 || i.Op0Kind != OpKind.Register || i.Op1Kind != OpKind.Register || i.HasLockPrefix) return generic;
        return i.Code switch
        {
            Code.Mov_rm64_r64 or Code.Mov_r64_rm64 => &Mov64,
            Code.Mov_rm32_r32 or Code.Mov_r32_rm32 => &Mov32,
            Code.Add_rm64_r64 or Code.Add_r64_rm64 => &Add64,
            Code.Add_rm32_r32 or Code.Add_r32_rm32 => &Add32,
            Code.Sub_rm64_r64 or Code.Sub_r64_rm64 => &Sub64,
            Code.Sub_rm32_r32 or Code.Sub_r32_rm32 => &Sub32,
            Code.Cmp_rm64_r64 or Code.Cmp_r64_rm64 => &Cmp64,
            Code.Cmp_rm32_r32 or Code.Cmp_r32_rm32 => &Cmp32,
            Code.Xor_rm64_r64 or Code.Xor_r64_rm64 => &Xor64,
            Code.Xor_rm32_r32 or Code.Xor_r32_rm32 => &Xor32,
            Code.And_rm64_r64 or Code.And_r64_rm64 => &And64,
            Code.And_rm32_r32 or Code.And_r32_rm32 => &And32,
            Code.Or_rm64_r64 or Code.Or_r64_rm64 => &Or64,
            Code.Or_rm32_r32 or Code.Or_r32_rm32 => &Or32,
            Code.Test_rm64_r64 => &Test64,
            Code.Test_rm32_r32 => &Test32,
            _ => generic,
        };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref ulong Dst(Cpu c, ref Instruction i) => ref c.GprRef(Cpu.RegInfo(i.Op0Register));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Src(Cpu c, ref Instruction i) => c.GprRef(Cpu.RegInfo(i.Op1Register));

    private static void Mov64(Cpu c, ref Instruction i) => Dst(c, ref i) = Src(c, ref i);
    private static void Mov32(Cpu c, ref Instruction i) => Dst(c, ref i) = (uint)Src(c, ref i);

    private static void Add64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = d, b = Src(c, ref i), r = a + b;
        d = r;
        c.SetLazyFlags(LazyOp.Add, 8, r, a, b);
    }

    private static void Add32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = (uint)d, b = (uint)Src(c, ref i), r = (uint)(a + b);
        d = r;
        c.SetLazyFlags(LazyOp.Add, 4, a + b, a, b);
    }

    private static void Sub64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = d, b = Src(c, ref i), r = a - b;
        d = r;
        c.SetLazyFlags(LazyOp.Sub, 8, r, a, b);
    }

    private static void Sub32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = (uint)d, b = (uint)Src(c, ref i), r = a - b;
        d = (uint)r;
        c.SetLazyFlags(LazyOp.Sub, 4, r, a, b);
    }

    private static void Cmp64(Cpu c, ref Instruction i)
    {
        ulong a = Dst(c, ref i), b = Src(c, ref i);
        c.SetLazyFlags(LazyOp.Sub, 8, a - b, a, b);
    }

    private static void Cmp32(Cpu c, ref Instruction i)
    {
        ulong a = (uint)Dst(c, ref i), b = (uint)Src(c, ref i);
        c.SetLazyFlags(LazyOp.Sub, 4, a - b, a, b);
    }

    private static void Xor64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = d, b = Src(c, ref i), r = a ^ b;
        d = r;
        c.SetLazyFlags(LazyOp.Logic, 8, r, a, b);
    }

    private static void Xor32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = (uint)d, b = (uint)Src(c, ref i), r = a ^ b;
        d = r;
        c.SetLazyFlags(LazyOp.Logic, 4, r, a, b);
    }

    private static void And64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = d, b = Src(c, ref i), r = a & b;
        d = r;
        c.SetLazyFlags(LazyOp.Logic, 8, r, a, b);
    }

    private static void And32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = (uint)d, b = (uint)Src(c, ref i), r = a & b;
        d = r;
        c.SetLazyFlags(LazyOp.Logic, 4, r, a, b);
    }

    private static void Or64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = d, b = Src(c, ref i), r = a | b;
        d = r;
        c.SetLazyFlags(LazyOp.Logic, 8, r, a, b);
    }

    private static void Or32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref Dst(c, ref i);
        ulong a = (uint)d, b = (uint)Src(c, ref i), r = a | b;
        d = r;
        c.SetLazyFlags(LazyOp.Logic, 4, r, a, b);
    }

    private static void Test64(Cpu c, ref Instruction i)
    {
        ulong a = Dst(c, ref i), b = Src(c, ref i);
        c.SetLazyFlags(LazyOp.Logic, 8, a & b, a, b);
    }

    private static void Test32(Cpu c, ref Instruction i)
    {
        ulong a = (uint)Dst(c, ref i), b = (uint)Src(c, ref i);
        c.SetLazyFlags(LazyOp.Logic, 4, a & b, a, b);
    }
}
