using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// MMX (SDM vol. 1 ch. 9): the 64-bit packed integer instructions on mm0-mm7, and the SSE/SSE2 integer
/// additions that have mm forms (PAVGB, PMINUB, PSHUFW, PINSRW, PMOVMSKB, MOVNTQ, MASKMOVQ, PADDQ, PMULUDQ...).
/// Arithmetic, compares, logic and shifts are here; packs, unpacks, shuffles, moves and MASKMOVQ in
/// <see cref="MmxMove"/>; the SSSE3 mm forms in <see cref="MmxSsse3"/>; CVTPI2PS and relatives in <see cref="MmxConvert"/>.
///
/// STATE. mmN is the significand (bits 0-63) of the x87 PHYSICAL register RN, not ST(N). Every MMX instruction
/// but EMMS sets TOP=0 and marks all eight registers valid; writing mmN also sets RN's sign and exponent (bits
/// 64-79) to all ones (SDM vol. 1 9.5.1). The TOP/tag change is made only after the instruction can no longer
/// fault, so a faulting instruction leaves the x87 state as it was. EMMS (marks all empty) stays in <see cref="X87"/>.
///
/// CHECKS (SDM vol. 2 "Exceptions (MMX)"): LOCK or CR0.EM=1 → #UD; CR0.TS=1 → #NM; a pending unmasked x87
/// exception (FSW.ES) → #MF when CR0.NE=1 (with NE=0 the legacy FERR# path keeps it pending, as the x87 group does);
/// then memory faults. CR4.OSFXSR plays no part. MMX instructions do not update FIP/FDP/FOP.
/// </summary>
internal static unsafe class Mmx
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Paddb, Code.Paddb_mm_mmm64); r.Add(&Paddw, Code.Paddw_mm_mmm64);
        r.Add(&Paddd, Code.Paddd_mm_mmm64); r.Add(&Paddq, Code.Paddq_mm_mmm64);
        r.Add(&Psubb, Code.Psubb_mm_mmm64); r.Add(&Psubw, Code.Psubw_mm_mmm64);
        r.Add(&Psubd, Code.Psubd_mm_mmm64); r.Add(&Psubq, Code.Psubq_mm_mmm64);
        r.Add(&Paddsb, Code.Paddsb_mm_mmm64); r.Add(&Paddsw, Code.Paddsw_mm_mmm64);
        r.Add(&Paddusb, Code.Paddusb_mm_mmm64); r.Add(&Paddusw, Code.Paddusw_mm_mmm64);
        r.Add(&Psubsb, Code.Psubsb_mm_mmm64); r.Add(&Psubsw, Code.Psubsw_mm_mmm64);
        r.Add(&Psubusb, Code.Psubusb_mm_mmm64); r.Add(&Psubusw, Code.Psubusw_mm_mmm64);
        r.Add(&Pmullw, Code.Pmullw_mm_mmm64); r.Add(&Pmulhw, Code.Pmulhw_mm_mmm64);
        r.Add(&Pmulhuw, Code.Pmulhuw_mm_mmm64); r.Add(&Pmuludq, Code.Pmuludq_mm_mmm64);
        r.Add(&Pmaddwd, Code.Pmaddwd_mm_mmm64);
        r.Add(&Pavgb, Code.Pavgb_mm_mmm64); r.Add(&Pavgw, Code.Pavgw_mm_mmm64);
        r.Add(&Pminub, Code.Pminub_mm_mmm64); r.Add(&Pmaxub, Code.Pmaxub_mm_mmm64);
        r.Add(&Pminsw, Code.Pminsw_mm_mmm64); r.Add(&Pmaxsw, Code.Pmaxsw_mm_mmm64);
        r.Add(&Psadbw, Code.Psadbw_mm_mmm64);
        r.Add(&Pcmpeqb, Code.Pcmpeqb_mm_mmm64); r.Add(&Pcmpeqw, Code.Pcmpeqw_mm_mmm64);
        r.Add(&Pcmpeqd, Code.Pcmpeqd_mm_mmm64);
        r.Add(&Pcmpgtb, Code.Pcmpgtb_mm_mmm64); r.Add(&Pcmpgtw, Code.Pcmpgtw_mm_mmm64);
        r.Add(&Pcmpgtd, Code.Pcmpgtd_mm_mmm64);
        r.Add(&Pand, Code.Pand_mm_mmm64); r.Add(&Pandn, Code.Pandn_mm_mmm64);
        r.Add(&Por, Code.Por_mm_mmm64); r.Add(&Pxor, Code.Pxor_mm_mmm64);
        r.Add(&ShiftReg, Code.Psllw_mm_mmm64, Code.Pslld_mm_mmm64, Code.Psllq_mm_mmm64,
            Code.Psrlw_mm_mmm64, Code.Psrld_mm_mmm64, Code.Psrlq_mm_mmm64, Code.Psraw_mm_mmm64, Code.Psrad_mm_mmm64);
        r.Add(&ShiftImm, Code.Psllw_mm_imm8, Code.Pslld_mm_imm8, Code.Psllq_mm_imm8,
            Code.Psrlw_mm_imm8, Code.Psrld_mm_imm8, Code.Psrlq_mm_imm8, Code.Psraw_mm_imm8, Code.Psrad_mm_imm8);
        MmxMove.Install(r);
        MmxSsse3.Install(r);
        MmxConvert.Install(r);
    }

    // ---------------- shared state plumbing ----------------

    /// <summary>LOCK or CR0.EM → #UD, CR0.TS → #NM, pending unmasked x87 exception with CR0.NE → #MF.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Check(Cpu c, ref Instruction i)
    {
        if (i.HasLockPrefix || (c.Cr0 & (Cpu.Cr0EM | Cpu.Cr0TS)) != 0 || (c.FswNoTop & Cpu.FswES) != 0) Slow(c, i.HasLockPrefix);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Slow(Cpu c, bool locked)
    {
        if (locked || (c.Cr0 & Cpu.Cr0EM) != 0) throw new CpuException(Vec.UD);
        if ((c.Cr0 & Cpu.Cr0TS) != 0) throw new CpuException(Vec.NM);
        if ((c.FswNoTop & Cpu.FswES) != 0 && (c.Cr0 & Cpu.Cr0NE) != 0) throw new CpuException(Vec.MF);
    }

    /// <summary>The x87 side effect of every MMX instruction but EMMS: TOP=0, all registers tagged valid.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Done(Cpu c)
    {
        c.FpuTop = 0;
        c.FpuTags = 0xFF;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int N(Register r) => r - Register.MM0;

    /// <summary>mmN: the significand of physical register RN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Get(Cpu c, int n) => c.FpuRegs[n].M;

    /// <summary>Writes mmN (exponent and sign to all ones) and completes the instruction (<see cref="Done"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Put(Cpu c, int n, ulong v)
    {
        c.FpuRegs[n] = new F80(v, 0xFFFF);
        Done(c);
    }

    /// <summary>Operand n as 64 bits: an mm register, an XMM register's low quadword or an m64 (no alignment rule).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Src(Cpu c, ref Instruction i, int n)
    {
        if (i.GetOpKind(n) == OpKind.Register)
        {
            Register r = i.GetOpRegister(n);
            return r is >= Register.MM0 and <= Register.MM7 ? Get(c, N(r)) : c.Xmm[r - Register.XMM0].AsUInt64().GetElement(0);
        }
        return c.Read64(c.MemLinear(ref i, 8, false));
    }

    /// <summary>Checks, then the source (operand 1) and destination (operand 0, an mm register) as vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Bin(Cpu c, ref Instruction i, out Vector64<byte> d, out Vector64<byte> s)
    {
        Check(c, ref i);
        s = Vector64.Create(Src(c, ref i, 1)).AsByte();
        int n = N(i.Op0Register);
        d = Vector64.Create(Get(c, n)).AsByte();
        return n;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Put<T>(Cpu c, int n, Vector64<T> v) => Put(c, n, v.AsUInt64().ToScalar());

    // ---------------- arithmetic ----------------

    private static void Paddb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d + s); }
    private static void Paddw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt16() + s.AsUInt16()); }
    private static void Paddd(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt32() + s.AsUInt32()); }
    private static void Paddq(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt64() + s.AsUInt64()); }
    private static void Psubb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d - s); }
    private static void Psubw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt16() - s.AsUInt16()); }
    private static void Psubd(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt32() - s.AsUInt32()); }
    private static void Psubq(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt64() - s.AsUInt64()); }

    private static void Paddsb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.AddSaturate(d.AsSByte(), s.AsSByte())); }
    private static void Paddsw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.AddSaturate(d.AsInt16(), s.AsInt16())); }
    private static void Paddusb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.AddSaturate(d, s)); }
    private static void Paddusw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.AddSaturate(d.AsUInt16(), s.AsUInt16())); }
    private static void Psubsb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.SubtractSaturate(d.AsSByte(), s.AsSByte())); }
    private static void Psubsw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.SubtractSaturate(d.AsInt16(), s.AsInt16())); }
    private static void Psubusb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.SubtractSaturate(d, s)); }
    private static void Psubusw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.SubtractSaturate(d.AsUInt16(), s.AsUInt16())); }

    private static void Pmullw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d.AsUInt16() * s.AsUInt16()); }

    private static void Pmulhw(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        var a = d.AsInt16(); var b = s.AsInt16();
        Vector64<short> r = default;
        for (int k = 0; k < 4; k++) r = r.WithElement(k, (short)((a.GetElement(k) * b.GetElement(k)) >> 16));
        Put(c, n, r);
    }

    private static void Pmulhuw(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        var a = d.AsUInt16(); var b = s.AsUInt16();
        Vector64<ushort> r = default;
        for (int k = 0; k < 4; k++) r = r.WithElement(k, (ushort)(((uint)a.GetElement(k) * b.GetElement(k)) >> 16));
        Put(c, n, r);
    }

    private static void Pmuludq(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        Put(c, n, (ulong)d.AsUInt32().GetElement(0) * s.AsUInt32().GetElement(0));
    }

    private static void Pmaddwd(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        var a = d.AsInt16(); var b = s.AsInt16();
        Vector64<int> r = default;
        // Both products -32768*-32768 overflow only together into 0x80000000, which int wraps to as hardware does.
        for (int k = 0; k < 2; k++)
            r = r.WithElement(k, unchecked(a.GetElement(2 * k) * b.GetElement(2 * k) + a.GetElement(2 * k + 1) * b.GetElement(2 * k + 1)));
        Put(c, n, r);
    }

    private static void Pavgb(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        Vector64<byte> r = default;
        for (int k = 0; k < 8; k++) r = r.WithElement(k, (byte)((d.GetElement(k) + s.GetElement(k) + 1) >> 1));
        Put(c, n, r);
    }

    private static void Pavgw(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        var a = d.AsUInt16(); var b = s.AsUInt16();
        Vector64<ushort> r = default;
        for (int k = 0; k < 4; k++) r = r.WithElement(k, (ushort)((a.GetElement(k) + b.GetElement(k) + 1) >> 1));
        Put(c, n, r);
    }

    private static void Pminub(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Min(d, s)); }
    private static void Pmaxub(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Max(d, s)); }
    private static void Pminsw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Min(d.AsInt16(), s.AsInt16())); }
    private static void Pmaxsw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Max(d.AsInt16(), s.AsInt16())); }

    private static void Psadbw(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        uint sum = 0;
        for (int k = 0; k < 8; k++) sum += (uint)Math.Abs(d.GetElement(k) - s.GetElement(k));
        Put(c, n, (ulong)sum);
    }

    // ---------------- compares and logic ----------------

    private static void Pcmpeqb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Equals(d, s)); }
    private static void Pcmpeqw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Equals(d.AsUInt16(), s.AsUInt16())); }
    private static void Pcmpeqd(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.Equals(d.AsUInt32(), s.AsUInt32())); }
    private static void Pcmpgtb(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.GreaterThan(d.AsSByte(), s.AsSByte())); }
    private static void Pcmpgtw(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.GreaterThan(d.AsInt16(), s.AsInt16())); }
    private static void Pcmpgtd(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, Vector64.GreaterThan(d.AsInt32(), s.AsInt32())); }

    private static void Pand(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d & s); }
    private static void Pandn(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, ~d & s); }
    private static void Por(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d | s); }
    private static void Pxor(Cpu c, ref Instruction i) { int n = Bin(c, ref i, out var d, out var s); Put(c, n, d ^ s); }

    // ---------------- shifts ----------------

    private static void ShiftReg(Cpu c, ref Instruction i)
    {
        int n = Bin(c, ref i, out var d, out var s);
        Put(c, n, Shift(i.Code, d.AsUInt64().ToScalar(), s.AsUInt64().ToScalar()));
    }

    private static void ShiftImm(Cpu c, ref Instruction i)
    {
        Check(c, ref i);
        int n = N(i.Op0Register);
        Put(c, n, Shift(i.Code, Get(c, n), i.Immediate8));
    }

    /// <summary>Lane shifts by the full 64-bit count: counts past the lane width give 0 (logical) or the sign (arithmetic).</summary>
    private static ulong Shift(Code code, ulong v, ulong count)
    {
        var x = Vector64.Create(v);
        switch (code)
        {
            case Code.Psllw_mm_mmm64 or Code.Psllw_mm_imm8:
                return count > 15 ? 0 : Vector64.ShiftLeft(x.AsUInt16(), (int)count).AsUInt64().ToScalar();
            case Code.Pslld_mm_mmm64 or Code.Pslld_mm_imm8:
                return count > 31 ? 0 : Vector64.ShiftLeft(x.AsUInt32(), (int)count).AsUInt64().ToScalar();
            case Code.Psllq_mm_mmm64 or Code.Psllq_mm_imm8:
                return count > 63 ? 0 : v << (int)count;
            case Code.Psrlw_mm_mmm64 or Code.Psrlw_mm_imm8:
                return count > 15 ? 0 : Vector64.ShiftRightLogical(x.AsUInt16(), (int)count).AsUInt64().ToScalar();
            case Code.Psrld_mm_mmm64 or Code.Psrld_mm_imm8:
                return count > 31 ? 0 : Vector64.ShiftRightLogical(x.AsUInt32(), (int)count).AsUInt64().ToScalar();
            case Code.Psrlq_mm_mmm64 or Code.Psrlq_mm_imm8:
                return count > 63 ? 0 : v >> (int)count;
            case Code.Psraw_mm_mmm64 or Code.Psraw_mm_imm8:
                return Vector64.ShiftRightArithmetic(x.AsInt16(), (int)Math.Min(count, 15)).AsUInt64().ToScalar();
            default: // PSRAD
                return Vector64.ShiftRightArithmetic(x.AsInt32(), (int)Math.Min(count, 31)).AsUInt64().ToScalar();
        }
    }
}
