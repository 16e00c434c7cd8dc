namespace Dirigent.Machine.Interrupts;

/// <summary>
/// Interrupt controllers the accelerator models itself (KVM's in-kernel local APICs, IOAPIC, 8259 pair and 8254
/// PIT). When an accelerator provides one, the machine must not put its own PIC/IOAPIC/local APICs/PIT on the
/// buses: the accelerator owns their ports and pages, and devices reach them only through this sink.
/// </summary>
public interface IInKernelIrqChip : IInterruptSink
{
    /// <summary>What it models, for logs (e.g. "kvm in-kernel LAPIC/IOAPIC/PIC + PIT").</summary>
    string Description { get; }

    /// <summary>System reset: the controllers and timers go back to their power-on state (lines keep their levels).</summary>
    void Reset();
}
