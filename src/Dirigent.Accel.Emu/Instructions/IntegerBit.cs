using System.Numerics;
using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// BT, BTS, BTR, BTC, BSF, BSR, POPCNT, LZCNT. TZCNT (F3 0F BC) executes as BSF because BMI1 is not advertised, as
/// on a CPU without BMI1 the F3 prefix is ignored.
/// </summary>
internal static unsafe class IntegerBit
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Bt, Code.Bt_rm16_r16, Code.Bt_rm32_r32, Code.Bt_rm64_r64, Code.Bt_rm16_imm8, Code.Bt_rm32_imm8, Code.Bt_rm64_imm8);
        r.Add(&Bts, Code.Bts_rm16_r16, Code.Bts_rm32_r32, Code.Bts_rm64_r64, Code.Bts_rm16_imm8, Code.Bts_rm32_imm8, Code.Bts_rm64_imm8);
        r.Add(&Btr, Code.Btr_rm16_r16, Code.Btr_rm32_r32, Code.Btr_rm64_r64, Code.Btr_rm16_imm8, Code.Btr_rm32_imm8, Code.Btr_rm64_imm8);
        r.Add(&Btc, Code.Btc_rm16_r16, Code.Btc_rm32_r32, Code.Btc_rm64_r64, Code.Btc_rm16_imm8, Code.Btc_rm32_imm8, Code.Btc_rm64_imm8);
        r.Add(&Bsf, Code.Bsf_r16_rm16, Code.Bsf_r32_rm32, Code.Bsf_r64_rm64, Code.Tzcnt_r16_rm16, Code.Tzcnt_r32_rm32, Code.Tzcnt_r64_rm64);
        r.Add(&Bsr, Code.Bsr_r16_rm16, Code.Bsr_r32_rm32, Code.Bsr_r64_rm64);
        r.Add(&Popcnt, Code.Popcnt_r16_rm16, Code.Popcnt_r32_rm32, Code.Popcnt_r64_rm64);
        r.Add(&Lzcnt, Code.Lzcnt_r16_rm16, Code.Lzcnt_r32_rm32, Code.Lzcnt_r64_rm64);
    }

    private enum Op { Test, Set, Reset, Complement }

    private static ulong OrOp(ulong a, ulong b) => a | b;
    private static ulong AndNotOp(ulong a, ulong b) => a & ~b;
    private static ulong XorOp(ulong a, ulong b) => a ^ b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Apply(Op op, ulong a, ulong bit) => op switch
    {
        Op.Set => a | bit,
        Op.Reset => a & ~bit,
        _ => a ^ bit,
    };

    /// <summary>Mask for the address size of the memory operand (from its base/index register width).</summary>
    private static ulong AddressMask(Cpu c, ref Instruction i)
    {
        Register r = i.MemoryBase != Register.None ? i.MemoryBase : i.MemoryIndex;
        int size = r switch
        {
            Register.None => c.CodeBits / 8, // displacement only: the default address size
            Register.RIP => 8,
            Register.EIP => 4,
            _ => Cpu.RegSize(r),
        };
        if (r == Register.None && i.MemoryDisplSize is 2 or 4) size = i.MemoryDisplSize;
        return size switch { 8 => ulong.MaxValue, 4 => 0xFFFF_FFFF, _ => 0xFFFF };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void BitOp(Cpu c, ref Instruction i, Op op)
    {
        bool regOffset = i.Op1Kind == OpKind.Register;
        ulong offset = regOffset ? c.GetReg(i.Op1Register) : i.GetImmediate(1);
        ulong a;
        int size;
        if (i.Op0Kind == OpKind.Register)
        {
            if (i.HasLockPrefix) throw Cpu.UD(); // the decoder skips Iced's invalid-LOCK check
            Register r = i.Op0Register;
            size = Cpu.RegSize(r);
            ulong bit = 1UL << (int)(offset & (ulong)(size * 8 - 1));
            a = c.GetReg(r);
            if (op != Op.Test) c.SetReg(r, Apply(op, a, bit));
            c.SetFlag(Cpu.CF, (a & bit) != 0);
            return;
        }
        size = Cpu.MemSize(ref i);
        int bits = size * 8;
        ulong la;
        if (regOffset)
        {
            // A register bit offset is signed and may select another operand-sized word below or above the operand.
            long so = (long)IntegerData.SignExtend(offset, size);
            long word = so >> BitOperations.Log2((uint)bits);
            ulong ea = (c.EffectiveAddress(ref i) + (ulong)(word * size)) & AddressMask(c, ref i);
            la = c.Linear(Cpu.MemSeg(ref i), ea, size, op != Op.Test);
        }
        else la = c.MemLinear(ref i, size, op != Op.Test);
        ulong mbit = 1UL << (int)(offset & (ulong)(bits - 1));
        if (op == Op.Test)
        {
            if (i.HasLockPrefix) throw Cpu.UD();
            a = c.ReadLinear(la, size);
        }
        else if (i.HasLockPrefix)
        {
            a = op switch
            {
                Op.Set => IntegerDataAtomic.AtomicUpdate(c, la, size, &OrOp, mbit),
                Op.Reset => IntegerDataAtomic.AtomicUpdate(c, la, size, &AndNotOp, mbit),
                _ => IntegerDataAtomic.AtomicUpdate(c, la, size, &XorOp, mbit),
            };
        }
        else
        {
            a = c.ReadLinear(la, size);
            c.WriteLinear(la, size, Apply(op, a, mbit));
        }
        c.SetFlag(Cpu.CF, (a & mbit) != 0);
    }

    private static void Bt(Cpu c, ref Instruction i) => BitOp(c, ref i, Op.Test);
    private static void Bts(Cpu c, ref Instruction i) => BitOp(c, ref i, Op.Set);
    private static void Btr(Cpu c, ref Instruction i) => BitOp(c, ref i, Op.Reset);
    private static void Btc(Cpu c, ref Instruction i) => BitOp(c, ref i, Op.Complement);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Source(Cpu c, ref Instruction i, int size) =>
        i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : c.ReadLinear(c.MemLinear(ref i, size, false), size);

    /// <summary>Flags of BSF/BSR/POPCNT/LZCNT: only ZF is meaningful for the scans; the rest is cleared.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SetFlags(Cpu c, bool zf, bool cf) => c.SetArithFlags((zf ? Cpu.ZF : 0) | (cf ? Cpu.CF : 0));

    private static void Bsf(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        int size = Cpu.RegSize(d);
        ulong v = Source(c, ref i, size);
        // A zero source leaves the destination unchanged (all 64 bits, even for a 32-bit one), as real CPUs do.
        if (v != 0) c.SetReg(d, (ulong)BitOperations.TrailingZeroCount(v));
        SetFlags(c, v == 0, false);
    }

    private static void Bsr(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        int size = Cpu.RegSize(d);
        ulong v = Source(c, ref i, size);
        if (v != 0) c.SetReg(d, (ulong)BitOperations.Log2(v));
        SetFlags(c, v == 0, false);
    }

    private static void Popcnt(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        int size = Cpu.RegSize(d);
        ulong v = Source(c, ref i, size);
        c.SetReg(d, (ulong)BitOperations.PopCount(v));
        SetFlags(c, v == 0, false);
    }

    private static void Lzcnt(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        int size = Cpu.RegSize(d);
        ulong v = Source(c, ref i, size);
        int n = BitOperations.LeadingZeroCount(v) - (64 - size * 8);
        c.SetReg(d, (ulong)n);
        SetFlags(c, n == 0, v == 0);
    }
}
