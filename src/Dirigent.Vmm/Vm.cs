using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu;
using Dirigent.Devices.Firmware;
using Dirigent.Devices.Serial;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Machine.State;
using Dirigent.Storage;

namespace Dirigent.Vmm;

/// <summary>
/// One virtual machine, embeddable: the CLI, the per-VM API socket, tests and the daemon all drive VMs through this.
/// It owns the machine model (memory, buses, VM clock), the accelerator and its vCPU threads, the board's devices,
/// the disk images and network backends. Lifecycle requests (<see cref="Pause"/>, <see cref="Resume"/>,
/// <see cref="Reset"/>, <see cref="Stop"/>, snapshots, migration) are serialized; each either does what it says or
/// throws <see cref="VmStateException"/> and changes nothing. What the guest does (power-off, reboot, triple fault)
/// ends or restarts the run on a supervisor thread, and <see cref="Exited"/> tells why.
/// </summary>
public sealed partial class Vm : IDisposable
{
    private readonly TextWriter _log;
    internal readonly MachineModel Machine;
    internal readonly IAccelerator Accel;
    internal readonly PcBoard Board;
    internal readonly IVcpu[] Vcpus;
    private readonly Net.NetBackendSet _nics;
    private readonly object _cmd = new();
    private readonly TaskCompletionSource<VmExitReason> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly AutoResetEvent _vcpuEnded = new(false);
    private readonly Thread _supervisor;
    private Thread[]? _threads;
    private VcpuExit[] _exits = [];
    /// <summary>vCPU threads of the current run that have returned (a counter per run, so the supervisor never
    /// confuses a thread still finishing with one still running).</summary>
    private StrongBox<int>? _ended;
    private volatile bool _disposed;
    /// <summary>vCPU states captured at pause, set back at resume on accelerators whose TSC runs on in the host while
    /// paused (KVM): the guest sees no time pass.</summary>
    private CpuState[]? _pausedStates;

    public VmSpec Spec { get; }
    public VmState State { get; private set; } = VmState.Created;
    /// <summary>The accelerator's name: "emu" or "kvm".</summary>
    public string AccelName => Accel.Name;
    public VmConsole Console { get; } = new();
    /// <summary>How the VM ended; null while it has not.</summary>
    public VmExitReason? ExitReason { get; private set; }
    /// <summary>Completes when the VM ends (never faults).</summary>
    public Task<VmExitReason> Completion => _exit.Task;
    /// <summary>Raised once when the VM ends, on a thread-pool thread.</summary>
    public event Action<VmExitReason>? Exited;
    /// <summary>Guest reboots so far.</summary>
    public int Reboots { get; private set; }
    /// <summary>VM time: how long the guest has run (pauses excluded).</summary>
    public TimeSpan Uptime => TimeSpan.FromTicks(Machine.Clock.NowNs / 100);
    public IReadOnlyList<IVcpu> VcpuList => Vcpus;
    /// <summary>The accelerator running the vCPUs (for statistics and tracing hooks).</summary>
    public IAccelerator Accelerator => Accel;
    /// <summary>Hooks, Linux awareness, system-call trace and memory dumps (README "Introspection").</summary>
    public Introspection.VmIntrospection Introspection { get; }

    private Vm(VmSpec spec, TextWriter log, MachineModel machine, IAccelerator accel, PcBoard board, IVcpu[] vcpus,
        Net.NetBackendSet nics)
    {
        Spec = spec;
        _log = log;
        Machine = machine;
        Accel = accel;
        Board = board;
        Vcpus = vcpus;
        _nics = nics;
        Introspection = new Introspection.VmIntrospection(this, machine);
        Console.ConnectInput(data => Board.Com1.EnqueueInput(data));
        machine.PowerEventRequested += _ => { foreach (var v in Vcpus) v.RequestStop(); };
        // A soft reset is INIT on every processor (the vCPU takes it on its own thread at an instruction boundary).
        machine.CpuInitRequested += () => { foreach (var v in Vcpus) v.InjectInit(); };
        // Nothing runs before Start: VM time starts at the first instruction.
        machine.Clock.Stop();
        _supervisor = new Thread(Supervise) { IsBackground = true, Name = "vm-supervisor" };
        _supervisor.Start();
    }

