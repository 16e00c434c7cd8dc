using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X, FYL2XP1: computed with the host's binary64 math library
/// (results have double precision, not the 64-bit precision of hardware; PE is set for every inexact-looking
/// result). Operand range checks (|x| &lt; 2^63 for the trigonometric ones, C2) follow the SDM.
/// </summary>
internal static unsafe class X87Transcendental
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Trig, Code.Fsin, Code.Fcos, Code.Fptan, Code.Fsincos);
        r.Add(&F2xm1, Code.F2xm1);
        r.Add(&Binary, Code.Fpatan, Code.Fyl2x, Code.Fyl2xp1);
    }

    private static void Trig(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        Code code = i.Code;
        bool pushes = code is Code.Fptan or Code.Fsincos;
        // C2 reports only an out-of-range operand: every other outcome (stack faults included) clears it.
        c.FswNoTop &= unchecked((ushort)~Cpu.FswC2);
        if (pushes && X87.PushWouldOverflow(c) && !c.StEmpty(0))
        {
            X87.SetC1(c, true);
            if (!X87.Signal(c, Cpu.FswIE | Cpu.FswSF)) { c.St(0) = F80.Indefinite; X87.Push(c, F80.Indefinite); X87.SetC1(c, true); }
            return;
        }
        if (!X87Arith.St0Operand(c, out F80 v))
        {
            if (pushes && !c.StEmpty(0)) { F80 q = c.St(0); X87.Push(c, q); }
            return;
        }
        X87.SetC1(c, false);
        if (v.IsInf)
        {
            if (X87.Signal(c, Cpu.FswIE)) return;
            c.St(0) = F80.Indefinite;
            if (pushes) X87.Push(c, F80.Indefinite);
            return;
        }
        X87Float.Normalize(v, out int e, out _);
        if (!v.IsZero && e >= 63)
        {
            c.FswNoTop |= Cpu.FswC2; // out of range: operand unchanged, software reduces it
            return;
        }
        c.FswNoTop &= unchecked((ushort)~Cpu.FswC2);
        if (v.IsDenormal && X87.Signal(c, Cpu.FswDE)) return;
        double x = X87Float.ToDouble(v);
        if (!v.IsZero || code is Code.Fcos or Code.Fsincos) X87.Signal(c, Cpu.FswPE);
        switch (code)
        {
            case Code.Fsin: c.St(0) = v.IsZero ? v : X87Float.FromDouble(Math.Sin(x)); break;
            case Code.Fcos: c.St(0) = X87Float.FromDouble(Math.Cos(x)); break;
            case Code.Fptan:
                c.St(0) = v.IsZero ? v : X87Float.FromDouble(Math.Tan(x));
                X87.Push(c, F80.One);
                break;
            default:
                c.St(0) = v.IsZero ? v : X87Float.FromDouble(Math.Sin(x));
                X87.Push(c, X87Float.FromDouble(Math.Cos(x)));
                break;
        }
    }

    private static void F2xm1(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        if (!X87Arith.St0Operand(c, out F80 v)) return;
        X87.SetC1(c, false);
        if (v.IsZero) return;
        if (v.IsInf) { c.St(0) = v.Sign ? new F80(X87Float.IntBit, 0xBFFF) : v; return; }
        if (v.IsDenormal && X87.Signal(c, Cpu.FswDE)) return;
        X87.Signal(c, Cpu.FswPE);
        double x = X87Float.ToDouble(v);
        // Defined for -1 <= x <= 1; outside, hardware results are undefined: extend the function naturally.
        c.St(0) = X87Float.FromDouble(ExpM1(x * Math.Log(2)));
    }

    /// <summary>e^y - 1 without cancellation for small y (Kahan's trick).</summary>
    private static double ExpM1(double y)
    {
        double u = Math.Exp(y);
        if (u == 1.0) return y;
        double um1 = u - 1.0;
        if (um1 == -1.0) return -1.0;
        return double.IsInfinity(u) ? u : um1 * y / Math.Log(u);
    }

    /// <summary>ln(1 + x) without cancellation for small x (Kahan's trick).</summary>
    private static double Log1P(double x)
    {
        double u = 1.0 + x;
        if (u == 1.0) return x;
        return Math.Log(u) * x / (u - 1.0);
    }

    private static void Binary(Cpu c, ref Instruction i)
    {
        X87.Begin(c);
        if (c.StEmpty(0) || c.StEmpty(1))
        {
            if (X87.Underflow(c)) { c.St(1) = F80.Indefinite; c.StSetValid(1); c.FpuPop(); }
            return;
        }
        F80 a = c.St(0), b = c.St(1);
        X87.SetC1(c, false);
        F80 res;
        if (a.IsUnsupported || b.IsUnsupported)
        {
            if (X87.Signal(c, Cpu.FswIE)) return;
            res = F80.Indefinite;
        }
        else if (a.IsNaN || b.IsNaN)
        {
            if ((a.IsSNaN || b.IsSNaN) && X87.Signal(c, Cpu.FswIE)) return;
            res = X87Float.PropagateNaN(a, b);
        }
        else
        {
            if ((a.IsDenormal || b.IsDenormal) && X87.Signal(c, Cpu.FswDE)) return;
            double x = X87Float.ToDouble(a), y = X87Float.ToDouble(b);
            double r;
            int f = 0;
            switch (i.Code)
            {
                case Code.Fpatan:
                    r = Math.Atan2(y, x);
                    break;
                case Code.Fyl2x:
                    if (x < 0 || (x == 0 && y == 0) || (x == 1 && double.IsInfinity(y)) || (double.IsPositiveInfinity(x) && y == 0)) { f = Cpu.FswIE; r = double.NaN; }
                    else
                    {
                        if (x == 0 && !double.IsInfinity(y)) f = Cpu.FswZE;
                        r = y * Math.Log2(x);
                        if (x == 0) r = double.IsNegative(y) ? double.PositiveInfinity : double.NegativeInfinity;
                    }
                    break;
                default:
                    // Defined for |x| < 1 - sqrt(2)/2; outside, extend naturally.
                    if (x <= -1 || (x == 0 && double.IsInfinity(y))) { f = Cpu.FswIE; r = double.NaN; }
                    else r = y * (Log1P(x) / Math.Log(2));
                    break;
            }
            if (double.IsNaN(r)) f |= Cpu.FswIE;
            else if (r != 0 && !double.IsInfinity(r)) f |= Cpu.FswPE;
            if (f != 0 && X87.Signal(c, f) && (f & (Cpu.FswIE | Cpu.FswZE)) != 0) return;
            res = double.IsNaN(r) ? F80.Indefinite : X87Float.FromDouble(r);
        }
        c.St(1) = res;
        c.FpuPop();
    }
}
