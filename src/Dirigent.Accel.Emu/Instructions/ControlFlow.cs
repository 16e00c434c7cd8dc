using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>Near and far JMP/CALL/RET, Jcc, LOOPcc, JrCXZ, INT n/INT3/INTO, IRET, ENTER/LEAVE.</summary>
internal static unsafe class ControlFlow
{
    public static void Install(HandlerRegistry r)
    {
        foreach (Code c in Enum.GetValues<Code>())
        {
            if (c.IsJccShortOrNear()) r.Add(&Jcc, c);
            else if (c.IsJmpShortOrNear()) r.Add(&JmpRel, c);
        }
    }

    private static void Jcc(Cpu c, ref Instruction i)
    {
        if (c.TestCondition(i.ConditionCode)) c.JumpTo(i.NearBranchTarget);
    }

    private static void JmpRel(Cpu c, ref Instruction i) => c.JumpTo(i.NearBranchTarget);
}
