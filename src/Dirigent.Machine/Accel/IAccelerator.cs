using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;

namespace Dirigent.Machine.Accel;

/// <summary>Why <see cref="IVcpu.Run"/> returned.</summary>
public enum VcpuExitReason
{
    /// <summary><see cref="IVcpu.RequestStop"/> was called (pause, shutdown of the VM, a device asked to stop).</summary>
    Stopped,
    /// <summary>The guest executed HLT with interrupts disabled and no NMI can wake it: it will never run again.</summary>
    HaltedForever,
    /// <summary>Triple fault or shutdown: a real PC resets here.</summary>
    Shutdown,
    /// <summary>A device (reset port, ACPI, debug-exit) asked the machine to reset or power off; see <see cref="MachineModel.PowerEvent"/>.</summary>
    PowerEvent,
    /// <summary>The accelerator failed in a way that is not the guest's doing (a bug or host error).</summary>
    InternalError,
}

public readonly record struct VcpuExit(VcpuExitReason Reason, string Detail = "");

/// <summary>
/// One accelerator: the software CPU or KVM. It runs vCPUs over a <see cref="MachineModel"/>'s memory and buses;
/// devices never see it.
/// </summary>
public interface IAccelerator : IDisposable
{
    string Name { get; }
    IVcpu CreateVcpu(int index);

    /// <summary>
    /// Switches to the accelerator's own interrupt controllers (KVM: KVM_CREATE_IRQCHIP + KVM_CREATE_PIT2) and returns
    /// the sink devices must use; null when it has none (the software CPU) or the host cannot provide them, and the
    /// caller keeps the emulated controllers (<see cref="IVcpu.AttachInterruptController"/>). Call at most once,
    /// before <see cref="CreateVcpu"/>. <paramref name="reason"/> says which was chosen and why, for one log line.
    /// </summary>
    IInKernelIrqChip? CreateInKernelIrqChip(out string reason)
    {
        reason = $"{Name} has no in-kernel interrupt controllers";
        return null;
    }

    /// <summary>
    /// Starts (or stops) tracking the guest's writes to RAM for live migration. While on, <see cref="CollectDirtyPages"/>
    /// moves what the vCPUs wrote into the memory's dirty log (<see cref="Memory.GuestMemory.DirtyLog"/>); device
    /// and loader writes are logged there directly. Thread-safe; vCPUs may be running.
    /// </summary>
    void SetDirtyLogging(bool enabled);

    /// <summary>
    /// Marks in the memory's dirty log every page the vCPUs wrote since logging started or since the last call
    /// (KVM: KVM_GET_DIRTY_LOG; software CPU: pages whose soft-TLB write entries were filled, then write entries are
    /// dropped so the next write is seen again). Call before harvesting the log; thread-safe.
    /// </summary>
    void CollectDirtyPages();
}

public interface IVcpu
{
    int Index { get; }

    /// <summary>Runs the guest on the calling thread until an exit (see <see cref="VcpuExitReason"/>).</summary>
    VcpuExit Run();

    /// <summary>Thread-safe: makes a running or halted <see cref="Run"/> return <see cref="VcpuExitReason.Stopped"/> soon;
    /// made after <see cref="PrepareRun"/> but before the new run's thread enters <see cref="Run"/>, it ends that run
    /// at once.</summary>
    void RequestStop();

    /// <summary>
    /// Before a new run's thread starts: drops a stop request left over from the last run (one that came after that
    /// run had already ended). Run itself does not drop requests: a pause that follows a resume at once must not be
    /// lost in the moment before the resumed thread enters Run.
    /// </summary>
    void PrepareRun();

    /// <summary>
    /// The full architectural state, including activity (running/halted/waiting for SIPI) and pending events. Only
    /// while <see cref="Run"/> is not executing on another thread (a stopped vCPU).
    /// </summary>
    CpuState GetState();
    /// <summary>
    /// Replaces the state, activity and pending events included: a state saved by either accelerator continues exactly
    /// where it was (a halted vCPU stays halted until an interrupt). Only while the vCPU is not running.
    /// </summary>
    void SetState(CpuState state);

    /// <summary>
    /// Thread-safe, while the vCPU may be running: its state at an instruction boundary, taken without stopping the
    /// other vCPUs (the software CPU answers at its next block boundary, or at once when asleep in HLT). Null when the
    /// accelerator cannot look at a running vCPU (KVM: its registers are the kernel's until KVM_RUN returns); use
    /// <see cref="GetState"/> on a stopped vCPU there.
    /// </summary>
    CpuState? QueryState() => null;

    /// <summary>Thread-safe: an external (maskable) interrupt with this vector is pending until the guest takes it.</summary>
    void InjectInterrupt(byte vector);
    /// <summary>Thread-safe: an NMI is pending.</summary>
    void InjectNmi();

    /// <summary>
    /// Thread-safe: the local APIC received INIT (asserted). At its next instruction boundary the vCPU takes the INIT
    /// state (SDM 10.1: registers as after RESET, x87/SSE, MTRRs and IA32_APIC_BASE kept); the boot processor then
    /// runs from F000:FFF0, an application processor waits for a STARTUP IPI (<see cref="VcpuActivity.WaitForSipi"/>).
    /// Only for accelerators whose local APICs are emulated (KVM's in-kernel LAPIC does this itself).
    /// </summary>
    void InjectInit();

    /// <summary>
    /// Thread-safe: the local APIC received a STARTUP IPI. A vCPU waiting for SIPI starts in real mode at
    /// CS = vector &lt;&lt; 8, IP = 0 (physical vector * 4096); in any other activity state it is ignored (SDM 8.4.4).
    /// </summary>
    void InjectSipi(byte vector);

    /// <summary>Guest instructions retired so far (the software CPU counts them exactly; KVM may not know).</summary>
    ulong InstructionsRetired { get; }

    /// <summary>
    /// Takes maskable interrupts from the machine's emulated local APIC (with the PIC behind it) and routes this
    /// vCPU's APIC page to it. Call before <see cref="Run"/>.
    /// </summary>
    void AttachInterruptController(IInterruptController ctrl, IMmioDevice? apicMmio);
}
