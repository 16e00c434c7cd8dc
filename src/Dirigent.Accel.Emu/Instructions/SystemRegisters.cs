using System.Threading;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>MOV CRn/DRn, LMSW/SMSW/CLTS, INVLPG, cache and fence instructions, CPUID; descriptor tables via SystemTables.</summary>
internal static unsafe class SystemRegisters
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&MovFromCr, Code.Mov_r32_cr, Code.Mov_r64_cr);
        r.Add(&MovToCr, true, Code.Mov_cr_r32, Code.Mov_cr_r64);
        r.Add(&MovFromDr, Code.Mov_r32_dr, Code.Mov_r64_dr);
        // A DR7/DR0-3 write arms breakpoints that apply from the next instruction on: end the block.
        r.Add(&MovToDr, true, Code.Mov_dr_r32, Code.Mov_dr_r64);
        r.Add(&Lmsw, true, Code.Lmsw_rm16, Code.Lmsw_r32m16, Code.Lmsw_r64m16);
        r.Add(&Smsw, Code.Smsw_rm16, Code.Smsw_r32m16, Code.Smsw_r64m16);
        r.Add(&Clts, Code.Clts);
        r.Add(&Invlpg, true, Code.Invlpg_m);
        r.Add(&CacheFlush, Code.Invd, Code.Wbinvd);
        r.Add(&Clflush, Code.Clflush_m8);
        r.Add(&Fence, Code.Lfence, Code.Lfence_E9, Code.Lfence_EA, Code.Lfence_EB, Code.Lfence_EC, Code.Lfence_ED,
            Code.Lfence_EE, Code.Lfence_EF, Code.Mfence, Code.Mfence_F1, Code.Mfence_F2, Code.Mfence_F3, Code.Mfence_F4,
            Code.Mfence_F5, Code.Mfence_F6, Code.Mfence_F7, Code.Sfence, Code.Sfence_F9, Code.Sfence_FA, Code.Sfence_FB,
            Code.Sfence_FC, Code.Sfence_FD, Code.Sfence_FE, Code.Sfence_FF);
        r.Add(&Cpuid, Code.Cpuid);
        // XGETBV/XSETBV, CLFLUSHOPT and RDFSBASE-family stay unregistered: not advertised, so #UD.
        SystemTables.Install(r);
    }

    private static int CrIndex(Register reg) => reg - Register.CR0;
    private static int DrIndex(Register reg) => reg - Register.DR0;

    private static void MovFromCr(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        ulong v = CrIndex(i.Op1Register) switch
        {
            0 => c.Cr0,
            2 => c.Cr2,
            3 => c.Cr3,
            4 => c.Cr4,
            8 when c.Is64BitMode => c.ApicRegisters != null ? c.ApicRegisterRead(0, c.ApicRegisters.Tpr >> 4) : c.Cr8,
            _ => throw Cpu.UD(),
        };
        c.SetReg(i.Op0Register, v);
    }

    private static void MovToCr(Cpu c, ref Instruction i)
    {
        int n = CrIndex(i.Op0Register);
        if (n is not (0 or 2 or 3 or 4) && !(n == 8 && c.Is64BitMode)) throw Cpu.UD();
        c.RequireCpl0();
        ulong v = c.GetReg(i.Op1Register);
        switch (n)
        {
            case 0: c.WriteCr0(v); break;
            case 2: c.Cr2 = v; break;
            case 3: c.WriteCr3(v); break;
            case 4: c.WriteCr4(v); break;
            default: c.WriteCr8(v); break;
        }
    }

    private static void MovFromDr(Cpu c, ref Instruction i)
    {
        int n = DrIndex(i.Op1Register);
        if (n > 7) throw Cpu.UD();
        c.RequireCpl0();
        c.DebugRegIndex(n); // #UD for DR4/DR5 under CR4.DE comes before general detect
        c.CheckGeneralDetect();
        c.SetReg(i.Op0Register, c.ReadDr(n));
    }

    private static void MovToDr(Cpu c, ref Instruction i)
    {
        int n = DrIndex(i.Op0Register);
        if (n > 7) throw Cpu.UD();
        c.RequireCpl0();
        c.DebugRegIndex(n);
        c.CheckGeneralDetect();
        c.WriteDr(n, c.GetReg(i.Op1Register));
        c.EndBlock();
    }

    /// <summary>LMSW loads PE, MP, EM, TS; it can set PE but never clear it.</summary>
    private static void Lmsw(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        ulong src = c.ReadOp(ref i, 0, 2) & 0xF;
        ulong v = (c.Cr0 & ~0xEUL) | src | (c.Cr0 & Cpu.Cr0PE);
        c.WriteCr0(v);
    }

    /// <summary>SMSW is not privileged (no UMIP); a register destination receives the low CR0 bits of its size.</summary>
    private static void Smsw(Cpu c, ref Instruction i)
    {
        if (i.Op0Kind == OpKind.Register) c.SetReg(i.Op0Register, c.Cr0 & Cpu.SizeMask(Cpu.RegSize(i.Op0Register)));
        else c.WriteLinear(c.MemLinear(ref i, 2, true), 2, (ushort)c.Cr0);
    }

    private static void Clts(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        c.Cr0 &= ~Cpu.Cr0TS;
    }

    /// <summary>Linear address of a memory operand without limit checks (INVLPG and CLFLUSH-style hints).</summary>
    internal static ulong UncheckedLinear(Cpu c, ref Instruction i)
    {
        int seg = Cpu.MemSeg(ref i);
        ulong ea = c.EffectiveAddress(ref i);
        if (c.Is64BitMode) return seg >= Cpu.FS ? c.Sreg[seg].Base + ea : ea;
        return (uint)(c.Sreg[seg].Base + ea);
    }

    private static void Invlpg(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        // No jump-cache flush: its hits are validated against the execute TLB entry dropped here.
        c.FlushTlbPage(UncheckedLinear(c, ref i));
        c.EndBlock();
    }

    /// <summary>Guest memory is always coherent with the host's caches: INVD/WBINVD have nothing to do.</summary>
    private static void CacheFlush(Cpu c, ref Instruction i) => c.RequireCpl0();

    /// <summary>
    /// CLFLUSH checks the access like a byte read (it can #PF/#GP) and otherwise only orders memory. It translates
    /// without reading, so flushing an MMIO line has no device side effect.
    /// </summary>
    private static void Clflush(Cpu c, ref Instruction i)
    {
        c.Translate(c.MemLinear(ref i, 1, false), Access.Read, c.Cpl == 3);
        Interlocked.MemoryBarrier();
    }

    private static void Fence(Cpu c, ref Instruction i) => Interlocked.MemoryBarrier();

    private static void Cpuid(Cpu c, ref Instruction i)
    {
        uint leaf = (uint)c.Gpr[Cpu.RAX];
        c.Cpuid.Query(leaf, (uint)c.Gpr[Cpu.RCX], c.Index, out uint a, out uint b, out uint cc, out uint d);
        // CPUID.1:EDX.APIC reflects IA32_APIC_BASE.EN (SDM 11.4.3): with the APIC globally disabled the processor
        // reports none, and reports it again once the enable bit is set.
        if (leaf == 1 && (c.ApicBase & Cpu.ApicBaseEnable) == 0) d &= ~CpuidModel.APIC;
        c.Gpr[Cpu.RAX] = a;
        c.Gpr[Cpu.RBX] = b;
        c.Gpr[Cpu.RCX] = cc;
        c.Gpr[Cpu.RDX] = d;
    }
}
