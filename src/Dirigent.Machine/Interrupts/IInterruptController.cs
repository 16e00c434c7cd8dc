namespace Dirigent.Machine.Interrupts;

/// <summary>
/// A vCPU's view of its interrupt controller (the local APIC, with the 8259 behind LINT0), for accelerators that
/// deliver interrupts themselves (the software CPU). Under KVM the in-kernel irqchip replaces this.
/// </summary>
public interface IInterruptController
{
    /// <summary>True when a maskable interrupt is ready for the CPU (before looking at RFLAGS.IF).</summary>
    bool HasPendingInterrupt { get; }

    /// <summary>
    /// The CPU accepts the highest-priority pending interrupt (INTA): returns its vector and moves it in service,
    /// or -1 when it vanished meanwhile.
    /// </summary>
    int AcknowledgeInterrupt();

    /// <summary>Set by the vCPU: called (from any thread) whenever a new interrupt may be pending, to wake it.</summary>
    Action? Kick { get; set; }
}

/// <summary>An interrupt request line a device drives (ISA IRQ / GSI), level or edge as the receiver decides.</summary>
public interface IIrqLine
{
    void Set(bool level);

    /// <summary>Edge-triggered convenience: raise then lower.</summary>
    void Pulse() { Set(true); Set(false); }
}

/// <summary>
/// Local-APIC state the CPU itself reads and writes besides the APIC page: CR8 (task priority) and the
/// IA32_TSC_DEADLINE MSR. Implemented by the emulated local APIC; KVM keeps both in the kernel.
/// </summary>
public interface ILocalApicRegisters
{
    /// <summary>TPR as in the APIC register (CR8 = TPR &gt;&gt; 4).</summary>
    uint Tpr { get; set; }
    ulong ReadTscDeadline();
    /// <param name="tscOffset">The vCPU's TSC offset (guest TSC = clock-derived TSC + offset).</param>
    void WriteTscDeadline(ulong tsc, long tscOffset);
}

/// <summary>
/// Where devices send interrupts, independent of who models the interrupt controllers: the emulated PIC/IOAPIC/
/// local APICs (software CPU, or KVM without an in-kernel irqchip) or KVM's in-kernel irqchip
/// (KVM_IRQ_LINE / KVM_SIGNAL_MSI). Devices get their lines and MSI target from here and never know which.
/// </summary>
public interface IInterruptSink
{
    /// <summary>A new source on ISA IRQ 0..15 (not 2) or PCI GSI 16..23; sources on one line are ORed.</summary>
    IIrqLine Line(int isaIrqOrGsi);

    /// <summary>A PCI MSI/MSI-X write of <paramref name="data"/> to <paramref name="address"/> (0xFEEx_xxxx).</summary>
    void SignalMsi(ulong address, uint data);
}
