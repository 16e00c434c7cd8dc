using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// What CPUID reports. The default model is a GenuineIntel family-6 CPU advertising only features this software CPU
/// implements, so the guest kernel never takes a path we cannot execute. Feature words are plain fields so a machine
/// configuration can mask them.
/// </summary>
public sealed class CpuidModel
{
    public string Vendor = "GenuineIntel";
    public string HypervisorSignature = "DirigentDrgt";
    public string Brand = "Dirigent Virtual CPU @ 2.00GHz";
    /// <summary>Leaf 1 EAX: stepping 7, model 0x2A, family 6.</summary>
    public uint Signature = 0x0002_06A7;
    public uint MaxBasicLeaf = 0x16;
    public uint MaxExtLeaf = 0x8000_0008;
    public uint MaxHypervisorLeaf = 0x4000_0010;
    public uint Leaf1Ecx, Leaf1Edx, Ext1Ecx, Ext1Edx;

    /// <summary>The local APIC timer's input clock (the emulated APIC's TimerHz).</summary>
    public const ulong ApicTimerHz = 1_000_000_000;

    /// <summary>
    /// IA32_ARCH_CAPABILITIES: RDCL_NO, SKIP_L1DFL_VMENTRY, SSB_NO, MDS_NO, IF_PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO,
    /// FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO, GDS_NO, RFDS_NO, ITS_NO: a CPU that does not speculate has none of these
    /// side channels. ITS_NO matters most: without it a kernel with the 2025 ITS fix (Debian 12's 6.1 among them) assumes a
    /// hypervisor's Intel CPU may have Indirect Target Selection and routes every kernel RET through a return thunk
    /// (one more block per function return here).
    /// </summary>
    public ulong ArchCapabilities = ArchCapRdclNo | (1UL << 3) | (1UL << 4) | (1UL << 5) | (1UL << 6) | (1UL << 8) |
        (1UL << 13) | (1UL << 14) | (1UL << 15) | ArchCapBhiNo | (1UL << 24) | (1UL << 26) | (1UL << 27) | ArchCapItsNo;
    public const ulong ArchCapRdclNo = 1UL << 0, ArchCapBhiNo = 1UL << 20, ArchCapItsNo = 1UL << 62;

    // Leaf 1 EDX
    public const uint FPU = 1u << 0, DE = 1u << 2, PSE = 1u << 3, TSC = 1u << 4, MSR = 1u << 5, PAE = 1u << 6,
        CX8 = 1u << 8, APIC = 1u << 9, SEP = 1u << 11, MTRR = 1u << 12, PGE = 1u << 13, CMOV = 1u << 15, PAT = 1u << 16,
        PSE36 = 1u << 17, CLFSH = 1u << 19, MMX = 1u << 23, FXSR = 1u << 24, SSE = 1u << 25, SSE2 = 1u << 26;
    // Leaf 1 ECX
    public const uint SSE3 = 1u << 0, SSSE3 = 1u << 9, CX16 = 1u << 13, POPCNT = 1u << 23, TSCDeadline = 1u << 24,
        Hypervisor = 1u << 31;
    // 0x80000001 ECX / EDX
    public const uint LahfLm = 1u << 0, ABM = 1u << 5;
    public const uint SYSCALL = 1u << 11, NX = 1u << 20, Page1GB = 1u << 26, RDTSCP = 1u << 27, LM = 1u << 29;

    public static CpuidModel CreateDefault()
    {
        var m = new CpuidModel
        {
            Leaf1Edx = FPU | DE | PSE | TSC | MSR | PAE | CX8 | APIC | SEP | MTRR | PGE | CMOV | PAT | PSE36 | CLFSH | FXSR | SSE | SSE2,
            Leaf1Ecx = SSE3 | SSSE3 | CX16 | POPCNT | TSCDeadline | Hypervisor,
            Ext1Ecx = LahfLm | ABM,
            Ext1Edx = SYSCALL | NX | Page1GB | RDTSCP | LM,
        };
        // MMX is advertised only when the x87/MMX group actually implements the MMX instructions.
        if (Dispatch.IsImplemented(Code.Paddb_mm_mmm64)) m.Leaf1Edx |= MMX;
        return m;
    }

    private static uint Str4(string s, int at)
    {
        uint v = 0;
        for (int k = 0; k < 4; k++)
        {
            int idx = at + k;
            byte b = idx < s.Length ? (byte)s[idx] : (byte)0;
            v |= (uint)b << (8 * k);
        }
        return v;
    }

