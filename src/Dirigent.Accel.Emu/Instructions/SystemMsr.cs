using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>RDMSR/WRMSR, RDTSC/RDTSCP, RDPMC. Unknown MSRs raise #GP(0), which Linux's rdmsr_safe probing expects.</summary>
internal static unsafe class SystemMsr
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Rdmsr, Code.Rdmsr);
        r.Add(&Wrmsr, true, Code.Wrmsr);
        r.Add(&Rdtsc, Code.Rdtsc);
        r.Add(&Rdtscp, Code.Rdtscp);
        r.Add(&Rdpmc, Code.Rdpmc);
    }

    public const uint MsrPlatformId = 0x17, MsrBiosSignId = 0x8B, MsrPlatformInfo = 0xCE, MsrMtrrCap = 0xFE, MsrArchCapabilities = 0x10A,
        MsrMcgCap = 0x179, MsrMcgStatus = 0x17A, MsrDebugCtl = 0x1D9, MsrMtrrDefType = 0x2FF;

    /// <summary>8 variable ranges, fixed ranges, write-combining.</summary>
    private const ulong MtrrCapValue = 8 | (1 << 8) | (1 << 10);

    private static bool IsVariableMtrr(uint m) => m is >= 0x200 and <= 0x20F;
    private static bool IsFixedMtrr(uint m) => m is 0x250 or 0x258 or 0x259 or (>= 0x268 and <= 0x26F);

    /// <summary>Valid memory types for PAT entries and MTRRs: UC, WC, WT, WP, WB (7 = UC- only in the PAT).</summary>
    private static bool ValidType(ulong t, bool pat) => t is 0 or 1 or 4 or 5 or 6 || (pat && t == 7);

    private static bool ValidTypes(ulong v, bool pat)
    {
        for (int k = 0; k < 8; k++) if (!ValidType((v >> (8 * k)) & 0xFF, pat)) return false;
        return true;
    }

    /// <summary>Returns false for an MSR this CPU does not have.</summary>
    public static bool TryRead(Cpu c, uint msr, out ulong v)
    {
        switch (msr)
        {
            case Cpu.MsrEfer: v = c.Efer; return true;
            case Cpu.MsrStar: v = c.Star; return true;
            case Cpu.MsrLstar: v = c.Lstar; return true;
            case Cpu.MsrCstar: v = c.Cstar; return true;
            case Cpu.MsrSfmask: v = c.Sfmask; return true;
            case Cpu.MsrFsBase: v = c.Sreg[Cpu.FS].Base; return true;
            case Cpu.MsrGsBase: v = c.Sreg[Cpu.GS].Base; return true;
            case Cpu.MsrKernelGsBase: v = c.KernelGsBase; return true;
            case Cpu.MsrTsc: v = c.GuestTsc(); return true;
            case Cpu.MsrTscAdjust: v = c.TscAdjust; return true;
            case Cpu.MsrTscAux: v = c.TscAux; return true;
            case Cpu.MsrApicBase: v = c.ApicBase; return true;
            case Cpu.MsrPat: v = c.Pat; return true;
            case Cpu.MsrMiscEnable: v = c.MiscEnable; return true;
            case Cpu.MsrSysenterCs: v = c.SysenterCs; return true;
            case Cpu.MsrSysenterEsp: v = c.SysenterEsp; return true;
            case Cpu.MsrSysenterEip: v = c.SysenterEip; return true;
            case MsrMtrrCap: v = MtrrCapValue; return true;
            case MsrArchCapabilities: v = c.Cpuid.ArchCapabilities; return true;
            case MsrMcgCap: case MsrMcgStatus: case MsrPlatformId: v = 0; return true;
            case MsrPlatformInfo: v = (Cpu.TscHz / 100_000_000) << 8; return true; // max non-turbo ratio x 100 MHz
            case MsrMtrrDefType:
                // Firmware would have enabled the MTRRs with write-back as the default type; no ranges are set.
                v = c.OtherMsrs.TryGetValue(msr, out ulong d) ? d : 0x806;
                return true;
            case Cpu.MsrTscDeadline when c.ApicRegisters != null:
                v = c.ApicRegisterRead(1, c.ApicRegisters.ReadTscDeadline());
                return true;
            case Cpu.MsrTscDeadline: case MsrBiosSignId: case MsrDebugCtl:
                v = c.OtherMsrs.GetValueOrDefault(msr);
                return true;
        }
        if (IsVariableMtrr(msr) || IsFixedMtrr(msr))
        {
            v = c.OtherMsrs.GetValueOrDefault(msr);
            return true;
        }
        v = 0;
        return false;
    }

    /// <summary>Returns false when the MSR does not exist or the value is invalid for it (#GP either way).</summary>
    public static bool TryWrite(Cpu c, uint msr, ulong v)
    {
        switch (msr)
        {
            case Cpu.MsrEfer: c.WriteEfer(v); return true;
            case Cpu.MsrStar: c.Star = v; return true;
            case Cpu.MsrLstar:
                if (!Cpu.IsCanonical(v)) return false;
                c.Lstar = v;
                return true;
            case Cpu.MsrCstar:
                if (!Cpu.IsCanonical(v)) return false;
                c.Cstar = v;
                return true;
            case Cpu.MsrSfmask:
                if ((v >> 32) != 0) return false;
                c.Sfmask = v;
                return true;
            case Cpu.MsrFsBase:
            case Cpu.MsrGsBase:
                if (!Cpu.IsCanonical(v)) return false;
                c.Sreg[msr == Cpu.MsrFsBase ? Cpu.FS : Cpu.GS].Base = v;
                return true;
            case Cpu.MsrKernelGsBase:
                if (!Cpu.IsCanonical(v)) return false;
                c.KernelGsBase = v;
                return true;
            case Cpu.MsrTsc:
            {
                // SDM 17.17.3: a TSC write moves IA32_TSC_ADJUST by the same amount.
                long delta = (long)(v - c.GuestTsc());
                c.TscOffset += delta;
                c.TscAdjust += (ulong)delta;
                return true;
            }
            case Cpu.MsrTscAdjust:
                c.TscOffset += (long)(v - c.TscAdjust);
                c.TscAdjust = v;
                return true;
            case Cpu.MsrTscAux:
                if ((v >> 32) != 0) return false;
                c.TscAux = v;
                return true;
            case Cpu.MsrApicBase:
            {
                // BSP (bit 8) is read-only; x2APIC mode (bit 10) is not supported; base within MAXPHYADDR.
                const ulong writable = 0x800 | (((1UL << Cpu.MaxPhysAddrBits) - 1) & ~0xFFFUL);
                if ((v & ~(writable | 0x100)) != 0) return false;
                c.ApicBase = (v & writable) | (c.ApicBase & 0x100);
                return true;
            }
            case Cpu.MsrPat:
                if (!ValidTypes(v, true)) return false;
                c.Pat = v;
                return true;
            case Cpu.MsrMiscEnable: c.MiscEnable = v; return true;
            case Cpu.MsrSysenterCs: c.SysenterCs = v & 0xFFFF; return true;
            case Cpu.MsrSysenterEsp:
            case Cpu.MsrSysenterEip:
                if (!Cpu.IsCanonical(v)) return false;
                if (msr == Cpu.MsrSysenterEsp) c.SysenterEsp = v; else c.SysenterEip = v;
                return true;
            case Cpu.MsrTscDeadline:
                if (c.ApicRegisters != null && !c.ReplayDropsWrites) c.ApicRegisters.WriteTscDeadline(v, c.TscOffset);
                else c.OtherMsrs[msr] = v;
                return true;
            case MsrMcgStatus:
                if (v != 0) return false;
                return true;
            case MsrBiosSignId: c.OtherMsrs[msr] = 0; return true; // writing 0 before CPUID is the microcode-revision idiom
            case MsrDebugCtl:
                // Branch tracing is not implemented; accepting only 0 keeps the guest from believing it is on.
                if (v != 0) return false;
                c.OtherMsrs[msr] = 0;
                return true;
            case MsrMtrrDefType:
                if ((v & ~0xCFFUL) != 0 || !ValidType(v & 0xFF, false)) return false;
                c.OtherMsrs[msr] = v;
                return true;
        }
        if (IsFixedMtrr(msr))
        {
            if (!ValidTypes(v, false)) return false;
            c.OtherMsrs[msr] = v;
            return true;
        }
        if (IsVariableMtrr(msr))
        {
            ulong physMask = ((1UL << Cpu.MaxPhysAddrBits) - 1) & ~0xFFFUL;
            bool isMask = (msr & 1) != 0;
            ulong allowed = isMask ? physMask | 0x800 : physMask | 0xFF;
            if ((v & ~allowed) != 0 || (!isMask && !ValidType(v & 0xFF, false))) return false;
            c.OtherMsrs[msr] = v;
            return true;
        }
        return false;
    }

    private static void Rdmsr(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        if (!TryRead(c, (uint)c.Gpr[Cpu.RCX], out ulong v)) throw Cpu.GP0();
        c.Gpr[Cpu.RAX] = (uint)v;
        c.Gpr[Cpu.RDX] = v >> 32;
    }

    private static void Wrmsr(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        ulong v = ((c.Gpr[Cpu.RDX] & 0xFFFF_FFFF) << 32) | (uint)c.Gpr[Cpu.RAX];
        if (!TryWrite(c, (uint)c.Gpr[Cpu.RCX], v)) throw Cpu.GP0();
    }

    private static void CheckTsd(Cpu c)
    {
        if ((c.Cr4 & Cpu.Cr4TSD) != 0 && c.Cpl != 0 && c.ProtectedMode) throw Cpu.GP0();
    }

    private static void Rdtsc(Cpu c, ref Instruction i)
    {
        CheckTsd(c);
        ulong t = c.GuestTsc();
        c.Gpr[Cpu.RAX] = (uint)t;
        c.Gpr[Cpu.RDX] = t >> 32;
    }

    private static void Rdtscp(Cpu c, ref Instruction i)
    {
        CheckTsd(c);
        ulong t = c.GuestTsc();
        c.Gpr[Cpu.RAX] = (uint)t;
        c.Gpr[Cpu.RDX] = t >> 32;
        c.Gpr[Cpu.RCX] = (uint)c.TscAux;
    }

    /// <summary>No performance counters exist (CPUID leaf 0xA is zero), so every counter index is invalid.</summary>
    private static void Rdpmc(Cpu c, ref Instruction i) => throw Cpu.GP0();
}
