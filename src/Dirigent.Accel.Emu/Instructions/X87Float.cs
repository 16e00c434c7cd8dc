using System.Numerics;
using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// Exact conversions between the 80-bit format and integers, binary32/binary64 (with every rounding mode and the
/// exception flags they raise), integer rounding, comparison. Arithmetic is in <see cref="X87SoftFloat"/>.
/// </summary>
internal static class X87Float
{
    public const int Bias = 16383;
    public const ulong IntBit = 0x8000_0000_0000_0000UL;

    /// <summary>Finite nonzero value as m * 2^(e - 63), m normalized (bit 63 set); e is the unbiased exponent.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Normalize(F80 v, out int e, out ulong m)
    {
        int ex = v.Exp;
        m = v.M;
        if (ex == 0) ex = 1; // denormals and pseudo-denormals share the minimum exponent
        int lz = BitOperations.LeadingZeroCount(m);
        m <<= lz;
        e = ex - Bias - lz;
    }

    /// <summary>Packs a finite nonzero normalized m*2^(e-63) into 80 bits, denormalizing (truncating) below the
    /// minimum exponent and overflowing to infinity above it. Only for results that are known to be in range or
    /// where the SDM allows it (FSCALE extremes).</summary>
    public static F80 Pack(bool sign, int e, ulong m)
    {
        ushort s = (ushort)(sign ? 0x8000 : 0);
        if (m == 0) return new F80(0, s);
        int be = e + Bias;
        if (be >= 0x7FFF) return new F80(IntBit, (ushort)(s | 0x7FFF));
        if (be <= 0)
        {
            int sh = 1 - be;
            return new F80(sh >= 64 ? 0 : m >> sh, s);
        }
        return new F80(m, (ushort)(s | be));
    }

    public static F80 FromInt64(long v)
    {
        if (v == 0) return F80.Zero;
        bool neg = v < 0;
        ulong mag = neg ? (ulong)(-(v + 1)) + 1 : (ulong)v;
        int lz = BitOperations.LeadingZeroCount(mag);
        return new F80(mag << lz, (ushort)((neg ? 0x8000 : 0) | (Bias + 63 - lz)));
    }

    public static F80 FromDouble(double d) => FromBits(BitConverter.DoubleToUInt64Bits(d), 52, 1023);

    public static F80 FromSingle(uint bits) => FromBits(bits, 23, 127);

    /// <summary>Exact widening of an IEEE binary format (fracBits 52 or 23).</summary>
    private static F80 FromBits(ulong bits, int fracBits, int bias)
    {
        int expBits = fracBits == 52 ? 11 : 8;
        int total = fracBits + expBits + 1;
        ushort s = (ushort)(((bits >> (total - 1)) & 1) != 0 ? 0x8000 : 0);
        int maxE = (1 << expBits) - 1;
        int e = (int)((bits >> fracBits) & (ulong)maxE);
        ulong f = bits & ((1UL << fracBits) - 1);
        if (e == maxE)
        {
            if (f == 0) return new F80(IntBit, (ushort)(s | 0x7FFF));
            return new F80(IntBit | f << (63 - fracBits), (ushort)(s | 0x7FFF));
        }
        if (e == 0)
        {
            if (f == 0) return new F80(0, s);
            int lz = BitOperations.LeadingZeroCount(f);
            // value = f * 2^(1 - bias - fracBits) = (f << lz) * 2^(1 - bias - fracBits - lz)
            int ue = 1 - bias - fracBits - lz + 63;
            return new F80(f << lz, (ushort)(s | (ue + Bias)));
        }
        return new F80(IntBit | f << (63 - fracBits), (ushort)(s | (e - bias + Bias)));
    }

