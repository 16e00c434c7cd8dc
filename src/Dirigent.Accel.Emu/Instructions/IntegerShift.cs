using System.Numerics;
using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD. Counts are masked to 5 bits (6 for 64-bit operands); a masked
/// count of zero changes no flags. Flags the SDM leaves undefined get Intel's usual values (AF cleared, OF as for
/// a count of one), which is as good as any: software cannot rely on them.
/// </summary>
internal static unsafe class IntegerShift
{
    public static void Install(HandlerRegistry r)
    {
        foreach (Code c in Enum.GetValues<Code>())
        {
            string s = c.ToString();
            if (!(s.EndsWith("_1", StringComparison.Ordinal) || s.EndsWith("_CL", StringComparison.Ordinal) ||
                  s.EndsWith("_imm8", StringComparison.Ordinal)) || !s.Contains("_rm", StringComparison.Ordinal)) continue;
            switch (c.Mnemonic())
            {
                case Mnemonic.Shl: case Mnemonic.Sal: r.Add(&Shl, c); break;
                case Mnemonic.Shr: r.Add(&Shr, c); break;
                case Mnemonic.Sar: r.Add(&Sar, c); break;
                case Mnemonic.Rol: r.Add(&Rol, c); break;
                case Mnemonic.Ror: r.Add(&Ror, c); break;
                case Mnemonic.Rcl: r.Add(&Rcl, c); break;
                case Mnemonic.Rcr: r.Add(&Rcr, c); break;
                case Mnemonic.Shld: r.Add(&Shld, c); break;
                case Mnemonic.Shrd: r.Add(&Shrd, c); break;
            }
        }
    }

    /// <summary>Compiled code writing back an inline SHL/SHR/SAR's flags (non-zero count): as the handlers set them.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void SetShiftFlagsForJit(Cpu c, ulong res, int size, ulong cf, ulong of) =>
        c.SetArithFlags(Szp(res, size) | cf | (of << 11));

    /// <summary>SF, ZF and PF of a size-byte result.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Szp(ulong res, int size)
    {
        res &= Cpu.SizeMask(size);
        ulong f = (BitOperations.PopCount(res & 0xFF) & 1) == 0 ? Cpu.PF : 0;
        if (res == 0) f |= Cpu.ZF;
        if ((res >> (size * 8 - 1)) != 0) f |= Cpu.SF;
        return f;
    }

    private enum Op { Shl, Shr, Sar, Rol, Ror, Rcl, Rcr }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Count(Cpu c, ref Instruction i, int n) =>
        i.GetOpKind(n) == OpKind.Register ? (uint)c.Gpr[Cpu.RCX] : (uint)i.GetImmediate(n);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Shift(Cpu c, ref Instruction i, Op op)
    {
        uint count = Count(c, ref i, 1);
        if (i.Op0Kind == OpKind.Register)
        {
            Register r = i.Op0Register;
            int size = Cpu.RegSize(r);
            count &= size == 8 ? 63u : 31u;
            ulong a = c.GetReg(r);
            // Even a zero count writes the register, so a 32-bit destination is zero-extended.
            c.SetReg(r, count == 0 ? a : Compute(c, op, size, a, count));
        }
        else
        {
            int size = Cpu.MemSize(ref i);
            count &= size == 8 ? 63u : 31u;
            ulong la = c.MemLinear(ref i, size, true);
            ulong a = c.ReadLinear(la, size);
            if (count != 0) c.WriteLinear(la, size, Compute(c, op, size, a, count));
        }
    }