    /// <summary>
    /// Builds a VM from a spec (kernel, initrds and append must be set: the CLI resolves the default image). Throws
    /// <see cref="VmException"/> with one line on bad input or host failure; nothing is left open then.
    /// </summary>
    /// <param name="openedDisks">The images of spec.Disks, already open (the CLI opens them before it builds the
    /// default image, so a bad --disk is reported first); the VM owns them from here, even when this throws.</param>
    /// <param name="recordReplay">A recording or replay of this run (Introspection/Recording.cs); its machine gets it
    /// before the vCPU is created.</param>
    public static Vm Create(VmSpec spec, TextWriter log, IReadOnlyList<IBlockDevice>? openedDisks = null,
        Dirigent.Machine.Introspection.RecordReplay.RecordReplaySession? recordReplay = null) =>
        Build(spec, log, loadGuest: true, openedDisks, recordReplay);

    /// <param name="openedDisks">Images to use instead of opening spec.Disks: already opened ones, or an incoming
    /// migration's stand-ins of the right size (it builds the VM before the source has let go of the disks and swaps
    /// the real ones in later).</param>
    private static Vm Build(VmSpec spec, TextWriter log, bool loadGuest, IReadOnlyList<IBlockDevice>? openedDisks = null,
        Dirigent.Machine.Introspection.RecordReplay.RecordReplaySession? recordReplay = null)
    {
        // Until the board takes the disks, a failure closes them here; everything else built is in `owned`.
        var owned = new Stack<IDisposable>();
        var disks = new List<IBlockDevice>(openedDisks ?? []);
        PcBoard? board = null;
        try
        {
            if (spec.Kernel == null && loadGuest && spec.Firmware == FirmwareKind.None) throw new VmException("no kernel given", badInput: true);
            if (spec.Kernel != null && spec.Firmware != FirmwareKind.None)
                throw new VmException("--kernel boots directly: it cannot be combined with --firmware bios", badInput: true);
            if (spec.FwCfgFiles.Count > 0 && spec.Firmware != FirmwareKind.Bios)
                throw new VmException("--fw-cfg needs firmware boot (fw_cfg is the BIOS's interface; not with --kernel or --firmware none)", badInput: true);
            if (spec.FwCfgFiles.GroupBy(f => f.Name).FirstOrDefault(g => g.Count() > 1) is { } dup)
                throw new VmException($"--fw-cfg: {dup.Key} given twice", badInput: true);
            if (spec.Cpus is < 1 or > VmSpec.MaxCpus)
                throw new VmException($"--cpus {spec.Cpus}: between 1 and {VmSpec.MaxCpus}", badInput: true);
            if (openedDisks == null)
            {
                try { foreach (var d in spec.Disks) disks.Add(DiskFactory.Open(d)); }
                catch (BlockDeviceException e) { throw new VmException(e.Message, badInput: true); }
            }
            MachineModel machine;
            try { machine = new MachineModel(spec.MemoryBytes); }
            catch (Dirigent.Machine.Memory.GuestMemoryException e) { throw new VmException(e.Message, badInput: true); }
            owned.Push(machine);
            // VM time starts at the first instruction: frozen from here (near 0) until Start, not running while the
            // rest is built (a second with libslirp), which the guest saw as time passed before it ran.
            machine.Clock.Stop();
            machine.RecordReplay = recordReplay;
            // The guest is loaded before any accelerator is probed: a bad kernel is the user's to fix, nothing started.
            LoadedKernel? loaded = null;
            // The ROM goes into the address space before any accelerator maps it.
            BiosShadow? bios = spec.Firmware == FirmwareKind.Bios ? new BiosShadow(machine.Memory, ReadBios(spec)) : null;
            if (loadGuest && bios == null)
            {
                try { loaded = LoadGuest(machine, spec); }
                catch (LoaderException e) { throw new VmException(e.Message, badInput: true); }
            }
            var nics = new Net.NetBackendSet();
            owned.Push(nics);
            // A replay's cards are cut off: they get stand-ins, the recorded network is not opened again.
            if (recordReplay is { Replaying: true }) nics.AddStandIns(spec.Nics);
            else try { nics.OpenAll(spec.Nics, log); }
            catch (Net.NetBackendException e) { throw new VmException($"--net: {e.Message}", badInput: false); }
            IAccelerator accel;
            Dirigent.Machine.Interrupts.IInKernelIrqChip? irqChip;
            try
            {
                accel = AccelSelector.Create(spec, machine, log, out string? accelError);
                if (accelError != null) throw new VmException(accelError, badInput: false);
                owned.Push(accel);
                irqChip = accel.CreateInKernelIrqChip(out string irqChipReason);
                if (accel is not EmuAccelerator) log.WriteLine($"{accel.Name}: interrupt controllers: {irqChipReason}");
                // KVM starts application processors only through its own local APICs (INIT/SIPI set the in-kernel
                // MP state); with user-space APICs there is no way to make a waiting AP run.
                if (irqChip == null && accel is not EmuAccelerator && spec.Cpus > 1)
                    throw new VmException($"{accel.Name}: --cpus {spec.Cpus} needs the in-kernel interrupt controllers ({irqChipReason})", badInput: false);
            }
            catch (Dirigent.Accel.Kvm.KvmException e) { throw new VmException($"kvm: {e.Message}", badInput: false); }
            VmConsole? console = null;
            board = new PcBoard(machine, spec.Cpus, Dirigent.Accel.Emu.Core.Cpu.TscHz,
                new SerialSink(b => console?.GuestWrote(b)), irqChip, disks, spec.Rng, bios, spec.BootOrder,
                spec.FwCfgFiles.Select(f => (f.Name, f.Data)).ToList());
            owned.Push(board); // it owns the disks from here
            var blks = board.Blocks;
            for (int k = 0; k < blks.Count && k < spec.Disks.Count; k++)
                if (spec.Disks[k].ToRateLimit() is { } diskLimit) blks[k].SetRateLimit(diskLimit, machine.Clock);
            for (int k = 0; k < nics.Cards.Count; k++)
            {
                var (backend, mac) = nics.Cards[k];
                // Recorded: received packets reach the device on the vCPU thread, between instructions.
                if (recordReplay is { Replaying: false }) backend = new Net.RecordedNetBackend(backend, recordReplay);
                var nic = new Devices.Virtio.Net.VirtioNet(backend, mac);
                if (k < spec.Nics.Count && spec.Nics[k].ToRateLimit() is { } nicLimit) nic.SetRateLimit(nicLimit, machine.Clock);
                board.AttachVirtio(machine, nic);
            }
            var vcpus = new IVcpu[spec.Cpus];
            for (int k = 0; k < spec.Cpus; k++)
            {
                vcpus[k] = accel.CreateVcpu(k);
                if (board.EmulatedInterrupts is not { } router) continue;
                var apic = router.LocalApics[k];
                vcpus[k].AttachInterruptController(apic, apic);
                var vcpu = vcpus[k];
                apic.OnNmi = vcpu.InjectNmi;
                apic.OnInitIpi = (_, _) => vcpu.InjectInit();
                apic.OnStartupIpi = (_, vector) => vcpu.InjectSipi((byte)vector);
            }
            board.RegisterVcpus(vcpus);
            // Record/replay: VM time from the instruction count (so the same count is the same time in a replay),
            // device timers fired by the vCPU at instruction boundaries.
            if (recordReplay != null)
            {
                var vcpu0 = vcpus[0];
                machine.Clock.UseInstructionTime(() => vcpu0.InstructionsRetired,
                    Dirigent.Machine.Introspection.RecordReplay.RecordReplaySession.NsPerInstruction);
            }
            var vm = new Vm(spec, log, machine, accel, board, vcpus, nics);
            console = vm.Console;
            if (loaded != null || (loadGuest && bios != null)) vm.SetBootState(loaded);
            return vm;
        }
        catch
        {
            while (owned.Count > 0) owned.Pop().Dispose();
            if (board == null) foreach (var d in disks) d.Dispose();
            throw;
        }
    }

