using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using X86 = System.Runtime.Intrinsics.X86;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>SSE2 packed integer arithmetic, compares, logic, shifts, packs/unpacks and shuffles (also the float-typed
/// bitwise and shuffle forms, which are the same bit operations).</summary>
internal static unsafe class SseInt
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Paddb, Code.Paddb_xmm_xmmm128); r.Add(&Paddw, Code.Paddw_xmm_xmmm128);
        r.Add(&Paddd, Code.Paddd_xmm_xmmm128); r.Add(&Paddq, Code.Paddq_xmm_xmmm128);
        r.Add(&Psubb, Code.Psubb_xmm_xmmm128); r.Add(&Psubw, Code.Psubw_xmm_xmmm128);
        r.Add(&Psubd, Code.Psubd_xmm_xmmm128); r.Add(&Psubq, Code.Psubq_xmm_xmmm128);
        r.Add(&Paddsb, Code.Paddsb_xmm_xmmm128); r.Add(&Paddsw, Code.Paddsw_xmm_xmmm128);
        r.Add(&Paddusb, Code.Paddusb_xmm_xmmm128); r.Add(&Paddusw, Code.Paddusw_xmm_xmmm128);
        r.Add(&Psubsb, Code.Psubsb_xmm_xmmm128); r.Add(&Psubsw, Code.Psubsw_xmm_xmmm128);
        r.Add(&Psubusb, Code.Psubusb_xmm_xmmm128); r.Add(&Psubusw, Code.Psubusw_xmm_xmmm128);
        r.Add(&Pmullw, Code.Pmullw_xmm_xmmm128); r.Add(&Pmulhw, Code.Pmulhw_xmm_xmmm128);
        r.Add(&Pmulhuw, Code.Pmulhuw_xmm_xmmm128); r.Add(&Pmuludq, Code.Pmuludq_xmm_xmmm128);
        r.Add(&Pmaddwd, Code.Pmaddwd_xmm_xmmm128);
        r.Add(&Pavgb, Code.Pavgb_xmm_xmmm128); r.Add(&Pavgw, Code.Pavgw_xmm_xmmm128);
        r.Add(&Pminub, Code.Pminub_xmm_xmmm128); r.Add(&Pmaxub, Code.Pmaxub_xmm_xmmm128);
        r.Add(&Pminsw, Code.Pminsw_xmm_xmmm128); r.Add(&Pmaxsw, Code.Pmaxsw_xmm_xmmm128);
        r.Add(&Psadbw, Code.Psadbw_xmm_xmmm128);
        r.Add(&Pcmpeqb, Code.Pcmpeqb_xmm_xmmm128); r.Add(&Pcmpeqw, Code.Pcmpeqw_xmm_xmmm128);
        r.Add(&Pcmpeqd, Code.Pcmpeqd_xmm_xmmm128);
        r.Add(&Pcmpgtb, Code.Pcmpgtb_xmm_xmmm128); r.Add(&Pcmpgtw, Code.Pcmpgtw_xmm_xmmm128);
        r.Add(&Pcmpgtd, Code.Pcmpgtd_xmm_xmmm128);
        r.Add(&Pand, Code.Pand_xmm_xmmm128, Code.Andps_xmm_xmmm128, Code.Andpd_xmm_xmmm128);
        r.Add(&Pandn, Code.Pandn_xmm_xmmm128, Code.Andnps_xmm_xmmm128, Code.Andnpd_xmm_xmmm128);
        r.Add(&Por, Code.Por_xmm_xmmm128, Code.Orps_xmm_xmmm128, Code.Orpd_xmm_xmmm128);
        r.Add(&Pxor, Code.Pxor_xmm_xmmm128, Code.Xorps_xmm_xmmm128, Code.Xorpd_xmm_xmmm128);
        r.Add(&ShiftReg, Code.Psllw_xmm_xmmm128, Code.Pslld_xmm_xmmm128, Code.Psllq_xmm_xmmm128,
            Code.Psrlw_xmm_xmmm128, Code.Psrld_xmm_xmmm128, Code.Psrlq_xmm_xmmm128,
            Code.Psraw_xmm_xmmm128, Code.Psrad_xmm_xmmm128);
        r.Add(&ShiftImm, Code.Psllw_xmm_imm8, Code.Pslld_xmm_imm8, Code.Psllq_xmm_imm8,
            Code.Psrlw_xmm_imm8, Code.Psrld_xmm_imm8, Code.Psrlq_xmm_imm8, Code.Psraw_xmm_imm8, Code.Psrad_xmm_imm8);
        r.Add(&Pslldq, Code.Pslldq_xmm_imm8);
        r.Add(&Psrldq, Code.Psrldq_xmm_imm8);
        r.Add(&Packsswb, Code.Packsswb_xmm_xmmm128);
        r.Add(&Packssdw, Code.Packssdw_xmm_xmmm128);
        r.Add(&Packuswb, Code.Packuswb_xmm_xmmm128);
        r.Add(&Punpcklbw, Code.Punpcklbw_xmm_xmmm128); r.Add(&Punpckhbw, Code.Punpckhbw_xmm_xmmm128);
        r.Add(&Punpcklwd, Code.Punpcklwd_xmm_xmmm128); r.Add(&Punpckhwd, Code.Punpckhwd_xmm_xmmm128);
        r.Add(&Punpckldq, Code.Punpckldq_xmm_xmmm128, Code.Unpcklps_xmm_xmmm128);
        r.Add(&Punpckhdq, Code.Punpckhdq_xmm_xmmm128, Code.Unpckhps_xmm_xmmm128);
        r.Add(&Punpcklqdq, Code.Punpcklqdq_xmm_xmmm128, Code.Unpcklpd_xmm_xmmm128);
        r.Add(&Punpckhqdq, Code.Punpckhqdq_xmm_xmmm128, Code.Unpckhpd_xmm_xmmm128);
        r.Add(&Pshufd, Code.Pshufd_xmm_xmmm128_imm8);
        r.Add(&Pshufhw, Code.Pshufhw_xmm_xmmm128_imm8);
        r.Add(&Pshuflw, Code.Pshuflw_xmm_xmmm128_imm8);
        r.Add(&Pinsrw, Code.Pinsrw_xmm_r32m16_imm8, Code.Pinsrw_xmm_r64m16_imm8);
        r.Add(&Pextrw, Code.Pextrw_r32_xmm_imm8, Code.Pextrw_r64_xmm_imm8);
        r.Add(&Shufps, Code.Shufps_xmm_xmmm128_imm8);
        r.Add(&Shufpd, Code.Shufpd_xmm_xmmm128_imm8);
    }

    /// <summary>Availability check, then operand 1 (XMM or aligned m128) and a reference to the destination.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ref Vector128<byte> Bin(Cpu c, ref Instruction i, out Vector128<byte> s)
    {
        Sse.Check(c, ref i);
        s = Sse.Src(c, ref i, 1);
        return ref Sse.Dst(c, ref i);
    }

    private static void Paddb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = d + s; }
    private static void Paddw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt16() + s.AsUInt16()).AsByte(); }
    private static void Paddd(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt32() + s.AsUInt32()).AsByte(); }
    private static void Paddq(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt64() + s.AsUInt64()).AsByte(); }
    private static void Psubb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = d - s; }
    private static void Psubw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt16() - s.AsUInt16()).AsByte(); }
    private static void Psubd(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt32() - s.AsUInt32()).AsByte(); }
    private static void Psubq(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt64() - s.AsUInt64()).AsByte(); }

    private static void Paddsb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.AddSaturate(d.AsSByte(), s.AsSByte()).AsByte(); }
    private static void Paddsw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.AddSaturate(d.AsInt16(), s.AsInt16()).AsByte(); }
    private static void Paddusb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.AddSaturate(d, s); }
    private static void Paddusw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.AddSaturate(d.AsUInt16(), s.AsUInt16()).AsByte(); }
    private static void Psubsb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.SubtractSaturate(d.AsSByte(), s.AsSByte()).AsByte(); }
    private static void Psubsw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.SubtractSaturate(d.AsInt16(), s.AsInt16()).AsByte(); }
    private static void Psubusb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.SubtractSaturate(d, s); }
    private static void Psubusw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.SubtractSaturate(d.AsUInt16(), s.AsUInt16()).AsByte(); }

    private static void Pmullw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = (d.AsUInt16() * s.AsUInt16()).AsByte(); }

    private static void Pmulhw(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var (al, ah) = Vector128.Widen(d.AsInt16());
        var (bl, bh) = Vector128.Widen(s.AsInt16());
        d = Vector128.Narrow(Vector128.ShiftRightArithmetic(al * bl, 16), Vector128.ShiftRightArithmetic(ah * bh, 16)).AsByte();
    }

    private static void Pmulhuw(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var (al, ah) = Vector128.Widen(d.AsUInt16());
        var (bl, bh) = Vector128.Widen(s.AsUInt16());
        d = Vector128.Narrow(Vector128.ShiftRightLogical(al * bl, 16), Vector128.ShiftRightLogical(ah * bh, 16)).AsByte();
    }

    private static void Pmuludq(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var m = Vector128.Create(0xFFFF_FFFFUL);
        d = ((d.AsUInt64() & m) * (s.AsUInt64() & m)).AsByte();
    }

    private static void Pmaddwd(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var a = d.AsInt16();
        var b = s.AsInt16();
        Vector128<int> r = default;
        for (int k = 0; k < 4; k++)
            r = r.WithElement(k, a.GetElement(2 * k) * b.GetElement(2 * k) + a.GetElement(2 * k + 1) * b.GetElement(2 * k + 1));
        d = r.AsByte();
    }

    private static void Pavgb(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var (al, ah) = Vector128.Widen(d);
        var (bl, bh) = Vector128.Widen(s);
        var one = Vector128.Create((ushort)1);
        d = Vector128.Narrow((al + bl + one) >> 1, (ah + bh + one) >> 1);
    }

    private static void Pavgw(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var (al, ah) = Vector128.Widen(d.AsUInt16());
        var (bl, bh) = Vector128.Widen(s.AsUInt16());
        var one = Vector128.Create(1u);
        d = Vector128.Narrow((al + bl + one) >> 1, (ah + bh + one) >> 1).AsByte();
    }

    private static void Pminub(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Min(d, s); }
    private static void Pmaxub(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Max(d, s); }
    private static void Pminsw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Min(d.AsInt16(), s.AsInt16()).AsByte(); }
    private static void Pmaxsw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Max(d.AsInt16(), s.AsInt16()).AsByte(); }

    private static void Psadbw(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var diff = Vector128.Max(d, s) - Vector128.Min(d, s);
        ulong lo = 0, hi = 0;
        for (int k = 0; k < 8; k++) { lo += diff.GetElement(k); hi += diff.GetElement(k + 8); }
        d = Vector128.Create(lo, hi).AsByte();
    }

    private static void Pcmpeqb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Equals(d, s); }
    private static void Pcmpeqw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Equals(d.AsUInt16(), s.AsUInt16()).AsByte(); }
    private static void Pcmpeqd(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.Equals(d.AsUInt32(), s.AsUInt32()).AsByte(); }
    private static void Pcmpgtb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.GreaterThan(d.AsSByte(), s.AsSByte()).AsByte(); }
    private static void Pcmpgtw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.GreaterThan(d.AsInt16(), s.AsInt16()).AsByte(); }
    private static void Pcmpgtd(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.GreaterThan(d.AsInt32(), s.AsInt32()).AsByte(); }

    private static void Pand(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = d & s; }
    private static void Pandn(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.AndNot(s, d); }
    private static void Por(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = d | s; }
    private static void Pxor(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = d ^ s; }

    /// <summary>Counts at or above the element width give 0 (logical) or sign fill (arithmetic), unlike C# shifts.</summary>
    private static Vector128<byte> Shift(Code code, Vector128<byte> v, ulong count)
    {
        switch (code)
        {
            case Code.Psllw_xmm_xmmm128: case Code.Psllw_xmm_imm8:
                return count > 15 ? default : Vector128.ShiftLeft(v.AsUInt16(), (int)count).AsByte();
            case Code.Pslld_xmm_xmmm128: case Code.Pslld_xmm_imm8:
                return count > 31 ? default : Vector128.ShiftLeft(v.AsUInt32(), (int)count).AsByte();
            case Code.Psllq_xmm_xmmm128: case Code.Psllq_xmm_imm8:
                return count > 63 ? default : Vector128.ShiftLeft(v.AsUInt64(), (int)count).AsByte();
            case Code.Psrlw_xmm_xmmm128: case Code.Psrlw_xmm_imm8:
                return count > 15 ? default : Vector128.ShiftRightLogical(v.AsUInt16(), (int)count).AsByte();
            case Code.Psrld_xmm_xmmm128: case Code.Psrld_xmm_imm8:
                return count > 31 ? default : Vector128.ShiftRightLogical(v.AsUInt32(), (int)count).AsByte();
            case Code.Psrlq_xmm_xmmm128: case Code.Psrlq_xmm_imm8:
                return count > 63 ? default : Vector128.ShiftRightLogical(v.AsUInt64(), (int)count).AsByte();
            case Code.Psraw_xmm_xmmm128: case Code.Psraw_xmm_imm8:
                return Vector128.ShiftRightArithmetic(v.AsInt16(), (int)Math.Min(count, 15)).AsByte();
            default:
                return Vector128.ShiftRightArithmetic(v.AsInt32(), (int)Math.Min(count, 31)).AsByte();
        }
    }

    private static void ShiftReg(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        d = Shift(i.Code, d, s.AsUInt64().GetElement(0));
    }

    private static void ShiftImm(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ref var d = ref Sse.Dst(c, ref i);
        d = Shift(i.Code, d, i.Immediate8);
    }

    private static void Pslldq(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ref var d = ref Sse.Dst(c, ref i);
        int n = i.Immediate8;
        d = n > 15 ? default : Vector128.Shuffle(d, Vector128<byte>.Indices - Vector128.Create((byte)n));
    }

    private static void Psrldq(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ref var d = ref Sse.Dst(c, ref i);
        int n = i.Immediate8;
        d = n > 15 ? default : Vector128.Shuffle(d, Vector128<byte>.Indices + Vector128.Create((byte)n));
    }

    private static void Packsswb(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.NarrowWithSaturation(d.AsInt16(), s.AsInt16()).AsByte(); }
    private static void Packssdw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = Vector128.NarrowWithSaturation(d.AsInt32(), s.AsInt32()).AsByte(); }

    private static void Packuswb(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        var z = Vector128<short>.Zero;
        d = Vector128.NarrowWithSaturation(Vector128.Max(d.AsInt16(), z).AsUInt16(), Vector128.Max(s.AsInt16(), z).AsUInt16());
    }

    // Interleaves as two byte shuffles: out-of-range indices (0xFF) select zero, so OR merges the halves.
    private static readonly Vector128<byte>[] s_unpack = BuildUnpack();

    private static Vector128<byte>[] BuildUnpack()
    {
        var t = new Vector128<byte>[16];
        int n = 0;
        var a = new byte[16];
        var b = new byte[16];
        foreach (int esize in new[] { 1, 2, 4, 8 })
        {
            foreach (int half in new[] { 0, 8 })
            {
                for (int k = 0; k < 16; k++)
                {
                    int elem = k / esize, byteInElem = k % esize;
                    int srcByte = half + (elem / 2) * esize + byteInElem;
                    a[k] = elem % 2 == 0 ? (byte)srcByte : (byte)0xFF;
                    b[k] = elem % 2 == 1 ? (byte)srcByte : (byte)0xFF;
                }
                t[n++] = Vector128.Create(a);
                t[n++] = Vector128.Create(b);
            }
        }
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<byte> Unpack(Vector128<byte> d, Vector128<byte> s, int which) =>
        Vector128.Shuffle(d, s_unpack[which]) | Vector128.Shuffle(s, s_unpack[which + 1]);

    // The host's own unpack instructions when present (identical semantics); the shuffle form otherwise.
    private static void Punpcklbw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = X86.Sse2.IsSupported ? X86.Sse2.UnpackLow(d, s) : Unpack(d, s, 0); }
    private static void Punpckhbw(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = X86.Sse2.IsSupported ? X86.Sse2.UnpackHigh(d, s) : Unpack(d, s, 2); }
    private static void Punpcklwd(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = X86.Sse2.IsSupported ? X86.Sse2.UnpackLow(d.AsUInt16(), s.AsUInt16()).AsByte() : Unpack(d, s, 4); }
    private static void Punpckhwd(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = X86.Sse2.IsSupported ? X86.Sse2.UnpackHigh(d.AsUInt16(), s.AsUInt16()).AsByte() : Unpack(d, s, 6); }
    private static void Punpckldq(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = X86.Sse2.IsSupported ? X86.Sse2.UnpackLow(d.AsUInt32(), s.AsUInt32()).AsByte() : Unpack(d, s, 8); }
    private static void Punpckhdq(Cpu c, ref Instruction i) { ref var d = ref Bin(c, ref i, out var s); d = X86.Sse2.IsSupported ? X86.Sse2.UnpackHigh(d.AsUInt32(), s.AsUInt32()).AsByte() : Unpack(d, s, 10); }

    private static void Punpcklqdq(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        d = Vector128.Create(d.AsUInt64().GetElement(0), s.AsUInt64().GetElement(0)).AsByte();
    }

    private static void Punpckhqdq(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        d = Vector128.Create(d.AsUInt64().GetElement(1), s.AsUInt64().GetElement(1)).AsByte();
    }

    private static void Pshufd(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        uint m = i.Immediate8;
        d = Vector128.Shuffle(s.AsUInt32(), Vector128.Create(m & 3, (m >> 2) & 3, (m >> 4) & 3, m >> 6)).AsByte();
    }

    private static void Pshufhw(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        ushort m = i.Immediate8;
        d = Vector128.Shuffle(s.AsUInt16(), Vector128.Create((ushort)0, 1, 2, 3,
            (ushort)(4 + (m & 3)), (ushort)(4 + ((m >> 2) & 3)), (ushort)(4 + ((m >> 4) & 3)), (ushort)(4 + (m >> 6)))).AsByte();
    }

    private static void Pshuflw(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        ushort m = i.Immediate8;
        d = Vector128.Shuffle(s.AsUInt16(), Vector128.Create((ushort)(m & 3), (ushort)((m >> 2) & 3),
            (ushort)((m >> 4) & 3), (ushort)(m >> 6), 4, 5, 6, 7)).AsByte();
    }

    private static void Pinsrw(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        ushort v = i.Op1Kind == OpKind.Register ? (ushort)c.GetReg(i.Op1Register) : c.Read16(c.MemLinear(ref i, 2, false));
        ref var d = ref Sse.Dst(c, ref i);
        d = d.AsUInt16().WithElement(i.Immediate8 & 7, v).AsByte();
    }

    private static void Pextrw(Cpu c, ref Instruction i)
    {
        Sse.Check(c, ref i);
        c.SetReg(i.Op0Register, c.Xmm[Sse.X(i.Op1Register)].AsUInt16().GetElement(i.Immediate8 & 7));
    }

    private static void Shufps(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        int m = i.Immediate8;
        var a = d.AsUInt32();
        var b = s.AsUInt32();
        d = Vector128.Create(a.GetElement(m & 3), a.GetElement((m >> 2) & 3), b.GetElement((m >> 4) & 3), b.GetElement(m >> 6)).AsByte();
    }

    private static void Shufpd(Cpu c, ref Instruction i)
    {
        ref var d = ref Bin(c, ref i, out var s);
        int m = i.Immediate8;
        d = Vector128.Create(d.AsUInt64().GetElement(m & 1), s.AsUInt64().GetElement((m >> 1) & 1)).AsByte();
    }
}
