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