    private sealed class SerialSink(Action<byte> write) : ISerialBackend
    {
        public void Write(byte b) => write(b);
    }

    /// <summary>The BIOS image named by the spec (Debian's SeaBIOS by default); one line when it cannot be read.</summary>
    private static byte[] ReadBios(VmSpec spec)
    {
        string path = spec.FirmwarePath ?? BiosConfig.DefaultBiosPath;
        byte[] image;
        try { image = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VmException(spec.FirmwarePath == null && !File.Exists(path)
                ? $"--firmware bios: {path} is missing (install the Debian package '{BiosConfig.BiosPackage}')"
                : $"--firmware bios: cannot read {path}: {e.Message}", badInput: true);
        }
        if (image.Length < 0x2_0000 || image.Length > 16 << 20 || image.Length % 0x1_0000 != 0)
            throw new VmException($"--firmware bios: {path} is {image.Length} bytes; a BIOS image is 128 KiB to 16 MiB in 64 KiB steps", badInput: true);
        return image;
    }

    private static LoadedKernel LoadGuest(MachineModel machine, VmSpec spec)
    {
        var map = PcFirmware.MemoryMap(machine.Memory);
        ulong rsdp = PcFirmware.WriteTables(machine.Memory, spec.Cpus);
        return KernelImage.LoadFiles(machine.Memory, spec.Kernel!, spec.Initrds, spec.Append, map, rsdp);
    }

