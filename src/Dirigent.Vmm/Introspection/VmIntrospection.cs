using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Introspection;

namespace Dirigent.Vmm.Introspection;

/// <summary>
/// A VM's introspection (README "Introspection"): the hooks of <see cref="GuestHooks"/> (software CPU only), Linux
/// awareness from a System.map, the system-call trace and memory dumps.
/// </summary>
public sealed class VmIntrospection
{
    private readonly Vm _vm;
    private readonly MachineModel _machine;
    private readonly object _lock = new();
    private SyscallTracer? _tracer;
    private TextWriter? _traceOut;
    private bool _ownsTraceOut;

    internal VmIntrospection(Vm vm, MachineModel machine)
    {
        _vm = vm;
        _machine = machine;
    }

    /// <summary>The machine's hooks. Only the software CPU honours them: under KVM this throws (bad input).</summary>
    public GuestHooks Hooks
    {
        get
        {
            if (_vm.AccelName != "emu")
                throw new VmException($"introspection hooks need the software CPU (--accel emu); this VM runs on {_vm.AccelName}", badInput: true);
            return _machine.Hooks;
        }
    }

    private LinuxGuest? _linux;
    private string? _deferredMap;

    /// <summary>
    /// Linux awareness, once <see cref="LoadSystemMap"/> gave the kernel's symbols (or, on first use, the map named by
    /// <see cref="UseSystemMapWhenNeeded"/>); null without one.
    /// </summary>
    public LinuxGuest? Linux
    {
        get
        {
            lock (_lock)
            {
                if (_linux == null && _deferredMap is { } path)
                {
                    _deferredMap = null;
                    try { _linux = new LinuxGuest(SystemMap.Load(path), _machine.Memory); }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or VmException) { }
                }
                return _linux;
            }
        }
    }

    public void LoadSystemMap(string path)
    {
        var linux = new LinuxGuest(SystemMap.Load(path), _machine.Memory);
        lock (_lock) { _linux = linux; _deferredMap = null; }
    }

    /// <summary>
    /// Names a System.map to load only when something first asks for Linux awareness (a trace, the process list):
    /// the map of a kernel a VM may run is known at start, but parsing it (~150000 symbols) is wasted on VMs nobody
    /// inspects. A map that then cannot be read leaves the VM without Linux awareness, as if none was named.
    /// </summary>
    public void UseSystemMapWhenNeeded(string path)
    {
        lock (_lock) if (_linux == null) _deferredMap = path;
    }

    public bool Tracing { get { lock (_lock) return _tracer != null; } }

    /// <summary>Starts the system-call trace (JSON lines to <paramref name="output"/>); one trace at a time.</summary>
    public void StartSyscallTrace(TextWriter output, string? process = null, bool ownsOutput = false)
    {
        var hooks = Hooks;
        lock (_lock)
        {
            if (_tracer != null) throw new VmStateException("a system-call trace is already running");
            _tracer = new SyscallTracer(hooks, Linux, _machine.Clock, output, process);
            _traceOut = output;
            _ownsTraceOut = ownsOutput;
        }
    }

    /// <summary>A trace the caller owns (dispose it to stop), beside the VM's own one: e.g. a filtered view.</summary>
    public SyscallTracer NewSyscallTracer(TextWriter output, string? process = null) =>
        new(Hooks, Linux, _machine.Clock, output, process);

    /// <summary>Starts the trace into a file (created or truncated).</summary>
    public void StartSyscallTrace(string path, string? process = null)
    {
        StreamWriter w;
        try { w = new StreamWriter(path, append: false) { AutoFlush = false }; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new VmException($"trace output {path}: {e.Message}", badInput: true);
        }
        try { StartSyscallTrace(w, process, ownsOutput: true); }
        catch { w.Dispose(); throw; }
    }

    /// <summary>Stops the trace; returns the number of events written (0 when none was running).</summary>
    public long StopSyscallTrace()
    {
        lock (_lock)
        {
            if (_tracer == null) return 0;
            _tracer.Dispose();
            long n = _tracer.Events;
            _tracer = null;
            _traceOut?.Flush();
            if (_ownsTraceOut) _traceOut?.Dispose();
            _traceOut = null;
            return n;
        }
    }

    /// <summary>Writes guest RAM to a file (see <see cref="MemoryDump"/>); a running VM is paused for the copy.</summary>
    public void DumpMemory(string path, MemoryDumpFormat format)
    {
        bool resume = false;
        if (_vm.State == VmState.Running)
        {
            _vm.Pause();
            resume = true;
        }
        try { MemoryDump.Write(_machine.Memory, path, format); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new VmException($"memory dump {path}: {e.Message}", badInput: true);
        }
        finally { if (resume && _vm.State == VmState.Paused) _vm.Resume(); }
    }

    /// <summary>The guest's processes (needs <see cref="LoadSystemMap"/>), read through vCPU 0's page tables.</summary>
    public List<GuestProcess> ListProcesses()
    {
        var linux = Linux ?? throw new VmException("no System.map loaded: the process list needs the kernel's symbols", badInput: true);
        var v = _vm.VcpuList[0];
        CpuState s = v.QueryState() ?? v.GetState();
        return linux.ListProcesses(new StateGuestCpu(0, s, _machine.Memory, v.InstructionsRetired));
    }
}
