using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>Near control transfers: JMP/CALL (relative and indirect), RET, Jcc, LOOPcc, JrCXZ.</summary>
internal static unsafe class ControlFlow
{
    public static void Install(HandlerRegistry r)
    {
        foreach (Code c in Enum.GetValues<Code>())
        {
            if (c.IsJccShortOrNear()) r.Add(&Jcc, c);
            else if (c.IsJmpShortOrNear()) r.Add(&JmpRel, c);
        }
        r.Add(&CallRel64, Code.Call_rel32_64);
        r.Add(&CallRel, Code.Call_rel16, Code.Call_rel32_32);
        r.Add(&CallIndirect64, Code.Call_rm64);
        r.Add(&CallIndirect, Code.Call_rm16, Code.Call_rm32);
        r.Add(&JmpIndirect, Code.Jmp_rm16, Code.Jmp_rm32, Code.Jmp_rm64);
        r.Add(&Retnq, Code.Retnq);
        r.Add(&Retn, Code.Retnw, Code.Retnd, Code.Retnw_imm16, Code.Retnd_imm16, Code.Retnq_imm16);

        r.Add(&LoopCx, Code.Loop_rel8_16_CX, Code.Loop_rel8_32_CX);
        r.Add(&LoopEcx, Code.Loop_rel8_16_ECX, Code.Loop_rel8_32_ECX, Code.Loop_rel8_64_ECX);
        r.Add(&LoopRcx, Code.Loop_rel8_16_RCX, Code.Loop_rel8_64_RCX);
        r.Add(&LoopeCx, Code.Loope_rel8_16_CX, Code.Loope_rel8_32_CX);
        r.Add(&LoopeEcx, Code.Loope_rel8_16_ECX, Code.Loope_rel8_32_ECX, Code.Loope_rel8_64_ECX);
        r.Add(&LoopeRcx, Code.Loope_rel8_16_RCX, Code.Loope_rel8_64_RCX);
        r.Add(&LoopneCx, Code.Loopne_rel8_16_CX, Code.Loopne_rel8_32_CX);
        r.Add(&LoopneEcx, Code.Loopne_rel8_16_ECX, Code.Loopne_rel8_32_ECX, Code.Loopne_rel8_64_ECX);
        r.Add(&LoopneRcx, Code.Loopne_rel8_16_RCX, Code.Loopne_rel8_64_RCX);
        r.Add(&Jcxz, Code.Jcxz_rel8_16, Code.Jcxz_rel8_32);
        r.Add(&Jecxz, Code.Jecxz_rel8_16, Code.Jecxz_rel8_32, Code.Jecxz_rel8_64);
        r.Add(&Jrcxz, Code.Jrcxz_rel8_16, Code.Jrcxz_rel8_64);
    }

    // Iced masks NearBranchTarget to the operand size (NearBranch16/32/64), so 16-bit forms wrap within 64K.
    private static void Jcc(Cpu c, ref Instruction i)
    {
        if (c.TestCondition(i.ConditionCode)) c.JumpTo(i.NearBranchTarget);
    }

    private static void JmpRel(Cpu c, ref Instruction i) => c.JumpTo(i.NearBranchTarget);

    /// <summary>64-bit mode only: SS has no base or limit there, so the return address is stored directly.</summary>
    private static void CallRel64(Cpu c, ref Instruction i)
    {
        ulong ret = c.Rip;
        c.JumpTo(i.NearBranchTarget);
        ulong sp = c.Gpr[Cpu.RSP] - 8;
        c.Write64(sp, ret);
        c.Gpr[Cpu.RSP] = sp;
    }

    // The target is checked (JumpTo) before the push, as the SDM orders it, so a bad target leaves RSP alone.
    private static void CallRel(Cpu c, ref Instruction i)
    {
        ulong ret = c.Rip;
        c.JumpTo(i.NearBranchTarget);
        c.Push(ret, i.Code == Code.Call_rel16 ? 2 : 4);
    }

    private static void CallIndirect64(Cpu c, ref Instruction i)
    {
        ulong target = i.Op0Kind == OpKind.Register ? c.Gpr[Cpu.RegIndex(i.Op0Register)] : c.ReadOp(ref i, 0, 8);
        ulong ret = c.Rip;
        c.JumpTo(target);
        ulong sp = c.Gpr[Cpu.RSP] - 8;
        c.Write64(sp, ret);
        c.Gpr[Cpu.RSP] = sp;
    }

