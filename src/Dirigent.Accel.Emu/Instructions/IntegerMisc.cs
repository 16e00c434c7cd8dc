using System.Numerics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>CLC/STC/CMC, CLD/STD, the BCD adjustments (DAA, DAS, AAA, AAS, AAM, AAD), BOUND and SALC (#UD).</summary>
internal static unsafe class IntegerMisc
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Clc, Code.Clc);
        r.Add(&Stc, Code.Stc);
        r.Add(&Cmc, Code.Cmc);
        r.Add(&Cld, Code.Cld);
        r.Add(&Std, Code.Std);
        r.Add(&Daa, Code.Daa);
        r.Add(&Das, Code.Das);
        r.Add(&Aaa, Code.Aaa);
        r.Add(&Aas, Code.Aas);
        r.Add(&Aam, Code.Aam_imm8);
        r.Add(&Aad, Code.Aad_imm8);
        r.Add(&Bound, Code.Bound_r16_m1616, Code.Bound_r32_m3232);
        // SALC is undocumented; we do not implement it, and registering it keeps the #UD from being logged as missing.
        r.Add(&Invalid, Code.Salc);
    }

    private static void Clc(Cpu c, ref Instruction i) => c.SetFlag(Cpu.CF, false);
    private static void Stc(Cpu c, ref Instruction i) => c.SetFlag(Cpu.CF, true);
    private static void Cmc(Cpu c, ref Instruction i) => c.SetFlag(Cpu.CF, !c.GetCF());
    private static void Cld(Cpu c, ref Instruction i) => c.SetFlag(Cpu.DF, false);
    private static void Std(Cpu c, ref Instruction i) => c.SetFlag(Cpu.DF, true);
    private static void Invalid(Cpu c, ref Instruction i) => throw Cpu.UD();

    private static ulong SzpOf(byte v)
    {
        ulong f = 0;
        if (v == 0) f |= Cpu.ZF;
        if ((v & 0x80) != 0) f |= Cpu.SF;
        if ((BitOperations.PopCount(v) & 1) == 0) f |= Cpu.PF;
        return f;
    }

    private static byte Al(Cpu c) => (byte)c.Gpr[Cpu.RAX];
    private static void SetAl(Cpu c, byte v) => c.Gpr[Cpu.RAX] = (c.Gpr[Cpu.RAX] & ~0xFFUL) | v;
    private static void SetAx(Cpu c, ushort v) => c.Gpr[Cpu.RAX] = (c.Gpr[Cpu.RAX] & ~0xFFFFUL) | v;

    // The BCD adjustments follow the SDM pseudo-code; OF (undefined there) is left clear.
    private static void Daa(Cpu c, ref Instruction i)
    {
        byte oldAl = Al(c), al = oldAl;
        bool oldCf = c.GetCF(), af = c.GetAF(), cf = false;
        if ((al & 0xF) > 9 || af)
        {
            cf = oldCf || al > 0xF9;
            al += 6;
            af = true;
        }
        else af = false;
        if (oldAl > 0x99 || oldCf) { al += 0x60; cf = true; }
        else cf = false;
        SetAl(c, al);
        c.SetArithFlags(SzpOf(al) | (cf ? Cpu.CF : 0) | (af ? Cpu.AF : 0));
    }

    private static void Das(Cpu c, ref Instruction i)
    {
        byte oldAl = Al(c), al = oldAl;
        bool oldCf = c.GetCF(), af = c.GetAF(), cf = false;
        if ((al & 0xF) > 9 || af)
        {
            cf = oldCf || al < 6;
            al -= 6;
            af = true;
        }
        else af = false;
        if (oldAl > 0x99 || oldCf) { al -= 0x60; cf = true; }
        SetAl(c, al);
        c.SetArithFlags(SzpOf(al) | (cf ? Cpu.CF : 0) | (af ? Cpu.AF : 0));
    }

    private static void Aaa(Cpu c, ref Instruction i)
    {
        ushort ax = (ushort)c.Gpr[Cpu.RAX];
        bool adj = (ax & 0xF) > 9 || c.GetAF();
        if (adj) ax += 0x106;
        ax &= 0xFF0F;
        SetAx(c, ax);
        c.SetArithFlags(SzpOf((byte)ax) | (adj ? Cpu.CF | Cpu.AF : 0));
    }

    private static void Aas(Cpu c, ref Instruction i)
    {
        ushort ax = (ushort)c.Gpr[Cpu.RAX];
        bool adj = (ax & 0xF) > 9 || c.GetAF();
        if (adj)
        {
            ax -= 6;
            ax -= 0x100;
        }
        ax &= 0xFF0F;
        SetAx(c, ax);
        c.SetArithFlags(SzpOf((byte)ax) | (adj ? Cpu.CF | Cpu.AF : 0));
    }

    private static void Aam(Cpu c, ref Instruction i)
    {
        byte imm = i.Immediate8;
        if (imm == 0) throw new CpuException(Vec.DE);
        byte al = Al(c);
        byte q = (byte)(al / imm), rem = (byte)(al % imm);
        SetAx(c, (ushort)((q << 8) | rem));
        c.SetArithFlags(SzpOf(rem));
    }

    private static void Aad(Cpu c, ref Instruction i)
    {
        byte al = Al(c), ah = (byte)(c.Gpr[Cpu.RAX] >> 8);
        byte prod = (byte)(ah * i.Immediate8);
        byte res = (byte)(al + prod);
        SetAx(c, res);
        // CF/OF/AF are undefined; hardware reports those of the 8-bit addition, which the lazy Add gives.
        c.SetLazyFlags(LazyOp.Add, 1, res, al, prod);
    }

    /// <summary>BOUND: signed check of the index register against the [lower, upper] pair in memory; #BR if outside.</summary>
    private static void Bound(Cpu c, ref Instruction i)
    {
        int size = i.Code == Code.Bound_r16_m1616 ? 2 : 4;
        int seg = Cpu.MemSeg(ref i);
        ulong ea = c.EffectiveAddress(ref i);
        ulong lowerRaw = c.ReadMem(seg, ea, size);
        ulong upperRaw = c.ReadMem(seg, AddrMask(ref i, ea + (ulong)size), size);
        long idx, lower, upper;
        if (size == 2) { idx = (short)c.GetReg(i.Op0Register); lower = (short)lowerRaw; upper = (short)upperRaw; }
        else { idx = (int)c.GetReg(i.Op0Register); lower = (int)lowerRaw; upper = (int)upperRaw; }
        if (idx < lower || idx > upper) throw new CpuException(Vec.BR);
    }

    private static ulong AddrMask(ref Instruction i, ulong ea)
    {
        Register b = i.MemoryBase != Register.None ? i.MemoryBase : i.MemoryIndex;
        if (b == Register.None) return i.MemoryDisplSize == 2 ? (ushort)ea : (uint)ea;
        return Cpu.RegSize(b) == 2 ? (ushort)ea : (uint)ea;
    }
}
