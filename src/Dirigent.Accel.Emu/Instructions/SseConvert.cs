using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using static Dirigent.Accel.Emu.Instructions.SseFp;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>SSE/SSE2 conversions between integers, single and double precision (MXCSR.RC honoured, T forms truncate).</summary>
internal static unsafe class SseConvert
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Cvtsi2ss, Code.Cvtsi2ss_xmm_rm32, Code.Cvtsi2ss_xmm_rm64);
        r.Add(&Cvtsi2sd, Code.Cvtsi2sd_xmm_rm32, Code.Cvtsi2sd_xmm_rm64);
        r.Add(&CvtToInt, Code.Cvtss2si_r32_xmmm32, Code.Cvtss2si_r64_xmmm32, Code.Cvttss2si_r32_xmmm32, Code.Cvttss2si_r64_xmmm32,
            Code.Cvtsd2si_r32_xmmm64, Code.Cvtsd2si_r64_xmmm64, Code.Cvttsd2si_r32_xmmm64, Code.Cvttsd2si_r64_xmmm64);
        r.Add(&Cvtss2sd, Code.Cvtss2sd_xmm_xmmm32);
        r.Add(&Cvtsd2ss, Code.Cvtsd2ss_xmm_xmmm64);
        r.Add(&Cvtps2pd, Code.Cvtps2pd_xmm_xmmm64);
        r.Add(&Cvtpd2ps, Code.Cvtpd2ps_xmm_xmmm128);
        r.Add(&Cvtdq2ps, Code.Cvtdq2ps_xmm_xmmm128);
        r.Add(&Cvtps2dq, Code.Cvtps2dq_xmm_xmmm128, Code.Cvttps2dq_xmm_xmmm128);
        r.Add(&Cvtdq2pd, Code.Cvtdq2pd_xmm_xmmm64);
        r.Add(&Cvtpd2dq, Code.Cvtpd2dq_xmm_xmmm128, Code.Cvttpd2dq_xmm_xmmm128);
    }

    private static long SignedSource(Cpu c, ref Instruction i)
    {
        int size = i.Code is Code.Cvtsi2ss_xmm_rm64 or Code.Cvtsi2sd_xmm_rm64 ? 8 : 4;
        ulong v = c.ReadOp(ref i, 1, size);
        return size == 8 ? (long)v : (int)(uint)v;
    }

    private static void Cvtsi2ss(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        long v = SignedSource(c, ref i);
        uint fl = 0;
        uint r = (uint)FromInt(v, false, c.Mxcsr, ref fl);
        SseFloat.Commit(c, fl);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt32().WithElement(0, r).AsByte();
    }

    private static void Cvtsi2sd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        long v = SignedSource(c, ref i);
        uint fl = 0;
        ulong r = FromInt(v, true, c.Mxcsr, ref fl);
        SseFloat.Commit(c, fl);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(0, r).AsByte();
    }

    private static void CvtToInt(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        bool d = i.Code is Code.Cvtsd2si_r32_xmmm64 or Code.Cvtsd2si_r64_xmmm64 or Code.Cvttsd2si_r32_xmmm64 or Code.Cvttsd2si_r64_xmmm64;
        bool t = i.Code is Code.Cvttss2si_r32_xmmm32 or Code.Cvttss2si_r64_xmmm32 or Code.Cvttsd2si_r32_xmmm64 or Code.Cvttsd2si_r64_xmmm64;
        ulong a = d ? Sse.Src64(c, ref i, 1) : Sse.Src32(c, ref i, 1);
        int size = Cpu.RegSize(i.Op0Register);
        uint fl = 0;
        ulong r = ToInt(a, d, size, t, c.Mxcsr, ref fl);
        SseFloat.Commit(c, fl);
        c.SetReg(i.Op0Register, r);
    }

    private static void Cvtss2sd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        uint a = Sse.Src32(c, ref i, 1);
        uint fl = 0;
        ulong r = Convert(a, false, c.Mxcsr, ref fl);
        SseFloat.Commit(c, fl);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(0, r).AsByte();
    }

    private static void Cvtsd2ss(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong a = Sse.Src64(c, ref i, 1);
        uint fl = 0;
        uint r = (uint)Convert(a, true, c.Mxcsr, ref fl);
        SseFloat.Commit(c, fl);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt32().WithElement(0, r).AsByte();
    }

    private static void Cvtps2pd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong a = Sse.Src64(c, ref i, 1);
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create(Convert((uint)a, false, mx, ref fl), Convert(a >> 32, false, mx, ref fl));
        SseFloat.Commit(c, fl);
        Sse.Dst(c, ref i) = r.AsByte();
    }

    private static void Cvtpd2ps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var a = Sse.Src(c, ref i, 1).AsUInt64();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create((uint)Convert(a[0], true, mx, ref fl), (uint)Convert(a[1], true, mx, ref fl), 0, 0);
        SseFloat.Commit(c, fl);
        Sse.Dst(c, ref i) = r.AsByte();
    }

    private static void Cvtdq2ps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var a = Sse.Src(c, ref i, 1).AsInt32();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create((uint)FromInt(a[0], false, mx, ref fl), (uint)FromInt(a[1], false, mx, ref fl),
            (uint)FromInt(a[2], false, mx, ref fl), (uint)FromInt(a[3], false, mx, ref fl));
        SseFloat.Commit(c, fl);
        Sse.Dst(c, ref i) = r.AsByte();
    }

    private static void Cvtps2dq(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        bool t = i.Code == Code.Cvttps2dq_xmm_xmmm128;
        var a = Sse.Src(c, ref i, 1).AsUInt32();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create((uint)ToInt(a[0], false, 4, t, mx, ref fl), (uint)ToInt(a[1], false, 4, t, mx, ref fl),
            (uint)ToInt(a[2], false, 4, t, mx, ref fl), (uint)ToInt(a[3], false, 4, t, mx, ref fl));
        SseFloat.Commit(c, fl);
        Sse.Dst(c, ref i) = r.AsByte();
    }

    private static void Cvtdq2pd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong a = Sse.Src64(c, ref i, 1);
        uint fl = 0;
        var r = Vector128.Create(FromInt((int)(uint)a, true, c.Mxcsr, ref fl), FromInt((int)(uint)(a >> 32), true, c.Mxcsr, ref fl));
        Sse.Dst(c, ref i) = r.AsByte();
    }

    private static void Cvtpd2dq(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        bool t = i.Code == Code.Cvttpd2dq_xmm_xmmm128;
        var a = Sse.Src(c, ref i, 1).AsUInt64();
        uint mx = c.Mxcsr, fl = 0;
        var r = Vector128.Create((uint)ToInt(a[0], true, 4, t, mx, ref fl), (uint)ToInt(a[1], true, 4, t, mx, ref fl), 0, 0);
        SseFloat.Commit(c, fl);
        Sse.Dst(c, ref i) = r.AsByte();
    }
}