    /// <summary>Boot state of every vCPU; the guest is (re)loaded into memory unless <paramref name="loaded"/> says it is.</summary>
    private void SetBootState(LoadedKernel? loaded = null)
    {
        if (Spec.Firmware == FirmwareKind.Bios)
        {
            // Power-on state at the reset vector (F000:FFF0, CS base 0xFFFF0000): the BIOS ROM's first instruction.
            Vcpus[0].SetState(CpuState.Reset());
        }
        else
        {
            loaded ??= LoadGuest(Machine, Spec);
            Vcpus[0].SetState(loaded.State);
        }
        // Application processors wait for the boot processor's INIT/STARTUP IPIs (MP spec B.4), as after power-on.
        for (int k = 1; k < Vcpus.Length; k++)
        {
            var s = CpuState.Reset();
            s.Activity = VcpuActivity.WaitForSipi;
            Vcpus[k].SetState(s);
        }
    }

    // ------------------------------------------------------------------ lifecycle requests

    /// <summary>Created, or restored/received (Paused) → Running.</summary>
    public void Start()
    {
        lock (_cmd)
        {
            Require("start", VmState.Created, VmState.Paused);
            ResumeCore();
            State = VmState.Running;
        }
        // An incoming VM: its source waits for word that it runs here (the end of its downtime).
        ReportResumed();
    }

    /// <summary>Running → Paused: vCPUs stop at an instruction boundary, device workers quiesce, VM time freezes.</summary>
    public void Pause()
    {
        lock (_cmd)
        {
            Require("pause", VmState.Running, VmState.ShuttingDown);
            if (!PauseCore()) throw new VmStateException($"the VM ended while pausing: {ExitReason}");
            State = VmState.Paused;
        }
    }

    public void Resume()
    {
        lock (_cmd)
        {
            Require("resume", VmState.Paused);
            ResumeCore();
            State = VmState.Running;
        }
    }

    /// <summary>Presses the ACPI power button: a guest with acpid/systemd shuts down cleanly, then powers off.</summary>
    public void PowerButton()
    {
        lock (_cmd)
        {
            Require("press the power button of", VmState.Running, VmState.ShuttingDown);
            Board.AcpiPm.PressPowerButton();
            State = VmState.ShuttingDown;
        }
    }

    /// <summary>Hardware reset (the reset button): the guest reboots; a paused VM stays paused.</summary>
    public void Reset()
    {
        lock (_cmd)
        {
            Require("reset", VmState.Running, VmState.ShuttingDown, VmState.Paused);
            bool running = State != VmState.Paused;
            if (running && !PauseCore()) return; // the guest ended it meanwhile
            if (!TryReboot()) throw new VmException(ExitReason!.Detail, badInput: false);
            if (running) { ResumeCore(); State = VmState.Running; }
        }
    }

    /// <summary>Stops the VM now (as pulling the plug, but disks are flushed and closed in order at dispose).</summary>
    public void Stop()
    {
        lock (_cmd)
        {
            if (State is VmState.Stopped or VmState.Crashed) return;
            if (State is VmState.Running or VmState.ShuttingDown && !PauseCore()) return;
            Finish(VmState.Stopped, new VmExitReason(VmExitKind.StoppedByRequest));
        }
    }

