using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>PUSH/POP (register, memory, immediate), PUSHF/POPF, PUSHA/POPA, ENTER, LEAVE.</summary>
internal static unsafe class IntegerStack
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&PushR64, Code.Push_r64);
        r.Add(&PopR64, Code.Pop_r64);
        r.Add(&PushR, Code.Push_r16, Code.Push_r32);
        r.Add(&PopR, Code.Pop_r16, Code.Pop_r32);
        r.Add(&PushRm, Code.Push_rm16, Code.Push_rm32, Code.Push_rm64);
        r.Add(&PopRm, Code.Pop_rm16, Code.Pop_rm32, Code.Pop_rm64);
        r.Add(&PushImm, Code.Push_imm16, Code.Pushd_imm32, Code.Pushq_imm32, Code.Pushw_imm8, Code.Pushd_imm8, Code.Pushq_imm8);
        r.Add(&Pushf, Code.Pushfw, Code.Pushfd, Code.Pushfq);
        // POPF may change TF, IF, IOPL, AC: end the block so the run loop sees interrupts and mode at once.
        r.Add(&Popf, true, Code.Popfw, Code.Popfd, Code.Popfq);
        r.Add(&Pusha, Code.Pushaw, Code.Pushad);
        r.Add(&Popa, Code.Popaw, Code.Popad);
        r.Add(&Enter, Code.Enterw_imm16_imm8, Code.Enterd_imm16_imm8, Code.Enterq_imm16_imm8);
        r.Add(&Leave, Code.Leavew, Code.Leaved, Code.Leaveq);
    }

    private static int PushSize(ref Instruction i)
    {
        int s = i.StackPointerIncrement;
        return s < 0 ? -s : s;
    }

    private static void PushR64(Cpu c, ref Instruction i)
    {
        ulong v = c.Gpr[Cpu.RegIndex(i.Op0Register)];
        ulong sp = c.Gpr[Cpu.RSP] - 8;
        c.Write64(sp, v);
        c.Gpr[Cpu.RSP] = sp;
    }

    private static void PopR64(Cpu c, ref Instruction i)
    {
        ulong sp = c.Gpr[Cpu.RSP];
        ulong v = c.Read64(sp);
        c.Gpr[Cpu.RSP] = sp + 8;
        c.Gpr[Cpu.RegIndex(i.Op0Register)] = v; // POP RSP: the popped value wins over the increment
    }

    private static void PushR(Cpu c, ref Instruction i)
    {
        Register r = i.Op0Register;
        c.Push(c.GetReg(r), Cpu.RegSize(r));
    }

    private static void PopR(Cpu c, ref Instruction i)
    {
        Register r = i.Op0Register;
        ulong v = c.Pop(Cpu.RegSize(r));
        c.SetReg(r, v);
    }

    private static void PushRm(Cpu c, ref Instruction i)
    {
        int size = PushSize(ref i);
        // A memory operand based on RSP uses the value before the decrement.
        c.Push(c.ReadOp(ref i, 0, size), size);
    }

    private static void PopRm(Cpu c, ref Instruction i)
    {
        int size = PushSize(ref i);
        if (i.Op0Kind == OpKind.Register)
        {
            ulong v = c.Pop(size);
            c.SetReg(i.Op0Register, v);
            return;
        }
        // The destination address is computed with RSP already incremented (SDM POP); if the store faults the
        // instruction must restart with the original RSP.
        ulong oldRsp = c.Gpr[Cpu.RSP];
        ulong val = c.Pop(size);
        try
        {
            c.WriteLinear(c.MemLinear(ref i, size, true), size, val);
        }
        catch (CpuException)
        {
            c.Gpr[Cpu.RSP] = oldRsp;
            throw;
        }
    }

    private static void PushImm(Cpu c, ref Instruction i) => c.Push(i.GetImmediate(0), PushSize(ref i));

    private static ulong Iopl(Cpu c) => (c.Rflags >> 12) & 3;

    private static void Pushf(Cpu c, ref Instruction i)
    {
        ulong f = c.Rflags;
        if (c.IsV86Mode && ((f >> 12) & 3) != 3) throw Cpu.GP0();
        // VM and RF always read as 0 in the pushed image.
        c.Push(f & ~(Cpu.VM | Cpu.RF), PushSize(ref i));
    }

    private const ulong PopfWritable = Cpu.CF | Cpu.PF | Cpu.AF | Cpu.ZF | Cpu.SF | Cpu.TF | Cpu.IF | Cpu.DF | Cpu.OF |
        Cpu.IOPL | Cpu.NT | Cpu.AC | Cpu.ID;

    private static void Popf(Cpu c, ref Instruction i)
    {
        ulong old = c.Rflags;
        ulong iopl = (old >> 12) & 3;
        if (c.IsV86Mode && iopl != 3) throw Cpu.GP0();
        int size = PushSize(ref i);
        ulong v = c.Pop(size);
        ulong mask = PopfWritable;
        if (c.ProtectedMode && c.Cpl != 0) mask &= ~Cpu.IOPL; // also V86 (CPL 3)
        if (c.ProtectedMode && (ulong)c.Cpl > iopl) mask &= ~Cpu.IF;
        if (size == 2) mask &= 0xFFFF;
        c.Rflags = ((old & ~mask) | (v & mask)) & ~Cpu.RF;
        if ((v & mask & Cpu.IF) != 0) c.OnInterruptsMaybeEnabled();
        c.EndBlock();
    }

    // PUSHA/POPA (legacy modes only; Iced does not decode them in 64-bit mode) work on a temporary stack pointer
    // and commit it at the end, so a fault half-way leaves ESP and the registers as they were.
    private static void Pusha(Cpu c, ref Instruction i)
    {
        int size = i.Code == Code.Pushaw ? 2 : 4;
        ulong mask = Cpu.SizeMask(size);
        ulong origSp = c.Gpr[Cpu.RSP];
        ulong sp = c.Gpr[Cpu.RSP];
        for (int r = 0; r < 8; r++)
        {
            ulong v = r == Cpu.RSP ? origSp : c.Gpr[r];
            sp = c.StackMask(sp - (ulong)size);
            c.WriteLinear(c.Linear(Cpu.SS, sp, size, true), size, v & mask);
        }
        c.SetRspStack(sp);
    }

    private static void Popa(Cpu c, ref Instruction i)
    {
        int size = i.Code == Code.Popaw ? 2 : 4;
        Span<ulong> vals = stackalloc ulong[8];
        ulong sp = c.StackMask(c.Gpr[Cpu.RSP]);
        for (int r = 7; r >= 0; r--)
        {
            vals[r] = c.ReadLinear(c.Linear(Cpu.SS, sp, size, false), size);
            sp = c.StackMask(sp + (ulong)size);
        }
        for (int r = 0; r < 8; r++)
        {
            if (r == Cpu.RSP) continue; // the stored SP is skipped
            if (size == 2) c.Gpr[r] = (c.Gpr[r] & ~0xFFFFUL) | vals[r];
            else c.Gpr[r] = vals[r];
        }
        c.SetRspStack(sp);
    }

    /// <summary>ENTER imm16, imm8 (SDM): frame-pointer pushes use a temporary stack pointer, committed at the end.</summary>
    private static void Enter(Cpu c, ref Instruction i)
    {
        int size = i.Code switch { Code.Enterw_imm16_imm8 => 2, Code.Enterd_imm16_imm8 => 4, _ => 8 };
        ulong alloc = i.Immediate16;
        int level = i.Immediate8_2nd & 31;
        ulong mask = Cpu.SizeMask(size);
        ulong sp = c.Gpr[Cpu.RSP];
        ulong bp = c.Gpr[Cpu.RBP];

        sp = c.StackMask(sp - (ulong)size);
        c.WriteLinear(c.Linear(Cpu.SS, sp, size, true), size, bp & mask);
        ulong frameTemp = sp;
        if (level > 0)
        {
            ulong tbp = bp;
            for (int k = 1; k < level; k++)
            {
                tbp = c.StackMask(tbp - (ulong)size);
                ulong v = c.ReadLinear(c.Linear(Cpu.SS, tbp, size, false), size);
                sp = c.StackMask(sp - (ulong)size);
                c.WriteLinear(c.Linear(Cpu.SS, sp, size, true), size, v);
            }
            sp = c.StackMask(sp - (ulong)size);
            c.WriteLinear(c.Linear(Cpu.SS, sp, size, true), size, frameTemp & mask);
        }
        ulong newSp = c.StackMask(sp - alloc);
        // The new stack top must be inside the stack segment (#SS); 64-bit mode has no limit to check.
        if (alloc != 0 && !c.Is64BitMode) c.Linear(Cpu.SS, newSp, 1, true);
        switch (size)
        {
            case 2: c.Gpr[Cpu.RBP] = (c.Gpr[Cpu.RBP] & ~0xFFFFUL) | (ushort)frameTemp; break;
            case 4: c.Gpr[Cpu.RBP] = (uint)frameTemp; break;
            default: c.Gpr[Cpu.RBP] = frameTemp; break;
        }
        c.SetRspStack(newSp);
    }

    private static void Leave(Cpu c, ref Instruction i)
    {
        int size = i.Code switch { Code.Leavew => 2, Code.Leaved => 4, _ => 8 };
        ulong sp = c.StackMask(c.Gpr[Cpu.RBP]);
        ulong v = c.ReadLinear(c.Linear(Cpu.SS, sp, size, false), size);
        c.SetRspStack(sp + (ulong)size);
        switch (size)
        {
            case 2: c.Gpr[Cpu.RBP] = (c.Gpr[Cpu.RBP] & ~0xFFFFUL) | v; break;
            case 4: c.Gpr[Cpu.RBP] = (uint)v; break;
            default: c.Gpr[Cpu.RBP] = v; break;
        }
    }
}
