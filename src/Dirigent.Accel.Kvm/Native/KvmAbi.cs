using System.Runtime.InteropServices;

namespace Dirigent.Accel.Kvm.Native;

/// <summary>
/// ioctl numbers and constants from linux/kvm.h (x86-64). The numbers are the expanded _IO/_IOR/_IOW/_IOWR values
/// (type 0xAE), checked against the C header's macros on an x86-64 host.
/// </summary>
internal static class KvmAbi
{
    public const int ApiVersion = 12;

    // System ioctls (on /dev/kvm).
    public const nuint GET_API_VERSION = 0xAE00;
    public const nuint CREATE_VM = 0xAE01;
    public const nuint GET_MSR_INDEX_LIST = 0xC004AE02;
    public const nuint CHECK_EXTENSION = 0xAE03;
    public const nuint GET_VCPU_MMAP_SIZE = 0xAE04;
    public const nuint GET_SUPPORTED_CPUID = 0xC008AE05;

    // VM ioctls.
    public const nuint CREATE_VCPU = 0xAE41;
    public const nuint GET_DIRTY_LOG = 0x4010AE42;
    public const nuint SET_USER_MEMORY_REGION = 0x4020AE46;
    public const nuint SET_TSS_ADDR = 0xAE47;
    public const nuint SET_IDENTITY_MAP_ADDR = 0x4008AE48;
    public const nuint CREATE_IRQCHIP = 0xAE60;
    public const nuint IRQ_LINE = 0x4008AE61;
    public const nuint GET_IRQCHIP = 0xC208AE62;
    public const nuint SET_IRQCHIP = 0x8208AE63;
    public const nuint IRQ_LINE_STATUS = 0xC008AE67;
    public const nuint SET_GSI_ROUTING = 0x4008AE6A;
    public const nuint CREATE_PIT2 = 0x4040AE77;
    public const nuint GET_PIT2 = 0x8070AE9F;
    public const nuint SET_PIT2 = 0x4070AEA0;
    public const nuint SIGNAL_MSI = 0x4020AEA5;

    // vCPU ioctls.
    public const nuint RUN = 0xAE80;
    public const nuint GET_REGS = 0x8090AE81;
    public const nuint SET_REGS = 0x4090AE82;
    public const nuint GET_SREGS = 0x8138AE83;
    public const nuint SET_SREGS = 0x4138AE84;
    public const nuint INTERRUPT = 0x4004AE86;
    public const nuint GET_MSRS = 0xC008AE88;
    public const nuint SET_MSRS = 0x4008AE89;
    public const nuint SET_SIGNAL_MASK = 0x4004AE8B;
    public const nuint GET_FPU = 0x81A0AE8C;
    public const nuint SET_FPU = 0x41A0AE8D;
    public const nuint GET_LAPIC = 0x8400AE8E;
    public const nuint SET_LAPIC = 0x4400AE8F;
    public const nuint SET_CPUID2 = 0x4008AE90;
    public const nuint GET_MP_STATE = 0x8004AE98;
    public const nuint SET_MP_STATE = 0x4004AE99;
    public const nuint NMI = 0xAE9A;
    public const nuint GET_VCPU_EVENTS = 0x8040AE9F; // same nr as the VM ioctl GET_PIT2; the fd tells them apart
    public const nuint SET_VCPU_EVENTS = 0x4040AEA0;
    public const nuint GET_DEBUGREGS = 0x8080AEA1;
    public const nuint SET_DEBUGREGS = 0x4080AEA2;
    public const nuint GET_XSAVE = 0x9000AEA4;
    public const nuint SET_XSAVE = 0x5000AEA5;

    // Capabilities.
    public const int CAP_IRQCHIP = 0, CAP_USER_MEMORY = 3, CAP_SET_TSS_ADDR = 4, CAP_EXT_CPUID = 7,
        CAP_NR_MEMSLOTS = 10, CAP_MP_STATE = 14, CAP_IRQ_ROUTING = 25, CAP_VCPU_EVENTS = 41, CAP_IRQ_INJECT_STATUS = 26, CAP_PIT2 = 33, CAP_PIT_STATE2 = 35,
        CAP_SIGNAL_MSI = 77, CAP_SET_IDENTITY_MAP_ADDR = 37, CAP_DEBUGREGS = 50, CAP_XSAVE = 55, CAP_IMMEDIATE_EXIT = 136;

    // kvm_run.exit_reason values.
    public const uint EXIT_UNKNOWN = 0, EXIT_EXCEPTION = 1, EXIT_IO = 2, EXIT_HYPERCALL = 3, EXIT_DEBUG = 4,
        EXIT_HLT = 5, EXIT_MMIO = 6, EXIT_IRQ_WINDOW_OPEN = 7, EXIT_SHUTDOWN = 8, EXIT_FAIL_ENTRY = 9, EXIT_INTR = 10,
        EXIT_NMI = 16, EXIT_INTERNAL_ERROR = 17, EXIT_SYSTEM_EVENT = 24;

