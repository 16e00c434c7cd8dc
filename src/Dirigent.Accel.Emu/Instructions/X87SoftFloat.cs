using System.Numerics;
using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// Correctly rounded 80-bit add, subtract, multiply, divide and square root with a 128-bit working significand,
/// honouring precision control (24/53/64 bits) and rounding control like the hardware. Operands are non-NaN and
/// supported (the caller handles NaNs, unsupported encodings and the DE flag).
/// </summary>
internal static class X87SoftFloat
{
    private const int Bias = X87Float.Bias, Emin = 1 - Bias, Emax = Bias;

    public static int Precision(ushort fcw) => ((fcw >> 8) & 3) switch { 0 => 24, 2 => 53, _ => 64 };

    private static F80 Inf(bool sign) => new(X87Float.IntBit, (ushort)((sign ? 0x8000 : 0) | 0x7FFF));
    private static F80 Zero(bool sign) => new(0, (ushort)(sign ? 0x8000 : 0));

    /// <summary>Rounds sig * 2^(e - 127) (sig normalized: bit 127 set; bit 0 may carry a sticky 1) to p bits.</summary>
    public static F80 RoundPack(bool sign, int e, UInt128 sig, int rc, int p, ref int flags, out bool roundedUp)
    {
        bool tiny = e < Emin;
        int discard = 128 - p + (tiny ? Math.Min(Emin - e, 200) : 0);
        ulong keep; bool half, sticky;
        if (discard >= 129) { keep = 0; half = false; sticky = sig != 0; }
        else if (discard == 128) { keep = 0; half = (sig >> 127) != 0; sticky = (sig << 1) != 0; }
        else
        {
            keep = (ulong)(sig >> discard);
            half = ((sig >> (discard - 1)) & 1) != 0;
            sticky = (sig & ((UInt128.One << (discard - 1)) - 1)) != 0;
        }
        bool inexact = half || sticky;
        bool inc = rc switch
        {
            0 => half && (sticky || (keep & 1) != 0),
            1 => sign && inexact,
            2 => !sign && inexact,
            _ => false,
        };
        roundedUp = inc;
        ushort s = (ushort)(sign ? 0x8000 : 0);
        if (inexact) flags |= Cpu.FswPE;
        if (inc) keep++;
        if (tiny)
        {
            if (inexact) flags |= Cpu.FswUE;
            ulong m = keep << (64 - p);
            return new F80(m, (ushort)(s | (int)(m >> 63))); // rounding up to the minimum normal sets the exponent
        }
        if (p < 64 ? (keep >> p) != 0 : (inc && keep == 0))
        {
            keep = p < 64 ? keep >> 1 : 1UL << 63;
            e++;
        }
        if (e > Emax)
        {
            flags |= Cpu.FswOE | Cpu.FswPE;
            bool toInf = rc switch { 0 => true, 1 => sign, 2 => !sign, _ => false };
            roundedUp = toInf;
            if (toInf) return Inf(sign);
            return new F80(ulong.MaxValue << (64 - p), (ushort)(s | 0x7FFE));
        }
        return new F80(keep << (64 - p), (ushort)(s | (e + Bias)));
    }

    private static F80 Finish(bool sign, int e, UInt128 sig, int rc, int p, ref int flags, out bool up)
    {
        int lz = (int)UInt128.LeadingZeroCount(sig);
        return RoundPack(sign, e - lz, sig << lz, rc, p, ref flags, out up);
    }

    /// <summary>a + b (b negated for subtraction).</summary>
    public static F80 Add(F80 a, F80 b, int rc, int p, ref int flags, out bool up)
    {
        up = false;
        if (a.IsInf || b.IsInf)
        {
            if (a.IsInf && b.IsInf && a.Sign != b.Sign) { flags |= Cpu.FswIE; return F80.Indefinite; }
            return a.IsInf ? a : b;
        }
        if (a.IsZero && b.IsZero)
            return Zero(a.Sign == b.Sign ? a.Sign : rc == 1);
        if (a.IsZero || b.IsZero)
        {
            F80 v = a.IsZero ? b : a;
            X87Float.Normalize(v, out int ev, out ulong mv);
            return RoundPack(v.Sign, ev, (UInt128)mv << 64, rc, p, ref flags, out up);
        }
        X87Float.Normalize(a, out int ea, out ulong ma);
        X87Float.Normalize(b, out int eb, out ulong mb);
        bool sa = a.Sign, sb = b.Sign;
        if (ea < eb || (ea == eb && ma < mb)) { (ea, eb) = (eb, ea); (ma, mb) = (mb, ma); (sa, sb) = (sb, sa); }
        UInt128 x = (UInt128)ma << 62, y = (UInt128)mb << 62;
        int d = ea - eb;
        if (d >= 126) y = 1; // only stickiness survives
        else if (d > 0)
        {
            bool st = (y & ((UInt128.One << d) - 1)) != 0;
            y >>= d;
            if (st) y |= 1;
        }
        UInt128 s = sa == sb ? x + y : x - y;
        if (s == 0) return Zero(rc == 1);
        return Finish(sa, ea + 2, s, rc, p, ref flags, out up);
    }