    private static void CallIndirect(Cpu c, ref Instruction i)
    {
        int size = i.Code == Code.Call_rm16 ? 2 : 4;
        ulong target = c.ReadOp(ref i, 0, size) & Cpu.SizeMask(size);
        ulong ret = c.Rip;
        c.JumpTo(target);
        c.Push(ret, size);
    }

    private static void JmpIndirect(Cpu c, ref Instruction i)
    {
        int size = i.Code switch { Code.Jmp_rm16 => 2, Code.Jmp_rm32 => 4, _ => 8 };
        c.JumpTo(c.ReadOp(ref i, 0, size) & Cpu.SizeMask(size));
    }

    private static void Retnq(Cpu c, ref Instruction i)
    {
        if (c.StackAddrSize == 8)
        {
            ulong sp = c.Gpr[Cpu.RSP];
            c.JumpTo(c.Read64(sp));
            c.Gpr[Cpu.RSP] = sp + 8;
            return;
        }
        Retn(c, ref i);
    }

    /// <summary>RET/RET imm16: the popped target is checked before RSP moves, so a #GP leaves the stack intact.</summary>
    private static void Retn(Cpu c, ref Instruction i)
    {
        int size = i.Code switch
        {
            Code.Retnw or Code.Retnw_imm16 => 2,
            Code.Retnd or Code.Retnd_imm16 => 4,
            _ => 8,
        };
        ulong target = c.PeekStack(0, size);
        c.JumpTo(target);
        ulong imm = i.OpCount > 0 ? i.Immediate16 : 0u;
        c.SetRspStack(c.StackMask(c.Gpr[Cpu.RSP]) + (ulong)size + imm);
    }

    // LOOPcc decrements the count register named by the address size (CX merges, ECX zero-extends) without
    // touching flags, then branches if it is non-zero (and ZF matches for LOOPE/LOOPNE).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong DecCx(Cpu c) { ulong v = (ushort)(c.Gpr[Cpu.RCX] - 1); c.Gpr[Cpu.RCX] = (c.Gpr[Cpu.RCX] & ~0xFFFFUL) | v; return v; }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong DecEcx(Cpu c) { ulong v = (uint)(c.Gpr[Cpu.RCX] - 1); c.Gpr[Cpu.RCX] = v; return v; }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong DecRcx(Cpu c) => --c.Gpr[Cpu.RCX];

    private static void LoopCx(Cpu c, ref Instruction i) { if (DecCx(c) != 0) c.JumpTo(i.NearBranchTarget); }
    private static void LoopEcx(Cpu c, ref Instruction i) { if (DecEcx(c) != 0) c.JumpTo(i.NearBranchTarget); }
    private static void LoopRcx(Cpu c, ref Instruction i) { if (DecRcx(c) != 0) c.JumpTo(i.NearBranchTarget); }
    private static void LoopeCx(Cpu c, ref Instruction i) { if (DecCx(c) != 0 && c.GetZF()) c.JumpTo(i.NearBranchTarget); }
    private static void LoopeEcx(Cpu c, ref Instruction i) { if (DecEcx(c) != 0 && c.GetZF()) c.JumpTo(i.NearBranchTarget); }
    private static void LoopeRcx(Cpu c, ref Instruction i) { if (DecRcx(c) != 0 && c.GetZF()) c.JumpTo(i.NearBranchTarget); }
    private static void LoopneCx(Cpu c, ref Instruction i) { if (DecCx(c) != 0 && !c.GetZF()) c.JumpTo(i.NearBranchTarget); }
    private static void LoopneEcx(Cpu c, ref Instruction i) { if (DecEcx(c) != 0 && !c.GetZF()) c.JumpTo(i.NearBranchTarget); }
    private static void LoopneRcx(Cpu c, ref Instruction i) { if (DecRcx(c) != 0 && !c.GetZF()) c.JumpTo(i.NearBranchTarget); }

    private static void Jcxz(Cpu c, ref Instruction i) { if ((ushort)c.Gpr[Cpu.RCX] == 0) c.JumpTo(i.NearBranchTarget); }
    private static void Jecxz(Cpu c, ref Instruction i) { if ((uint)c.Gpr[Cpu.RCX] == 0) c.JumpTo(i.NearBranchTarget); }
    private static void Jrcxz(Cpu c, ref Instruction i) { if (c.Gpr[Cpu.RCX] == 0) c.JumpTo(i.NearBranchTarget); }
}
