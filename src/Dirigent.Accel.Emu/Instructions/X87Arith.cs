using System.Numerics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>x87 arithmetic and comparisons. The precision model is described at the top of <see cref="X87"/>.</summary>
internal static unsafe class X87Arith
{
    private const int OpAdd = 0, OpMul = 1, OpSub = 2, OpSubr = 3, OpDiv = 4, OpDivr = 5;
    private static readonly byte[] s_op = BuildOps();

    private static byte[] BuildOps()
    {
        var t = new byte[Enum.GetValues<Code>().Length];
        foreach (Code code in Enum.GetValues<Code>())
        {
            t[(int)code] = code.Mnemonic() switch
            {
                Mnemonic.Fadd or Mnemonic.Faddp or Mnemonic.Fiadd => OpAdd,
                Mnemonic.Fmul or Mnemonic.Fmulp or Mnemonic.Fimul => OpMul,
                Mnemonic.Fsub or Mnemonic.Fsubp or Mnemonic.Fisub => OpSub,
                Mnemonic.Fsubr or Mnemonic.Fsubrp or Mnemonic.Fisubr => OpSubr,
                Mnemonic.Fdiv or Mnemonic.Fdivp or Mnemonic.Fidiv => OpDiv,
                Mnemonic.Fdivr or Mnemonic.Fdivrp or Mnemonic.Fidivr => OpDivr,
                _ => 0,
            };
        }
        return t;
    }

    public static void Install(HandlerRegistry r)
    {
        r.Add(&ArithM32, Code.Fadd_m32fp, Code.Fmul_m32fp, Code.Fsub_m32fp, Code.Fsubr_m32fp, Code.Fdiv_m32fp, Code.Fdivr_m32fp);
        r.Add(&ArithM64, Code.Fadd_m64fp, Code.Fmul_m64fp, Code.Fsub_m64fp, Code.Fsubr_m64fp, Code.Fdiv_m64fp, Code.Fdivr_m64fp);
        r.Add(&ArithI16, Code.Fiadd_m16int, Code.Fimul_m16int, Code.Fisub_m16int, Code.Fisubr_m16int, Code.Fidiv_m16int, Code.Fidivr_m16int);
        r.Add(&ArithI32, Code.Fiadd_m32int, Code.Fimul_m32int, Code.Fisub_m32int, Code.Fisubr_m32int, Code.Fidiv_m32int, Code.Fidivr_m32int);
        r.Add(&ArithSt0Sti, Code.Fadd_st0_sti, Code.Fmul_st0_sti, Code.Fsub_st0_sti, Code.Fsubr_st0_sti, Code.Fdiv_st0_sti, Code.Fdivr_st0_sti);
        r.Add(&ArithStiSt0, Code.Fadd_sti_st0, Code.Fmul_sti_st0, Code.Fsub_sti_st0, Code.Fsubr_sti_st0, Code.Fdiv_sti_st0, Code.Fdivr_sti_st0,
            Code.Faddp_sti_st0, Code.Fmulp_sti_st0, Code.Fsubp_sti_st0, Code.Fsubrp_sti_st0, Code.Fdivp_sti_st0, Code.Fdivrp_sti_st0);

        r.Add(&FcomM32, Code.Fcom_m32fp, Code.Fcomp_m32fp);
        r.Add(&FcomM64, Code.Fcom_m64fp, Code.Fcomp_m64fp);
        r.Add(&FicomM16, Code.Ficom_m16int, Code.Ficomp_m16int);
        r.Add(&FicomM32, Code.Ficom_m32int, Code.Ficomp_m32int);
        r.Add(&FcomSti, Code.Fcom_st0_sti, Code.Fcomp_st0_sti, Code.Fcom_st0_sti_DCD0, Code.Fcomp_st0_sti_DCD8,
            Code.Fcomp_st0_sti_DED0, Code.Fucom_st0_sti, Code.Fucomp_st0_sti, Code.Fcompp, Code.Fucompp);
        r.Add(&Fcomi, Code.Fcomi_st0_sti, Code.Fcomip_st0_sti, Code.Fucomi_st0_sti, Code.Fucomip_st0_sti);
        r.Add(&Ftst, Code.Ftst);
        r.Add(&Fxam, Code.Fxam);

        r.Add(&Fsqrt, Code.Fsqrt);
        r.Add(&Frndint, Code.Frndint);
        r.Add(&Fscale, Code.Fscale);
        r.Add(&Fxtract, Code.Fxtract);
        r.Add(&Fprem, Code.Fprem, Code.Fprem1);
        X87Transcendental.Install(r);
    }