    /// <summary>Result of the shift/rotate (count already masked, nonzero); sets the flags.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Compute(Cpu c, Op op, int size, ulong a, uint count)
    {
        int n = size * 8;
        ulong m = Cpu.SizeMask(size);
        ulong res, cf, of;
        switch (op)
        {
            case Op.Shl:
                res = (a << (int)count) & m;
                cf = count <= n ? (a >> (n - (int)count)) & 1 : 0;
                of = (res >> (n - 1)) ^ cf;
                c.SetArithFlags(Szp(res, size) | cf | (of << 11));
                return res;
            case Op.Shr:
                res = a >> (int)count;
                cf = (a >> ((int)count - 1)) & 1;
                of = a >> (n - 1);
                c.SetArithFlags(Szp(res, size) | cf | (of << 11));
                return res;
            case Op.Sar:
                {
                    long sa = (long)(a << (64 - n)) >> (64 - n);
                    res = (ulong)(sa >> (int)Math.Min(count, 63u)) & m;
                    cf = (ulong)(sa >> (int)Math.Min(count - 1, 63u)) & 1;
                    c.SetArithFlags(Szp(res, size) | cf);
                    return res;
                }
            case Op.Rol:
                {
                    int k = (int)(count & (uint)(n - 1));
                    res = k == 0 ? a : ((a << k) | (a >> (n - k))) & m;
                    cf = res & 1;
                    of = (res >> (n - 1)) ^ cf;
                    SetCfOf(c, cf, of);
                    return res;
                }
            case Op.Ror:
                {
                    int k = (int)(count & (uint)(n - 1));
                    res = k == 0 ? a : ((a >> k) | (a << (n - k))) & m;
                    cf = res >> (n - 1);
                    of = cf ^ ((res >> (n - 2)) & 1);
                    SetCfOf(c, cf, of);
                    return res;
                }
            case Op.Rcl: return Rcl(c, size, a, count);
            default: return Rcr(c, size, a, count);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SetCfOf(Cpu c, ulong cf, ulong of) =>
        c.SetArithFlags((c.Rflags & ~(Cpu.CF | Cpu.OF)) | cf | (of << 11));

    // RCL/RCR rotate the (n+1)-bit value CF:operand; 8- and 16-bit counts are taken mod 9 and mod 17.
    private static ulong Rcl(Cpu c, int size, ulong a, uint count)
    {
        int n = size * 8;
        int k = size switch { 1 => (int)(count % 9), 2 => (int)(count % 17), _ => (int)count };
        ulong cfIn = c.GetCF() ? 1UL : 0;
        ulong res, cf;
        if (k == 0) { res = a; cf = cfIn; }
        else if (n == 64)
        {
            UInt128 v = ((UInt128)cfIn << 64) | a;
            UInt128 r = ((v << k) | (v >> (65 - k))) & (((UInt128)1 << 65) - 1);
            res = (ulong)r;
            cf = (ulong)(r >> 64);
        }
        else
        {
            int w = n + 1;
            ulong v = (cfIn << n) | a;
            ulong r = ((v << k) | (v >> (w - k))) & ((1UL << w) - 1);
            res = r & Cpu.SizeMask(size);
            cf = r >> n;
        }
        SetCfOf(c, cf, (res >> (n - 1)) ^ cf);
        return res;
    }

    private static ulong Rcr(Cpu c, int size, ulong a, uint count)
    {
        int n = size * 8;
        int k = size switch { 1 => (int)(count % 9), 2 => (int)(count % 17), _ => (int)count };
        ulong cfIn = c.GetCF() ? 1UL : 0;
        ulong res, cf;
        if (k == 0) { res = a; cf = cfIn; }
        else if (n == 64)
        {
            UInt128 v = ((UInt128)cfIn << 64) | a;
            UInt128 r = ((v >> k) | (v << (65 - k))) & (((UInt128)1 << 65) - 1);
            res = (ulong)r;
            cf = (ulong)(r >> 64);
        }
        else
        {
            int w = n + 1;
            ulong v = (cfIn << n) | a;
            ulong r = ((v >> k) | (v << (w - k))) & ((1UL << w) - 1);
            res = r & Cpu.SizeMask(size);
            cf = r >> n;
        }
        SetCfOf(c, cf, (res >> (n - 1)) ^ ((res >> (n - 2)) & 1));
        return res;
    }

    private static void Shl(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Shl);
    private static void Shr(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Shr);
    private static void Sar(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Sar);
    private static void Rol(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Rol);
    private static void Ror(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Ror);
    private static void Rcl(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Rcl);
    private static void Rcr(Cpu c, ref Instruction i) => Shift(c, ref i, Op.Rcr);

    private static void Shld(Cpu c, ref Instruction i) => DoubleShift(c, ref i, true);
    private static void Shrd(Cpu c, ref Instruction i) => DoubleShift(c, ref i, false);

    private static void DoubleShift(Cpu c, ref Instruction i, bool left)
    {
        uint count = Count(c, ref i, 2);
        ulong b = c.GetReg(i.Op1Register);
        if (i.Op0Kind == OpKind.Register)
        {
            Register r = i.Op0Register;
            int size = Cpu.RegSize(r);
            count &= size == 8 ? 63u : 31u;
            ulong a = c.GetReg(r);
            c.SetReg(r, count == 0 ? a : DoubleCompute(c, left, size, a, b, (int)count));
        }
        else
        {
            int size = Cpu.MemSize(ref i);
            count &= size == 8 ? 63u : 31u;
            ulong la = c.MemLinear(ref i, size, true);
            ulong a = c.ReadLinear(la, size);
            if (count != 0) c.WriteLinear(la, size, DoubleCompute(c, left, size, a, b, (int)count));
        }
    }

    private static ulong DoubleCompute(Cpu c, bool left, int size, ulong a, ulong b, int count)
    {
        int n = size * 8;
        ulong res, cf;
        if (left)
        {
            switch (size)
            {
                case 8:
                    res = (a << count) | (b >> (64 - count));
                    cf = (a >> (64 - count)) & 1;
                    break;
                case 4:
                    res = (uint)((((a << 32) | b) << count) >> 32);
                    cf = (a >> (32 - count)) & 1;
                    break;
                default:
                    {
                        // Counts above 16 are undefined. AMD (and the original Pentium) shift dest:src:src, which
                        // leaves src rotated by count-16; P6-and-later Intel parts shift dest:src:dest instead.
                        ulong t = (a << 16) | b;
                        res = count <= 16 ? ((t << count) >> 16) & 0xFFFF : ((b << (count - 16)) | (b >> (32 - count))) & 0xFFFF;
                        cf = (t >> (32 - count)) & 1;
                        break;
                    }
            }
        }
        else
        {
            switch (size)
            {
                case 8:
                    res = (a >> count) | (b << (64 - count));
                    break;
                case 4:
                    res = (uint)(((b << 32) | a) >> count);
                    break;
                default:
                    {
                        ulong t = (b << 16) | a;
                        res = count <= 16 ? (t >> count) & 0xFFFF : ((b >> (count - 16)) | (b << (32 - count))) & 0xFFFF;
                        break;
                    }
            }
            cf = count <= 64 ? (a >> (count - 1)) & 1 : 0;
        }
        ulong of = ((res ^ a) >> (n - 1)) & 1;
        c.SetArithFlags(Szp(res, size) | cf | (of << 11));
        return res;
    }
}