    public static F80 Mul(F80 a, F80 b, int rc, int p, ref int flags, out bool up)
    {
        up = false;
        bool sign = a.Sign != b.Sign;
        if (a.IsInf || b.IsInf)
        {
            if (a.IsZero || b.IsZero) { flags |= Cpu.FswIE; return F80.Indefinite; }
            return Inf(sign);
        }
        if (a.IsZero || b.IsZero) return Zero(sign);
        X87Float.Normalize(a, out int ea, out ulong ma);
        X87Float.Normalize(b, out int eb, out ulong mb);
        UInt128 prod = (UInt128)ma * mb; // value = prod * 2^(ea + eb - 126)
        return Finish(sign, ea + eb + 1, prod, rc, p, ref flags, out up);
    }

    public static F80 Div(F80 a, F80 b, int rc, int p, ref int flags, out bool up)
    {
        up = false;
        bool sign = a.Sign != b.Sign;
        if (a.IsInf)
        {
            if (b.IsInf) { flags |= Cpu.FswIE; return F80.Indefinite; }
            return Inf(sign);
        }
        if (b.IsInf) return Zero(sign);
        if (b.IsZero)
        {
            if (a.IsZero) { flags |= Cpu.FswIE; return F80.Indefinite; }
            flags |= Cpu.FswZE;
            return Inf(sign);
        }
        if (a.IsZero) return Zero(sign);
        X87Float.Normalize(a, out int ea, out ulong ma);
        X87Float.Normalize(b, out int eb, out ulong mb);
        int e;
        UInt128 n;
        if (ma >= mb) { n = (UInt128)ma << 63; e = ea - eb; }
        else { n = (UInt128)ma << 64; e = ea - eb - 1; }
        ulong q = (ulong)(n / mb);
        UInt128 r = n % mb;
        UInt128 n2 = r << 64;
        ulong q2 = (ulong)(n2 / mb);
        bool sticky = n2 % mb != 0;
        UInt128 sig = (UInt128)q << 64 | q2;
        if (sticky) sig |= 1;
        return RoundPack(sign, e, sig, rc, p, ref flags, out up);
    }

    public static F80 Sqrt(F80 a, int rc, int p, ref int flags, out bool up)
    {
        up = false;
        if (a.IsZero) return a;
        if (a.Sign) { flags |= Cpu.FswIE; return F80.Indefinite; }
        if (a.IsInf) return a;
        X87Float.Normalize(a, out int ea, out ulong ma);
        // value = N * 2^k with k even, N in [2^126, 2^128).
        UInt128 n;
        int k;
        if ((ea & 1) != 0) { n = (UInt128)ma << 64; k = ea - 127; }
        else { n = (UInt128)ma << 63; k = ea - 126; }
        ulong s = ISqrt(n);
        UInt128 rem = n - (UInt128)s * s;
        bool half = rem > s;
        bool sticky = half || rem != 0;
        UInt128 sig = (UInt128)s << 64 | (half ? 1UL << 63 : 0) | (sticky ? 1UL : 0);
        return RoundPack(false, 63 + k / 2, sig, rc, p, ref flags, out up);
    }

    /// <summary>floor(sqrt(n)) for n in [2^126, 2^128).</summary>
    private static ulong ISqrt(UInt128 n)
    {
        UInt128 s = (UInt128)Math.Sqrt((double)n);
        if (s > ulong.MaxValue) s = ulong.MaxValue;
        if (s == 0) s = 1;
        s = (s + n / s) >> 1; // one Newton step from a 53-bit estimate is exact to within one
        if (s > ulong.MaxValue) s = ulong.MaxValue;
        while (s * s > n) s--;
        while (s < ulong.MaxValue && (s + 1) * (s + 1) <= n) s++;
        return (ulong)s;
    }
}
