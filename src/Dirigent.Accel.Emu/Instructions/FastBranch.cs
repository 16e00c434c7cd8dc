using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// 64-bit-mode relative Jcc/JMP with the condition fixed at block translation (one handler per condition, so
/// <see cref="Cpu.TestCondition"/> folds to the one test it needs) and the target read straight from Iced's
/// 64-bit branch field; and ROL/ROR/SHL/SHR/SAR of a full-width register by an immediate.
/// Semantics match the generic handlers.
/// </summary>
internal static unsafe class FastBranch
{
    public static delegate*<Cpu, ref Instruction, void> Select(ref Instruction i, int bits, delegate*<Cpu, ref Instruction, void> current)
    {
        if (bits != 64) return current;
        if (i.OpCount == 1 && i.Op0Kind == OpKind.NearBranch64)
        {
            if (i.Code.IsJmpShortOrNear()) return &Jmp;
            if (!i.Code.IsJccShortOrNear()) return current;
            var jcc = FixedCondition.Select<JccPicker>(i.ConditionCode, ref i);
            return jcc != null ? jcc : current;
        }
        if (i.OpCount == 2 && i.Op0Kind == OpKind.Register && i.Op1Kind == OpKind.Immediate8)
        {
            return i.Code switch
            {
                Code.Rol_rm64_imm8 => &Rol64,
                Code.Rol_rm32_imm8 => &Rol32,
                Code.Ror_rm64_imm8 => &Ror64,
                Code.Ror_rm32_imm8 => &Ror32,
                Code.Shl_rm64_imm8 => &Shl64,
                Code.Shl_rm32_imm8 => &Shl32,
                Code.Shr_rm64_imm8 => &Shr64,
                Code.Shr_rm32_imm8 => &Shr32,
                Code.Sar_rm64_imm8 => &Sar64,
                Code.Sar_rm32_imm8 => &Sar32,
                _ => current,
            };
        }
        return current;
    }

    private struct JccPicker : IConditionHandlerPicker
    {
        public static delegate*<Cpu, ref Instruction, void> Pick<T>(ref Instruction i) where T : struct, ICc => &Jcc<T>;
    }

    private static void Jcc<T>(Cpu c, ref Instruction i) where T : struct, ICc
    {
        if (c.TestCondition(T.Cc)) c.JumpTo(i.NearBranch64);
    }

    private static void Jmp(Cpu c, ref Instruction i) => c.JumpTo(i.NearBranch64);

    // A rotate by a (masked) zero count changes nothing but still zero-extends a 32-bit destination. Otherwise
    // only CF and OF change (OF is defined for count 1; the generic handler sets it the same way for any count).
    private static void Rol64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 63;
        if (k == 0) return;
        ulong res = ulong.RotateLeft(d, k);
        d = res;
        ulong cf = res & 1;
        c.SetCfOf(cf, (res >> 63) ^ cf);
    }

    private static void Rol32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 31;
        uint res = uint.RotateLeft((uint)d, k);
        d = res;
        if (k == 0) return;
        ulong cf = res & 1;
        c.SetCfOf(cf, (res >> 31) ^ cf);
    }

    private static void Ror64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 63;
        if (k == 0) return;
        ulong res = ulong.RotateRight(d, k);
        d = res;
        ulong cf = res >> 63;
        c.SetCfOf(cf, cf ^ ((res >> 62) & 1));
    }

    private static void Ror32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 31;
        uint res = uint.RotateRight((uint)d, k);
        d = res;
        if (k == 0) return;
        ulong cf = res >> 31;
        c.SetCfOf(cf, cf ^ ((res >> 30) & 1));
    }

    // Shifts by a non-zero (masked) count set SF/ZF/PF from the result, CF from the last bit out, OF as for a
    // count of 1, and clear AF, exactly as the generic handler; a zero count changes no flags.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Szp(ulong res, int bits)
    {
        ulong f = (System.Numerics.BitOperations.PopCount(res & 0xFF) & 1) == 0 ? Cpu.PF : 0;
        if (res == 0) f |= Cpu.ZF;
        if ((res >> (bits - 1)) != 0) f |= Cpu.SF;
        return f;
    }

    private static void Shl64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 63;
        if (k == 0) return;
        ulong a = d, res = a << k, cf = (a >> (64 - k)) & 1;
        d = res;
        c.SetArithFlags(Szp(res, 64) | cf | (((res >> 63) ^ cf) << 11));
    }

    private static void Shl32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 31;
        ulong a = (uint)d, res = (uint)(a << k);
        d = res;
        if (k == 0) return;
        ulong cf = (a >> (32 - k)) & 1;
        c.SetArithFlags(Szp(res, 32) | cf | (((res >> 31) ^ cf) << 11));
    }

    private static void Shr64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 63;
        if (k == 0) return;
        ulong a = d, res = a >> k;
        d = res;
        c.SetArithFlags(Szp(res, 64) | ((a >> (k - 1)) & 1) | ((a >> 63) << 11));
    }

    private static void Shr32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 31;
        ulong a = (uint)d, res = a >> k;
        d = res;
        if (k == 0) return;
        c.SetArithFlags(Szp(res, 32) | ((a >> (k - 1)) & 1) | ((a >> 31) << 11));
    }

    private static void Sar64(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 63;
        if (k == 0) return;
        long a = (long)d;
        ulong res = (ulong)(a >> k);
        d = res;
        c.SetArithFlags(Szp(res, 64) | ((ulong)(a >> (k - 1)) & 1));
    }

    private static void Sar32(Cpu c, ref Instruction i)
    {
        ref ulong d = ref c.GprRef(Cpu.RegInfo(i.Op0Register));
        int k = i.Immediate8 & 31;
        long a = (int)(uint)d;
        ulong res = (uint)(a >> k);
        d = res;
        if (k == 0) return;
        c.SetArithFlags(Szp(res, 32) | ((ulong)(a >> (k - 1)) & 1));
    }
}
