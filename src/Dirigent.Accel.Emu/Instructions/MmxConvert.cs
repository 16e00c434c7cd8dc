using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using static Dirigent.Accel.Emu.Instructions.SseFp;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// The SSE/SSE2 conversions with an mm operand: CVTPI2PS, CVTPS2PI, CVTTPS2PI, CVTPI2PD, CVTPD2PI, CVTTPD2PI.
/// Arithmetic as their XMM relatives in <see cref="SseConvert"/> (MXCSR rounding and flags, integer indefinite);
/// checks are the SSE ones (CR4.OSFXSR, CR0.EM/TS) plus, when an mm register is involved, the pending-x87 #MF of MMX
/// and the x87→MMX transition (TOP=0, all tags valid). CVTPI2PS/CVTPI2PD from m64 touch no mm register and make no
/// transition (the host differential tests show it; QEMU transitions there too, which is wrong).
/// </summary>
internal static unsafe class MmxConvert
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Cvtpi2ps, Code.Cvtpi2ps_xmm_mmm64);
        r.Add(&Cvtpi2pd, Code.Cvtpi2pd_xmm_mmm64);
        r.Add(&Cvtps2pi, Code.Cvtps2pi_mm_xmmm64, Code.Cvttps2pi_mm_xmmm64);
        r.Add(&Cvtpd2pi, Code.Cvtpd2pi_mm_xmmm128, Code.Cvttpd2pi_mm_xmmm128);
    }

    /// <summary>The checks; true when an mm register is involved (the caller then makes the transition).</summary>
    private static bool Check(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        bool mm = i.Op0Kind == OpKind.Register && i.Op0Register is >= Register.MM0 and <= Register.MM7
            || i.Op1Kind == OpKind.Register && i.Op1Register is >= Register.MM0 and <= Register.MM7;
        if (mm) Mmx.Check(c, ref i);
        return mm;
    }

    private static void Cvtpi2ps(Cpu c, ref Instruction i)
    {
        bool mm = Check(c, ref i);
        ulong a = Mmx.Src(c, ref i, 1);
        uint mx = c.Mxcsr, fl = 0;
        ulong r = FromInt((int)(uint)a, false, mx, ref fl) & 0xFFFF_FFFF | FromInt((int)(uint)(a >> 32), false, mx, ref fl) << 32;
        SseFloat.Commit(c, fl);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(0, r).AsByte();
        if (mm) Mmx.Done(c);
    }

    private static void Cvtpi2pd(Cpu c, ref Instruction i)
    {
        bool mm = Check(c, ref i);
        ulong a = Mmx.Src(c, ref i, 1);
        uint fl = 0;
        var r = Vector128.Create(FromInt((int)(uint)a, true, c.Mxcsr, ref fl), FromInt((int)(uint)(a >> 32), true, c.Mxcsr, ref fl));
        Sse.Dst(c, ref i) = r.AsByte();
        if (mm) Mmx.Done(c);
    }

    private static void Cvtps2pi(Cpu c, ref Instruction i)
    {
        Check(c, ref i);
        bool t = i.Code == Code.Cvttps2pi_mm_xmmm64;
        ulong a = Sse.Src64(c, ref i, 1);
        uint mx = c.Mxcsr, fl = 0;
        ulong r = ToInt(a & 0xFFFF_FFFF, false, 4, t, mx, ref fl) & 0xFFFF_FFFF | ToInt(a >> 32, false, 4, t, mx, ref fl) << 32;
        SseFloat.Commit(c, fl);
        Mmx.Put(c, Mmx.N(i.Op0Register), r);
    }

    private static void Cvtpd2pi(Cpu c, ref Instruction i)
    {
        Check(c, ref i);
        bool t = i.Code == Code.Cvttpd2pi_mm_xmmm128;
        var a = Sse.Src(c, ref i, 1).AsUInt64();
        uint mx = c.Mxcsr, fl = 0;
        ulong r = ToInt(a[0], true, 4, t, mx, ref fl) & 0xFFFF_FFFF | ToInt(a[1], true, 4, t, mx, ref fl) << 32;
        SseFloat.Commit(c, fl);
        Mmx.Put(c, Mmx.N(i.Op0Register), r);
    }
}
