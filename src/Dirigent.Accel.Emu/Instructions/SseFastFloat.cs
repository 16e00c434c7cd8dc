using System.Runtime.CompilerServices;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// Host-FPU fast paths for <see cref="SseFp"/>: with round-to-nearest, operands that are normal (or zero) and a
/// result comfortably inside the normal range, the host's IEEE result is the guest's, DAZ/FTZ cannot matter, and
/// the only flag is PE, found exactly with an error-free transformation (TwoSum, FMA residual, exact products).
/// Everything else returns false and takes the software path. .NET keeps the host MXCSR at its default.
/// </summary>
internal static class SseFastFloat
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool NormalOrZeroD(ulong x) => ((x >> 52) & 0x7FF) - 1 < 0x7FE || (x << 1) == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool NormalOrZeroS(ulong x) => ((x >> 23) & 0xFF) - 1 < 0xFE || (x << 33) == 0;

    /// <summary>Biased exponent well inside the range (so FMA residuals cannot underflow or overflow).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool MidD(ulong x) => ((x >> 52) & 0x7FF) - 200 < 1600;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool NormalResultS(float r) => float.IsNormal(r) || r == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double D(ulong x) => BitConverter.Int64BitsToDouble((long)x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float S(ulong x) => BitConverter.Int32BitsToSingle((int)(uint)x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Bits(double v) => (ulong)BitConverter.DoubleToInt64Bits(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Bits(float v) => (uint)BitConverter.SingleToInt32Bits(v);

    public static bool Add(ulong a, ulong b, bool d, bool subtract, ref uint flags, out ulong r)
    {
        r = 0;
        if (d)
        {
            if (!NormalOrZeroD(a) || !NormalOrZeroD(b)) return false;
            double x = D(a), y = subtract ? -D(b) : D(b);
            double s = x + y;
            if (!double.IsNormal(s) && s != 0) return false;
            double bb = s - x;
            if ((x - (s - bb)) + (y - bb) != 0) flags |= SseFp.PE;
            r = Bits(s);
            return true;
        }
        else
        {
            if (!NormalOrZeroS(a) || !NormalOrZeroS(b)) return false;
            float x = S(a), y = subtract ? -S(b) : S(b);
            float s = x + y;
            if (!NormalResultS(s)) return false;
            float bb = s - x;
            if ((x - (s - bb)) + (y - bb) != 0) flags |= SseFp.PE;
            r = Bits(s);
            return true;
        }
    }

    public static bool Mul(ulong a, ulong b, bool d, ref uint flags, out ulong r)
    {
        r = 0;
        if (d)
        {
            bool zero = (a << 1) == 0 || (b << 1) == 0;
            if (!zero && (!MidD(a) || !MidD(b))) return false;
            if (zero && (!NormalOrZeroD(a) || !NormalOrZeroD(b))) return false;
            double x = D(a), y = D(b);
            double p = x * y;
            if (!zero)
            {
                if (!MidD(Bits(p))) return false;
                if (Math.FusedMultiplyAdd(x, y, -p) != 0) flags |= SseFp.PE;
            }
            r = Bits(p);
            return true;
        }
        else
        {
            if (!NormalOrZeroS(a) || !NormalOrZeroS(b)) return false;
            double p = (double)S(a) * S(b); // exact: 24x24 bits
            float f = (float)p;
            if (!NormalResultS(f) || (f == 0 && p != 0)) return false;
            if (f != p) flags |= SseFp.PE;
            r = Bits(f);
            return true;
        }
    }

    public static bool Div(ulong a, ulong b, bool d, ref uint flags, out ulong r)
    {
        r = 0;
        if (d)
        {
            if (!MidD(b) || (!MidD(a) && (a << 1) != 0)) return false;
            double x = D(a), y = D(b);
            double q = x / y;
            if ((a << 1) != 0)
            {
                if (!MidD(Bits(q))) return false;
                if (Math.FusedMultiplyAdd(-q, y, x) != 0) flags |= SseFp.PE;
            }
            r = Bits(q);
            return true;
        }
        else
        {
            if (!NormalOrZeroS(a) || !NormalOrZeroS(b) || (b << 33) == 0) return false;
            float x = S(a), y = S(b);
            float q = x / y;
            if (!NormalResultS(q) || (q == 0 && x != 0)) return false;
            if (Math.FusedMultiplyAdd(-(double)q, y, x) != 0) flags |= SseFp.PE; // q*y is exact in double
            r = Bits(q);
            return true;
        }
    }

    public static bool Sqrt(ulong a, bool d, ref uint flags, out ulong r)
    {
        r = 0;
        if (d)
        {
            if ((a << 1) == 0) { r = a; return true; }
            if ((a >> 63) != 0 || !MidD(a)) return false;
            double x = D(a);
            double s = Math.Sqrt(x);
            if (Math.FusedMultiplyAdd(s, s, -x) != 0) flags |= SseFp.PE;
            r = Bits(s);
            return true;
        }
        else
        {
            if ((a << 33) == 0) { r = a; return true; }
            if ((a & 0x8000_0000) != 0 || !NormalOrZeroS(a)) return false;
            float x = S(a);
            float s = MathF.Sqrt(x);
            if ((double)s * s != x) flags |= SseFp.PE; // s*s is exact in double
            r = Bits(s);
            return true;
        }
    }
}