    /// <summary>
    /// Rounds m*2^(e-63) (m normalized) to a binary format with p significand bits and exponent range
    /// [emin, emax] per the rounding control rc, returning its encoding (sign excluded) and raising PE/UE/OE in
    /// flags. roundedUp: the magnitude was increased (C1).
    /// </summary>
    public static ulong RoundToFormat(bool sign, int e, ulong m, int rc, int p, int emin, int emax, ref int flags, out bool roundedUp)
    {
        int fracBits = p - 1;
        bool tiny = e < emin;
        int discard = 64 - p + (tiny ? emin - e : 0);
        ulong keep; bool half, sticky;
        if (discard >= 65) { keep = 0; half = false; sticky = m != 0; }
        else if (discard == 64) { keep = 0; half = (m >> 63) != 0; sticky = (m << 1) != 0; }
        else
        {
            keep = m >> discard;
            half = ((m >> (discard - 1)) & 1) != 0;
            sticky = (m & ((1UL << (discard - 1)) - 1)) != 0;
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
        if (inc) keep++;
        if (inexact) flags |= Cpu.FswPE;
        if (tiny)
        {
            if (inexact) flags |= Cpu.FswUE;
            return keep; // a carry into bit p-1 is the minimum normal's exponent field, as the encoding wants
        }
        if (keep >> p != 0) { keep >>= 1; e++; }
        if (e > emax)
        {
            flags |= Cpu.FswOE | Cpu.FswPE;
            ulong inf = ((1UL << (p == 53 ? 11 : 8)) - 1) << fracBits;
            ulong max = inf - 1;
            bool toInf = rc switch { 0 => true, 1 => sign, 2 => !sign, _ => false };
            roundedUp = toInf;
            return toInf ? inf : max;
        }
        ulong biased = (ulong)(e - emin + 1);
        return biased << fracBits | (keep & ((1UL << fracBits) - 1));
    }

    /// <summary>80-bit to binary64 with rounding control rc; NaNs keep their payload's top bits (quieted).</summary>
    public static ulong ToDoubleBits(F80 v, int rc, ref int flags, out bool roundedUp)
    {
        roundedUp = false;
        ulong s = v.Sign ? 1UL << 63 : 0;
        if (v.IsZero) return s;
        if (v.Exp == 0x7FFF)
        {
            if (v.IsInf) return s | 0x7FF0_0000_0000_0000UL;
            return s | 0x7FF8_0000_0000_0000UL | (v.M << 1 >> 12);
        }
        Normalize(v, out int e, out ulong m);
        return s | RoundToFormat(v.Sign, e, m, rc, 53, -1022, 1023, ref flags, out roundedUp);
    }

    public static uint ToSingleBits(F80 v, int rc, ref int flags, out bool roundedUp)
    {
        roundedUp = false;
        uint s = v.Sign ? 1U << 31 : 0;
        if (v.IsZero) return s;
        if (v.Exp == 0x7FFF)
        {
            if (v.IsInf) return s | 0x7F80_0000U;
            return s | 0x7FC0_0000U | (uint)(v.M << 1 >> 41);
        }
        Normalize(v, out int e, out ulong m);
        return s | (uint)RoundToFormat(v.Sign, e, m, rc, 24, -126, 127, ref flags, out roundedUp);
    }

    /// <summary>Nearest binary64 value, flags ignored: the working format of the transcendentals.</summary>
    public static double ToDouble(F80 v)
    {
        int f = 0;
        return BitConverter.UInt64BitsToDouble(ToDoubleBits(v, 0, ref f, out _));
    }

    /// <summary>
    /// Rounds a finite value to an integer per rc: magnitude in mag. Returns false when it does not fit 64 bits.
    /// </summary>
    public static bool RoundToInteger(F80 v, int rc, out ulong mag, out bool inexact, out bool roundedUp)
    {
        mag = 0; inexact = false; roundedUp = false;
        if (v.IsZero) return true;
        Normalize(v, out int e, out ulong m);
        if (e >= 64) return false;
        bool half, sticky;
        if (e == 63) { mag = m; return true; }
        if (e >= 0)
        {
            int sh = 63 - e;
            mag = m >> sh;
            ulong frac = m << (64 - sh);
            half = (frac >> 63) != 0;
            sticky = (frac << 1) != 0;
        }
        else if (e == -1) { half = true; sticky = (m << 1) != 0; }
        else { half = false; sticky = true; }
        inexact = half || sticky;
        bool inc = rc switch
        {
            0 => half && (sticky || (mag & 1) != 0),
            1 => v.Sign && inexact,
            2 => !v.Sign && inexact,
            _ => false,
        };
        if (inc) { mag++; roundedUp = true; }
        return true;
    }

    /// <summary>Integer magnitude with a sign as an exact 80-bit value.</summary>
    public static F80 FromMagnitude(bool neg, ulong mag)
    {
        ushort s = (ushort)(neg ? 0x8000 : 0);
        if (mag == 0) return new F80(0, s);
        int lz = BitOperations.LeadingZeroCount(mag);
        return new F80(mag << lz, (ushort)(s | (Bias + 63 - lz)));
    }

    /// <summary>Ordered comparison of two non-NaN values: -1, 0, 1.</summary>
    public static int Compare(F80 a, F80 b)
    {
        bool az = a.IsZero, bz = b.IsZero;
        if (az && bz) return 0;
        if (az) return b.Sign ? 1 : -1;
        if (bz) return a.Sign ? -1 : 1;
        if (a.Sign != b.Sign) return a.Sign ? -1 : 1;
        Normalize(a, out int ea, out ulong ma);
        Normalize(b, out int eb, out ulong mb);
        int r = ea != eb ? (ea < eb ? -1 : 1) : ma == mb ? 0 : ma < mb ? -1 : 1;
        return a.Sign ? -r : r;
    }

    /// <summary>The quiet version of a NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static F80 Quiet(F80 v) => new(v.M | 0x4000_0000_0000_0000UL, v.SE);

    /// <summary>x87 NaN propagation for two operands (SDM vol. 1 table 4-7); at least one is a NaN.</summary>
    public static F80 PropagateNaN(F80 a, F80 b)
    {
        bool an = a.IsNaN, bn = b.IsNaN;
        if (an && bn)
        {
            bool asn = a.IsSNaN, bsn = b.IsSNaN;
            if (asn != bsn) return asn ? Quiet(b) : Quiet(a);
            ulong ma = a.M << 1, mb = b.M << 1;
            if (ma == mb) return Quiet(a.Sign ? b : a); // equal significands: the positive one, as Intel does
            return Quiet(ma > mb ? a : b);
        }
        return Quiet(an ? a : b);
    }
}
