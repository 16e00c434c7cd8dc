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

    // Saved state in the neutral records the emulated controllers use too (see ControllerStates.cs); called while
    // the VM is paused. Restores throw StateRestoreException for records the kernel refuses.
    PicPairState SavePic();
    void RestorePic(PicPairState state);
    IoApicState SaveIoApic();
    void RestoreIoApic(IoApicState state);
    PitState SavePit();
    void RestorePit(PitState state);
    /// <summary>The local APIC of vCPU <paramref name="vcpu"/> (which must have been created).</summary>
    LocalApicState SaveLocalApic(int vcpu);
    void RestoreLocalApic(int vcpu, LocalApicState state);
}
