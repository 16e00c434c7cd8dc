namespace Dirigent.Vmm;

/// <summary>Where a VM is in its life.</summary>
public enum VmState
{
    /// <summary>Built (or restored/received), not started: no vCPU has run in this process yet.</summary>
    Created,
    Running,
    /// <summary>vCPUs and device workers stopped, VM time frozen; resumes exactly where it was.</summary>
    Paused,
    /// <summary>The power button was pressed: the guest is running its shutdown.</summary>
    ShuttingDown,
    /// <summary>Ended normally: power-off, reset with no reboot, debug-exit, stopped by request, migrated away.</summary>
    Stopped,
    /// <summary>Ended because the guest died (triple fault, HLT with interrupts off) or the VMM failed.</summary>
    Crashed,
}

/// <summary>Why a VM ended.</summary>
public enum VmExitKind
{
    PowerOff,
    /// <summary>The guest reset the machine while the VM was told not to reboot.</summary>
    Reset,
    /// <summary>Triple fault (shutdown): <see cref="VmExitReason.Rip"/> is where it happened.</summary>
    TripleFault,
    /// <summary>HLT with interrupts disabled and nothing able to wake the vCPU.</summary>
    HaltedForever,
    /// <summary>The guest wrote <see cref="VmExitReason.DebugExitValue"/> to the debug-exit port.</summary>
    DebugExit,
    /// <summary>The VMM failed (not the guest's doing).</summary>
    VmmError,
    /// <summary>Stopped from outside (Stop, a signal, Ctrl-A x).</summary>
    StoppedByRequest,
    /// <summary>Live migration completed: the VM now runs in the target process.</summary>
    Migrated,
}

/// <summary>The typed reason a VM ended, with what is known about it.</summary>
public sealed record VmExitReason(VmExitKind Kind, string Detail = "", int DebugExitValue = 0, ulong? Rip = null)
{
    public override string ToString() => Kind switch
    {
        VmExitKind.DebugExit => $"debug-exit {DebugExitValue}",
        VmExitKind.TripleFault => $"triple fault{(Rip is { } r ? $" at RIP 0x{r:x}" : "")}{(Detail.Length > 0 ? $": {Detail}" : "")}",
        _ => Detail.Length > 0 ? $"{Kind}: {Detail}" : Kind.ToString(),
    };
}

/// <summary>What went wrong building or restoring a VM, as one line; <see cref="BadInput"/> tells the user's mistake
/// (a file, an option: exit status 2) from a host failure (status 6).</summary>
public sealed class VmException(string message, bool badInput) : Exception(message)
{
    public bool BadInput { get; } = badInput;
}

/// <summary>A request that the VM's current state does not allow (resume while running...): the API's 409.</summary>
public sealed class VmStateException(string message) : InvalidOperationException(message);

/// <summary>
/// What one vCPU is doing (a monitor's view, as QEMU's `info cpus`): its activity, where it is, how much it ran.
/// <see cref="Live"/> is false for a running vCPU the accelerator cannot look at (KVM): then only the index is known.
/// </summary>
public sealed record VcpuInfo(int Index, bool Live, Dirigent.Machine.Accel.VcpuActivity Activity = default,
    ushort Cs = 0, ulong Rip = 0, int Mode = 0, ulong InstructionsRetired = 0);

