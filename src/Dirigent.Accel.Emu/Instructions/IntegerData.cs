using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// Data movement: MOV, MOVZX/MOVSX/MOVSXD, LEA, CMOVcc, SETcc, BSWAP, CBW..CQO, LAHF/SAHF, NOP/PAUSE/PREFETCHh, XLAT.
/// XCHG/XADD/CMPXCHG live in <see cref="IntegerDataAtomic"/>. MOV to/from segment, control and debug registers is
/// the system group's. MOVBE is not advertised, so it stays #UD.
/// </summary>
internal static unsafe class IntegerData
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&MovRegRm, Code.Mov_r8_rm8, Code.Mov_r16_rm16, Code.Mov_r32_rm32, Code.Mov_r64_rm64,
            Code.Mov_AL_moffs8, Code.Mov_AX_moffs16, Code.Mov_EAX_moffs32, Code.Mov_RAX_moffs64);
        // MOV r/m, r: the 89 form with a register destination is the most common register copy.
        r.Add(&MovRmReg, Code.Mov_rm8_r8, Code.Mov_rm16_r16, Code.Mov_rm32_r32, Code.Mov_rm64_r64,
            Code.Mov_moffs8_AL, Code.Mov_moffs16_AX, Code.Mov_moffs32_EAX, Code.Mov_moffs64_RAX);
        r.Add(&MovRegImm, Code.Mov_r8_imm8, Code.Mov_r16_imm16, Code.Mov_r32_imm32, Code.Mov_r64_imm64);
        r.Add(&MovRmImm, Code.Mov_rm8_imm8, Code.Mov_rm16_imm16, Code.Mov_rm32_imm32, Code.Mov_rm64_imm32);
        r.Add(&Movzx, Code.Movzx_r16_rm8, Code.Movzx_r32_rm8, Code.Movzx_r64_rm8, Code.Movzx_r16_rm16,
            Code.Movzx_r32_rm16, Code.Movzx_r64_rm16);
        r.Add(&Movsx, Code.Movsx_r16_rm8, Code.Movsx_r32_rm8, Code.Movsx_r64_rm8, Code.Movsx_r16_rm16,
            Code.Movsx_r32_rm16, Code.Movsx_r64_rm16, Code.Movsxd_r16_rm16, Code.Movsxd_r32_rm32, Code.Movsxd_r64_rm32);
        r.Add(&Bswap, Code.Bswap_r16, Code.Bswap_r32, Code.Bswap_r64);
        r.Add(&Cbw, Code.Cbw);
        r.Add(&Cwde, Code.Cwde);
        r.Add(&Cdqe, Code.Cdqe);
        r.Add(&Cwd, Code.Cwd);
        r.Add(&Cdq, Code.Cdq);
        r.Add(&Cqo, Code.Cqo);
        r.Add(&Lahf, Code.Lahf);
        r.Add(&Sahf, Code.Sahf);
        r.Add(&Xlat, Code.Xlat_m8);
        // PAUSE is a spin-loop hint: with other vCPUs it gives the host thread up (Cpu.SpinPause).
        r.Add(&Pause, Code.Pause);
        // Prefetches are hints (they never fault, even on a bad address): NOPs here.
        r.Add(&Nop, Code.Prefetch_m8, Code.Prefetchw_m8, Code.Prefetchwt1_m8, Code.Prefetchnta_m8,
            Code.Prefetcht0_m8, Code.Prefetcht1_m8, Code.Prefetcht2_m8, Code.Prefetchreserved3_m8,
            Code.Prefetchreserved4_m8, Code.Prefetchreserved5_m8, Code.Prefetchreserved6_m8, Code.Prefetchreserved7_m8,
            Code.Cldemote_m8);
        // CET is not advertised, and these sit in the hint-NOP space: on such a CPU they are NOPs. Kernels built
        // with IBT start every function with ENDBR64 and run it long before they could patch it out.
        r.Add(&Nop, Code.Endbr64, Code.Endbr32, Code.Rdsspd_r32, Code.Rdsspq_r64);
        foreach (Code c in Enum.GetValues<Code>())
        {
            switch (c.Mnemonic())
            {
                case Mnemonic.Lea: r.Add(&Lea, c); break;
                // Nop covers 90 and 0F 1F /0; Reservednop is the rest of the 0F 18..0F 1F hint space, NOP on real CPUs.
                case Mnemonic.Nop: case Mnemonic.Reservednop: r.Add(&Nop, c); break;
                default:
                    if (c.ConditionCode() == ConditionCode.None) break;
                    if (c.Mnemonic() is >= Mnemonic.Cmova and <= Mnemonic.Cmovs && IsLegacyCmov(c)) r.Add(&Cmovcc, c);
                    else if (c.Mnemonic() is >= Mnemonic.Seta and <= Mnemonic.Sets && c.ToString().EndsWith("_rm8", StringComparison.Ordinal)) r.Add(&Setcc, c);
                    break;
            }
        }
        IntegerDataAtomic.Install(r);
    }

    // CMOVcc mnemonics also name the APX/EVEX forms; only the legacy 0F 4x encodings exist on our CPU.
    private static bool IsLegacyCmov(Code c)
    {
        string s = c.ToString();
        return s.EndsWith("_r16_rm16", StringComparison.Ordinal) || s.EndsWith("_r32_rm32", StringComparison.Ordinal) ||
               s.EndsWith("_r64_rm64", StringComparison.Ordinal);
    }

    private static void MovRegRm(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        if (i.Op1Kind == OpKind.Register) c.SetReg(d, c.GetReg(i.Op1Register));
        else
        {
            int size = Cpu.RegSize(d);
            c.SetReg(d, c.ReadLinear(c.MemLinear(ref i, size, false), size));
        }
    }

    private static void MovRmReg(Cpu c, ref Instruction i)
    {
        if (i.Op0Kind == OpKind.Register) c.SetReg(i.Op0Register, c.GetReg(i.Op1Register));
        else
        {
            Register s = i.Op1Register;
            int size = Cpu.RegSize(s);
            c.WriteLinear(c.MemLinear(ref i, size, true), size, c.GetReg(s));
        }
    }

    private static void MovRegImm(Cpu c, ref Instruction i) => c.SetReg(i.Op0Register, i.GetImmediate(1));

    private static void MovRmImm(Cpu c, ref Instruction i)
    {
        if (i.Op0Kind == OpKind.Register) c.SetReg(i.Op0Register, i.GetImmediate(1));
        else
        {
            int size = Cpu.MemSize(ref i);
            c.WriteLinear(c.MemLinear(ref i, size, true), size, i.GetImmediate(1));
        }
    }

    /// <summary>Source of MOVZX/MOVSX/CMOVcc-style "r, r/m" forms, zero-extended; size is the source width.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Source(Cpu c, ref Instruction i, out int size)
    {
        if (i.Op1Kind == OpKind.Register)
        {
            Register s = i.Op1Register;
            size = Cpu.RegSize(s);
            return c.GetReg(s);
        }
        size = Cpu.MemSize(ref i);
        return c.ReadLinear(c.MemLinear(ref i, size, false), size);
    }

    private static void Movzx(Cpu c, ref Instruction i) => c.SetReg(i.Op0Register, Source(c, ref i, out _));

    private static void Movsx(Cpu c, ref Instruction i)
    {
        ulong v = Source(c, ref i, out int size);
        c.SetReg(i.Op0Register, SignExtend(v, size));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong SignExtend(ulong v, int size) => size switch
    {
        1 => (ulong)(sbyte)v,
        2 => (ulong)(short)v,
        4 => (ulong)(int)v,
        _ => v,
    };

    private static void Lea(Cpu c, ref Instruction i) => c.SetReg(i.Op0Register, c.EffectiveAddress(ref i));

    private static void Nop(Cpu c, ref Instruction i) { }

    private static void Pause(Cpu c, ref Instruction i) => c.SpinPause();

    private static void Cmovcc(Cpu c, ref Instruction i)
    {
        // The source is read (and may fault) whatever the condition; a 32-bit destination is zero-extended even
        // when the move does not happen, which SetReg of the old value does.
        ulong v = Source(c, ref i, out _);
        Register d = i.Op0Register;
        c.SetReg(d, c.TestCondition(i.ConditionCode) ? v : c.GetReg(d));
    }

    private static void Setcc(Cpu c, ref Instruction i)
    {
        ulong v = c.TestCondition(i.ConditionCode) ? 1UL : 0;
        if (i.Op0Kind == OpKind.Register) c.SetReg(i.Op0Register, v);
        else c.Write8(c.MemLinear(ref i, 1, true), (byte)v);
    }

    private static void Bswap(Cpu c, ref Instruction i)
    {
        Register r = i.Op0Register;
        switch (Cpu.RegSize(r))
        {
            case 8: c.SetReg(r, BinaryPrimitives.ReverseEndianness(c.GetReg(r))); break;
            case 4: c.SetReg(r, BinaryPrimitives.ReverseEndianness((uint)c.GetReg(r))); break;
            // 16-bit BSWAP is undefined by the SDM; Intel and AMD both clear the low word.
            default: c.SetReg(r, 0); break;
        }
    }

    private static void Cbw(Cpu c, ref Instruction i) => c.SetReg(Register.AX, (ulong)(sbyte)c.Gpr[Cpu.RAX]);
    private static void Cwde(Cpu c, ref Instruction i) => c.SetReg(Register.EAX, (ulong)(short)c.Gpr[Cpu.RAX]);
    private static void Cdqe(Cpu c, ref Instruction i) => c.Gpr[Cpu.RAX] = (ulong)(int)c.Gpr[Cpu.RAX];
    private static void Cwd(Cpu c, ref Instruction i) => c.SetReg(Register.DX, (ulong)((short)c.Gpr[Cpu.RAX] >> 15));
    private static void Cdq(Cpu c, ref Instruction i) => c.SetReg(Register.EDX, (ulong)((int)c.Gpr[Cpu.RAX] >> 31));
    private static void Cqo(Cpu c, ref Instruction i) => c.Gpr[Cpu.RDX] = (ulong)((long)c.Gpr[Cpu.RAX] >> 63);

    private static void Lahf(Cpu c, ref Instruction i) =>
        c.SetReg(Register.AH, (c.Rflags & (Cpu.SF | Cpu.ZF | Cpu.AF | Cpu.PF | Cpu.CF)) | 2);

    private static void Sahf(Cpu c, ref Instruction i)
    {
        ulong ah = c.GetReg(Register.AH);
        c.SetArithFlags((c.GetOF() ? Cpu.OF : 0) | (ah & (Cpu.SF | Cpu.ZF | Cpu.AF | Cpu.PF | Cpu.CF)));
    }

    private static void Xlat(Cpu c, ref Instruction i)
    {
        // Iced describes the operand as [rBX+AL]; the address size is the base register's width.
        Register b = i.MemoryBase;
        ulong ea = c.GetReg(b) + (byte)c.Gpr[Cpu.RAX];
        ea = Cpu.RegSize(b) switch { 8 => ea, 4 => (uint)ea, _ => (ushort)ea };
        c.SetReg(Register.AL, c.ReadMem(Cpu.MemSeg(ref i), ea, 1));
    }
}
