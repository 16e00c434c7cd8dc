using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using static Dirigent.Accel.Emu.Instructions.SseFp;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// SSE/SSE2/SSE3 floating-point arithmetic, compares and approximations over <see cref="SseFp"/>. Results are
/// computed into a temporary, MXCSR flags are merged, and only then is the destination written, so an unmasked
/// exception (#XM, or #UD when CR4.OSXMMEXCPT=0) leaves the destination unchanged.
/// </summary>
internal static unsafe class SseFloat
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Addps, Code.Addps_xmm_xmmm128); r.Add(&Addpd, Code.Addpd_xmm_xmmm128);
        r.Add(&Addss, Code.Addss_xmm_xmmm32); r.Add(&Addsd, Code.Addsd_xmm_xmmm64);
        r.Add(&Subps, Code.Subps_xmm_xmmm128); r.Add(&Subpd, Code.Subpd_xmm_xmmm128);
        r.Add(&Subss, Code.Subss_xmm_xmmm32); r.Add(&Subsd, Code.Subsd_xmm_xmmm64);
        r.Add(&Mulps, Code.Mulps_xmm_xmmm128); r.Add(&Mulpd, Code.Mulpd_xmm_xmmm128);
        r.Add(&Mulss, Code.Mulss_xmm_xmmm32); r.Add(&Mulsd, Code.Mulsd_xmm_xmmm64);
        r.Add(&Divps, Code.Divps_xmm_xmmm128); r.Add(&Divpd, Code.Divpd_xmm_xmmm128);
        r.Add(&Divss, Code.Divss_xmm_xmmm32); r.Add(&Divsd, Code.Divsd_xmm_xmmm64);
        r.Add(&Minps, Code.Minps_xmm_xmmm128); r.Add(&Minpd, Code.Minpd_xmm_xmmm128);
        r.Add(&Minss, Code.Minss_xmm_xmmm32); r.Add(&Minsd, Code.Minsd_xmm_xmmm64);
        r.Add(&Maxps, Code.Maxps_xmm_xmmm128); r.Add(&Maxpd, Code.Maxpd_xmm_xmmm128);
        r.Add(&Maxss, Code.Maxss_xmm_xmmm32); r.Add(&Maxsd, Code.Maxsd_xmm_xmmm64);
        r.Add(&Sqrtps, Code.Sqrtps_xmm_xmmm128); r.Add(&Sqrtpd, Code.Sqrtpd_xmm_xmmm128);
        r.Add(&Sqrtss, Code.Sqrtss_xmm_xmmm32); r.Add(&Sqrtsd, Code.Sqrtsd_xmm_xmmm64);
        r.Add(&Addsubps, Code.Addsubps_xmm_xmmm128); r.Add(&Addsubpd, Code.Addsubpd_xmm_xmmm128);
        r.Add(&Haddps, Code.Haddps_xmm_xmmm128); r.Add(&Haddpd, Code.Haddpd_xmm_xmmm128);
        r.Add(&Hsubps, Code.Hsubps_xmm_xmmm128); r.Add(&Hsubpd, Code.Hsubpd_xmm_xmmm128);
        r.Add(&Cmpps, Code.Cmpps_xmm_xmmm128_imm8); r.Add(&Cmppd, Code.Cmppd_xmm_xmmm128_imm8);
        r.Add(&Cmpss, Code.Cmpss_xmm_xmmm32_imm8); r.Add(&Cmpsd, Code.Cmpsd_xmm_xmmm64_imm8);
        r.Add(&Comis, Code.Comiss_xmm_xmmm32, Code.Comisd_xmm_xmmm64, Code.Ucomiss_xmm_xmmm32, Code.Ucomisd_xmm_xmmm64);
        r.Add(&Rcpps, Code.Rcpps_xmm_xmmm128); r.Add(&Rcpss, Code.Rcpss_xmm_xmmm32);
        r.Add(&Rsqrtps, Code.Rsqrtps_xmm_xmmm128); r.Add(&Rsqrtss, Code.Rsqrtss_xmm_xmmm32);
    }

    /// <summary>Merges the sticky flags; an exception whose mask bit is clear faults (#XM, or #UD without OSXMMEXCPT).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Commit(Cpu c, uint flags)
    {
        if (flags == 0) return;
        c.Mxcsr |= flags;
        if ((flags & ~(c.Mxcsr >> 7) & 0x3F) != 0) Unmasked(c);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Unmasked(Cpu c) =>
        throw new CpuException((c.Cr4 & Cpu.Cr4OSXMMEXCPT) != 0 ? Vec.XM : Vec.UD);

    private enum Op { Add, Sub, Mul, Div, Min, Max, Sqrt }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Apply(Op op, ulong a, ulong b, bool d, uint mx, ref uint fl) => op switch
    {
        Op.Add => Add(a, b, d, false, mx, ref fl),
        Op.Sub => Add(a, b, d, true, mx, ref fl),
        Op.Mul => Mul(a, b, d, mx, ref fl),
        Op.Div => Div(a, b, d, mx, ref fl),
        Op.Min => MinMax(a, b, d, false, mx, ref fl),
        Op.Max => MinMax(a, b, d, true, mx, ref fl),
        _ => SseFp.Sqrt(b, d, mx, ref fl),
    };

    /// <summary>MIN/MAX return the second operand (after DAZ) when either is a NaN (IE even for QNaN) or both are zeros.</summary>
    private static ulong MinMax(ulong a, ulong b, bool d, bool max, uint mx, ref uint fl)
    {
        if (IsNaN(a, d) || IsNaN(b, d))
        {
            fl |= IE;
            return Daz(b, d, mx);
        }
        ulong x = DazDe(a, d, mx, ref fl), y = DazDe(b, d, mx, ref fl);
        double dx = ToDouble(x, d), dy = ToDouble(y, d);
        return (max ? dx > dy : dx < dy) ? x : y;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Packed(Cpu c, ref Instruction i, Op op, bool d)
    {
        Sse.Check(c, ref i);
        var s = Sse.Src(c, ref i, 1);
        ref var dst = ref Sse.Dst(c, ref i);
        uint mx = c.Mxcsr, fl = 0;
        Vector128<byte> r;
        if (d)
        {
            var a = dst.AsUInt64(); var b = s.AsUInt64();
            r = Vector128.Create(Apply(op, a[0], b[0], true, mx, ref fl), Apply(op, a[1], b[1], true, mx, ref fl)).AsByte();
        }
        else
        {
            var a = dst.AsUInt32(); var b = s.AsUInt32();
            r = Vector128.Create((uint)Apply(op, a[0], b[0], false, mx, ref fl), (uint)Apply(op, a[1], b[1], false, mx, ref fl),
                (uint)Apply(op, a[2], b[2], false, mx, ref fl), (uint)Apply(op, a[3], b[3], false, mx, ref fl)).AsByte();
        }
        Commit(c, fl);
        dst = r;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scalar(Cpu c, ref Instruction i, Op op, bool d)
    {
        Sse.Check(c, ref i);
        ulong b = d ? Sse.Src64(c, ref i, 1) : Sse.Src32(c, ref i, 1);
        ref var dst = ref Sse.Dst(c, ref i);
        uint mx = c.Mxcsr, fl = 0;
        if (d)
        {
            ulong v = Apply(op, dst.AsUInt64()[0], b, true, mx, ref fl);
            Commit(c, fl);
            dst = dst.AsUInt64().WithElement(0, v).AsByte();
        }
        else
        {
            uint v = (uint)Apply(op, dst.AsUInt32()[0], b, false, mx, ref fl);
            Commit(c, fl);
            dst = dst.AsUInt32().WithElement(0, v).AsByte();
        }
    }

    private static void Addps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Add, false);
    private static void Addpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Add, true);
    private static void Addss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Add, false);
    private static void Addsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Add, true);
    private static void Subps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Sub, false);
    private static void Subpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Sub, true);
    private static void Subss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Sub, false);
    private static void Subsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Sub, true);
    private static void Mulps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Mul, false);
    private static void Mulpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Mul, true);
    private static void Mulss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Mul, false);
    private static void Mulsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Mul, true);
    private static void Divps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Div, false);
    private static void Divpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Div, true);
    private static void Divss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Div, false);
    private static void Divsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Div, true);
    private static void Minps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Min, false);
    private static void Minpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Min, true);
    private static void Minss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Min, false);
    private static void Minsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Min, true);
    private static void Maxps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Max, false);
    private static void Maxpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Max, true);
    private static void Maxss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Max, false);
    private static void Maxsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Max, true);
    private static void Sqrtps(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Sqrt, false);
    private static void Sqrtpd(Cpu c, ref Instruction i) => Packed(c, ref i, Op.Sqrt, true);
    private static void Sqrtss(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Sqrt, false);
    private static void Sqrtsd(Cpu c, ref Instruction i) => Scalar(c, ref i, Op.Sqrt, true);

    private static void Addsubps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var b = Sse.Src(c, ref i, 1).AsUInt32();
        ref var dst = ref Sse.Dst(c, ref i);
        var a = dst.AsUInt32();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create((uint)Add(a[0], b[0], false, true, mx, ref fl), (uint)Add(a[1], b[1], false, false, mx, ref fl),
            (uint)Add(a[2], b[2], false, true, mx, ref fl), (uint)Add(a[3], b[3], false, false, mx, ref fl));
        Commit(c, fl);
        dst = r.AsByte();
    }

    private static void Addsubpd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var b = Sse.Src(c, ref i, 1).AsUInt64();
        ref var dst = ref Sse.Dst(c, ref i);
        var a = dst.AsUInt64();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create(Add(a[0], b[0], true, true, mx, ref fl), Add(a[1], b[1], true, false, mx, ref fl));
        Commit(c, fl);
        dst = r.AsByte();
    }

    private static void HorizontalPs(Cpu c, ref Instruction i, bool sub)
    {
        Sse.Check(c, ref i);
        var b = Sse.Src(c, ref i, 1).AsUInt32();
        ref var dst = ref Sse.Dst(c, ref i);
        var a = dst.AsUInt32();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create((uint)Add(a[0], a[1], false, sub, mx, ref fl), (uint)Add(a[2], a[3], false, sub, mx, ref fl),
            (uint)Add(b[0], b[1], false, sub, mx, ref fl), (uint)Add(b[2], b[3], false, sub, mx, ref fl));
        Commit(c, fl);
        dst = r.AsByte();
    }

    private static void HorizontalPd(Cpu c, ref Instruction i, bool sub)
    {
        Sse.Check(c, ref i);
        var b = Sse.Src(c, ref i, 1).AsUInt64();
        ref var dst = ref Sse.Dst(c, ref i);
        var a = dst.AsUInt64();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create(Add(a[0], a[1], true, sub, mx, ref fl), Add(b[0], b[1], true, sub, mx, ref fl));
        Commit(c, fl);
        dst = r.AsByte();
    }

    private static void Haddps(Cpu c, ref Instruction i) => HorizontalPs(c, ref i, false);
    private static void Hsubps(Cpu c, ref Instruction i) => HorizontalPs(c, ref i, true);
    private static void Haddpd(Cpu c, ref Instruction i) => HorizontalPd(c, ref i, false);
    private static void Hsubpd(Cpu c, ref Instruction i) => HorizontalPd(c, ref i, true);

    /// <summary>CMPxx predicate 0-7: EQ, LT, LE, UNORD, NEQ, NLT, NLE, ORD. LT/LE/NLT/NLE signal IE on a QNaN too.</summary>
    private static bool Compare(ulong a, ulong b, bool d, int pred, uint mx, ref uint fl)
    {
        if (IsNaN(a, d) || IsNaN(b, d))
        {
            if (IsSNaN(a, d) || IsSNaN(b, d) || pred is 1 or 2 or 5 or 6) fl |= IE;
            return pred is 3 or 4 or 5 or 6;
        }
        int r = CompareOrdered(a, b, d, mx, ref fl);
        return pred switch
        {
            0 => r == 0,
            1 => r < 0,
            2 => r <= 0,
            3 => false,
            4 => r != 0,
            5 => r >= 0,
            6 => r > 0,
            _ => true,
        };
    }

    private static void Cmpps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var b = Sse.Src(c, ref i, 1).AsUInt32();
        ref var dst = ref Sse.Dst(c, ref i);
        var a = dst.AsUInt32();
        int p = i.Immediate8 & 7;
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create(Compare(a[0], b[0], false, p, mx, ref fl) ? ~0u : 0, Compare(a[1], b[1], false, p, mx, ref fl) ? ~0u : 0,
            Compare(a[2], b[2], false, p, mx, ref fl) ? ~0u : 0, Compare(a[3], b[3], false, p, mx, ref fl) ? ~0u : 0);
        Commit(c, fl);
        dst = r.AsByte();
    }

    private static void Cmppd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var b = Sse.Src(c, ref i, 1).AsUInt64();
        ref var dst = ref Sse.Dst(c, ref i);
        var a = dst.AsUInt64();
        int p = i.Immediate8 & 7;
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create(Compare(a[0], b[0], true, p, mx, ref fl) ? ~0UL : 0, Compare(a[1], b[1], true, p, mx, ref fl) ? ~0UL : 0);
        Commit(c, fl);
        dst = r.AsByte();
    }

    private static void Cmpss(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        uint b = Sse.Src32(c, ref i, 1);
        ref var dst = ref Sse.Dst(c, ref i);
        uint mx = c.Mxcsr, fl = 0;
        bool t = Compare(dst.AsUInt32()[0], b, false, i.Immediate8 & 7, mx, ref fl);
        Commit(c, fl);
        dst = dst.AsUInt32().WithElement(0, t ? ~0u : 0).AsByte();
    }

    private static void Cmpsd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong b = Sse.Src64(c, ref i, 1);
        ref var dst = ref Sse.Dst(c, ref i);
        uint mx = c.Mxcsr, fl = 0;
        bool t = Compare(dst.AsUInt64()[0], b, true, i.Immediate8 & 7, mx, ref fl);
        Commit(c, fl);
        dst = dst.AsUInt64().WithElement(0, t ? ~0UL : 0).AsByte();
    }

    /// <summary>(U)COMISS/SD: ZF,PF,CF = 111 unordered, 000 greater, 001 less, 100 equal; OF, SF, AF cleared.</summary>
    private static void Comis(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        bool d = i.Code is Code.Comisd_xmm_xmmm64 or Code.Ucomisd_xmm_xmmm64;
        bool signaling = i.Code is Code.Comiss_xmm_xmmm32 or Code.Comisd_xmm_xmmm64;
        ulong b = d ? Sse.Src64(c, ref i, 1) : Sse.Src32(c, ref i, 1);
        var dv = Sse.Dst(c, ref i);
        ulong a = d ? dv.AsUInt64()[0] : dv.AsUInt32()[0];
        uint mx = c.Mxcsr, fl = 0;
        ulong bits;
        if (IsNaN(a, d) || IsNaN(b, d))
        {
            if (signaling || IsSNaN(a, d) || IsSNaN(b, d)) fl |= IE;
            bits = Cpu.ZF | Cpu.PF | Cpu.CF;
        }
        else
        {
            int r = CompareOrdered(a, b, d, mx, ref fl);
            bits = r < 0 ? Cpu.CF : r == 0 ? Cpu.ZF : 0;
        }
        Commit(c, fl);
        c.SetArithFlags(bits);
    }

    // RCP/RSQRT: the SDM only bounds the relative error (1.5 * 2^-12), and Intel and AMD differ bit-wise. We return
    // the correctly rounded value, which is within that bound; special cases follow the SDM (denormal inputs read as
    // zero, tiny results flush to zero, no MXCSR flags).
    private static uint Rcp(uint x)
    {
        if (IsNaN(x, false)) return (uint)Quiet(x, false);
        uint sign = x & 0x8000_0000;
        uint mag = x & 0x7FFF_FFFF;
        if (mag < 0x0080_0000) return sign | 0x7F80_0000;
        if (mag == 0x7F80_0000) return sign;
        float r = 1f / BitConverter.Int32BitsToSingle((int)x);
        uint rb = (uint)BitConverter.SingleToInt32Bits(r);
        return (rb & 0x7FFF_FFFF) < 0x0080_0000 ? sign : rb;
    }

    private static uint Rsqrt(uint x)
    {
        if (IsNaN(x, false)) return (uint)Quiet(x, false);
        uint sign = x & 0x8000_0000;
        uint mag = x & 0x7FFF_FFFF;
        if (mag < 0x0080_0000) return sign | 0x7F80_0000;
        if (sign != 0) return 0xFFC0_0000;
        if (mag == 0x7F80_0000) return 0;
        return (uint)BitConverter.SingleToInt32Bits((float)(1.0 / Math.Sqrt(BitConverter.Int32BitsToSingle((int)x))));
    }

    private static void Rcpps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var s = Sse.Src(c, ref i, 1).AsUInt32();
        Sse.Dst(c, ref i) = Vector128.Create(Rcp(s[0]), Rcp(s[1]), Rcp(s[2]), Rcp(s[3])).AsByte();
    }

    private static void Rsqrtps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var s = Sse.Src(c, ref i, 1).AsUInt32();
        Sse.Dst(c, ref i) = Vector128.Create(Rsqrt(s[0]), Rsqrt(s[1]), Rsqrt(s[2]), Rsqrt(s[3])).AsByte();
    }

    private static void Rcpss(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        uint v = Rcp(Sse.Src32(c, ref i, 1));
        ref var dst = ref Sse.Dst(c, ref i);
        dst = dst.AsUInt32().WithElement(0, v).AsByte();
    }

    private static void Rsqrtss(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        uint v = Rsqrt(Sse.Src32(c, ref i, 1));
        ref var dst = ref Sse.Dst(c, ref i);
        dst = dst.AsUInt32().WithElement(0, v).AsByte();
    }
}