    public const byte IO_IN = 0, IO_OUT = 1;

    // Interrupt routing (kvm_irq_routing_entry.type) and kvm_irqchip.chip_id values; kvm_pit_config.flags.
    public const uint IRQ_ROUTING_IRQCHIP = 1;
    public const uint IRQCHIP_PIC_MASTER = 0, IRQCHIP_PIC_SLAVE = 1, IRQCHIP_IOAPIC = 2;
    public const uint PIT_SPEAKER_DUMMY = 1;
    public const uint MP_STATE_RUNNABLE = 0, MP_STATE_UNINITIALIZED = 1, MP_STATE_INIT_RECEIVED = 2, MP_STATE_HALTED = 3,
        MP_STATE_SIPI_RECEIVED = 4;
    public const uint PIT_FLAGS_HPET_LEGACY = 1, PIT_FLAGS_SPEAKER_DATA_ON = 2;
    /// <summary>kvm_vcpu_events.flags: which optional parts KVM_SET_VCPU_EVENTS applies.</summary>
    public const uint VCPUEVENT_VALID_NMI_PENDING = 1, VCPUEVENT_VALID_SIPI_VECTOR = 2, VCPUEVENT_VALID_SHADOW = 4;
    /// <summary>kvm_vcpu_events.interrupt.shadow bits (the SDM's interruptibility state).</summary>
    public const byte SHADOW_INT_MOV_SS = 1, SHADOW_INT_STI = 2;
    /// <summary>kvm_userspace_memory_region.flags: track the guest's writes to the slot (KVM_GET_DIRTY_LOG).</summary>
    public const uint MEM_LOG_DIRTY_PAGES = 1;
    public const uint SYSTEM_EVENT_SHUTDOWN = 1, SYSTEM_EVENT_RESET = 2, SYSTEM_EVENT_CRASH = 3;

    /// <summary>Where KVM puts the real-mode TSS (3 pages) and the EPT identity map (1 page): inside the PC's
    /// MMIO hole just below the BIOS flash, never guest RAM (as QEMU and kvmtool do).</summary>
    public const ulong TssAddr = 0xFFFB_D000, IdentityMapAddr = 0xFFFB_C000;
}

/// <summary>struct kvm_run: the mmap'ed page shared with the kernel; only the fields we use, at their ABI offsets.</summary>
[StructLayout(LayoutKind.Explicit)]
internal struct KvmRun
{
    [FieldOffset(0)] public byte RequestInterruptWindow;
    [FieldOffset(1)] public byte ImmediateExit;
    [FieldOffset(8)] public uint ExitReason;
    [FieldOffset(12)] public byte ReadyForInterruptInjection;
    [FieldOffset(13)] public byte IfFlag;
    [FieldOffset(16)] public ulong Cr8;
    [FieldOffset(24)] public ulong ApicBase;

    // Exit-specific union at offset 32.
    // io: direction, size, port, count, data_offset (from the start of kvm_run)
    [FieldOffset(32)] public byte IoDirection;
    [FieldOffset(33)] public byte IoSize;
    [FieldOffset(34)] public ushort IoPort;
    [FieldOffset(36)] public uint IoCount;
    [FieldOffset(40)] public ulong IoDataOffset;
    // mmio: phys_addr, data[8], len, is_write
    [FieldOffset(32)] public ulong MmioPhysAddr;
    [FieldOffset(40)] public ulong MmioData;
    [FieldOffset(48)] public uint MmioLen;
    [FieldOffset(52)] public byte MmioIsWrite;
    // fail_entry: hardware_entry_failure_reason, cpu
    [FieldOffset(32)] public ulong FailEntryReason;
    // internal: suberror, ndata, data[16]; system_event: type, ndata, data[16] (same shape)
    [FieldOffset(32)] public uint UnionU32a;
    [FieldOffset(36)] public uint UnionU32b;
    [FieldOffset(40)] public ulong UnionData0;
    [FieldOffset(48)] public ulong UnionData1;
    [FieldOffset(56)] public ulong UnionData2;
    [FieldOffset(64)] public ulong UnionData3;
}

/// <summary>struct kvm_regs: note the order (rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags), not encoding order.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmRegs
{
    public fixed ulong R[16];
    public ulong Rip, Rflags;
}

[StructLayout(LayoutKind.Sequential)]
internal struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type, Present, Dpl, Db, S, L, G, Avl, Unusable, Padding;
}