    /// <summary>
    /// Every vCPU's activity and position. A running VM is not paused for it: the software CPU answers at each vCPU's
    /// next block boundary (<see cref="IVcpu.QueryState"/>); under KVM a running vCPU is reported without its state.
    /// </summary>
    public IReadOnlyList<VcpuInfo> QueryVcpus()
    {
        lock (_cmd)
        {
            if (_disposed) throw new ObjectDisposedException(nameof(Vm));
            bool running = _threads != null;
            var list = new VcpuInfo[Vcpus.Length];
            for (int k = 0; k < Vcpus.Length; k++)
            {
                var s = running ? Vcpus[k].QueryState() : Vcpus[k].GetState();
                list[k] = s == null
                    ? new VcpuInfo(k, Live: false)
                    : new VcpuInfo(k, true, s.Activity, s.Segments[(int)Seg.CS].Selector, s.Rip, s.CodeBits,
                        Vcpus[k].InstructionsRetired);
            }
            return list;
        }
    }

    private void Require(string what, params VmState[] allowed)
    {
        if (_disposed) throw new ObjectDisposedException(nameof(Vm));
        if (Array.IndexOf(allowed, State) < 0)
            throw new VmStateException($"cannot {what} a VM that is {State.ToString().ToLowerInvariant()}" +
                (ExitReason != null ? $" ({ExitReason})" : ""));
    }

    // ------------------------------------------------------------------ vCPU threads and the supervisor

    /// <summary>VM time, device workers, then vCPU threads (the reverse of <see cref="PauseCore"/>).</summary>
    private void ResumeCore()
    {
        if (_pausedStates != null)
            for (int k = 0; k < Vcpus.Length; k++) Vcpus[k].SetState(_pausedStates[k]);
        _pausedStates = null;
        Board.Registry.StartAll();
        var run = Vcpus;
        _exits = new VcpuExit[run.Length];
        var ended = _ended = new StrongBox<int>();
        var threads = new Thread[run.Length];
        // Under _cmd, before any thread starts: a Pause right after this Resume then reaches the new runs.
        foreach (var v in run) v.PrepareRun();
        for (int k = 0; k < run.Length; k++)
        {
            int idx = k;
            var exits = _exits;
            threads[k] = new Thread(() =>
            {
                try { exits[idx] = run[idx].Run(); }
                catch (Exception ex) { exits[idx] = new VcpuExit(VcpuExitReason.InternalError, ex.ToString()); }
                Interlocked.Increment(ref ended.Value);
                _vcpuEnded.Set();
            }, 64 << 20) { IsBackground = true, Name = $"vcpu{idx}" };
        }
        _threads = threads;
        foreach (var t in threads) t.Start();
    }

    /// <summary>
    /// Stops the vCPU threads and settles what they ran into. True: the VM is stopped at an instruction boundary with
    /// device workers quiesced and VM time frozen (ready to save or resume). False: the guest ended the VM meanwhile
    /// (power-off, triple fault...), and <see cref="State"/> says so.
    /// </summary>
    private bool PauseCore()
    {
        while (true)
        {
            var exits = JoinVcpus();
            if (!SettleExits(exits)) break;
            // The guest rebooted meanwhile and runs again, or the VM ended.
            if (State is VmState.Stopped or VmState.Crashed) return false;
        }
        Board.Registry.StopAll();
        // Only where the TSC runs on in the host while paused (KVM): the software CPU's follows the stopped VM clock.
        if (Accel is not EmuAccelerator) _pausedStates = Vcpus.Select(v => v.GetState()).ToArray();
        return true;
    }

    private VcpuExit[] JoinVcpus()
    {
        var threads = _threads;
        if (threads == null) return [];
        foreach (var v in Vcpus) v.RequestStop();
        foreach (var t in threads) t.Join();
        _threads = null;
        _ended = null;
        return _exits;
    }

    private void Supervise()
    {
        while (!_disposed)
        {
            _vcpuEnded.WaitOne();
            if (_disposed) return;
            lock (_cmd)
            {
                if (_threads == null || _ended == null || Volatile.Read(ref _ended.Value) == 0) continue;
                if (State is not (VmState.Running or VmState.ShuttingDown)) continue;
                try
                {
                    var exits = JoinVcpus();
                    if (!SettleExits(exits))
                    {
                        // A vCPU stopped with nothing to say (should not happen): keep the VM honest, report it.
                        Finish(VmState.Crashed, new VmExitReason(VmExitKind.VmmError, "a vCPU stopped for no reason"));
                    }
                }
                catch (Exception e)
                {
                    // Never let a VMM bug on this thread take the process (and the other VMs in it) down.
                    Finish(VmState.Crashed, new VmExitReason(VmExitKind.VmmError, $"{e.GetType().Name}: {e.Message}"));
                }
            }
        }
    }

