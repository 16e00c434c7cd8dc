using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;
using Dirigent.Machine.Time;

namespace Dirigent.Machine;

public enum PowerEventKind { None, PowerOff, Reset, DebugExit }

/// <summary>
/// The machine model shared by every accelerator: guest memory, the I/O and MMIO buses devices sit on, the VM clock
/// and the power events devices raise. Not the VM itself (that is Dirigent.Vmm.Vm, which owns one of these, the
/// devices, the accelerator and the lifecycle).
/// </summary>
public sealed class MachineModel : IDisposable
{
    public GuestMemory Memory { get; }
    public IoBus Io { get; } = new();
    public MmioBus Mmio { get; } = new();
    public VirtualClock Clock { get; } = new();
    /// <summary>Introspection hooks (system calls, watchpoints, ...); honoured by the software CPU.</summary>
    public Introspection.GuestHooks Hooks { get; } = new();
    /// <summary>Record or replay of this run (README "Record and replay"); set before the vCPU is created.</summary>
    public Introspection.RecordReplay.RecordReplaySession? RecordReplay { get; set; }

    public PowerEventKind PowerEvent { get; private set; }
    public int ExitCode { get; private set; }

    /// <summary>Raised (on the requesting thread) when a device asks for power-off/reset; the VMM stops the vCPUs.</summary>
    public event Action<PowerEventKind>? PowerEventRequested;

    /// <summary>
    /// Raised (on the requesting thread) when a device asserts INIT to every processor without resetting the machine:
    /// the PIIX3's soft reset (0xCF9 with SYS_RST clear). The VMM sends each vCPU an INIT: RAM and devices stay as
    /// they are, the boot processor restarts at the reset vector and the others wait for a STARTUP IPI.
    /// </summary>
    public event Action? CpuInitRequested;

    public void RequestCpuInit() => CpuInitRequested?.Invoke();

    public MachineModel(ulong ramSize) => Memory = new GuestMemory(ramSize);

    public void RequestPowerEvent(PowerEventKind kind, int exitCode = 0)
    {
        lock (this)
        {
            if (PowerEvent != PowerEventKind.None) return;
            PowerEvent = kind;
            ExitCode = exitCode;
        }
        PowerEventRequested?.Invoke(kind);
    }

    public void ClearPowerEvent() { lock (this) { PowerEvent = PowerEventKind.None; ExitCode = 0; } }

    public void Dispose()
    {
        Clock.Dispose();
        Memory.Dispose();
    }
}
