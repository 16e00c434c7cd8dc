using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>Data movement: MOV, MOVZX/MOVSX/MOVSXD, LEA, PUSH/POP, XCHG, CMOVcc, SETcc, NOP, CBW..CQO, ...</summary>
internal static unsafe class IntegerData
{
    public static void Install(HandlerRegistry r)
    {
        foreach (Code c in Enum.GetValues<Code>())
        {
            switch (c.Mnemonic())
            {
                case Mnemonic.Mov:
                    if (c is >= Code.Mov_rm8_r8 and <= Code.Mov_moffs64_RAX || c is >= Code.Mov_r8_imm8 and <= Code.Mov_rm64_imm32)
                        r.Add(&Mov, c);
                    break;
                case Mnemonic.Lea: r.Add(&Lea, c); break;
                case Mnemonic.Nop: r.Add(&Nop, c); break;
            }
        }
        // MOV to/from segment registers is not in the ranges above (Iced lists it separately): see SystemInstructions.
    }

    private static void Mov(Cpu c, ref Instruction i)
    {
        if (i.Op0Kind == OpKind.Register)
        {
            Register r = i.Op0Register;
            if (r >= Register.ES && r <= Register.GS) throw new InvalidOperationException("segment MOV routed to Mov");
            int size = Cpu.RegSize(r);
            c.SetReg(r, i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : c.ReadOp(ref i, 1, size));
        }
        else
        {
            int size = Cpu.MemSize(ref i);
            ulong v = i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : i.GetImmediate(1);
            c.WriteLinear(c.MemLinear(ref i, size, true), size, v);
        }
    }

    private static void Lea(Cpu c, ref Instruction i) => c.SetReg(i.Op0Register, c.EffectiveAddress(ref i));

    private static void Nop(Cpu c, ref Instruction i) { }
}
