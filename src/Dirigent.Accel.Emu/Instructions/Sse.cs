using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// SSE/SSE2/SSE3/SSSE3 (legacy encodings, XMM forms). The group is split by sub-family into Sse*.cs files; this class
/// installs them all and holds the shared operand plumbing: the CR0/CR4 availability checks, XMM register access and
/// 128-bit memory operands with the legacy-SSE alignment rule. Not here: the mm-register forms (including
/// CVTPI2PS/CVTPS2PI/MOVQ2DQ/MASKMOVQ/PSHUFW and SSSE3 on mm), which are in <see cref="Mmx"/> because MMX state
/// aliases the x87 registers and has its own checks; AMD SSE4a (EXTRQ, INSERTQ, MOVNTSS/SD); fences, prefetches and CLFLUSH; FXSAVE/FXRSTOR (x87 group).
/// </summary>
internal static unsafe class Sse
{
    public static void Install(HandlerRegistry r)
    {
        SseMove.Install(r);
        SseInt.Install(r);
        Ssse3.Install(r);
        SseFloat.Install(r);
        SseConvert.Install(r);
    }

    /// <summary>
    /// CR0.EM=1, CR4.OSFXSR=0 or a LOCK prefix → #UD; CR0.TS=1 → #NM (SDM vol. 2, "SIMD floating-point exceptions"
    /// tables). The decoder runs without Iced's invalid-LOCK check, so the LOCK test is ours.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Check(Cpu c, ref Instruction i)
    {
        if (!Available(c) || i.HasLockPrefix) Unavailable(c, i.HasLockPrefix);
    }

    /// <summary>CR0.EM=0, CR0.TS=0 and CR4.OSFXSR=1: SSE instructions may run (the compiled tier checks this once per block).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Available(Cpu c) => ((c.Cr0 & (Cpu.Cr0EM | Cpu.Cr0TS)) | (~c.Cr4 & Cpu.Cr4OSFXSR)) == 0;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Unavailable(Cpu c, bool locked)
    {
        if (locked || (c.Cr0 & Cpu.Cr0EM) != 0 || (c.Cr4 & Cpu.Cr4OSFXSR) == 0) throw new CpuException(Vec.UD);
        throw new CpuException(Vec.NM);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int X(Register r) => r - Register.XMM0;

    /// <summary>The XMM register named by operand 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ref Vector128<byte> Dst(Cpu c, ref Instruction i) => ref c.Xmm[i.Op0Register - Register.XMM0];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> Read128(Cpu c, ulong la) => Vector128.Create(c.Read64(la), c.Read64(la + 8)).AsByte();

    /// <summary>16-byte store; both pages are checked first so a fault on the second leaves memory untouched.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write128(Cpu c, ulong la, Vector128<byte> v)
    {
        if ((la & 0xFFF) > 0xFF0) ProbeWrite(c, la);
        c.Write64(la, v.AsUInt64().GetElement(0));
        c.Write64(la + 8, v.AsUInt64().GetElement(1));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ProbeWrite(Cpu c, ulong la)
    {
        c.Translate(la, Access.Write, c.Cpl == 3);
        c.Translate(la + 15, Access.Write, c.Cpl == 3);
    }

    /// <summary>Linear address of a 16-byte memory operand that must be aligned (#GP(0) otherwise).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Aligned(Cpu c, ref Instruction i, bool write)
    {
        ulong la = c.MemLinear(ref i, 16, write);
        if ((la & 15) != 0) throw new CpuException(Vec.GP, 0);
        return la;
    }

    /// <summary>Operand n as 128 bits: an XMM register or an aligned m128.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> Src(Cpu c, ref Instruction i, int n)
    {
        if (i.GetOpKind(n) == OpKind.Register) return c.Xmm[i.GetOpRegister(n) - Register.XMM0];
        return Read128(c, Aligned(c, ref i, false));
    }

    /// <summary>Operand n as 128 bits where memory need not be aligned (MOVUPS, MOVDQU, LDDQU, MOVUPD).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<byte> SrcU(Cpu c, ref Instruction i, int n)
    {
        if (i.GetOpKind(n) == OpKind.Register) return c.Xmm[i.GetOpRegister(n) - Register.XMM0];
        return Read128(c, c.MemLinear(ref i, 16, false));
    }

    /// <summary>Operand n's low 64 bits: an XMM register's low quadword or an m64 (no alignment rule).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Src64(Cpu c, ref Instruction i, int n)
    {
        if (i.GetOpKind(n) == OpKind.Register) return c.Xmm[i.GetOpRegister(n) - Register.XMM0].AsUInt64().GetElement(0);
        return c.Read64(c.MemLinear(ref i, 8, false));
    }

    /// <summary>Operand n's low 32 bits: an XMM register's low doubleword or an m32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Src32(Cpu c, ref Instruction i, int n)
    {
        if (i.GetOpKind(n) == OpKind.Register) return c.Xmm[i.GetOpRegister(n) - Register.XMM0].AsUInt32().GetElement(0);
        return c.Read32(c.MemLinear(ref i, 4, false));
    }
}
