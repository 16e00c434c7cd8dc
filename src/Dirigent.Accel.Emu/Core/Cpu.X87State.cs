using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Dirigent.Accel.Emu.Core;

/// <summary>An x87 80-bit double extended value exactly as stored: 64-bit significand (explicit integer bit) and sign|exponent.</summary>
public struct F80
{
    public ulong M;
    public ushort SE;

    public F80(ulong m, ushort se) { M = m; SE = se; }

    public readonly bool Sign => (SE & 0x8000) != 0;
    public readonly int Exp => SE & 0x7FFF;
    public readonly bool IsZero => (SE & 0x7FFF) == 0 && M == 0;
    public readonly bool IsDenormal => (SE & 0x7FFF) == 0 && M != 0;
    public readonly bool IsInf => (SE & 0x7FFF) == 0x7FFF && M == 0x8000_0000_0000_0000UL;
    public readonly bool IsNaN => (SE & 0x7FFF) == 0x7FFF && (M >> 63) != 0 && (M << 1) != 0;
    public readonly bool IsSNaN => IsNaN && (M & 0x4000_0000_0000_0000UL) == 0;
    /// <summary>Pseudo-NaN/infinity and unnormals: a nonzero exponent without the integer bit. Modern CPUs reject them (#IA).</summary>
    public readonly bool IsUnsupported => (SE & 0x7FFF) != 0 && (M >> 63) == 0;

    public static readonly F80 Indefinite = new(0xC000_0000_0000_0000UL, 0xFFFF);
    public static readonly F80 Zero = new(0, 0);
    public static readonly F80 One = new(0x8000_0000_0000_0000UL, 0x3FFF);
}

public sealed partial class Cpu
{
    // x87 state, owned by the x87 instruction group. The physical register file is indexed by physical number;
    // ST(i) is FpuRegs[(FpuTop + i) & 7]. Tags are kept abridged (one "non-empty" bit per physical register, the
    // FXSAVE form): the full 2-bit tag word of FNSTENV/FNSAVE is derived from the register contents, as real
    // processors since the Pentium III do.
    public ushort Fcw = 0x37F;
    /// <summary>FPU status word without the TOP field (bits 11-13 always zero here); see <see cref="Fsw"/>.</summary>
    public ushort FswNoTop;
    public int FpuTop;
    /// <summary>Bit p set: physical register p holds a value.</summary>
    public byte FpuTags;
    public readonly F80[] FpuRegs = new F80[8];
    /// <summary>Last non-control instruction: opcode (11 bits), code and data pointers (64-bit offsets) and selectors.</summary>
    public ushort Fop, Fcs, Fds;
    public ulong Fip, Fdp;

    public const ushort FswIE = 1, FswDE = 2, FswZE = 4, FswOE = 8, FswUE = 0x10, FswPE = 0x20, FswSF = 0x40,
        FswES = 0x80, FswC0 = 0x100, FswC1 = 0x200, FswC2 = 0x400, FswC3 = 0x4000, FswB = 0x8000;

    /// <summary>The architectural status word, TOP included.</summary>
    public ushort Fsw
    {
        get => (ushort)((FswNoTop & ~0x3800) | (FpuTop & 7) << 11);
        set { FswNoTop = (ushort)(value & ~0x3800); FpuTop = (value >> 11) & 7; }
    }

