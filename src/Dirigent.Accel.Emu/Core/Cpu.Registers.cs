using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    // Packed per-Iced-register info: bits 0..3 GPR index, bits 4..7 size in bytes, bit 8 = AH/CH/DH/BH.
    private static readonly ushort[] s_regInfo = BuildRegInfo();

    private static ushort[] BuildRegInfo()
    {
        var t = new ushort[IcedCounts.Registers];
        for (int k = 0; k < 16; k++)
        {
            t[(int)Register.RAX + k] = (ushort)(k | (8 << 4));
            t[(int)Register.EAX + k] = (ushort)(k | (4 << 4));
            t[(int)Register.AX + k] = (ushort)(k | (2 << 4));
        }
        // 8-bit registers in Iced order: AL CL DL BL AH CH DH BH SPL BPL SIL DIL R8L..R15L
        for (int k = 0; k < 4; k++) t[(int)Register.AL + k] = (ushort)(k | (1 << 4));
        for (int k = 0; k < 4; k++) t[(int)Register.AH + k] = (ushort)(k | (1 << 4) | 0x100);
        for (int k = 4; k < 16; k++) t[(int)Register.SPL + (k - 4)] = (ushort)(k | (1 << 4));
        return t;
    }

    // Iced only hands out defined Register values, all below the table's length, and GPR indices are masked to
    // 0..15 against a 16-entry array: the hot register paths skip the bounds checks.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int RegInfo(Register r) => Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(s_regInfo), (int)r);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ref ulong GprRef(int info) => ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(Gpr), info & 0xF);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int RegIndex(Register r) => RegInfo(r) & 0xF;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int RegSize(Register r) => (RegInfo(r) >> 4) & 0xF;

    /// <summary>Reads a general-purpose register of any width (zero-extended).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong GetReg(Register r)
    {
        int info = RegInfo(r);
        ulong v = GprRef(info);
        switch (info >> 4)
        {
            case 8: return v;
            case 4: return (uint)v;
            case 2: return (ushort)v;
            case 1: return (byte)v;
            default: return (byte)(v >> 8); // AH..BH
        }
    }

    /// <summary>Writes a general-purpose register with x86 merge rules: 8/16-bit writes merge, 32-bit writes zero-extend.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetReg(Register r, ulong value)
    {
        int info = RegInfo(r);
        ref ulong g = ref GprRef(info);
        switch (info >> 4)
        {
            case 8: g = value; break;
            case 4: g = (uint)value; break;
            case 2: g = (g & ~0xFFFFUL) | (ushort)value; break;
            case 1: g = (g & ~0xFFUL) | (byte)value; break;
            default: g = (g & ~0xFF00UL) | ((ulong)(byte)value << 8); break;
        }
    }

    /// <summary>Segment index (<see cref="Machine.Accel.Seg"/>) of an Iced segment register.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int SegIndex(Register r) => r switch
    {
        Register.ES => 0, Register.CS => 1, Register.SS => 2, Register.DS => 3, Register.FS => 4, Register.GS => 5,
        _ => 3,
    };

    public const int RAX = 0, RCX = 1, RDX = 2, RBX = 3, RSP = 4, RBP = 5, RSI = 6, RDI = 7;
    public const int ES = 0, CS = 1, SS = 2, DS = 3, FS = 4, GS = 5;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong SizeMask(int size) => size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
}
