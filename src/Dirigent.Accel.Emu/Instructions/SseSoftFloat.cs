using System.Numerics;
using System.Runtime.CompilerServices;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// IEEE-754 binary32/binary64 arithmetic with x86 SSE semantics, in software so that MXCSR is honoured exactly:
/// rounding control, DAZ (denormal inputs read as zero), FTZ (tiny results flushed to zero when underflow is
/// masked), the sticky flags IE/DE/ZE/OE/UE/PE, tininess detected after rounding, the SSE NaN rules (first source
/// NaN wins, SNaN quieted, QNaN indefinite for invalid operations). The host's own FPU cannot serve: .NET gives no
/// control of the host MXCSR. Values travel as raw bit patterns; <c>d</c> selects double (true) or single (false).
/// Internally a finite value is (sign, exp, sig): sig has its leading one at bit 63, value = sig / 2^63 * 2^exp.
/// </summary>
internal static class SseFp
{
    public const uint IE = 1, DE = 2, ZE = 4, OE = 8, UE = 0x10, PE = 0x20, DAZ = 0x40, UM = 0x800, FTZ = 0x8000;
    public const uint RcMask = 0x6000;
    public const int RNE = 0, RDN = 1, RUP = 2, RTZ = 3;

    public const int KZero = 0, KFinite = 1, KInf = 2, KNaN = 3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int FracBits(bool d) => d ? 52 : 23;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong SignBit(bool d) => d ? 1UL << 63 : 1UL << 31;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsNaN(ulong x, bool d) => d ? (x & ~(1UL << 63)) > 0x7FF0_0000_0000_0000UL : (x & 0x7FFF_FFFF) > 0x7F80_0000;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsSNaN(ulong x, bool d) => IsNaN(x, d) && (x & (d ? 1UL << 51 : 1UL << 22)) == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Quiet(ulong x, bool d) => x | (d ? 1UL << 51 : 1UL << 22);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong DefaultNaN(bool d) => d ? 0xFFF8_0000_0000_0000UL : 0xFFC0_0000UL;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsDenormal(ulong x, bool d) =>
        d ? (x & 0x7FF0_0000_0000_0000UL) == 0 && (x & 0x000F_FFFF_FFFF_FFFFUL) != 0
          : (x & 0x7F80_0000) == 0 && (x & 0x007F_FFFF) != 0;

    /// <summary>DAZ: a denormal operand reads as a zero of the same sign.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Daz(ulong x, bool d, uint mxcsr) =>
        (mxcsr & DAZ) != 0 && IsDenormal(x, d) ? x & SignBit(d) : x;