[StructLayout(LayoutKind.Sequential)]
internal struct KvmDtable
{
    public ulong Base;
    public ushort Limit;
    public ushort Pad0, Pad1, Pad2;
}

/// <summary>struct kvm_sregs (312 bytes). Segment order: cs ds es fs gs ss tr ldt.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmSregs
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public KvmDtable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
    public fixed ulong InterruptBitmap[4];
}

/// <summary>struct kvm_fpu (416 bytes): the FXSAVE contents in a different order.</summary>
[StructLayout(LayoutKind.Explicit, Size = 416)]
internal unsafe struct KvmFpu
{
    [FieldOffset(0)] public fixed byte Fpr[128];
    [FieldOffset(128)] public ushort Fcw;
    [FieldOffset(130)] public ushort Fsw;
    [FieldOffset(132)] public byte Ftwx;
    [FieldOffset(134)] public ushort LastOpcode;
    [FieldOffset(136)] public ulong LastIp;
    [FieldOffset(144)] public ulong LastDp;
    [FieldOffset(152)] public fixed byte Xmm[256];
    [FieldOffset(408)] public uint Mxcsr;
}

/// <summary>struct kvm_xsave: 4 KiB in the XSAVE layout; the first 512 bytes are the FXSAVE image, then the
/// XSAVE header (XSTATE_BV at 512).</summary>
[StructLayout(LayoutKind.Sequential, Size = 4096)]
internal unsafe struct KvmXsave
{
    public fixed byte Region[4096];
}

/// <summary>struct kvm_debugregs (128 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal unsafe struct KvmDebugRegs
{
    [FieldOffset(0)] public fixed ulong Db[4];
    [FieldOffset(32)] public ulong Dr6;
    [FieldOffset(40)] public ulong Dr7;
    [FieldOffset(48)] public ulong Flags;
}

[StructLayout(LayoutKind.Sequential)]
internal struct KvmUserspaceMemoryRegion
{
    public uint Slot, Flags;
    public ulong GuestPhysAddr, MemorySize, UserspaceAddr;
}

/// <summary>struct kvm_cpuid_entry2 (40 bytes); kvm_cpuid2 is {u32 nent, u32 pad} followed by these.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmCpuidEntry2
{
    public uint Function, Index, Flags, Eax, Ebx, Ecx, Edx, Pad0, Pad1, Pad2;
}

/// <summary>struct kvm_msrs holding one entry: {u32 nmsrs, u32 pad, {u32 index, u32 reserved, u64 data}}.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmOneMsr
{
    public uint NMsrs, Pad, Index, Reserved;
    public ulong Data;
}

/// <summary>struct kvm_signal_mask: u32 len, then the kernel's 8-byte sigset right after it (unaligned, at 4).</summary>
[StructLayout(LayoutKind.Explicit, Size = 12)]
internal struct KvmSignalMask
{
    [FieldOffset(0)] public uint Len;
    [FieldOffset(4)] public ulong Sigset;
}

/// <summary>struct kvm_irq_level: the GSI in, the delivery status out (KVM_IRQ_LINE_STATUS), then the level.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmIrqLevel
{
    public int IrqOrStatus;
    public uint Level;
}

/// <summary>struct kvm_msi (32 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 32)]
internal struct KvmMsi
{
    [FieldOffset(0)] public uint AddressLo;
    [FieldOffset(4)] public uint AddressHi;
    [FieldOffset(8)] public uint Data;
    [FieldOffset(12)] public uint Flags;
    [FieldOffset(16)] public uint DevId;
}

/// <summary>struct kvm_pit_config (64 bytes): flags and reserved words.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct KvmPitConfig
{
    [FieldOffset(0)] public uint Flags;
}

/// <summary>struct kvm_irq_routing_entry (48 bytes) for the irqchip type: {gsi, type, flags, pad, {irqchip, pin}}.</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
internal struct KvmIrqRoutingEntry
{
    [FieldOffset(0)] public uint Gsi;
    [FieldOffset(4)] public uint Type;
    [FieldOffset(8)] public uint Flags;
    [FieldOffset(16)] public uint IrqChip;
    [FieldOffset(20)] public uint Pin;
}

/// <summary>struct kvm_irqchip (520 bytes): chip id, then the PIC or IOAPIC state as the kernel keeps it.</summary>
[StructLayout(LayoutKind.Explicit, Size = 520)]
internal unsafe struct KvmIrqChipState
{
    [FieldOffset(0)] public uint ChipId;
    [FieldOffset(8)] public fixed byte Chip[512];
}