    /// <summary>
    /// Acts on why the vCPUs stopped (all of them are stopped). False: they only stopped because we asked. True: the
    /// guest did something: rebooted (the vCPUs run again) or ended the VM.
    /// </summary>
    private bool SettleExits(VcpuExit[] exits)
    {
        var pe = Machine.PowerEvent;
        if (pe != PowerEventKind.None)
        {
            switch (pe)
            {
                case PowerEventKind.PowerOff:
                    Finish(VmState.Stopped, new VmExitReason(VmExitKind.PowerOff));
                    return true;
                case PowerEventKind.DebugExit:
                    Finish(VmState.Stopped, new VmExitReason(VmExitKind.DebugExit, DebugExitValue: Machine.ExitCode >> 1));
                    return true;
                default:
                    if (Spec.NoReboot)
                    {
                        Finish(VmState.Stopped, new VmExitReason(VmExitKind.Reset, "the guest reset the machine"));
                        return true;
                    }
                    if (!TryReboot()) return true;
                    ResumeCore();
                    State = VmState.Running;
                    return true;
            }
        }
        for (int k = 0; k < exits.Length; k++)
        {
            var e = exits[k];
            switch (e.Reason)
            {
                case VcpuExitReason.Shutdown:
                    Finish(VmState.Crashed, new VmExitReason(VmExitKind.TripleFault, e.Detail, Rip: SafeRip(k)));
                    return true;
                case VcpuExitReason.HaltedForever:
                    Finish(VmState.Crashed, new VmExitReason(VmExitKind.HaltedForever, e.Detail, Rip: SafeRip(k)));
                    return true;
                case VcpuExitReason.InternalError:
                    Finish(VmState.Crashed, new VmExitReason(VmExitKind.VmmError, $"vCPU {k}: {e.Detail}"));
                    return true;
                case VcpuExitReason.PowerEvent:
                    Finish(VmState.Crashed, new VmExitReason(VmExitKind.VmmError, $"vCPU {k} stopped for a power event that vanished"));
                    return true;
            }
        }
        return false;
    }

    private ulong? SafeRip(int k)
    {
        try { return Vcpus[k].GetState().Rip; } catch { return null; }
    }

    /// <summary>
    /// System reset: every component back to power-on state, the guest loaded again. False when the guest cannot be
    /// loaded again (e.g. a VM restored from a snapshot whose kernel file is gone: it ran, but cannot boot again):
    /// the VM has then ended as a VMM error.
    /// </summary>
    private bool TryReboot()
    {
        Reboots++;
        _pausedStates = null;
        Machine.ClearPowerEvent();
        Board.Registry.ResetAll();
        try { SetBootState(); }
        catch (Exception e) when (e is LoaderException or IOException or UnauthorizedAccessException)
        {
            Finish(VmState.Crashed, new VmExitReason(VmExitKind.VmmError, $"cannot load the guest again for the reboot: {e.Message}"));
            return false;
        }
        return true;
    }

    private void Finish(VmState state, VmExitReason reason)
    {
        Board.Registry.StopAll();
        State = state;
        ExitReason = reason;
        ThreadPool.QueueUserWorkItem(_ =>
        {
            _exit.TrySetResult(reason);
            Exited?.Invoke(reason);
        });
    }

    /// <summary>
    /// Stops the VM if it still runs, then closes everything in order: devices (their workers finish), disk images
    /// (flushed; qcow2's dirty bit cleared), network backends, the accelerator, memory.
    /// </summary>
    public void Dispose()
    {
        lock (_cmd)
        {
            if (_disposed) return;
            if (State is VmState.Running or VmState.ShuttingDown) PauseCore();
            if (State is not (VmState.Stopped or VmState.Crashed))
                Finish(VmState.Stopped, new VmExitReason(VmExitKind.StoppedByRequest));
            _disposed = true;
            _vcpuEnded.Set();
        }
        _supervisor.Join();
        Interlocked.Exchange(ref _resumeReport, null)?.Dispose();
        // The vCPUs are stopped: the trace's last lines are written; flush and close its file.
        Introspection.StopSyscallTrace();
        Board.Dispose();
        _nics.Dispose();
        Accel.Dispose();
        Machine.Dispose();
        _vcpuEnded.Dispose();
    }
}
