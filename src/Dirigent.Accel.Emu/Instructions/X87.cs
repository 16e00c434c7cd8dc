using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// x87 FPU: data movement, stack and control instructions (this file); arithmetic, comparisons and
/// transcendentals in <see cref="X87Arith"/>; FNSTENV/FLDENV/FNSAVE/FRSTOR/FXSAVE/FXRSTOR in <see cref="X87Env"/>.
///
/// PRECISION. Registers hold exact 80-bit values (<see cref="F80"/>), so FLD/FST m80, FLD/FST ST(i), FXCH,
/// FCHS/FABS, FXSAVE/FXRSTOR, FNSAVE/FRSTOR round-trip bit-exactly. FADD/FSUB/FMUL/FDIV/FSQRT (and their
/// integer/memory/pop forms) are computed by a software float with a 128-bit working significand
/// (<see cref="X87SoftFloat"/>): correctly rounded to the precision control (24/53/64 bits) with every rounding
/// mode, full 15-bit exponent range with denormals, and PE/UE/OE/ZE/IE/DE and C1 as hardware: bit-exact against
/// the host in the differential tests. Also exact: FILD, FIST/FISTP/FISTTP and FRNDINT (all RC), FLD m32/m64,
/// FST m32/m64 (rounded per RC with PE/UE/OE and C1), comparisons, FXAM, FXTRACT, FSCALE, FPREM/FPREM1 (exact
/// long division), FBLD/FBSTP and the FLDxx constants (rounded per RC like hardware). Only the transcendentals
/// (FSIN/FCOS/FSINCOS/FPTAN/FPATAN/F2XM1/FYL2X/FYL2XP1) are computed in binary64 with the host math library:
/// their results carry double precision (tests allow a few double ulps), and their operands are first rounded
/// to double.
///
/// EXCEPTIONS. Flags (IE with SF and C1 for stack faults, DE, ZE, OE, UE, PE) are set as the SDM describes; masked
/// responses (QNaN indefinite, integer indefinite, infinities) are produced. An unmasked IE/ZE/DE leaves the
/// destination unchanged and sets ES/B; the pending exception is delivered as #MF before the next waiting x87
/// instruction when CR0.NE=1. With CR0.NE=0 (legacy FERR#/IRQ13) the pending state is only kept in FSW. Unmasked
/// OE/UE do not apply the exponent bias adjustment. CR0.EM or CR0.TS raise #NM; WAIT with CR0.MP and CR0.TS too.
/// FOP is not recorded (always 0); FIP/FCS and FDP/FDS are.
/// </summary>
internal static unsafe class X87
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Fwait, Code.Wait);
        r.Add(&Fninit, Code.Fninit);
        r.Add(&Fnclex, Code.Fnclex);
        r.Add(&FnstswAx, Code.Fnstsw_AX);
        r.Add(&FnstswM, Code.Fnstsw_m2byte);
        r.Add(&Fnstcw, Code.Fnstcw_m2byte);
        // Iced may decode 9B+control as one instruction: do the WAIT part first.
        r.Add(&WaitThenControl, Code.Finit, Code.Fclex, Code.Fstsw_AX, Code.Fstsw_m2byte, Code.Fstcw_m2byte,
            Code.Fstenv_m14byte, Code.Fstenv_m28byte, Code.Fsave_m94byte, Code.Fsave_m108byte);
        r.Add(&Fldcw, Code.Fldcw_m2byte);
        r.Add(&Fnop, Code.Fnop, Code.Fneni, Code.Feni, Code.Fndisi, Code.Fdisi, Code.Fnsetpm, Code.Fsetpm);
        r.Add(&Emms, Code.Emms);
        r.Add(&Ffree, Code.Ffree_sti);
        r.Add(&Ffreep, Code.Ffreep_sti);
        r.Add(&Fincstp, Code.Fincstp);
        r.Add(&Fdecstp, Code.Fdecstp);

        r.Add(&FldM32, Code.Fld_m32fp);
        r.Add(&FldM64, Code.Fld_m64fp);
        r.Add(&FldM80, Code.Fld_m80fp);
        r.Add(&FldSti, Code.Fld_sti);
        r.Add(&FildM16, Code.Fild_m16int);
        r.Add(&FildM32, Code.Fild_m32int);
        r.Add(&FildM64, Code.Fild_m64int);
        r.Add(&Fbld, Code.Fbld_m80bcd);
        r.Add(&FldConst, Code.Fld1, Code.Fldz, Code.Fldpi, Code.Fldl2e, Code.Fldl2t, Code.Fldlg2, Code.Fldln2);

        r.Add(&FstM32, Code.Fst_m32fp, Code.Fstp_m32fp);
        r.Add(&FstM64, Code.Fst_m64fp, Code.Fstp_m64fp);
        r.Add(&FstpM80, Code.Fstp_m80fp);
        r.Add(&FstSti, Code.Fst_sti, Code.Fstp_sti, Code.Fstp_sti_DFD0, Code.Fstp_sti_DFD8, Code.Fstpnce_sti);
        r.Add(&Fist, Code.Fist_m16int, Code.Fist_m32int, Code.Fistp_m16int, Code.Fistp_m32int, Code.Fistp_m64int,
            Code.Fisttp_m16int, Code.Fisttp_m32int, Code.Fisttp_m64int);
        r.Add(&Fbstp, Code.Fbstp_m80bcd);

        r.Add(&Fxch, Code.Fxch_st0_sti, Code.Fxch_st0_sti_DDC8, Code.Fxch_st0_sti_DFC8);
        r.Add(&Fchs, Code.Fchs);
        r.Add(&Fabs, Code.Fabs);
        r.Add(&Fcmov, Code.Fcmovb_st0_sti, Code.Fcmove_st0_sti, Code.Fcmovbe_st0_sti, Code.Fcmovu_st0_sti,
            Code.Fcmovnb_st0_sti, Code.Fcmovne_st0_sti, Code.Fcmovnbe_st0_sti, Code.Fcmovnu_st0_sti);

        X87Arith.Install(r);
        X87Env.Install(r);
    }

    // ---------------- shared helpers ----------------

    /// <summary>Start of every waiting x87 instruction: #NM, then a pending unmasked exception (#MF), then
    /// records FIP/FCS.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Begin(Cpu c)
    {
        if ((c.Cr0 & (Cpu.Cr0EM | Cpu.Cr0TS)) != 0 || (c.FswNoTop & Cpu.FswES) != 0) Pending(c);
        c.Fip = c.InstrIp;
        c.Fcs = c.Sreg[Cpu.CS].Selector;
    }

    private static void Pending(Cpu c)
    {
        CheckNm(c);
        if ((c.FswNoTop & Cpu.FswES) != 0 && (c.Cr0 & Cpu.Cr0NE) != 0) throw new CpuException(Vec.MF);
    }

    /// <summary>Non-waiting control instructions only check CR0.EM/TS.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CheckNm(Cpu c)
    {
        if ((c.Cr0 & (Cpu.Cr0EM | Cpu.Cr0TS)) != 0) throw new CpuException(Vec.NM);
    }

    /// <summary>Linear address of the memory operand; records FDP/FDS.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Mem(Cpu c, ref Instruction i, int size, bool write)
    {
        int seg = Cpu.MemSeg(ref i);
        ulong ea = c.EffectiveAddress(ref i);
        ulong la = c.Linear(seg, ea, size, write);
        c.Fdp = ea;
        c.Fds = c.Sreg[seg].Selector;
        return la;
    }

    /// <summary>Raises exception flags; true when one of them is unmasked (ES/B set, the destination must not be
    /// written for IE/ZE/DE).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool Signal(Cpu c, int flags)
    {
        c.FswNoTop |= (ushort)flags;
        if ((flags & ~c.Fcw & 0x3F) == 0) return false;
        c.FswNoTop |= Cpu.FswES | Cpu.FswB;
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SetC1(Cpu c, bool on)
    {
        if (on) c.FswNoTop |= Cpu.FswC1; else c.FswNoTop &= unchecked((ushort)~Cpu.FswC1);
    }

    /// <summary>Sets C3, C2, C1, C0 (bit 3 = C3, bit 2 = C2, bit 1 = C1, bit 0 = C0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SetCc(Cpu c, int c3210)
    {
        int w = c.FswNoTop & ~(Cpu.FswC0 | Cpu.FswC1 | Cpu.FswC2 | Cpu.FswC3);
        w |= (c3210 & 1) << 8 | ((c3210 >> 1) & 1) << 9 | ((c3210 >> 2) & 1) << 10 | ((c3210 >> 3) & 1) << 14;
        c.FswNoTop = (ushort)w;
    }

    /// <summary>Stack underflow (reading an empty register): IE+SF, C1=0. True when masked (use the default
    /// QNaN indefinite).</summary>
    internal static bool Underflow(Cpu c)
    {
        SetC1(c, false);
        return !Signal(c, Cpu.FswIE | Cpu.FswSF);
    }

    /// <summary>Pushes v; on stack overflow IE+SF+C1 and, masked, pushes the indefinite instead.</summary>
    internal static void Push(Cpu c, F80 v)
    {
        int nt = (c.FpuTop - 1) & 7;
        if ((c.FpuTags & (1 << nt)) != 0)
        {
            SetC1(c, true);
            if (Signal(c, Cpu.FswIE | Cpu.FswSF)) return;
            v = F80.Indefinite;
        }
        else SetC1(c, false);
        c.FpuTop = nt;
        c.FpuRegs[nt] = v;
        c.FpuTags |= (byte)(1 << nt);
    }

    /// <summary>True when ST(7) is in use, i.e. a push would overflow.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool PushWouldOverflow(Cpu c) => (c.FpuTags & (1 << ((c.FpuTop - 1) & 7))) != 0;

    internal static int Rc(Cpu c) => (c.Fcw >> 10) & 3;

    internal static F80 Read80(Cpu c, ulong la) => new(c.Read64(la), c.Read16(la + 8));

    internal static void Write80(Cpu c, ulong la, F80 v)
    {
        // Probe the last byte first so that a fault leaves memory untouched.
        c.Write16(la + 8, v.SE);
        c.Write64(la, v.M);
    }

    // ---------------- control ----------------

    private static void Fwait(Cpu c, ref Instruction i)
    {
        if ((c.Cr0 & (Cpu.Cr0MP | Cpu.Cr0TS)) == (Cpu.Cr0MP | Cpu.Cr0TS)) throw new CpuException(Vec.NM);
        if ((c.FswNoTop & Cpu.FswES) != 0 && (c.Cr0 & Cpu.Cr0NE) != 0) throw new CpuException(Vec.MF);
    }

    private static void WaitThenControl(Cpu c, ref Instruction i)
    {
        Fwait(c, ref i);
        switch (i.Code)
        {
            case Code.Finit: Fninit(c, ref i); break;
            case Code.Fclex: Fnclex(c, ref i); break;
            case Code.Fstsw_AX: FnstswAx(c, ref i); break;
            case Code.Fstsw_m2byte: FnstswM(c, ref i); break;
            case Code.Fstcw_m2byte: Fnstcw(c, ref i); break;
            default: X87Env.StoreEnvOrSave(c, ref i); break;
        }
    }

    private static void Fninit(Cpu c, ref Instruction i) { CheckNm(c); c.FpuInit(); }

    private static void Fnclex(Cpu c, ref Instruction i)
    {
        CheckNm(c);
        c.FswNoTop &= 0x7F00;
    }

    private static void FnstswAx(Cpu c, ref Instruction i)
    {
        CheckNm(c);
        c.Gpr[Cpu.RAX] = (c.Gpr[Cpu.RAX] & ~0xFFFFUL) | c.Fsw;
    }

    private static void FnstswM(Cpu c, ref Instruction i)
    {
        CheckNm(c);
        c.Write16(c.MemLinear(ref i, 2, true), c.Fsw);
    }

    private static void Fnstcw(Cpu c, ref Instruction i)
    {
        CheckNm(c);
        c.Write16(c.MemLinear(ref i, 2, true), c.Fcw);
    }

    private static void Fldcw(Cpu c, ref Instruction i)
    {
        CheckNm(c);
        c.Fcw = Cpu.FcwValue(c.Read16(c.MemLinear(ref i, 2, false)));
        c.FpuUpdateSummary();
    }

    private static void Fnop(Cpu c, ref Instruction i) => Begin(c);

    private static void Emms(Cpu c, ref Instruction i)
    {
        CheckNm(c);
        c.FpuTags = 0;
        c.FpuTop = 0; // as the host (AMD) does; MMX instructions set TOP=0 anyway
    }

    private static void Ffree(Cpu c, ref Instruction i)
    {
        Begin(c);
        c.StSetEmpty(i.Op0Register - Register.ST0);
        SetC1(c, false);
    }

    private static void Ffreep(Cpu c, ref Instruction i)
    {
        Begin(c);
        c.StSetEmpty(i.Op0Register - Register.ST0);
        c.FpuPop();
        SetC1(c, false); // as FFREE and FINCSTP (the host CPU clears it)
    }

    private static void Fincstp(Cpu c, ref Instruction i)
    {
        Begin(c);
        c.FpuTop = (c.FpuTop + 1) & 7;
        SetC1(c, false);
    }

    private static void Fdecstp(Cpu c, ref Instruction i)
    {
        Begin(c);
        c.FpuTop = (c.FpuTop - 1) & 7;
        SetC1(c, false);
    }

    // ---------------- loads ----------------

    private static void FldM32(Cpu c, ref Instruction i)
    {
        Begin(c);
        uint b = c.Read32(Mem(c, ref i, 4, false));
        F80 v = X87Float.FromSingle(b);
        if (!LoadChecks(c, ref v, (b & 0x7F80_0000) == 0 && (b & 0x7F_FFFF) != 0)) return;
        Push(c, v);
    }

    private static void FldM64(Cpu c, ref Instruction i)
    {
        Begin(c);
        ulong b = c.Read64(Mem(c, ref i, 8, false));
        F80 v = X87Float.FromDouble(BitConverter.UInt64BitsToDouble(b));
        if (!LoadChecks(c, ref v, (b & 0x7FF0_0000_0000_0000UL) == 0 && (b & 0xF_FFFF_FFFF_FFFFUL) != 0)) return;
        Push(c, v);
    }

    /// <summary>SNaN -> IE (quieted), denormal source -> DE. False when an unmasked exception aborts the load.</summary>
    private static bool LoadChecks(Cpu c, ref F80 v, bool denormal)
    {
        int f = 0;
        if (PushWouldOverflow(c)) return true; // the stack fault takes precedence
        if (v.IsSNaN) { f |= Cpu.FswIE; v = X87Float.Quiet(v); }
        if (denormal) f |= Cpu.FswDE;
        if (f != 0 && Signal(c, f)) return false;
        return true;
    }

    private static void FldM80(Cpu c, ref Instruction i)
    {
        Begin(c);
        Push(c, Read80(c, Mem(c, ref i, 10, false)));
    }

    private static void FldSti(Cpu c, ref Instruction i)
    {
        Begin(c);
        int k = i.Op0Register - Register.ST0;
        if (c.StEmpty(k))
        {
            // An empty source is a stack underflow (C1=0) even when the push would also overflow: the masked
            // response pushes the indefinite either way, and C1 reports the underflow (as the host CPU does).
            if (!Underflow(c)) return;
            Push(c, F80.Indefinite);
            SetC1(c, false);
            return;
        }
        Push(c, c.St(k));
    }

    private static void FildM16(Cpu c, ref Instruction i)
    {
        Begin(c);
        Push(c, X87Float.FromInt64((short)c.Read16(Mem(c, ref i, 2, false))));
    }

    private static void FildM32(Cpu c, ref Instruction i)
    {
        Begin(c);
        Push(c, X87Float.FromInt64((int)c.Read32(Mem(c, ref i, 4, false))));
    }

    private static void FildM64(Cpu c, ref Instruction i)
    {
        Begin(c);
        Push(c, X87Float.FromInt64((long)c.Read64(Mem(c, ref i, 8, false))));
    }

    private static void Fbld(Cpu c, ref Instruction i)
    {
        Begin(c);
        ulong la = Mem(c, ref i, 10, false);
        ulong lo = c.Read64(la);
        ushort hi = c.Read16(la + 8);
        // 18 BCD digits: bytes 0-8, most significant in byte 8; sign in bit 7 of byte 9. Invalid digits give
        // an undefined result on hardware; they are taken at face value here.
        ulong mag = 0;
        for (int d = 17; d >= 0; d--)
        {
            int nib = d < 16 ? (int)((lo >> (4 * d)) & 0xF) : (hi >> (4 * (d - 16))) & 0xF;
            mag = mag * 10 + (ulong)nib;
        }
        Push(c, X87Float.FromMagnitude((hi & 0x8000) != 0, mag));
    }

    // Constants with the extra rounding bit that makes them round per RC like hardware (Intel SDM 8.3.8):
    // the nearest value and whether the exact value lies above it (then UP rounds away) or below (DOWN/CHOP
    // round towards zero).
    private static void FldConst(Cpu c, ref Instruction i)
    {
        Begin(c);
        int rc = Rc(c);
        F80 v;
        switch (i.Code)
        {
            case Code.Fld1: v = F80.One; break;
            case Code.Fldz: v = F80.Zero; break;
            case Code.Fldl2t: v = new F80(rc == 2 ? 0xD49A784BCD1B8AFFUL : 0xD49A784BCD1B8AFEUL, 0x4000); break;
            case Code.Fldl2e: v = new F80(rc is 1 or 3 ? 0xB8AA3B295C17F0BBUL : 0xB8AA3B295C17F0BCUL, 0x3FFF); break;
            case Code.Fldpi: v = new F80(rc is 1 or 3 ? 0xC90FDAA22168C234UL : 0xC90FDAA22168C235UL, 0x4000); break;
            case Code.Fldlg2: v = new F80(rc is 1 or 3 ? 0x9A209A84FBCFF798UL : 0x9A209A84FBCFF799UL, 0x3FFD); break;
            default: v = new F80(rc is 1 or 3 ? 0xB17217F7D1CF79ABUL : 0xB17217F7D1CF79ACUL, 0x3FFE); break;
        }
        Push(c, v);
    }

    // ---------------- stores ----------------

    private static bool IsPop(Code code) => code is Code.Fstp_m32fp or Code.Fstp_m64fp or Code.Fstp_sti or
        Code.Fstp_sti_DFD0 or Code.Fstp_sti_DFD8 or Code.Fstpnce_sti or Code.Fistp_m16int or Code.Fistp_m32int or
        Code.Fistp_m64int or Code.Fisttp_m16int or Code.Fisttp_m32int or Code.Fisttp_m64int;

    private static void FstM32(Cpu c, ref Instruction i)
    {
        Begin(c);
        ulong la = Mem(c, ref i, 4, true);
        uint bits;
        if (c.StEmpty(0))
        {
            if (!Underflow(c)) return;
            bits = 0xFFC0_0000;
        }
        else
        {
            F80 v = c.St(0);
            int f = 0;
            bool up = false;
            if (v.IsUnsupported) { f = Cpu.FswIE; bits = 0xFFC0_0000; }
            else
            {
                if (v.IsSNaN) f = Cpu.FswIE; // a denormal source raises no DE here on the AMD reference host
                bits = X87Float.ToSingleBits(v, Rc(c), ref f, out up);
            }
            SetC1(c, up);
            if (f != 0 && Signal(c, f) && (f & (Cpu.FswIE | Cpu.FswDE)) != 0) return;
        }
        c.Write32(la, bits);
        if (i.Code == Code.Fstp_m32fp) c.FpuPop();
    }

    private static void FstM64(Cpu c, ref Instruction i)
    {
        Begin(c);
        ulong la = Mem(c, ref i, 8, true);
        ulong bits;
        if (c.StEmpty(0))
        {
            if (!Underflow(c)) return;
            bits = 0xFFF8_0000_0000_0000UL;
        }
        else
        {
            F80 v = c.St(0);
            int f = 0;
            bool up = false;
            if (v.IsUnsupported) { f = Cpu.FswIE; bits = 0xFFF8_0000_0000_0000UL; }
            else
            {
                if (v.IsSNaN) f = Cpu.FswIE; // a denormal source raises no DE here on the AMD reference host
                bits = X87Float.ToDoubleBits(v, Rc(c), ref f, out up);
            }
            SetC1(c, up);
            if (f != 0 && Signal(c, f) && (f & (Cpu.FswIE | Cpu.FswDE)) != 0) return;
        }
        c.Write64(la, bits);
        if (i.Code == Code.Fstp_m64fp) c.FpuPop();
    }

    private static void FstpM80(Cpu c, ref Instruction i)
    {
        Begin(c);
        ulong la = Mem(c, ref i, 10, true);
        F80 v;
        if (c.StEmpty(0))
        {
            // FSTPNCE (D9 D8+i, an undocumented alias of FSTP: "no check exception") does not report the underflow
            // of an empty ST(0): it stores nothing, clears C1 and pops, as the host CPU does.
            if (i.Code == Code.Fstpnce_sti) { SetC1(c, false); c.FpuPop(); return; }
            if (!Underflow(c)) return;
            v = F80.Indefinite;
        }
        else { v = c.St(0); SetC1(c, false); }
        Write80(c, la, v);
        c.FpuPop();
    }

    private static void FstSti(Cpu c, ref Instruction i)
    {
        Begin(c);
        int k = i.Op0Register - Register.ST0;
        F80 v;
        if (c.StEmpty(0))
        {
            // FSTPNCE (D9 D8+i, an undocumented alias of FSTP: "no check exception") does not report the underflow
            // of an empty ST(0): it stores nothing, clears C1 and pops, as the host CPU does.
            if (i.Code == Code.Fstpnce_sti) { SetC1(c, false); c.FpuPop(); return; }
            if (!Underflow(c)) return;
            v = F80.Indefinite;
        }
        else { v = c.St(0); SetC1(c, false); }
        c.St(k) = v;
        c.StSetValid(k);
        if (i.Code != Code.Fst_sti) c.FpuPop();
    }

    private static void Fist(Cpu c, ref Instruction i)
    {
        Begin(c);
        int size = Cpu.MemSize(ref i);
        ulong la = Mem(c, ref i, size, true);
        Code code = i.Code;
        bool trunc = code is Code.Fisttp_m16int or Code.Fisttp_m32int or Code.Fisttp_m64int;
        ulong indefinite = 1UL << (size * 8 - 1);
        ulong result;
        if (c.StEmpty(0))
        {
            if (!Underflow(c)) return;
            result = indefinite;
        }
        else
        {
            F80 v = c.St(0);
            int f = 0;
            result = indefinite;
            bool up = false;
            if (v.Exp == 0x7FFF || v.IsUnsupported) f = Cpu.FswIE;
            else
            {
                if (X87Float.RoundToInteger(v, trunc ? 3 : Rc(c), out ulong mag, out bool inexact, out up) &&
                    (v.Sign ? mag <= indefinite : mag < indefinite))
                {
                    result = (v.Sign ? 0 - mag : mag) & Cpu.SizeMask(size);
                    if (inexact) f |= Cpu.FswPE;
                }
                else { f = Cpu.FswIE; up = false; }
            }
            SetC1(c, up);
            if (f != 0 && Signal(c, f) && (f & (Cpu.FswIE | Cpu.FswDE)) != 0) return;
        }
        c.WriteLinear(la, size, result);
        if (IsPop(code)) c.FpuPop();
    }

    private static void Fbstp(Cpu c, ref Instruction i)
    {
        Begin(c);
        ulong la = Mem(c, ref i, 10, true);
        ulong lo = 0xC000_0000_0000_0000UL; // packed BCD indefinite: FFFF C000000000000000
        ushort hi = 0xFFFF;
        bool ok = true;
        if (c.StEmpty(0)) ok = false;
        if (!ok)
        {
            if (!Underflow(c)) return;
        }
        else
        {
            F80 v = c.St(0);
            int f = 0;
            bool up = false;
            if (v.Exp == 0x7FFF || v.IsUnsupported) f = Cpu.FswIE;
            else if (X87Float.RoundToInteger(v, Rc(c), out ulong mag, out bool inexact, out up) && mag < 1_000_000_000_000_000_000UL)
            {
                if (inexact) f |= Cpu.FswPE;
                lo = 0;
                hi = (ushort)(v.Sign ? 0x8000 : 0);
                for (int d = 0; d < 18; d++)
                {
                    ulong nib = mag % 10;
                    mag /= 10;
                    if (d < 16) lo |= nib << (4 * d); else hi |= (ushort)(nib << (4 * (d - 16)));
                }
            }
            else { f = Cpu.FswIE; up = false; }
            SetC1(c, up);
            if (f != 0 && Signal(c, f) && (f & (Cpu.FswIE | Cpu.FswDE)) != 0) return;
        }
        c.Write16(la + 8, hi);
        c.Write64(la, lo);
        c.FpuPop();
    }

    // ---------------- register moves ----------------

    private static void Fxch(Cpu c, ref Instruction i)
    {
        Begin(c);
        int k = i.Op1Register - Register.ST0;
        bool e0 = c.StEmpty(0), ek = c.StEmpty(k);
        if (e0 || ek)
        {
            if (!Underflow(c)) return;
            if (e0) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            if (ek) { c.St(k) = F80.Indefinite; c.StSetValid(k); }
        }
        else SetC1(c, false);
        (c.St(0), c.St(k)) = (c.St(k), c.St(0));
    }

    private static void Fchs(Cpu c, ref Instruction i)
    {
        Begin(c);
        if (c.StEmpty(0))
        {
            if (Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        SetC1(c, false);
        c.St(0).SE ^= 0x8000;
    }

    private static void Fabs(Cpu c, ref Instruction i)
    {
        Begin(c);
        if (c.StEmpty(0))
        {
            if (Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        SetC1(c, false);
        c.St(0).SE &= 0x7FFF;
    }

    private static void Fcmov(Cpu c, ref Instruction i)
    {
        Begin(c);
        int k = i.Op1Register - Register.ST0;
        if (c.StEmpty(0) || c.StEmpty(k))
        {
            if (Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        bool cond = i.Code switch
        {
            Code.Fcmovb_st0_sti => c.GetCF(),
            Code.Fcmove_st0_sti => c.GetZF(),
            Code.Fcmovbe_st0_sti => c.GetCF() || c.GetZF(),
            Code.Fcmovu_st0_sti => c.GetPF(),
            Code.Fcmovnb_st0_sti => !c.GetCF(),
            Code.Fcmovne_st0_sti => !c.GetZF(),
            Code.Fcmovnbe_st0_sti => !c.GetCF() && !c.GetZF(),
            _ => !c.GetPF(),
        };
        if (cond) c.St(0) = c.St(k);
    }
}