    /// <summary>Splits a value; a denormal sets DE (unless DAZ turns it into zero) and is normalised.</summary>
    public static int Unpack(ulong x, bool d, uint mxcsr, ref uint flags, out bool sign, out int exp, out ulong sig)
    {
        int fb = FracBits(d);
        sign = (x & SignBit(d)) != 0;
        int e = (int)((x >> fb) & (d ? 0x7FFUL : 0xFFUL));
        ulong f = x & ((1UL << fb) - 1);
        int bias = d ? 1023 : 127;
        if (e == (d ? 0x7FF : 0xFF)) { exp = 0; sig = 0; return f == 0 ? KInf : KNaN; }
        if (e == 0)
        {
            if (f == 0 || (mxcsr & DAZ) != 0) { exp = 0; sig = 0; return KZero; }
            flags |= DE;
            int lz = BitOperations.LeadingZeroCount(f);
            sig = f << lz;
            exp = 1 - bias - (lz - (63 - fb));
            return KFinite;
        }
        sig = (f | (1UL << fb)) << (63 - fb);
        exp = e - bias;
        return KFinite;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ShiftRightJam(ulong v, int n)
    {
        if (n <= 0) return v;
        if (n >= 64) return v != 0 ? 1UL : 0;
        return (v >> n) | ((v << (64 - n)) != 0 ? 1UL : 0);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool RoundUp(ulong rest, ulong half, bool lsb, bool sign, int rc) => rc switch
    {
        RNE => rest > half || (rest == half && lsb),
        RDN => sign && rest != 0,
        RUP => !sign && rest != 0,
        _ => false,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Zero(bool sign, bool d) => sign ? SignBit(d) : 0;

    public static ulong Inf(bool sign, bool d) => (sign ? SignBit(d) : 0) | (d ? 0x7FF0_0000_0000_0000UL : 0x7F80_0000UL);

    /// <summary>Rounds (sign, exp, sig) to the format per MXCSR and encodes it, raising PE/UE/OE as hardware does.</summary>
    public static ulong RoundPack(bool sign, int exp, ulong sig, bool d, uint mxcsr, ref uint flags)
    {
        int p = d ? 53 : 24;
        int fb = p - 1;
        int bias = d ? 1023 : 127;
        int emin = 1 - bias;
        int rc = (int)(mxcsr >> 13) & 3;
        int drop = 64 - p;
        ulong half = 1UL << (drop - 1);
        ulong restMask = (1UL << drop) - 1;
        ulong sb = sign ? SignBit(d) : 0;

        if (exp < emin)
        {
            // Tininess after rounding: tiny unless rounding to p bits with an unbounded exponent reaches 2^emin.
            bool tiny = true;
            if (exp == emin - 1)
            {
                ulong m0 = sig >> drop;
                if (RoundUp(sig & restMask, half, (m0 & 1) != 0, sign, rc) && m0 + 1 == 1UL << p) tiny = false;
            }
            if (tiny && (mxcsr & (FTZ | UM)) == (FTZ | UM))
            {
                flags |= UE | PE;
                return sb;
            }
            ulong s = ShiftRightJam(sig, emin - exp);
            ulong m = s >> drop;
            ulong rest = s & restMask;
            if (RoundUp(rest, half, (m & 1) != 0, sign, rc)) m++;
            if (rest != 0)
            {
                flags |= PE;
                if (tiny) flags |= UE;
            }
            else if (tiny && (mxcsr & UM) == 0) flags |= UE;
            // m < 2^(p-1) encodes a denormal; m == 2^(p-1) is exactly the smallest normal's encoding.
            return sb | m;
        }

        ulong mn = sig >> drop;
        ulong r = sig & restMask;
        if (RoundUp(r, half, (mn & 1) != 0, sign, rc))
        {
            mn++;
            if (mn == 1UL << p) { mn >>= 1; exp++; }
        }
        if (exp > bias)
        {
            flags |= OE | PE;
            bool toInf = rc == RNE || (rc == RUP && !sign) || (rc == RDN && sign);
            if (toInf) return Inf(sign, d);
            return sb | ((ulong)(2 * bias) << fb) | ((1UL << fb) - 1);
        }
        if (r != 0) flags |= PE;
        return sb | ((ulong)(exp + bias) << fb) | (mn & ((1UL << fb) - 1));
    }

    /// <summary>NaN result of a two-operand arithmetic op: the first NaN operand (quieted); IE if either is an SNaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong PropagateNaN(ulong a, ulong b, bool d, ref uint flags)
    {
        if (IsSNaN(a, d) || IsSNaN(b, d)) flags |= IE;
        return Quiet(IsNaN(a, d) ? a : b, d);
    }

    public static ulong Add(ulong a, ulong b, bool d, bool subtract, uint mxcsr, ref uint flags)
    {
        if ((mxcsr & RcMask) == 0 && SseFastFloat.Add(a, b, d, subtract, ref flags, out ulong fast)) return fast;
        if (IsNaN(a, d) || IsNaN(b, d)) return PropagateNaN(a, b, d, ref flags);
        int ka = Unpack(a, d, mxcsr, ref flags, out bool sa, out int ea, out ulong ma);
        int kb = Unpack(b, d, mxcsr, ref flags, out bool sbn, out int eb, out ulong mb);
        if (subtract) sbn = !sbn;
        int rc = (int)(mxcsr >> 13) & 3;
        if (ka == KInf || kb == KInf)
        {
            if (ka == KInf && kb == KInf && sa != sbn) { flags |= IE; return DefaultNaN(d); }
            return Inf(ka == KInf ? sa : sbn, d);
        }
        if (ka == KZero && kb == KZero) return Zero(sa == sbn ? sa : rc == RDN, d);
        if (ka == KZero) return RoundPack(sbn, eb, mb, d, mxcsr, ref flags);
        if (kb == KZero) return RoundPack(sa, ea, ma, d, mxcsr, ref flags);
        if (ea < eb || (ea == eb && ma < mb))
        {
            (sa, sbn) = (sbn, sa);
            (ea, eb) = (eb, ea);
            (ma, mb) = (mb, ma);
        }
        ulong x = ma >> 1;
        ulong y = ShiftRightJam(mb >> 1, ea - eb);
        ulong s;
        if (sa == sbn) s = x + y;
        else
        {
            s = x - y;
            if (s == 0) return Zero(rc == RDN, d);
        }
        int lz = BitOperations.LeadingZeroCount(s);
        return RoundPack(sa, ea + 1 - lz, s << lz, d, mxcsr, ref flags);
    }

    public static ulong Mul(ulong a, ulong b, bool d, uint mxcsr, ref uint flags)
    {
        if ((mxcsr & RcMask) == 0 && SseFastFloat.Mul(a, b, d, ref flags, out ulong fast)) return fast;
        if (IsNaN(a, d) || IsNaN(b, d)) return PropagateNaN(a, b, d, ref flags);
        int ka = Unpack(a, d, mxcsr, ref flags, out bool sa, out int ea, out ulong ma);
        int kb = Unpack(b, d, mxcsr, ref flags, out bool sbn, out int eb, out ulong mb);
        bool sign = sa != sbn;
        if (ka == KInf || kb == KInf)
        {
            if (ka == KZero || kb == KZero) { flags |= IE; return DefaultNaN(d); }
            return Inf(sign, d);
        }
        if (ka == KZero || kb == KZero) return Zero(sign, d);
        UInt128 prod = (UInt128)ma * mb;
        ulong hi = (ulong)(prod >> 64), lo = (ulong)prod;
        int shift = hi >> 63 != 0 ? 0 : 1;
        ulong sig = (hi << shift) | (shift == 1 ? lo >> 63 : 0);
        ulong rest = lo << shift;
        if (rest != 0) sig |= 1;
        return RoundPack(sign, ea + eb + 1 - shift, sig, d, mxcsr, ref flags);
    }

    public static ulong Div(ulong a, ulong b, bool d, uint mxcsr, ref uint flags)
    {
        if ((mxcsr & RcMask) == 0 && SseFastFloat.Div(a, b, d, ref flags, out ulong fast)) return fast;
        if (IsNaN(a, d) || IsNaN(b, d)) return PropagateNaN(a, b, d, ref flags);
        // A denormal dividend of a division by zero reports only ZE (hardware gives #Z precedence over #D).
        uint de = 0;
        int ka = Unpack(a, d, mxcsr, ref de, out bool sa, out int ea, out ulong ma);
        int kb = Unpack(b, d, mxcsr, ref de, out bool sbn, out int eb, out ulong mb);
        bool sign = sa != sbn;
        if (kb == KZero && ka != KInf)
        {
            if (ka == KZero) { flags |= IE; return DefaultNaN(d); }
            flags |= ZE;
            return Inf(sign, d);
        }
        flags |= de;
        if (ka == KInf)
        {
            if (kb == KInf) { flags |= IE; return DefaultNaN(d); }
            return Inf(sign, d);
        }
        if (kb == KInf) return Zero(sign, d);
        if (ka == KZero) return Zero(sign, d);
        UInt128 num = (UInt128)(ma >> 1) << 64;
        ulong q = (ulong)(num / mb);
        if (num - (UInt128)q * mb != 0) q |= 1;
        int shift = BitOperations.LeadingZeroCount(q);
        return RoundPack(sign, ea - eb - shift, q << shift, d, mxcsr, ref flags);
    }

    public static ulong Sqrt(ulong a, bool d, uint mxcsr, ref uint flags)
    {
        if ((mxcsr & RcMask) == 0 && SseFastFloat.Sqrt(a, d, ref flags, out ulong fast)) return fast;
        if (IsNaN(a, d)) { if (IsSNaN(a, d)) flags |= IE; return Quiet(a, d); }
        uint de = 0;
        int k = Unpack(a, d, mxcsr, ref de, out bool s, out int e, out ulong m);
        if (k == KZero) return Zero(s, d);
        if (s) { flags |= IE; return DefaultNaN(d); } // IE alone: #I takes precedence over #D
        flags |= de;
        if (k == KInf) return a;
        bool odd = (e & 1) != 0;
        UInt128 big = (UInt128)m << (odd ? 64 : 63);
        ulong r = ISqrt(big);
        if ((UInt128)r * r != big) r |= 1;
        int exp = 63 + ((odd ? e - 127 : e - 126) >> 1);
        return RoundPack(false, exp, r, d, mxcsr, ref flags);
    }

    /// <summary>floor(sqrt(v)) for v in [2^126, 2^128): a double estimate, one Newton step, then exact correction.</summary>
    private static ulong ISqrt(UInt128 v)
    {
        double est = Math.Sqrt((double)v);
        ulong r = est >= 18446744073709551615.0 ? ulong.MaxValue : (ulong)est;
        r = (ulong)(((UInt128)r + v / r) >> 1);
        while ((UInt128)r * r > v) r--;
        while (r != ulong.MaxValue && (UInt128)(r + 1) * (r + 1) <= v) r++;
        return r;
    }

    /// <summary>
    /// Orders two non-NaN values (DAZ applied, DE raised for denormal operands): -1, 0 or 1. Both formats convert
    /// exactly to double, so the host comparison is exact.
    /// </summary>
    public static int CompareOrdered(ulong a, ulong b, bool d, uint mxcsr, ref uint flags)
    {
        double x = ToDouble(DazDe(a, d, mxcsr, ref flags), d);
        double y = ToDouble(DazDe(b, d, mxcsr, ref flags), d);
        return x < y ? -1 : x > y ? 1 : 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong DazDe(ulong x, bool d, uint mxcsr, ref uint flags)
    {
        if (!IsDenormal(x, d)) return x;
        if ((mxcsr & DAZ) != 0) return x & SignBit(d);
        flags |= DE;
        return x;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double ToDouble(ulong x, bool d) => d ? BitConverter.Int64BitsToDouble((long)x) : BitConverter.Int32BitsToSingle((int)x);

    /// <summary>Float to integer (CVT*2SI, CVT*2DQ): NaN, infinity and out-of-range give the integer indefinite with IE.</summary>
    public static ulong ToInt(ulong a, bool d, int intBytes, bool truncate, uint mxcsr, ref uint flags)
    {
        ulong indefinite = intBytes == 8 ? 1UL << 63 : 1UL << 31;
        if (IsNaN(a, d)) { flags |= IE; return indefinite; }
        uint ignored = 0;
        int k = Unpack(a, d, mxcsr, ref ignored, out bool s, out int e, out ulong m);
        if (k == KInf) { flags |= IE; return indefinite; }
        if (k == KZero) return 0;
        int rc = truncate ? RTZ : (int)(mxcsr >> 13) & 3;
        ulong ip, frac;
        if (e >= 64) { flags |= IE; return indefinite; }
        if (e == 63) { ip = m; frac = 0; }
        else if (e >= 0) { ip = m >> (63 - e); frac = m << (e + 1); }
        else if (e == -1) { ip = 0; frac = m; }
        else { ip = 0; frac = 1; }
        const ulong half = 1UL << 63;
        if (RoundUp(frac, half, (ip & 1) != 0, s, rc)) ip++;
        ulong limit = intBytes == 8 ? (s ? 1UL << 63 : (1UL << 63) - 1) : (s ? 1UL << 31 : (1UL << 31) - 1);
        if (ip > limit || (e == 63 && ip == 0)) { flags |= IE; return indefinite; }
        if (frac != 0) flags |= PE;
        ulong v = s ? 0 - ip : ip;
        return intBytes == 8 ? v : (uint)v;
    }

    /// <summary>Signed integer to float (CVTSI2SS/SD, CVTDQ2PS/PD), rounded per MXCSR.RC.</summary>
    public static ulong FromInt(long v, bool d, uint mxcsr, ref uint flags)
    {
        if (v == 0) return 0;
        bool s = v < 0;
        ulong mag = s ? 0 - (ulong)v : (ulong)v;
        int lz = BitOperations.LeadingZeroCount(mag);
        // Integers are never tiny, so FTZ/DAZ cannot matter: clear them for RoundPack.
        return RoundPack(s, 63 - lz, mag << lz, d, mxcsr & ~(FTZ | DAZ), ref flags);
    }

    /// <summary>Single↔double (CVTSS2SD, CVTSD2SS, CVTPS2PD, CVTPD2PS).</summary>
    public static ulong Convert(ulong a, bool fromD, uint mxcsr, ref uint flags)
    {
        bool toD = !fromD;
        if (IsNaN(a, fromD))
        {
            if (IsSNaN(a, fromD)) flags |= IE;
            bool sn = (a & SignBit(fromD)) != 0;
            return fromD
                ? Quiet((sn ? 1UL << 31 : 0) | 0x7F80_0000UL | ((a & 0x000F_FFFF_FFFF_FFFFUL) >> 29), false)
                : Quiet((sn ? 1UL << 63 : 0) | 0x7FF0_0000_0000_0000UL | ((a & 0x007F_FFFFUL) << 29), true);
        }
        int k = Unpack(a, fromD, mxcsr, ref flags, out bool s, out int e, out ulong m);
        if (k == KZero) return Zero(s, toD);
        if (k == KInf) return Inf(s, toD);
        return RoundPack(s, e, m, toD, mxcsr, ref flags);
    }
}