    /// <summary>Answers CPUID for leaf EAX, subleaf ECX, on the vCPU whose APIC ID is apicId.</summary>
    public void Query(uint leaf, uint sub, int apicId, out uint a, out uint b, out uint c, out uint d)
    {
        a = b = c = d = 0;
        // Intel answers leaves above the maximum with the highest basic leaf.
        if (leaf >= 0x8000_0000 ? leaf > MaxExtLeaf : leaf >= 0x4000_0000 ? false : leaf > MaxBasicLeaf)
            leaf = MaxBasicLeaf;
        switch (leaf)
        {
            case 0:
                a = MaxBasicLeaf; b = Str4(Vendor, 0); d = Str4(Vendor, 4); c = Str4(Vendor, 8);
                break;
            case 1:
                a = Signature;
                // CLFLUSH line size 8*8 bytes, one logical processor, initial APIC ID.
                b = (8u << 8) | (1u << 16) | ((uint)apicId << 24);
                c = Leaf1Ecx; d = Leaf1Edx;
                break;
            case 2:
                a = 1; // one iteration, no descriptors: leaf 4 describes the caches
                break;
            case 4:
                // Deterministic cache parameters: L1d 32K/8, L1i 32K/8, L2 256K/8, L3 8M/16; 64-byte lines, 1 core.
                switch (sub)
                {
                    case 0: a = 1 | (1 << 5) | (1 << 8); b = (7u << 22) | 63; c = 63; break;
                    case 1: a = 2 | (1 << 5) | (1 << 8); b = (7u << 22) | 63; c = 63; break;
                    case 2: a = 3 | (2 << 5) | (1 << 8); b = (7u << 22) | 63; c = 511; break;
                    case 3: a = 3 | (3 << 5) | (1 << 8); b = (15u << 22) | 63; c = 8191; d = 2; break;
                }
                break;
            case 6:
                // No ARAT (EAX bit 2), deliberately. With ARAT, a TSC-deadline APIC timer and the TSC's frequency in leaf
                // 0x15, Linux starts no PIT (apic_needs_pit()), so it has no tick at all from timekeeping_init until
                // smp_prepare_cpus sets up the APIC timer: on this CPU that stretch of early boot (alternatives
                // patching, ~0.3 s) ran with jiffies, the printk clock and CLOCK_MONOTONIC standing still, and the
                // guest's clocks came out ~0.38 s behind the TSC ("sched_clock: Marking stable (...)->(..., -374574747)").
                // Without ARAT the PIT ticks from late_time_init, as under QEMU TCG, and is shut down once the APIC
                // timer takes over (HLT idle needs no broadcast): the loss is ~0.1 s, the gap before late_time_init.
                a = 0;
                break;
            case 0xB:
                // x2APIC topology for one thread per core, one core per package.
                d = (uint)apicId;
                if (sub == 0) { a = 0; b = 1; c = 0 | (1u << 8); }
                else if (sub == 1) { a = 0; b = 1; c = 1 | (2u << 8); }
                else c = sub & 0xFF;
                break;
            case 7:
                // Only IA32_ARCH_CAPABILITIES (EDX bit 29): it tells the guest which speculative-execution flaws this
                // CPU does not have, so Linux skips mitigations that only cost time here (above all KPTI, whose CR3
                // switch on every kernel entry would flush our TLB each time).
                // EBX bit 1, TSC_ADJUST: with an invariant TSC it also tells Linux (>= 5.16) the TSC needs no
                // clocksource watchdog. Ours is host monotonic time; a watchdog comparing it with the PM timer only
                // measures host scheduling delays and, on a loaded host, wrongly marks the TSC unstable.
                if (sub == 0) { b = 1u << 1; d = 1u << 29; }
                break;
            case 0x15:
                // TSC = crystal * EBX / EAX. Linux also takes the crystal as the local APIC timer's clock
                // (lapic_timer_period = crystal_khz * 1000 / HZ), so the crystal is the APIC timer's 1 GHz.
                a = 1; b = (uint)(Cpu.TscHz / ApicTimerHz); c = (uint)ApicTimerHz;
                break;
            case 0x16:
                a = (uint)(Cpu.TscHz / 1_000_000); b = a; c = 100;
                break;
            case 0x4000_0000:
                a = MaxHypervisorLeaf;
                b = Str4(HypervisorSignature, 0); c = Str4(HypervisorSignature, 4); d = Str4(HypervisorSignature, 8);
                break;
            case 0x4000_0010:
                // VMware-style timing leaf: TSC and APIC bus frequencies in kHz.
                a = (uint)(Cpu.TscHz / 1000); b = 1_000_000;
                break;
            case 0x8000_0000:
                a = MaxExtLeaf;
                break;
            case 0x8000_0001:
                a = Signature; c = Ext1Ecx; d = Ext1Edx;
                break;
            case 0x8000_0002:
            case 0x8000_0003:
            case 0x8000_0004:
            {
                int at = (int)(leaf - 0x8000_0002) * 16;
                a = Str4(Brand, at); b = Str4(Brand, at + 4); c = Str4(Brand, at + 8); d = Str4(Brand, at + 12);
                break;
            }
            case 0x8000_0006:
                c = (256u << 16) | (6u << 12) | 64; // L2: 256 KiB, 8-way, 64-byte lines
                break;
            case 0x8000_0007:
                d = 1u << 8; // invariant TSC
                break;
            case 0x8000_0008:
                a = (uint)Cpu.MaxPhysAddrBits | (48u << 8);
                break;
        }
    }

    /// <summary>The brand string as the guest reads it (for tests and logs).</summary>
    public override string ToString() => $"{Vendor} {Brand} sig={Signature:x}";
}
