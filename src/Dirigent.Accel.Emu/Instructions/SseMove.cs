using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>SSE data movement: full/partial XMM moves, GPR↔XMM, masks, non-temporal stores, MXCSR load/store.</summary>
internal static unsafe class SseMove
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&MovAligned, Code.Movaps_xmm_xmmm128, Code.Movapd_xmm_xmmm128, Code.Movdqa_xmm_xmmm128,
            Code.Movaps_xmmm128_xmm, Code.Movapd_xmmm128_xmm, Code.Movdqa_xmmm128_xmm,
            Code.Movntps_m128_xmm, Code.Movntpd_m128_xmm, Code.Movntdq_m128_xmm);
        r.Add(&MovUnaligned, Code.Movups_xmm_xmmm128, Code.Movupd_xmm_xmmm128, Code.Movdqu_xmm_xmmm128,
            Code.Movups_xmmm128_xmm, Code.Movupd_xmmm128_xmm, Code.Movdqu_xmmm128_xmm, Code.Lddqu_xmm_m128);
        r.Add(&Movss, Code.Movss_xmm_xmmm32, Code.Movss_xmmm32_xmm);
        r.Add(&Movsd, Code.Movsd_xmm_xmmm64, Code.Movsd_xmmm64_xmm);
        r.Add(&MovdToXmm, Code.Movd_xmm_rm32, Code.Movq_xmm_rm64);
        r.Add(&MovdFromXmm, Code.Movd_rm32_xmm, Code.Movq_rm64_xmm);
        r.Add(&MovqLoad, Code.Movq_xmm_xmmm64);
        r.Add(&MovqStore, Code.Movq_xmmm64_xmm);
        r.Add(&MovlLoad, Code.Movlps_xmm_m64, Code.Movlpd_xmm_m64);
        r.Add(&MovlStore, Code.Movlps_m64_xmm, Code.Movlpd_m64_xmm);
        r.Add(&MovhLoad, Code.Movhps_xmm_m64, Code.Movhpd_xmm_m64);
        r.Add(&MovhStore, Code.Movhps_m64_xmm, Code.Movhpd_m64_xmm);
        r.Add(&Movhlps, Code.Movhlps_xmm_xmm);
        r.Add(&Movlhps, Code.Movlhps_xmm_xmm);
        r.Add(&Movmskps, Code.Movmskps_r32_xmm, Code.Movmskps_r64_xmm);
        r.Add(&Movmskpd, Code.Movmskpd_r32_xmm, Code.Movmskpd_r64_xmm);
        r.Add(&Pmovmskb, Code.Pmovmskb_r32_xmm, Code.Pmovmskb_r64_xmm);
        r.Add(&Maskmovdqu, Code.Maskmovdqu_rDI_xmm_xmm);
        r.Add(&Movddup, Code.Movddup_xmm_xmmm64);
        r.Add(&Movsldup, Code.Movsldup_xmm_xmmm128);
        r.Add(&Movshdup, Code.Movshdup_xmm_xmmm128);
        r.Add(&Movnti, Code.Movnti_m32_r32, Code.Movnti_m64_r64);
        r.Add(&Ldmxcsr, Code.Ldmxcsr_m32);
        r.Add(&Stmxcsr, Code.Stmxcsr_m32);
    }

    private static void MovAligned(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        if (i.Op0Kind == OpKind.Register) Sse.Dst(c, ref i) = Sse.Src(c, ref i, 1);
        else Sse.Write128(c, Sse.Aligned(c, ref i, true), c.Xmm[Sse.X(i.Op1Register)]);
    }

    private static void MovUnaligned(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        if (i.Op0Kind == OpKind.Register) Sse.Dst(c, ref i) = Sse.SrcU(c, ref i, 1);
        else Sse.Write128(c, c.MemLinear(ref i, 16, true), c.Xmm[Sse.X(i.Op1Register)]);
    }

    private static void Movss(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        if (i.Op0Kind != OpKind.Register)
            c.Write32(c.MemLinear(ref i, 4, true), c.Xmm[Sse.X(i.Op1Register)].AsUInt32().GetElement(0));
        else if (i.Op1Kind == OpKind.Register)
            Sse.Dst(c, ref i) = Sse.Dst(c, ref i).AsUInt32().WithElement(0, c.Xmm[Sse.X(i.Op1Register)].AsUInt32().GetElement(0)).AsByte();
        else
            Sse.Dst(c, ref i) = Vector128.CreateScalar(c.Read32(c.MemLinear(ref i, 4, false))).AsByte();
    }

    private static void Movsd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        if (i.Op0Kind != OpKind.Register)
            c.Write64(c.MemLinear(ref i, 8, true), c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(0));
        else if (i.Op1Kind == OpKind.Register)
            Sse.Dst(c, ref i) = Sse.Dst(c, ref i).AsUInt64().WithElement(0, c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(0)).AsByte();
        else
            Sse.Dst(c, ref i) = Vector128.CreateScalar(c.Read64(c.MemLinear(ref i, 8, false))).AsByte();
    }

    private static void MovdToXmm(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        int size = i.Code == Code.Movd_xmm_rm32 ? 4 : 8;
        Sse.Dst(c, ref i) = Vector128.CreateScalar(c.ReadOp(ref i, 1, size)).AsByte();
    }

    private static void MovdFromXmm(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        int size = i.Code == Code.Movd_rm32_xmm ? 4 : 8;
        c.WriteOp(ref i, 0, size, c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(0) & Cpu.SizeMask(size));
    }

    private static void MovqLoad(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        Sse.Dst(c, ref i) = Vector128.CreateScalar(Sse.Src64(c, ref i, 1)).AsByte();
    }

    private static void MovqStore(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong v = c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(0);
        if (i.Op0Kind == OpKind.Register) Sse.Dst(c, ref i) = Vector128.CreateScalar(v).AsByte();
        else c.Write64(c.MemLinear(ref i, 8, true), v);
    }

    private static void MovlLoad(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong v = c.Read64(c.MemLinear(ref i, 8, false));
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(0, v).AsByte();
    }

    private static void MovlStore(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.Write64(c.MemLinear(ref i, 8, true), c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(0));
    }

    private static void MovhLoad(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ulong v = c.Read64(c.MemLinear(ref i, 8, false));
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(1, v).AsByte();
    }

    private static void MovhStore(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.Write64(c.MemLinear(ref i, 8, true), c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(1));
    }

    private static void Movhlps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(0, c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(1)).AsByte();
    }

    private static void Movlhps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt64().WithElement(1, c.Xmm[Sse.X(i.Op1Register)].AsUInt64().GetElement(0)).AsByte();
    }

    private static void Movmskps(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.SetReg(i.Op0Register, c.Xmm[Sse.X(i.Op1Register)].AsUInt32().ExtractMostSignificantBits());
    }

    private static void Movmskpd(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.SetReg(i.Op0Register, c.Xmm[Sse.X(i.Op1Register)].AsUInt64().ExtractMostSignificantBits());
    }

    private static void Pmovmskb(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.SetReg(i.Op0Register, c.Xmm[Sse.X(i.Op1Register)].ExtractMostSignificantBits());
    }

    /// <summary>Byte-masked store to DS:rDI (segment overridable); unselected bytes are not accessed at all.</summary>
    private static void Maskmovdqu(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var data = c.Xmm[Sse.X(i.Op1Register)];
        uint mask = c.Xmm[Sse.X(i.Op2Register)].ExtractMostSignificantBits();
        if (mask == 0) return;
        ulong off = i.Op0Kind switch
        {
            OpKind.MemorySegRDI => c.Gpr[Cpu.RDI],
            OpKind.MemorySegEDI => (uint)c.Gpr[Cpu.RDI],
            _ => (ushort)c.Gpr[Cpu.RDI],
        };
        int seg = Cpu.MemSeg(ref i);
        for (int k = 0; k < 16; k++)
        {
            if ((mask & (1u << k)) == 0) continue;
            c.WriteMem(seg, off + (ulong)k, 1, data.GetElement(k));
        }
    }

    private static void Movddup(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        Sse.Dst(c, ref i) = Vector128.Create(Sse.Src64(c, ref i, 1)).AsByte();
    }

    private static void Movsldup(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var s = Sse.Src(c, ref i, 1).AsUInt32();
        Sse.Dst(c, ref i) = Vector128.Shuffle(s, Vector128.Create(0u, 0, 2, 2)).AsByte();
    }

    private static void Movshdup(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        var s = Sse.Src(c, ref i, 1).AsUInt32();
        Sse.Dst(c, ref i) = Vector128.Shuffle(s, Vector128.Create(1u, 1, 3, 3)).AsByte();
    }

    /// <summary>MOVNTI stores a GPR; it has no CR0/CR4 SSE availability checks (SDM).</summary>
    private static void Movnti(Cpu c, ref Instruction i)
    {
        if (i.HasLockPrefix) throw new CpuException(Vec.UD);
        int size = Cpu.RegSize(i.Op1Register);
        c.WriteLinear(c.MemLinear(ref i, size, true), size, c.GetReg(i.Op1Register));
    }

    private static void Ldmxcsr(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        uint v = c.Read32(c.MemLinear(ref i, 4, false));
        if ((v & ~Cpu.MxcsrMask) != 0) throw new CpuException(Vec.GP, 0);
        c.Mxcsr = v;
    }

    private static void Stmxcsr(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.Write32(c.MemLinear(ref i, 4, true), c.Mxcsr);
    }
}
