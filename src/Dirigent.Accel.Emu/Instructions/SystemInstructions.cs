using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>HLT, CLI/STI, IN/OUT, MOV CRn/DRn, descriptor tables, MSRs, CPUID, SYSCALL/SYSENTER, ...</summary>
internal static unsafe class SystemInstructions
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Hlt, true, Code.Hlt);
        r.Add(&Cli, Code.Cli);
        r.Add(&Sti, true, Code.Sti);
        r.Add(&OutImm, true, Code.Out_imm8_AL, Code.Out_imm8_AX, Code.Out_imm8_EAX);
        r.Add(&OutDx, true, Code.Out_DX_AL, Code.Out_DX_AX, Code.Out_DX_EAX);
        r.Add(&InImm, Code.In_AL_imm8, Code.In_AX_imm8, Code.In_EAX_imm8);
        r.Add(&InDx, Code.In_AL_DX, Code.In_AX_DX, Code.In_EAX_DX);
    }

    private static void Hlt(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        c.Halt();
    }

    /// <summary>CLI/STI are IOPL-sensitive in protected mode (no PVI/VME support).</summary>
    private static void CheckIopl(Cpu c)
    {
        if (c.ProtectedMode && c.Cpl > (int)((c.Rflags >> 12) & 3)) throw Cpu.GP0();
    }

    private static void Cli(Cpu c, ref Instruction i)
    {
        CheckIopl(c);
        c.SetFlag(Cpu.IF, false);
    }

    private static void Sti(Cpu c, ref Instruction i)
    {
        CheckIopl(c);
        if (!c.InterruptsEnabled)
        {
            c.SetFlag(Cpu.IF, true);
            c.InterruptShadow = true;
            c.OnInterruptsMaybeEnabled();
        }
        c.EndBlock();
    }

    /// <summary>I/O permission: CPL &lt;= IOPL, else the TSS I/O bitmap decides (SDM 19.5).</summary>
    internal static void CheckIo(Cpu c, ushort port, int size)
    {
        if (c.IoBpArmed) c.NoteIoAccess(port, size);
        if (!c.ProtectedMode) return;
        if (!c.IsV86Mode && c.Cpl <= (int)((c.Rflags >> 12) & 3)) return;
        var tr = c.Tr;
        if ((tr.Type & 8) == 0 || tr.Limit < 0x67) throw Cpu.GP0();
        ulong mapBase = c.ReadSystem(tr.Base + 0x66, 2);
        ulong byteOff = mapBase + (ulong)(port >> 3);
        if (byteOff + 1 > tr.Limit) throw Cpu.GP0();
        ulong bits = c.ReadSystem(tr.Base + byteOff, 2);
        ulong mask = ((1UL << size) - 1) << (port & 7);
        if ((bits & mask) != 0) throw Cpu.GP0();
    }

    private static int IoSize(ref Instruction i) => Cpu.RegSize(i.Op0Kind == OpKind.Register ? i.Op0Register : i.Op1Register);

    private static void DoOut(Cpu c, ushort port, int size)
    {
        CheckIo(c, port, size);
        c.PortWrite(port, size, (uint)c.Gpr[Cpu.RAX] & (uint)Cpu.SizeMask(size));
        // A device may have asked to stop the VM (debug-exit, reset) or changed interrupt state: re-check now.
        c.EndBlock();
    }

    private static void DoIn(Cpu c, ushort port, int size)
    {
        CheckIo(c, port, size);
        uint v = c.PortRead(port, size);
        c.SetReg(size == 1 ? Register.AL : size == 2 ? Register.AX : Register.EAX, v);
    }

    private static void OutImm(Cpu c, ref Instruction i) => DoOut(c, i.Immediate8, Cpu.RegSize(i.Op1Register));
    private static void OutDx(Cpu c, ref Instruction i) => DoOut(c, (ushort)c.Gpr[Cpu.RDX], Cpu.RegSize(i.Op1Register));
    private static void InImm(Cpu c, ref Instruction i) => DoIn(c, i.Immediate8, Cpu.RegSize(i.Op0Register));
    private static void InDx(Cpu c, ref Instruction i) => DoIn(c, (ushort)c.Gpr[Cpu.RDX], Cpu.RegSize(i.Op0Register));
}