    public byte FtwAbridged { get => FpuTags; set => FpuTags = value; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref F80 St(int i) => ref FpuRegs[(FpuTop + i) & 7];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool StEmpty(int i) => (FpuTags & (1 << ((FpuTop + i) & 7))) == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void StSetValid(int i) => FpuTags |= (byte)(1 << ((FpuTop + i) & 7));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void StSetEmpty(int i) => FpuTags &= (byte)~(1 << ((FpuTop + i) & 7));

    /// <summary>Marks ST0 empty and increments TOP.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FpuPop()
    {
        FpuTags &= (byte)~(1 << (FpuTop & 7));
        FpuTop = (FpuTop + 1) & 7;
    }

    /// <summary>Full 2-bit tag word (00 valid, 01 zero, 10 special, 11 empty), by physical register.</summary>
    public ushort FullTagWord()
    {
        int w = 0;
        for (int p = 0; p < 8; p++)
        {
            int t;
            if ((FpuTags & (1 << p)) == 0) t = 3;
            else
            {
                F80 v = FpuRegs[p];
                if (v.IsZero) t = 1;
                else if (v.Exp == 0x7FFF || v.Exp == 0 || (v.M >> 63) == 0) t = 2;
                else t = 0;
            }
            w |= t << (2 * p);
        }
        return (ushort)w;
    }

    /// <summary>Loads a full tag word: only "empty" versus "not empty" is kept (the rest follows from the contents).</summary>
    public void SetFullTagWord(ushort w)
    {
        int t = 0;
        for (int p = 0; p < 8; p++) if (((w >> (2 * p)) & 3) != 3) t |= 1 << p;
        FpuTags = (byte)t;
    }

    /// <summary>FNINIT/FINIT state (also reset/INIT).</summary>
    public void FpuInit()
    {
        Fcw = 0x37F;
        FswNoTop = 0;
        FpuTop = 0;
        FpuTags = 0;
        Fop = 0; Fcs = 0; Fds = 0; Fip = 0; Fdp = 0;
    }

    /// <summary>Writes FCW..FDP and ST0-ST7 of the FXSAVE layout (64-bit FIP/FDP format; the guest's 32-bit
    /// FXSAVE rewrites bytes 8-23 itself).</summary>
    internal void SaveX87(Span<byte> area)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(area, Fcw);
        BinaryPrimitives.WriteUInt16LittleEndian(area[2..], Fsw);
        area[4] = FpuTags;
        area[5] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(area[6..], Fop);
        BinaryPrimitives.WriteUInt64LittleEndian(area[8..], Fip);
        BinaryPrimitives.WriteUInt64LittleEndian(area[16..], Fdp);
        for (int i = 0; i < 8; i++)
        {
            var s = area.Slice(32 + 16 * i, 16);
            F80 v = St(i);
            BinaryPrimitives.WriteUInt64LittleEndian(s, v.M);
            BinaryPrimitives.WriteUInt16LittleEndian(s[8..], v.SE);
            s[10..].Clear();
        }
    }

    internal void LoadX87(ReadOnlySpan<byte> area)
    {
        Fcw = FcwValue(BinaryPrimitives.ReadUInt16LittleEndian(area));
        Fsw = BinaryPrimitives.ReadUInt16LittleEndian(area[2..]);
        FpuTags = area[4];
        Fop = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(area[6..]) & 0x7FF);
        Fip = BinaryPrimitives.ReadUInt64LittleEndian(area[8..]);
        Fdp = BinaryPrimitives.ReadUInt64LittleEndian(area[16..]);
        Fcs = 0; Fds = 0; // not part of the 64-bit image; the 32-bit FXRSTOR sets them afterwards
        for (int i = 0; i < 8; i++)
        {
            var s = area.Slice(32 + 16 * i, 16);
            St(i) = new F80(BinaryPrimitives.ReadUInt64LittleEndian(s), BinaryPrimitives.ReadUInt16LittleEndian(s[8..]));
        }
    }

    /// <summary>Reserved FCW bits: 6 reads as 1, 13-15 as 0.</summary>
    public static ushort FcwValue(int v) => (ushort)((v & 0x1F3F) | 0x40);

    /// <summary>ES and B follow from the exception flags that FCW leaves unmasked.</summary>
    public void FpuUpdateSummary()
    {
        if ((FswNoTop & ~Fcw & 0x3F) != 0) FswNoTop |= FswES | FswB;
        else FswNoTop &= unchecked((ushort)~(FswES | FswB));
    }
}
