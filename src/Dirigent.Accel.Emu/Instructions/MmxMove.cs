using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>MMX moves (MOVD/MOVQ, MOVNTQ, MASKMOVQ, MOVDQ2Q/MOVQ2DQ), packs, unpacks, PSHUFW, PINSRW, PEXTRW and
/// PMOVMSKB. State rules and checks: see <see cref="Mmx"/>.</summary>
internal static unsafe class MmxMove
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&MovdToMm, Code.Movd_mm_rm32, Code.Movq_mm_rm64);
        r.Add(&MovdFromMm, Code.Movd_rm32_mm, Code.Movq_rm64_mm);
        r.Add(&MovqLoad, Code.Movq_mm_mmm64);
        r.Add(&MovqStore, Code.Movq_mmm64_mm, Code.Movntq_m64_mm);
        r.Add(&Maskmovq, Code.Maskmovq_rDI_mm_mm);
        r.Add(&Movdq2q, Code.Movdq2q_mm_xmm);
        r.Add(&Movq2dq, Code.Movq2dq_xmm_mm);
        r.Add(&Packsswb, Code.Packsswb_mm_mmm64);
        r.Add(&Packssdw, Code.Packssdw_mm_mmm64);
        r.Add(&Packuswb, Code.Packuswb_mm_mmm64);
        r.Add(&Unpack, Code.Punpcklbw_mm_mmm32, Code.Punpcklwd_mm_mmm32, Code.Punpckldq_mm_mmm32,
            Code.Punpckhbw_mm_mmm64, Code.Punpckhwd_mm_mmm64, Code.Punpckhdq_mm_mmm64);
        r.Add(&Pshufw, Code.Pshufw_mm_mmm64_imm8);
        r.Add(&Pinsrw, Code.Pinsrw_mm_r32m16_imm8, Code.Pinsrw_mm_r64m16_imm8);
        r.Add(&Pextrw, Code.Pextrw_r32_mm_imm8, Code.Pextrw_r64_mm_imm8);
        r.Add(&Pmovmskb, Code.Pmovmskb_r32_mm, Code.Pmovmskb_r64_mm);
    }

    private static void MovdToMm(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        int size = i.Code == Code.Movd_mm_rm32 ? 4 : 8;
        Mmx.Put(c, Mmx.N(i.Op0Register), c.ReadOp(ref i, 1, size));
    }

    private static void MovdFromMm(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        int size = i.Code == Code.Movd_rm32_mm ? 4 : 8;
        c.WriteOp(ref i, 0, size, Mmx.Get(c, Mmx.N(i.Op1Register)) & Cpu.SizeMask(size));
        Mmx.Done(c);
    }

    private static void MovqLoad(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        Mmx.Put(c, Mmx.N(i.Op0Register), Mmx.Src(c, ref i, 1));
    }

    /// <summary>MOVQ mm/m64, mm and MOVNTQ m64, mm (the non-temporal hint has no meaning here).</summary>
    private static void MovqStore(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        ulong v = Mmx.Get(c, Mmx.N(i.Op1Register));
        if (i.Op0Kind == OpKind.Register) { Mmx.Put(c, Mmx.N(i.Op0Register), v); return; }
        c.Write64(c.MemLinear(ref i, 8, true), v);
        Mmx.Done(c);
    }

    /// <summary>Stores the bytes of mm1 whose mask byte (mm2) has its top bit set at DS:rDI (segment overridable).</summary>
    private static void Maskmovq(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        var data = Vector64.Create(Mmx.Get(c, Mmx.N(i.Op1Register))).AsByte();
        uint mask = Vector64.Create(Mmx.Get(c, Mmx.N(i.Op2Register))).AsByte().ExtractMostSignificantBits();
        if (mask != 0)
        {
            ulong off = i.Op0Kind switch
            {
                OpKind.MemorySegRDI => c.Gpr[Cpu.RDI],
                OpKind.MemorySegEDI => (uint)c.Gpr[Cpu.RDI],
                _ => (ushort)c.Gpr[Cpu.RDI],
            };
            int seg = Cpu.MemSeg(ref i);
            for (int k = 0; k < 8; k++)
                if ((mask & (1u << k)) != 0) c.WriteMem(seg, off + (ulong)k, 1, data.GetElement(k));
        }
        Mmx.Done(c);
    }

    /// <summary>SSE2 MOVDQ2Q/MOVQ2DQ: SSE availability (CR4.OSFXSR) as well as the MMX checks, then the x87 transition.</summary>
    private static void SseCheck(Cpu c, ref Instruction i)
    {
        if ((c.Cr4 & Cpu.Cr4OSFXSR) == 0 && (c.Cr0 & Cpu.Cr0EM) == 0 && !i.HasLockPrefix) throw new CpuException(Vec.UD);
        Mmx.Check(c, ref i);
    }

    private static void Movdq2q(Cpu c, ref Instruction i)
    {
        SseCheck(c, ref i);
        Mmx.Put(c, Mmx.N(i.Op0Register), c.Xmm[i.Op1Register - Register.XMM0].AsUInt64().GetElement(0));
    }

    private static void Movq2dq(Cpu c, ref Instruction i)
    {
        SseCheck(c, ref i);
        c.Xmm[i.Op0Register - Register.XMM0] = Vector128.CreateScalar(Mmx.Get(c, Mmx.N(i.Op1Register))).AsByte();
        Mmx.Done(c);
    }

    // ---------------- packs and unpacks ----------------

    private static void Packsswb(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsInt16(); var b = s.AsInt16();
        Vector64<sbyte> r = default;
        for (int k = 0; k < 4; k++)
        {
            r = r.WithElement(k, (sbyte)Math.Clamp(a.GetElement(k), (short)-128, (short)127));
            r = r.WithElement(k + 4, (sbyte)Math.Clamp(b.GetElement(k), (short)-128, (short)127));
        }
        Mmx.Put(c, n, r);
    }

    private static void Packssdw(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsInt32(); var b = s.AsInt32();
        Vector64<short> r = default;
        for (int k = 0; k < 2; k++)
        {
            r = r.WithElement(k, (short)Math.Clamp(a.GetElement(k), short.MinValue, short.MaxValue));
            r = r.WithElement(k + 2, (short)Math.Clamp(b.GetElement(k), short.MinValue, short.MaxValue));
        }
        Mmx.Put(c, n, r);
    }

    private static void Packuswb(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsInt16(); var b = s.AsInt16();
        Vector64<byte> r = default;
        for (int k = 0; k < 4; k++)
        {
            r = r.WithElement(k, (byte)Math.Clamp(a.GetElement(k), (short)0, (short)255));
            r = r.WithElement(k + 4, (byte)Math.Clamp(b.GetElement(k), (short)0, (short)255));
        }
        Mmx.Put(c, n, r);
    }

    /// <summary>PUNPCKL*/PUNPCKH*: interleave the low (or high) halves of destination and source, destination first.
    /// The low forms read only 32 bits from memory.</summary>
    private static void Unpack(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        bool low = i.Code is Code.Punpcklbw_mm_mmm32 or Code.Punpcklwd_mm_mmm32 or Code.Punpckldq_mm_mmm32;
        ulong src = low && i.Op1Kind != OpKind.Register ? c.Read32(c.MemLinear(ref i, 4, false)) : Mmx.Src(c, ref i, 1);
        int n = Mmx.N(i.Op0Register);
        ulong dst = Mmx.Get(c, n);
        int lane = i.Code switch
        {
            Code.Punpcklbw_mm_mmm32 or Code.Punpckhbw_mm_mmm64 => 8,
            Code.Punpcklwd_mm_mmm32 or Code.Punpckhwd_mm_mmm64 => 16,
            _ => 32,
        };
        if (!low) { dst >>= 32; src >>= 32; }
        ulong m = lane == 32 ? 0xFFFF_FFFFUL : (1UL << lane) - 1, r = 0;
        for (int k = 0; k < 32 / lane; k++)
        {
            r |= ((dst >> (k * lane)) & m) << (2 * k * lane);
            r |= ((src >> (k * lane)) & m) << ((2 * k + 1) * lane);
        }
        Mmx.Put(c, n, r);
    }

    // ---------------- word shuffles, inserts, extracts ----------------

    private static void Pshufw(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        var s = Vector64.Create(Mmx.Src(c, ref i, 1)).AsUInt16();
        int m = i.Immediate8;
        Mmx.Put(c, Mmx.N(i.Op0Register), Vector64.Create(s.GetElement(m & 3), s.GetElement((m >> 2) & 3),
            s.GetElement((m >> 4) & 3), s.GetElement((m >> 6) & 3)));
    }

    private static void Pinsrw(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        ushort v = i.Op1Kind == OpKind.Register ? (ushort)c.GetReg(i.Op1Register) : c.Read16(c.MemLinear(ref i, 2, false));
        int n = Mmx.N(i.Op0Register);
        Mmx.Put(c, n, Vector64.Create(Mmx.Get(c, n)).AsUInt16().WithElement(i.Immediate8 & 3, v));
    }

    private static void Pextrw(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        c.SetReg(i.Op0Register, Vector64.Create(Mmx.Get(c, Mmx.N(i.Op1Register))).AsUInt16().GetElement(i.Immediate8 & 3));
        Mmx.Done(c);
    }

    private static void Pmovmskb(Cpu c, ref Instruction i)
    {
        Mmx.Check(c, ref i);
        c.SetReg(i.Op0Register, Vector64.Create(Mmx.Get(c, Mmx.N(i.Op1Register))).AsByte().ExtractMostSignificantBits());
        Mmx.Done(c);
    }
}
