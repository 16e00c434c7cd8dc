using System.Runtime.Intrinsics;
using X86 = System.Runtime.Intrinsics.X86;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>SSSE3 XMM forms: PSHUFB, PALIGNR, horizontal add/sub, PABS, PSIGN, PMADDUBSW, PMULHRSW.</summary>
internal static unsafe class Ssse3
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Pshufb, Code.Pshufb_xmm_xmmm128);
        r.Add(&Palignr, Code.Palignr_xmm_xmmm128_imm8);
        r.Add(&Phaddw, Code.Phaddw_xmm_xmmm128);
        r.Add(&Phaddd, Code.Phaddd_xmm_xmmm128);
        r.Add(&Phaddsw, Code.Phaddsw_xmm_xmmm128);
        r.Add(&Phsubw, Code.Phsubw_xmm_xmmm128);
        r.Add(&Phsubd, Code.Phsubd_xmm_xmmm128);
        r.Add(&Phsubsw, Code.Phsubsw_xmm_xmmm128);
        r.Add(&Pabsb, Code.Pabsb_xmm_xmmm128);
        r.Add(&Pabsw, Code.Pabsw_xmm_xmmm128);
        r.Add(&Pabsd, Code.Pabsd_xmm_xmmm128);
        r.Add(&Psignb, Code.Psignb_xmm_xmmm128);
        r.Add(&Psignw, Code.Psignw_xmm_xmmm128);
        r.Add(&Psignd, Code.Psignd_xmm_xmmm128);
        r.Add(&Pmaddubsw, Code.Pmaddubsw_xmm_xmmm128);
        r.Add(&Pmulhrsw, Code.Pmulhrsw_xmm_xmmm128);
    }

    private static void Pshufb(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        // Index bytes with bit 7 set select zero; Shuffle zeroes any index >= 16, so keep bit 7 and the low nibble.
        d = X86.Ssse3.IsSupported ? X86.Ssse3.Shuffle(d, s) : PshufbSoftware(d, s);
    }

    internal static Vector128<byte> PshufbSoftware(Vector128<byte> d, Vector128<byte> s) =>
        Vector128.Shuffle(d, s & Vector128.Create((byte)0x8F));

    private static void Palignr(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        int n = i.Immediate8;
        if (n >= 32) { d = default; return; }
        // Result byte k is byte k+n of the 32-byte value dst:src (src low); indices past either half select zero.
        var idx = Vector128<byte>.Indices + Vector128.Create((byte)n);
        d = Vector128.Shuffle(s, idx) | Vector128.Shuffle(d, idx - Vector128.Create((byte)16));
    }

    private static Vector128<byte> HorizontalW(Vector128<byte> a, Vector128<byte> b, bool sub, bool sat)
    {
        var x = a.AsInt16();
        var y = b.AsInt16();
        Vector128<short> r = default;
        for (int k = 0; k < 8; k++)
        {
            var src = k < 4 ? x : y;
            int j = (k & 3) * 2;
            int v = sub ? src.GetElement(j) - src.GetElement(j + 1) : src.GetElement(j) + src.GetElement(j + 1);
            if (sat) v = Math.Clamp(v, short.MinValue, short.MaxValue);
            r = r.WithElement(k, (short)v);
        }
        return r.AsByte();
    }

    private static Vector128<byte> HorizontalD(Vector128<byte> a, Vector128<byte> b, bool sub)
    {
        var x = a.AsInt32();
        var y = b.AsInt32();
        Vector128<int> r = default;
        for (int k = 0; k < 4; k++)
        {
            var src = k < 2 ? x : y;
            int j = (k & 1) * 2;
            r = r.WithElement(k, sub ? src.GetElement(j) - src.GetElement(j + 1) : src.GetElement(j) + src.GetElement(j + 1));
        }
        return r.AsByte();
    }

    private static void Phaddw(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = HorizontalW(d, s, false, false); }
    private static void Phaddsw(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = HorizontalW(d, s, false, true); }
    private static void Phsubw(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = HorizontalW(d, s, true, false); }
    private static void Phsubsw(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = HorizontalW(d, s, true, true); }
    private static void Phaddd(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = HorizontalD(d, s, false); }
    private static void Phsubd(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = HorizontalD(d, s, true); }

    private static void Pabsb(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = Vector128.Abs(s.AsSByte()).AsByte(); }
    private static void Pabsw(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = Vector128.Abs(s.AsInt16()).AsByte(); }
    private static void Pabsd(Cpu c, ref Instruction i) { ref var d = ref SseInt.Bin(c, ref i, out var s); d = Vector128.Abs(s.AsInt32()).AsByte(); }

    // PSIGN: negate where the source is negative, zero where it is zero, keep where positive.
    private static void Psignb(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        var a = d.AsSByte(); var b = s.AsSByte(); var z = Vector128<sbyte>.Zero;
        d = Vector128.ConditionalSelect(Vector128.LessThan(b, z), -a, a & ~Vector128.Equals(b, z)).AsByte();
    }

    private static void Psignw(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        var a = d.AsInt16(); var b = s.AsInt16(); var z = Vector128<short>.Zero;
        d = Vector128.ConditionalSelect(Vector128.LessThan(b, z), -a, a & ~Vector128.Equals(b, z)).AsByte();
    }

    private static void Psignd(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        var a = d.AsInt32(); var b = s.AsInt32(); var z = Vector128<int>.Zero;
        d = Vector128.ConditionalSelect(Vector128.LessThan(b, z), -a, a & ~Vector128.Equals(b, z)).AsByte();
    }

    private static void Pmaddubsw(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        var a = d; var b = s.AsSByte();
        Vector128<short> r = default;
        for (int k = 0; k < 8; k++)
        {
            int v = a.GetElement(2 * k) * b.GetElement(2 * k) + a.GetElement(2 * k + 1) * b.GetElement(2 * k + 1);
            r = r.WithElement(k, (short)Math.Clamp(v, short.MinValue, short.MaxValue));
        }
        d = r.AsByte();
    }

    private static void Pmulhrsw(Cpu c, ref Instruction i)
    {
        ref var d = ref SseInt.Bin(c, ref i, out var s);
        var (al, ah) = Vector128.Widen(d.AsInt16());
        var (bl, bh) = Vector128.Widen(s.AsInt16());
        var one = Vector128.Create(1);
        var lo = ((al * bl >> 14) + one) >> 1;
        var hi = ((ah * bh >> 14) + one) >> 1;
        d = Vector128.Narrow(lo, hi).AsByte();
    }
}
