using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>SSSE3 forms on mm registers (the CPU advertises SSSE3, which includes them): PSHUFB, PALIGNR, horizontal
/// add/sub, PABS, PSIGN, PMADDUBSW, PMULHRSW. Same lane rules as the XMM forms in <see cref="Ssse3"/> on 64 bits;
/// state rules and checks: see <see cref="Mmx"/>.</summary>
internal static unsafe class MmxSsse3
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Pshufb, Code.Pshufb_mm_mmm64);
        r.Add(&Palignr, Code.Palignr_mm_mmm64_imm8);
        r.Add(&Horizontal, Code.Phaddw_mm_mmm64, Code.Phaddd_mm_mmm64, Code.Phaddsw_mm_mmm64,
            Code.Phsubw_mm_mmm64, Code.Phsubd_mm_mmm64, Code.Phsubsw_mm_mmm64);
        r.Add(&Pabsb, Code.Pabsb_mm_mmm64);
        r.Add(&Pabsw, Code.Pabsw_mm_mmm64);
        r.Add(&Pabsd, Code.Pabsd_mm_mmm64);
        r.Add(&Psignb, Code.Psignb_mm_mmm64);
        r.Add(&Psignw, Code.Psignw_mm_mmm64);
        r.Add(&Psignd, Code.Psignd_mm_mmm64);
        r.Add(&Pmaddubsw, Code.Pmaddubsw_mm_mmm64);
        r.Add(&Pmulhrsw, Code.Pmulhrsw_mm_mmm64);
    }

    /// <summary>Byte k = destination byte (index &amp; 7), or zero where the index byte has bit 7 set.</summary>
    private static void Pshufb(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        Vector64<byte> r = default;
        for (int k = 0; k < 8; k++)
        {
            byte x = s.GetElement(k);
            r = r.WithElement(k, (x & 0x80) != 0 ? (byte)0 : d.GetElement(x & 7));
        }
        Mmx.Put(c, n, r);
    }

    /// <summary>The 16-byte value destination:source (source low) shifted right by imm8 bytes; low 8 bytes kept.</summary>
    private static void Palignr(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        int sh = i.Immediate8;
        UInt128 v = ((UInt128)d.AsUInt64().ToScalar() << 64) | s.AsUInt64().ToScalar();
        Mmx.Put(c, n, sh >= 16 ? 0UL : (ulong)(v >> (8 * sh)));
    }

    /// <summary>PHADD*/PHSUB*: adjacent pairs of the destination give the low half, of the source the high half.</summary>
    private static void Horizontal(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        bool sub = i.Code is Code.Phsubw_mm_mmm64 or Code.Phsubd_mm_mmm64 or Code.Phsubsw_mm_mmm64;
        if (i.Code is Code.Phaddd_mm_mmm64 or Code.Phsubd_mm_mmm64)
        {
            var x = d.AsInt32(); var y = s.AsInt32();
            int lo = sub ? x.GetElement(0) - x.GetElement(1) : x.GetElement(0) + x.GetElement(1);
            int hi = sub ? y.GetElement(0) - y.GetElement(1) : y.GetElement(0) + y.GetElement(1);
            Mmx.Put(c, n, Vector64.Create(lo, hi));
            return;
        }
        bool sat = i.Code is Code.Phaddsw_mm_mmm64 or Code.Phsubsw_mm_mmm64;
        var a = d.AsInt16(); var b = s.AsInt16();
        Vector64<short> r = default;
        for (int k = 0; k < 4; k++)
        {
            var src = k < 2 ? a : b;
            int j = (k & 1) * 2;
            int v = sub ? src.GetElement(j) - src.GetElement(j + 1) : src.GetElement(j) + src.GetElement(j + 1);
            if (sat) v = Math.Clamp(v, short.MinValue, short.MaxValue);
            r = r.WithElement(k, (short)v);
        }
        Mmx.Put(c, n, r);
    }

    private static void Pabsb(Cpu c, ref Instruction i) { int n = Mmx.Bin(c, ref i, out _, out var s); Mmx.Put(c, n, Vector64.Abs(s.AsSByte())); }
    private static void Pabsw(Cpu c, ref Instruction i) { int n = Mmx.Bin(c, ref i, out _, out var s); Mmx.Put(c, n, Vector64.Abs(s.AsInt16())); }
    private static void Pabsd(Cpu c, ref Instruction i) { int n = Mmx.Bin(c, ref i, out _, out var s); Mmx.Put(c, n, Vector64.Abs(s.AsInt32())); }

    // PSIGN: negate where the source is negative, zero where it is zero, keep where positive.
    private static void Psignb(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsSByte(); var b = s.AsSByte(); var z = Vector64<sbyte>.Zero;
        Mmx.Put(c, n, Vector64.ConditionalSelect(Vector64.LessThan(b, z), -a, a & ~Vector64.Equals(b, z)));
    }

    private static void Psignw(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsInt16(); var b = s.AsInt16(); var z = Vector64<short>.Zero;
        Mmx.Put(c, n, Vector64.ConditionalSelect(Vector64.LessThan(b, z), -a, a & ~Vector64.Equals(b, z)));
    }

    private static void Psignd(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsInt32(); var b = s.AsInt32(); var z = Vector64<int>.Zero;
        Mmx.Put(c, n, Vector64.ConditionalSelect(Vector64.LessThan(b, z), -a, a & ~Vector64.Equals(b, z)));
    }

    /// <summary>Unsigned destination bytes times signed source bytes, adjacent products added with signed saturation.</summary>
    private static void Pmaddubsw(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var a, out var s);
        var b = s.AsSByte();
        Vector64<short> r = default;
        for (int k = 0; k < 4; k++)
        {
            int v = a.GetElement(2 * k) * b.GetElement(2 * k) + a.GetElement(2 * k + 1) * b.GetElement(2 * k + 1);
            r = r.WithElement(k, (short)Math.Clamp(v, short.MinValue, short.MaxValue));
        }
        Mmx.Put(c, n, r);
    }

    /// <summary>((a*b &gt;&gt; 14) + 1) &gt;&gt; 1 per word: the rounded high half of the Q15 product.</summary>
    private static void Pmulhrsw(Cpu c, ref Instruction i)
    {
        int n = Mmx.Bin(c, ref i, out var d, out var s);
        var a = d.AsInt16(); var b = s.AsInt16();
        Vector64<short> r = default;
        for (int k = 0; k < 4; k++) r = r.WithElement(k, (short)((((a.GetElement(k) * b.GetElement(k)) >> 14) + 1) >> 1));
        Mmx.Put(c, n, r);
    }
}