    // ---------------- the arithmetic core ----------------

    /// <summary>
    /// dest op src for op in Add/Mul/Sub/Subr/Div/Divr, with x87 special cases, exception flags and C1.
    /// Returns false when an unmasked IE/ZE/DE means the destination must stay unchanged.
    /// </summary>
    private static bool Arith(Cpu c, int op, F80 a, F80 b, out F80 result, int f = 0)
    {
        if (op == OpSubr) { (a, b) = (b, a); op = OpSub; }
        else if (op == OpDivr) { (a, b) = (b, a); op = OpDiv; }
        X87.SetC1(c, false);
        if (a.IsUnsupported || b.IsUnsupported) { result = F80.Indefinite; return !X87.Signal(c, Cpu.FswIE); }
        if (a.IsNaN || b.IsNaN)
        {
            result = X87Float.PropagateNaN(a, b);
            return !(a.IsSNaN || b.IsSNaN) || !X87.Signal(c, Cpu.FswIE);
        }
        if (a.IsDenormal || b.IsDenormal) f |= Cpu.FswDE;
        int rc = X87.Rc(c), p = X87SoftFloat.Precision(c.Fcw);
        bool up;
        switch (op)
        {
            case OpAdd: result = X87SoftFloat.Add(a, b, rc, p, ref f, out up); break;
            case OpSub: result = X87SoftFloat.Add(a, new F80(b.M, (ushort)(b.SE ^ 0x8000)), rc, p, ref f, out up); break;
            case OpMul: result = X87SoftFloat.Mul(a, b, rc, p, ref f, out up); break;
            default:
                result = X87SoftFloat.Div(a, b, rc, p, ref f, out up);
                if ((f & Cpu.FswZE) != 0) f &= ~Cpu.FswDE; // the host reports only ZE for x/0 with a denormal x
                break;
        }
        return Complete(c, f, up);
    }

    /// <summary>Sets C1 and raises the flags; false when an unmasked IE/ZE/DE leaves the destination unchanged.</summary>
    private static bool Complete(Cpu c, int f, bool up)
    {
        X87.SetC1(c, up);
        if (f == 0) return true;
        return !X87.Signal(c, f) || (f & (Cpu.FswIE | Cpu.FswZE | Cpu.FswDE)) == 0;
    }

