using Dirigent.Machine.State;

namespace Dirigent.Machine.Interrupts;

// Accelerator-neutral saved states of the PC's interrupt controllers and PIT. They live in the machine model, not
// beside the emulated devices, because two runtime types convert to and from each of them: the emulated device
// (Dirigent.Devices) and KVM's in-kernel irqchip (KVM_GET/SET_LAPIC, _IRQCHIP, _PIT2), which cannot see the devices.
// The board registers whichever models them under the same names (lapic/N, ioapic, pic, pit), so a snapshot taken
// under KVM restores on the software CPU and the reverse. Fields follow the chips' architectural registers.

/// <summary>
/// One local APIC: its 1 KiB register page exactly as the SDM (vol. 3 table 11-1) lays it out — ID at 0x20, version
/// 0x30, TPR 0x80, APR 0x90, PPR 0xA0, LDR 0xD0, DFR 0xE0, SVR 0xF0, ISR 0x100-0x170, TMR 0x180-0x1F0, IRR
/// 0x200-0x270, ESR 0x280, LVT CMCI 0x2F0, ICR 0x300/0x310, LVT timer 0x320, thermal 0x330, perf 0x340, LINT0 0x350,
/// LINT1 0x360, error 0x370, timer initial count 0x380, current count 0x390, divide configuration 0x3E0; each
/// 32-bit register in the low dword of its 16-byte slot — which is also KVM's kvm_lapic_state — plus what is not on
/// the page.
/// </summary>
public sealed record LocalApicState : ISavedState
{
    public static int FormatVersion => 1;
    /// <summary>The register page (1024 bytes).</summary>
    public byte[] Page = new byte[1024];
    /// <summary>IA32_APIC_BASE (base address, BSP flag, enable).</summary>
    public ulong ApicBase;
    /// <summary>IA32_TSC_DEADLINE (0: disarmed), in guest TSC ticks.</summary>
    public ulong TscDeadline;
}

/// <summary>The I/O APIC (82093AA): as kvm_ioapic_state.</summary>
public sealed record IoApicState : ISavedState
{
    public static int FormatVersion => 1;
    public ulong BaseAddress = 0xFEC0_0000;
    public uint IoRegSel;
    public uint Id;
    /// <summary>Remote IRR/pending bits per pin as the chip latched them (level lines asserted).</summary>
    public uint Irr;
    /// <summary>24 redirection-table entries (64 bits each, delivery status and remote IRR included).</summary>
    public ulong[] Redirection = new ulong[24];
}

/// <summary>One 8259A, as kvm_pic_state (the chip's registers and the initialization-sequence state).</summary>
public sealed record Pic8259State
{
    public byte LastIrr, Irr, Imr, Isr, PriorityAdd, IrqBase, ReadRegSelect;
    public bool Poll, SpecialMask;
    /// <summary>0: initialized; 1..3: expecting ICW2..ICW4.</summary>
    public byte InitState;
    public bool AutoEoi, RotateOnAutoEoi, SpecialFullyNestedMode, Init4;
    /// <summary>Edge/level control register (ports 0x4D0/0x4D1) and its writable mask.</summary>
    public byte Elcr, ElcrMask;
}

/// <summary>The master/slave 8259 pair.</summary>
public sealed record PicPairState : ISavedState
{
    public static int FormatVersion => 1;
    public Pic8259State Master = new(), Slave = new();
}

/// <summary>One 8254 counter, as kvm_pit_channel_state but with VM time instead of host time.</summary>
public sealed record PitChannelState
{
    /// <summary>The count loaded (1..0x10000; 0x10000 for a written 0).</summary>
    public uint Count;
    public ushort LatchedCount;
    public bool CountLatched, StatusLatched;
    public byte Status, ReadState, WriteState, WriteLatch, RwMode, Mode;
    public bool Bcd, Gate;
    /// <summary>VM-clock nanoseconds since the count was loaded (the counter's phase), as of the save.</summary>
    public long NsSinceLoad;
}

/// <summary>The 8254 PIT with port 0x61's speaker-data bit.</summary>
public sealed record PitState : ISavedState
{
    public static int FormatVersion => 1;
    public PitChannelState[] Channels = [new(), new(), new()];
    /// <summary>Port 0x61 bit 1 (speaker data enable); the gate of channel 2 is in its channel state.</summary>
    public bool SpeakerDataOn;
}
