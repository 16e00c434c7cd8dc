using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    private static readonly byte[] s_memSize = BuildMemSizes();

    private static byte[] BuildMemSizes()
    {
        var t = new byte[IcedCounts.MemorySizes];
        for (int k = 0; k < t.Length; k++) t[k] = (byte)Math.Min(255, ((MemorySize)k).GetSize());
        return t;
    }

    /// <summary>Size in bytes of the instruction's memory operand (from Iced's MemorySize).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int MemSize(ref Instruction i) => s_memSize[(int)i.MemorySize];

    /// <summary>Size in bytes of operand n when it is a register or memory operand.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int OpSize(ref Instruction i, int n)
    {
        OpKind k = i.GetOpKind(n);
        if (k == OpKind.Register) return RegSize(i.GetOpRegister(n));
        return MemSize(ref i);
    }

    /// <summary>
    /// Effective address (offset within the segment) of the memory operand. Iced already folds RIP-relative
    /// displacements into an absolute offset; the address size follows from the width of the base/index register.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong EffectiveAddress(ref Instruction i)
    {
        ulong ea = i.MemoryDisplacement64;
        Register b = i.MemoryBase, x = i.MemoryIndex;
        if (b == Register.None && x == Register.None) return ea;
        int asz = 8;
        if (b != Register.None)
        {
            if (b == Register.RIP) return ea;
            if (b == Register.EIP) return (uint)ea;
            int info = RegInfo(b);
            asz = (info >> 4) & 0xF;
            ea += GprRef(info);
        }
        if (x != Register.None)
        {
            int info = RegInfo(x);
            asz = (info >> 4) & 0xF;
            ea += GprRef(info) << BitScale(i.MemoryIndexScale);
        }
        return asz switch { 8 => ea, 4 => (uint)ea, _ => (ushort)ea };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int BitScale(int scale) => scale switch { 1 => 0, 2 => 1, 4 => 2, _ => 3 };

    /// <summary>Segment index (ES..GS) the memory operand uses, after overrides.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int MemSeg(ref Instruction i) => SegIndex(i.MemorySegment);

    /// <summary>Linear address of the memory operand, segment checks done for an access of size bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong MemLinear(ref Instruction i, int size, bool write) =>
        Linear(SegIndex(i.MemorySegment), EffectiveAddress(ref i), size, write);

    /// <summary>Reads operand n (register, memory or immediate), zero-extended, as size bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong ReadOp(ref Instruction i, int n, int size)
    {
        switch (i.GetOpKind(n))
        {
            case OpKind.Register: return GetReg(i.GetOpRegister(n));
            case OpKind.Memory: return ReadLinear(MemLinear(ref i, size, false), size);
            default: return i.GetImmediate(n) & SizeMask(size);
        }
    }

    /// <summary>Writes operand n (register or memory) with size bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WriteOp(ref Instruction i, int n, int size, ulong v)
    {
        if (i.GetOpKind(n) == OpKind.Register) SetReg(i.GetOpRegister(n), v);
        else WriteLinear(MemLinear(ref i, size, true), size, v);
    }

    public ulong ReadMem(int seg, ulong off, int size) => ReadLinear(Linear(seg, off, size, false), size);
    public void WriteMem(int seg, ulong off, int size, ulong v) => WriteLinear(Linear(seg, off, size, true), size, v);

    /// <summary>Masks an offset to the stack width (SP, ESP or RSP).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong StackMask(ulong v) => StackAddrSize switch { 8 => v, 4 => (uint)v, _ => (ushort)v };

    /// <summary>Writes RSP honouring the stack width (SP writes keep the upper bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetRspStack(ulong v)
    {
        switch (StackAddrSize)
        {
            case 8: Gpr[RSP] = v; break;
            case 4: Gpr[RSP] = (uint)v; break;
            default: Gpr[RSP] = (Gpr[RSP] & ~0xFFFFUL) | (ushort)v; break;
        }
    }

    /// <summary>Pushes size bytes; RSP changes only once the store succeeded, so a fault leaves it intact.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Push(ulong v, int size)
    {
        ulong sp = StackMask(Gpr[RSP] - (ulong)size);
        WriteLinear(Linear(SS, sp, size, true), size, v);
        SetRspStack(sp);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Pop(int size)
    {
        ulong sp = StackMask(Gpr[RSP]);
        ulong v = ReadLinear(Linear(SS, sp, size, false), size);
        SetRspStack(sp + (ulong)size);
        return v;
    }

    /// <summary>Reads size bytes at SP+offset without popping.</summary>
    public ulong PeekStack(ulong offset, int size) =>
        ReadLinear(Linear(SS, StackMask(Gpr[RSP] + offset), size, false), size);

    /// <summary>Operand size of a near branch/push in the current mode for this instruction (2, 4 or 8).</summary>
    public int StackOperandSize(ref Instruction i)
    {
        int s = i.StackPointerIncrement;
        return s < 0 ? -s : s;
    }

    /// <summary>Masks a branch target to the operand size's IP width and checks the CS limit outside 64-bit mode.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void JumpTo(ulong target)
    {
        if (CodeBits != 64)
        {
            if (target > Sreg[CS].Limit) throw new CpuException(Vec.GP, 0);
        }
        else if ((ulong)((long)(target << 16) >> 16) != target) throw new CpuException(Vec.GP, 0);
        Rip = target;
    }
}