/// <summary>struct kvm_pic_state (16 bytes): one 8259 as KVM keeps it, in the order of <c>Pic8259State</c>.</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
internal struct KvmPicState
{
    public byte LastIrr, Irr, Imr, Isr, PriorityAdd, IrqBase, ReadRegSelect, Poll, SpecialMask, InitState, AutoEoi,
        RotateOnAutoEoi, SpecialFullyNestedMode, Init4, Elcr, ElcrMask;
}

/// <summary>struct kvm_ioapic_state (216 bytes): base, IOREGSEL, ID, IRR, pad, 24 redirection entries.</summary>
[StructLayout(LayoutKind.Explicit, Size = 216)]
internal unsafe struct KvmIoApicState
{
    [FieldOffset(0)] public ulong BaseAddress;
    [FieldOffset(8)] public uint IoRegSel;
    [FieldOffset(12)] public uint Id;
    [FieldOffset(16)] public uint Irr;
    [FieldOffset(24)] public fixed ulong Redirtbl[24];
}

/// <summary>struct kvm_pit_channel_state (24 bytes). count_load_time is host ktime (CLOCK_MONOTONIC ns).</summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct KvmPitChannelState
{
    [FieldOffset(0)] public uint Count;
    [FieldOffset(4)] public ushort LatchedCount;
    /// <summary>Not a flag: the access mode of the latched count (which byte is read next), 0 when none.</summary>
    [FieldOffset(6)] public byte CountLatched;
    [FieldOffset(7)] public byte StatusLatched;
    [FieldOffset(8)] public byte Status;
    [FieldOffset(9)] public byte ReadState;
    [FieldOffset(10)] public byte WriteState;
    [FieldOffset(11)] public byte WriteLatch;
    [FieldOffset(12)] public byte RwMode;
    [FieldOffset(13)] public byte Mode;
    [FieldOffset(14)] public byte Bcd;
    [FieldOffset(15)] public byte Gate;
    [FieldOffset(16)] public long CountLoadTime;
}

/// <summary>struct kvm_pit_state2 (112 bytes): three channel states, flags, reserved.</summary>
[StructLayout(LayoutKind.Explicit, Size = 112)]
internal struct KvmPitState2
{
    [FieldOffset(0)] public KvmPitChannelState Channel0;
    [FieldOffset(24)] public KvmPitChannelState Channel1;
    [FieldOffset(48)] public KvmPitChannelState Channel2;
    [FieldOffset(72)] public uint Flags;

    [System.Diagnostics.CodeAnalysis.UnscopedRef]
    public ref KvmPitChannelState Channel(int i)
    {
        switch (i)
        {
            case 0: return ref Channel0;
            case 1: return ref Channel1;
            case 2: return ref Channel2;
            default: throw new ArgumentOutOfRangeException(nameof(i));
        }
    }
}

/// <summary>struct kvm_vcpu_events (64 bytes): exception, interrupt and NMI in flight, SIPI vector, SMM, flags.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct KvmVcpuEvents
{
    [FieldOffset(0)] public byte ExceptionInjected;
    [FieldOffset(1)] public byte ExceptionNr;
    [FieldOffset(2)] public byte ExceptionHasErrorCode;
    [FieldOffset(3)] public byte ExceptionPending;
    [FieldOffset(4)] public uint ExceptionErrorCode;
    [FieldOffset(8)] public byte InterruptInjected;
    [FieldOffset(9)] public byte InterruptNr;
    [FieldOffset(10)] public byte InterruptSoft;
    [FieldOffset(11)] public byte InterruptShadow;
    [FieldOffset(12)] public byte NmiInjected;
    [FieldOffset(13)] public byte NmiPending;
    [FieldOffset(14)] public byte NmiMasked;
    [FieldOffset(16)] public uint SipiVector;
    [FieldOffset(20)] public uint Flags;
    [FieldOffset(24)] public byte SmiSmm;
    [FieldOffset(25)] public byte SmiPending;
    [FieldOffset(26)] public byte SmiInsideNmi;
    [FieldOffset(27)] public byte SmiLatchedInit;
    [FieldOffset(28)] public byte TripleFaultPending;
    [FieldOffset(55)] public byte ExceptionHasPayload;
    [FieldOffset(56)] public ulong ExceptionPayload;
}

/// <summary>struct kvm_dirty_log (16 bytes): the slot, then a user pointer to its bitmap (one bit per page, in
/// 64-bit words).</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct KvmDirtyLog
{
    [FieldOffset(0)] public uint Slot;
    [FieldOffset(8)] public ulong DirtyBitmap;
}

/// <summary>struct kvm_lapic_state: the 1 KiB local APIC register page as the kernel keeps it (APIC layout, one
/// 32-bit register every 16 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Size = 1024)]
internal unsafe struct KvmLapicState
{
    public fixed byte Regs[1024];
}
