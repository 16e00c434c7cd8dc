namespace Dirigent.Accel.Emu.Core;

/// <summary>Control-register, EFER and debug-register writes with their architectural side effects (SDM 2.5, 4.1).</summary>
public sealed partial class Cpu
{
    private CpuidModel? _cpuid;

    /// <summary>The CPUID answers of this vCPU (configurable; built lazily so instruction groups are registered first).</summary>
    public CpuidModel Cpuid
    {
        get => _cpuid ??= CpuidModel.CreateDefault();
        set => _cpuid = value;
    }

    private const ulong Cr0Defined = Cr0PE | Cr0MP | Cr0EM | Cr0TS | Cr0ET | Cr0NE | Cr0WP | Cr0AM | Cr0NW | Cr0CD | Cr0PG;
    // Bits whose change alters translation or mode: the TLB and the decoded blocks must go.
    private const ulong Cr0TranslationBits = Cr0PE | Cr0PG | Cr0WP | Cr0CD | Cr0NW;
    /// <summary>CR4 bits this CPU implements (no VME/PVI, UMIP, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, LA57).</summary>
    public const ulong Cr4Supported = Cr4TSD | Cr4DE | Cr4PSE | Cr4PAE | Cr4MCE | Cr4PGE | Cr4PCE | Cr4OSFXSR | Cr4OSXMMEXCPT;
    public const ulong EferSupported = EferSCE | EferLME | EferLMA | EferNXE;

    private void FlushTranslations()
    {
        FlushTlb();
        FlushJmpCache();
    }

    /// <summary>MOV CR0 / LMSW / CLTS: reserved bits, PG without PE, NW without CD, and long-mode activation.</summary>
    public void WriteCr0(ulong v)
    {
        if ((v >> 32) != 0) throw GP0();
        // Reserved bits 31:0 are ignored on write; ET is hardwired to 1 since the 486.
        v = (v & Cr0Defined) | Cr0ET;
        if ((v & Cr0NW) != 0 && (v & Cr0CD) == 0) throw GP0();
        if ((v & Cr0PG) != 0 && (v & Cr0PE) == 0) throw GP0();
        bool pgOn = (Cr0 & Cr0PG) == 0 && (v & Cr0PG) != 0;
        bool pgOff = (Cr0 & Cr0PG) != 0 && (v & Cr0PG) == 0;
        ulong efer = Efer;
        if (pgOn && (Efer & EferLME) != 0)
        {
            if ((Cr4 & Cr4PAE) == 0) throw GP0();
            if (Sreg[CS].L) throw GP0();
            efer |= EferLMA;
        }
        if (pgOff && LongModeActive)
        {
            // Leaving long mode is only possible from compatibility mode (SDM 9.8.5.4).
            if (Is64BitMode) throw GP0();
            efer &= ~EferLMA;
        }
        ulong changed = Cr0 ^ v;
        Cr0 = v;
        Efer = efer;
        if ((changed & Cr0TranslationBits) != 0) FlushTranslations();
        UpdateMode();
    }

    public void WriteCr3(ulong v)
    {
        if (LongModeActive)
        {
            if ((v >> MaxPhysAddrBits) != 0) throw GP0();
        }
        else v = (uint)v;
        ulong old = Cr3;
        Cr3 = v;
        // The jump cache survives: its hits are validated against the execute TLB, whose non-global entries this drops.
        FlushTlbNonGlobal();
        UpdateMode();
        if (_hooks.Cr3Armed) _hooks.RaiseCr3Write(this, old, v);
    }

    public void WriteCr4(ulong v)
    {
        if ((v & ~Cr4Supported) != 0) throw GP0();
        if (LongModeActive && (v & Cr4PAE) == 0) throw GP0();
        ulong changed = Cr4 ^ v;
        Cr4 = v;
        if ((changed & (Cr4PSE | Cr4PAE | Cr4PGE)) != 0) FlushTranslations();
        if ((changed & Cr4DE) != 0) UpdateDebugArming(); // I/O breakpoints exist only with DE
        UpdateMode();
    }

    /// <summary>CR8 is the task-priority register; only bits 3:0 exist. The APIC will consume it later.</summary>
    public void WriteCr8(ulong v)
    {
        if ((v & ~0xFUL) != 0) throw GP0();
        Cr8 = v;
        if (ApicRegisters != null)
        {
            ApicRegisters.Tpr = (uint)v << 4;
            OnInterruptsMaybeEnabled(); // a lower priority may let a pending interrupt through
        }
    }

    /// <summary>WRMSR IA32_EFER: LMA is read-only; LME cannot change while paging is on.</summary>
    public void WriteEfer(ulong v)
    {
        if ((v & ~EferSupported) != 0) throw GP0();
        if ((Cr0 & Cr0PG) != 0 && ((v ^ Efer) & EferLME) != 0) throw GP0();
        v = (v & ~EferLMA) | (Efer & EferLMA);
        ulong changed = Efer ^ v;
        Efer = v;
        if ((changed & EferNXE) != 0) FlushTranslations();
        UpdateMode();
    }

    /// <summary>DR4/DR5 alias DR6/DR7 unless CR4.DE, where they are #UD.</summary>
    public int DebugRegIndex(int n)
    {
        if (n is 4 or 5)
        {
            if ((Cr4 & Cr4DE) != 0) throw UD();
            n += 2;
        }
        return n;
    }

    /// <summary>
    /// MOV DRn: the values are stored with their fixed bits; a change to DR0-DR3 or DR7 re-arms the breakpoints
    /// (Cpu.Debug.cs).
    /// </summary>
    public void WriteDr(int n, ulong v)
    {
        n = DebugRegIndex(n);
        switch (n)
        {
            case 6:
                if ((v >> 32) != 0) throw GP0();
                Dr[6] = (v & 0xE00F) | 0xFFFF_0FF0;
                break;
            case 7:
                if ((v >> 32) != 0) throw GP0();
                Dr[7] = (v & 0xFFFF_2BFF) | 0x400;
                UpdateDebugArming();
                break;
            default:
                Dr[n] = CodeBits == 64 ? v : (uint)v;
                if ((Dr[7] & 0xFF) != 0) UpdateDebugArming();
                break;
        }
    }

    public ulong ReadDr(int n)
    {
        n = DebugRegIndex(n);
        return n switch
        {
            6 => Dr[6] | 0xFFFF_0FF0,
            7 => Dr[7] | 0x400,
            _ => Dr[n],
        };
    }

    /// <summary>Canonical for 48-bit linear addresses.</summary>
    public static bool IsCanonical(ulong a) => (ulong)((long)(a << 16) >> 16) == a;
}