    private static void ToSt0(Cpu c, ref Instruction i, F80 src, bool srcDenormal = false)
    {
        if (c.StEmpty(0))
        {
            if (X87.Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        // A binary32/64 denormal is normal as an 80-bit value: report it here, after the stack check, as hardware.
        if (Arith(c, s_op[(int)i.Code], c.St(0), src, out F80 r, srcDenormal ? Cpu.FswDE : 0)) c.St(0) = r;
    }

    private static void ArithM32(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        uint b = c.Read32(X87.Mem(c, ref i, 4, false));
        F80 v = X87Float.FromSingle(b);
        ToSt0(c, ref i, v, IsDenormal32(b));
    }

    private static void ArithM64(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        ulong b = c.Read64(X87.Mem(c, ref i, 8, false));
        ToSt0(c, ref i, X87Float.FromDouble(BitConverter.UInt64BitsToDouble(b)), IsDenormal64(b));
    }

    private static void ArithI16(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        ToSt0(c, ref i, X87Float.FromInt64((short)c.Read16(X87.Mem(c, ref i, 2, false))));
    }

    private static void ArithI32(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        ToSt0(c, ref i, X87Float.FromInt64((int)c.Read32(X87.Mem(c, ref i, 4, false))));
    }

    private static void ArithSt0Sti(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        int k = i.Op1Register - Register.ST0;
        if (c.StEmpty(k))
        {
            if (X87.Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        ToSt0(c, ref i, c.St(k));
    }

    private static void ArithStiSt0(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        int k = i.Op0Register - Register.ST0;
        bool pop = i.Mnemonic is Mnemonic.Faddp or Mnemonic.Fmulp or Mnemonic.Fsubp or Mnemonic.Fsubrp or Mnemonic.Fdivp or Mnemonic.Fdivrp;
        if (c.StEmpty(0) || c.StEmpty(k))
        {
            if (!X87.Underflow(c)) return;
            c.St(k) = F80.Indefinite;
            c.StSetValid(k);
        }
        else if (!Arith(c, s_op[(int)i.Code], c.St(k), c.St(0), out F80 r)) return;
        else c.St(k) = r;
        if (pop) c.FpuPop();
    }

    // ---------------- comparisons ----------------

    /// <summary>Compares a with b: 0 greater, 1 less, 4 equal, 7 unordered (as C3 C2 C0 bits: C3=4, C2=2, C0=1).
    /// quiet: FUCOM-style (only SNaNs raise IE). Returns -1 when an unmasked exception suppresses the result.</summary>
    private static int Compare(Cpu c, F80 a, F80 b, bool quiet)
    {
        if (a.IsUnsupported || b.IsUnsupported || a.IsNaN || b.IsNaN)
        {
            bool ie = a.IsUnsupported || b.IsUnsupported || !quiet || a.IsSNaN || b.IsSNaN;
            if (ie && X87.Signal(c, Cpu.FswIE)) return -1;
            return 7;
        }
        if ((a.IsDenormal || b.IsDenormal) && X87.Signal(c, Cpu.FswDE)) return -1;
        int r = X87Float.Compare(a, b);
        return r > 0 ? 0 : r < 0 ? 1 : 4;
    }

    private static void SetCompareCc(Cpu c, int res) => X87.SetCc(c, (res & 4) << 1 | (res & 2) << 1 | (res & 1));

    internal static bool IsDenormal32(uint b) => (b & 0x7F80_0000) == 0 && (b & 0x7F_FFFF) != 0;
    internal static bool IsDenormal64(ulong b) => (b & 0x7FF0_0000_0000_0000UL) == 0 && (b & 0xF_FFFF_FFFF_FFFFUL) != 0;

    private static void CompareSt0(Cpu c, F80 src, bool quiet, int pops, bool srcDenormal = false)
    {
        if (c.StEmpty(0))
        {
            if (!X87.Underflow(c)) return;
            SetCompareCc(c, 7);
        }
        else
        {
            if (srcDenormal && !c.St(0).IsNaN && !c.St(0).IsUnsupported && X87.Signal(c, Cpu.FswDE)) return;
            int res = Compare(c, c.St(0), src, quiet);
            if (res < 0) return;
            SetCompareCc(c, res);
        }
        for (int k = 0; k < pops; k++) c.FpuPop();
    }

    private static void FcomM32(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        uint b = c.Read32(X87.Mem(c, ref i, 4, false));
        CompareSt0(c, X87Float.FromSingle(b), false, i.Code == Code.Fcomp_m32fp ? 1 : 0, IsDenormal32(b));
    }

    private static void FcomM64(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        ulong b = c.Read64(X87.Mem(c, ref i, 8, false));
        CompareSt0(c, X87Float.FromDouble(BitConverter.UInt64BitsToDouble(b)), false, i.Code == Code.Fcomp_m64fp ? 1 : 0, IsDenormal64(b));
    }

    private static void FicomM16(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        short v = (short)c.Read16(X87.Mem(c, ref i, 2, false));
        CompareSt0(c, X87Float.FromInt64(v), false, i.Code == Code.Ficomp_m16int ? 1 : 0);
    }

    private static void FicomM32(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        int v = (int)c.Read32(X87.Mem(c, ref i, 4, false));
        CompareSt0(c, X87Float.FromInt64(v), false, i.Code == Code.Ficomp_m32int ? 1 : 0);
    }

    private static void FcomSti(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        Code code = i.Code;
        int k = code is Code.Fcompp or Code.Fucompp ? 1 : i.Op1Register - Register.ST0;
        bool quiet = code is Code.Fucom_st0_sti or Code.Fucomp_st0_sti or Code.Fucompp;
        int pops = code is Code.Fcompp or Code.Fucompp ? 2 :
            code is Code.Fcom_st0_sti or Code.Fucom_st0_sti or Code.Fcom_st0_sti_DCD0 ? 0 : 1;
        if (c.StEmpty(k))
        {
            if (!X87.Underflow(c)) return;
            SetCompareCc(c, 7);
            for (int n = 0; n < pops; n++) c.FpuPop();
            return;
        }
        CompareSt0(c, c.St(k), quiet, pops);
    }

    private static void Fcomi(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        Code code = i.Code;
        int k = i.Op1Register - Register.ST0;
        bool quiet = code is Code.Fucomi_st0_sti or Code.Fucomip_st0_sti;
        bool pop = code is Code.Fcomip_st0_sti or Code.Fucomip_st0_sti;
        int res;
        if (c.StEmpty(0) || c.StEmpty(k))
        {
            if (!X87.Underflow(c)) return;
            res = 7;
        }
        else
        {
            res = Compare(c, c.St(0), c.St(k), quiet);
            if (res < 0) return;
        }
        ulong fl = 0;
        if ((res & 4) != 0) fl |= Cpu.ZF;
        if ((res & 2) != 0) fl |= Cpu.PF;
        if ((res & 1) != 0) fl |= Cpu.CF;
        c.SetArithFlags(fl);
        if (pop) c.FpuPop();
    }

    private static void Ftst(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        CompareSt0(c, F80.Zero, false, 0);
    }

    private static void Fxam(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        F80 v = c.St(0);
        int c1 = v.Sign ? 2 : 0;
        int cls; // C3 C2 C0 as bits 3, 2, 0
        if (c.StEmpty(0)) cls = 0b1001;
        else if (v.IsUnsupported) cls = 0;
        else if (v.IsNaN) cls = 0b0001;
        else if (v.IsInf) cls = 0b0101;
        else if (v.IsZero) cls = 0b1000;
        else if (v.IsDenormal) cls = 0b1100;
        else cls = 0b0100;
        X87.SetCc(c, cls | c1);
    }

    // ---------------- single-operand arithmetic ----------------

    /// <summary>Common prologue of ST0 operations: false when the instruction is done (empty or NaN handled).</summary>
    internal static bool St0Operand(Cpu c, out F80 v)
    {
        if (c.StEmpty(0))
        {
            v = default;
            if (X87.Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return false;
        }
        v = c.St(0);
        if (v.IsUnsupported || v.IsNaN) X87.SetC1(c, false);
        if (v.IsUnsupported)
        {
            if (!X87.Signal(c, Cpu.FswIE)) c.St(0) = F80.Indefinite;
            return false;
        }
        if (v.IsNaN)
        {
            if (!v.IsSNaN || !X87.Signal(c, Cpu.FswIE)) c.St(0) = X87Float.Quiet(v);
            return false;
        }
        return true;
    }

    private static void Fsqrt(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        if (!St0Operand(c, out F80 v)) return;
        X87.SetC1(c, false);
        if (v.IsZero) return;
        if (v.Sign)
        {
            if (!X87.Signal(c, Cpu.FswIE)) c.St(0) = F80.Indefinite;
            return;
        }
        int f = v.IsDenormal ? Cpu.FswDE : 0;
        F80 res = X87SoftFloat.Sqrt(v, X87.Rc(c), X87SoftFloat.Precision(c.Fcw), ref f, out bool up);
        if (Complete(c, f, up)) c.St(0) = res;
    }

    private static void Frndint(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        if (!St0Operand(c, out F80 v)) return;
        X87.SetC1(c, false);
        if (v.IsZero || v.IsInf) return;
        int f = v.IsDenormal ? Cpu.FswDE : 0;
        if (!X87Float.RoundToInteger(v, X87.Rc(c), out ulong mag, out bool inexact, out bool up)) return; // already integral
        if (inexact) f |= Cpu.FswPE;
        X87.SetC1(c, up);
        if (f != 0 && X87.Signal(c, f) && (f & Cpu.FswDE) != 0) return;
        X87Float.Normalize(v, out int e, out _);
        if (e >= 63) return;
        c.St(0) = X87Float.FromMagnitude(v.Sign, mag);
    }

    private static void Fscale(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        if (c.StEmpty(0) || c.StEmpty(1))
        {
            if (X87.Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        F80 a = c.St(0), b = c.St(1);
        X87.SetC1(c, false);
        if (a.IsUnsupported || b.IsUnsupported) { if (!X87.Signal(c, Cpu.FswIE)) c.St(0) = F80.Indefinite; return; }
        if (a.IsNaN || b.IsNaN)
        {
            if (!((a.IsSNaN || b.IsSNaN) && X87.Signal(c, Cpu.FswIE))) c.St(0) = X87Float.PropagateNaN(a, b);
            return;
        }
        if (b.IsInf)
        {
            if (a.IsDenormal && X87.Signal(c, Cpu.FswDE)) return;
            if ((a.IsZero && !b.Sign) || (a.IsInf && b.Sign)) { if (!X87.Signal(c, Cpu.FswIE)) c.St(0) = F80.Indefinite; return; }
            if (a.IsZero || a.IsInf) return;
            c.St(0) = b.Sign ? new F80(0, (ushort)(a.SE & 0x8000)) : new F80(X87Float.IntBit, (ushort)((a.SE & 0x8000) | 0x7FFF));
            return;
        }
        int f = a.IsDenormal || b.IsDenormal ? Cpu.FswDE : 0;
        if (a.IsZero || a.IsInf)
        {
            if (f != 0) X87.Signal(c, f);
            return;
        }
        // Truncate ST1 to an integer; anything beyond +-2^20 saturates the exponent either way.
        long n;
        if (b.IsZero) n = 0;
        else
        {
            X87Float.Normalize(b, out int eb, out ulong mb);
            n = eb < 0 ? 0 : eb > 20 ? 1 << 21 : (long)(mb >> (63 - eb));
            if (b.Sign) n = -n;
        }
        X87Float.Normalize(a, out int ea, out ulong ma);
        long ne = ea + n;
        if (ne + X87Float.Bias >= 0x7FFF)
        {
            // Overflow: infinity or the largest finite value, per RC (C1: rounded up to infinity).
            int rc = X87.Rc(c);
            bool toInf = rc switch { 0 => true, 1 => a.Sign, 2 => !a.Sign, _ => false };
            X87.SetC1(c, toInf);
            if (X87.Signal(c, f | Cpu.FswOE | Cpu.FswPE) && (f & Cpu.FswDE) != 0) return;
            c.St(0) = toInf ? new F80(X87Float.IntBit, (ushort)((a.SE & 0x8000) | 0x7FFF)) : new F80(ulong.MaxValue, (ushort)((a.SE & 0x8000) | 0x7FFE));
            return;
        }
        if (ne + X87Float.Bias <= 0)
        {
            // Denormal result, rounded per RC (C1: rounded up).
            int fl = 0;
            ulong keep = X87Float.RoundToFormat(a.Sign, (int)Math.Max(ne, -100000), ma, X87.Rc(c), 64, 1 - X87Float.Bias, X87Float.Bias, ref fl, out bool up);
            X87.SetC1(c, up);
            if (X87.Signal(c, f | fl) && (f & Cpu.FswDE) != 0) return;
            c.St(0) = new F80(keep, (ushort)((a.SE & 0x8000) | (int)(keep >> 63)));
            return;
        }
        if (f != 0 && X87.Signal(c, f) && (f & Cpu.FswDE) != 0) return;
        c.St(0) = X87Float.Pack(a.Sign, (int)Math.Clamp(ne, -100000, 100000), ma);
    }

    private static void Fxtract(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        if (X87.PushWouldOverflow(c))
        {
            X87.SetC1(c, true);
            if (!X87.Signal(c, Cpu.FswIE | Cpu.FswSF)) { c.St(0) = F80.Indefinite; X87.Push(c, F80.Indefinite); X87.SetC1(c, true); }
            return;
        }
        if (!St0Operand(c, out F80 v))
        {
            if (!c.StEmpty(0)) { F80 q = c.St(0); X87.Push(c, q); }
            return;
        }
        F80 expo, sig;
        if (v.IsZero)
        {
            if (X87.Signal(c, Cpu.FswZE)) return;
            expo = new F80(X87Float.IntBit, 0xFFFF);
            sig = v;
        }
        else if (v.IsInf) { expo = new F80(X87Float.IntBit, 0x7FFF); sig = v; }
        else
        {
            if (v.IsDenormal && X87.Signal(c, Cpu.FswDE)) return;
            X87Float.Normalize(v, out int e, out ulong m);
            expo = X87Float.FromInt64(e);
            sig = new F80(m, (ushort)((v.SE & 0x8000) | X87Float.Bias));
        }
        c.St(0) = expo;
        X87.Push(c, sig);
    }

    private static void Fprem(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        bool ieee = i.Code == Code.Fprem1;
        c.FswNoTop &= unchecked((ushort)~(Cpu.FswC1 | Cpu.FswC2));
        if (c.StEmpty(0) || c.StEmpty(1))
        {
            if (X87.Underflow(c)) { c.St(0) = F80.Indefinite; c.StSetValid(0); }
            return;
        }
        F80 a = c.St(0), b = c.St(1);
        c.FswNoTop &= unchecked((ushort)~(Cpu.FswC1 | Cpu.FswC2));
        if (a.IsUnsupported || b.IsUnsupported) { if (!X87.Signal(c, Cpu.FswIE)) c.St(0) = F80.Indefinite; return; }
        if (a.IsNaN || b.IsNaN)
        {
            if (!((a.IsSNaN || b.IsSNaN) && X87.Signal(c, Cpu.FswIE))) c.St(0) = X87Float.PropagateNaN(a, b);
            return;
        }
        if (a.IsInf || b.IsZero) { if (!X87.Signal(c, Cpu.FswIE)) c.St(0) = F80.Indefinite; return; }
        if ((a.IsDenormal || b.IsDenormal) && X87.Signal(c, Cpu.FswDE)) return;
        if (a.IsZero || b.IsInf)
        {
            X87.SetCc(c, 0);
            if (a.IsDenormal && (a.M >> 63) != 0) c.St(0) = new F80(a.M, (ushort)(a.SE | 1)); // pseudo-denormal: normal encoding
            return;
        }
        X87Float.Normalize(a, out int ea, out ulong ma);
        X87Float.Normalize(b, out int eb, out ulong mb);
        int d = ea - eb;
        bool sign = a.Sign;
        if (d >= 64)
        {
            // Partial remainder: reduce the exponent difference by N in [32, 63] (as Bochs/Intel: 32 + (D mod 32)),
            // always truncating; software loops until C2 clears.
            int n = 32 + (d & 31);
            UInt128 pr = Divide(ma, mb, n, out _);
            c.St(0) = PackWide(sign, eb + (d - n), pr);
            X87.SetCc(c, 0b0100); // incomplete: C2=1; the host (AMD) clears C0, C1 and C3
            return;
        }
        ulong q;
        UInt128 r;
        int re = eb; // result = r * 2^(re - 63)
        if (d < 0)
        {
            q = 0;
            r = ma;
            re = ea;
            if (ieee && d == -1 && ma > mb)
            {
                // |a| > |b|/2: the nearest quotient is 1. In units of 2^(ea-63): b = 2*mb.
                r = (UInt128)mb * 2 - ma;
                q = 1;
                sign = !sign;
            }
        }
        else
        {
            r = Divide(ma, mb, d, out q);
            if (ieee)
            {
                UInt128 twice = r * 2;
                if (twice > mb || (twice == mb && (q & 1) != 0)) { r = mb - r; q++; sign = !sign; }
            }
        }
        c.St(0) = PackWide(sign, re, r);
        if (r == 0) c.St(0) = new F80(0, (ushort)(a.SE & 0x8000));
        X87.SetCc(c, (int)(((q >> 1) & 1) << 3 | (q & 1) << 1 | ((q >> 2) & 1)));
    }

    /// <summary>ma*2^d mod mb by restoring division (ma, mb normalized); q gets the low quotient bits.</summary>
    private static UInt128 Divide(ulong ma, ulong mb, int d, out ulong q)
    {
        UInt128 r = ma;
        q = 0;
        if (r >= mb) { r -= mb; q = 1; }
        for (int k = 0; k < d; k++)
        {
            r <<= 1;
            q <<= 1;
            if (r >= mb) { r -= mb; q |= 1; }
        }
        return r;
    }

    /// <summary>Exact value r * 2^(e - 63) for r below 2^65.</summary>
    private static F80 PackWide(bool sign, int e, UInt128 r)
    {
        if (r == 0) return new F80(0, (ushort)(sign ? 0x8000 : 0));
        ulong hi = (ulong)(r >> 64);
        if (hi != 0)
        {
            // Not reached (remainders are below the 64-bit divisor); kept total for any input.
            int extra = 64 - BitOperations.LeadingZeroCount(hi);
            return X87Float.Pack(sign, e + extra, (ulong)(r >> extra));
        }
        ulong lo = (ulong)r;
        int lz = BitOperations.LeadingZeroCount(lo);
        return X87Float.Pack(sign, e - lz, lo << lz);
    }
}
