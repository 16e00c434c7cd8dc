using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>MOV to/from Sreg, PUSH/POP Sreg, LDS/LES/LFS/LGS/LSS, ARPL.</summary>
internal static unsafe class SegmentInstructions
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&MovFromSreg, Code.Mov_rm16_Sreg, Code.Mov_r32m16_Sreg, Code.Mov_r64m16_Sreg);
        r.Add(&MovToSreg, true, Code.Mov_Sreg_rm16, Code.Mov_Sreg_r32m16, Code.Mov_Sreg_r64m16);
        r.Add(&PushSreg, Code.Pushw_ES, Code.Pushd_ES, Code.Pushw_CS, Code.Pushd_CS, Code.Pushw_SS, Code.Pushd_SS,
            Code.Pushw_DS, Code.Pushd_DS, Code.Pushw_FS, Code.Pushd_FS, Code.Pushq_FS, Code.Pushw_GS, Code.Pushd_GS,
            Code.Pushq_GS);
        r.Add(&PopSreg, true, Code.Popw_ES, Code.Popd_ES, Code.Popw_SS, Code.Popd_SS, Code.Popw_DS, Code.Popd_DS,
            Code.Popw_FS, Code.Popd_FS, Code.Popq_FS, Code.Popw_GS, Code.Popd_GS, Code.Popq_GS);
        r.Add(&LoadFarPointer, true, Code.Les_r16_m1616, Code.Les_r32_m1632, Code.Lds_r16_m1616, Code.Lds_r32_m1632,
            Code.Lss_r16_m1616, Code.Lss_r32_m1632, Code.Lss_r64_m1664, Code.Lfs_r16_m1616, Code.Lfs_r32_m1632,
            Code.Lfs_r64_m1664, Code.Lgs_r16_m1616, Code.Lgs_r32_m1632, Code.Lgs_r64_m1664);
        r.Add(&Arpl, Code.Arpl_rm16_r16, Code.Arpl_r32m16_r32);
    }

    /// <summary>A register destination gets the selector zero-extended (32/64-bit forms); memory is always 16 bits.</summary>
    private static void MovFromSreg(Cpu c, ref Instruction i)
    {
        Register sr = i.Op1Register;
        if (sr > Register.GS) throw Cpu.UD();
        ushort sel = c.Sreg[Cpu.SegIndex(sr)].Selector;
        if (i.Op0Kind == OpKind.Register)
        {
            Register reg = i.Op0Register;
            if (Cpu.RegSize(reg) == 2) c.SetReg(reg, sel);
            else c.Gpr[Cpu.RegIndex(reg)] = sel;
        }
        else c.WriteLinear(c.MemLinear(ref i, 2, true), 2, sel);
    }

    private static void MovToSreg(Cpu c, ref Instruction i)
    {
        Register sr = i.Op0Register;
        if (sr == Register.CS || sr > Register.GS) throw Cpu.UD();
        ushort sel = (ushort)c.ReadOp(ref i, 1, 2);
        int seg = Cpu.SegIndex(sr);
        c.LoadSegment(seg, sel);
        if (seg == Cpu.SS) { c.InterruptShadow = true; c.MovSsShadow = true; c.EndBlock(); }
    }

    private static int SregOf(ref Instruction i) => Cpu.SegIndex(i.Op0Register);

    /// <summary>Wider pushes store the selector zero-extended.</summary>
    private static void PushSreg(Cpu c, ref Instruction i)
    {
        int size = c.StackOperandSize(ref i);
        c.Push(c.Sreg[SregOf(ref i)].Selector, size);
    }

    private static void PopSreg(Cpu c, ref Instruction i)
    {
        int size = c.StackOperandSize(ref i);
        int seg = SregOf(ref i);
        ulong rsp = c.Gpr[Cpu.RSP];
        ushort sel = (ushort)c.Pop(size);
        try
        {
            c.LoadSegment(seg, sel);
        }
        catch (CpuException)
        {
            c.Gpr[Cpu.RSP] = rsp;
            throw;
        }
        if (seg == Cpu.SS) { c.InterruptShadow = true; c.MovSsShadow = true; c.EndBlock(); }
    }

    /// <summary>LxS r, m16:16/32/64: offset first, selector after it; the segment is loaded before the register.</summary>
    private static void LoadFarPointer(Cpu c, ref Instruction i)
    {
        Register dst = i.Op0Register;
        int osz = Cpu.RegSize(dst);
        ulong la = c.MemLinear(ref i, osz + 2, false);
        ulong off = c.ReadLinear(la, osz);
        ulong selAddr = c.Is64BitMode ? la + (ulong)osz : (uint)(la + (ulong)osz);
        ushort sel = (ushort)c.ReadLinear(selAddr, 2);
        int seg = i.Mnemonic switch
        {
            Mnemonic.Les => Cpu.ES,
            Mnemonic.Lds => Cpu.DS,
            Mnemonic.Lss => Cpu.SS,
            Mnemonic.Lfs => Cpu.FS,
            _ => Cpu.GS,
        };
        c.LoadSegment(seg, sel);
        c.SetReg(dst, off);
    }

    /// <summary>ARPL raises the destination selector's RPL to the source's (legacy and compatibility mode only).</summary>
    private static void Arpl(Cpu c, ref Instruction i)
    {
        if (!c.ProtectedMode || c.IsV86Mode) throw Cpu.UD();
        ulong dst = c.ReadOp(ref i, 0, 2) & 0xFFFF;
        ulong src = c.GetReg(i.Op1Register);
        if ((dst & 3) < (src & 3))
        {
            ulong v = (dst & ~3UL) | (src & 3);
            if (i.Op0Kind == OpKind.Register) c.SetReg(Register.AX + Cpu.RegIndex(i.Op0Register), v);
            else c.WriteLinear(c.MemLinear(ref i, 2, true), 2, v);
            c.SetFlag(Cpu.ZF, true);
        }
        else c.SetFlag(Cpu.ZF, false);
    }
}
