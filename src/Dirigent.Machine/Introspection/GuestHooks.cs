namespace Dirigent.Machine.Introspection;

/// <summary>
/// The machine's introspection hooks: system calls, address-space switches (CR3 writes), exceptions and
/// interrupts, memory watchpoints and execution ranges. Every Add method returns a handle whose Dispose removes
/// the hook. Callbacks run on the vCPU thread, at the event, with the vCPU stopped at that instruction: they must
/// be quick and must not call back into the VM's lifecycle.
///
/// Cost: each kind has one flag (<see cref="SyscallsArmed"/> ...) that the software CPU reads only where the
/// event happens (the SYSCALL handler, CR3 write, exception delivery, the memory slow path) or once per block
/// (execution hooks), so a machine with no hooks runs as before. Only the software CPU implements them; KVM
/// ignores them (the VM refuses to add hooks there).
/// </summary>
public sealed class GuestHooks
{
    private readonly object _lock = new();
    // Copy-on-write arrays: the vCPUs read them without locking.
    private (Action<IGuestCpu, SyscallEvent>? Enter, Action<IGuestCpu, SyscallEvent>? Exit)[] _syscall = [];
    private Action<IGuestCpu, ulong, ulong>[] _cr3 = [];
    private Action<IGuestCpu, InterruptEvent>[] _interrupt = [];
    private Watchpoint[] _watch = [];
    private ExecutionHook[] _exec = [];
    private Action<IGuestCpu, DeviceAccessEvent>[] _device = [];
    private readonly Dictionary<ThreadKey, SyscallEvent> _pending = new();
    private Func<IGuestCpu, ThreadKey?>? _threadKey;

    public volatile bool SyscallsArmed, Cr3Armed, InterruptsArmed, WatchArmed, ExecArmed, DevicesArmed;

    /// <summary>
    /// Raised after watchpoints or execution hooks change: the accelerator drops cached translations and leaves
    /// compiled code so that the new set takes effect at the next instruction boundary.
    /// </summary>
    public event Action? Changed;

    public IReadOnlyList<Watchpoint> Watchpoints => _watch;
    public IReadOnlyList<ExecutionHook> ExecutionHooks => _exec;

    /// <summary>Pending system calls (entered, return not seen yet): exits, execve's success and leaks are bounded.</summary>
    public int PendingSyscalls { get { lock (_pending) return _pending.Count; } }
    private const int MaxPending = 4096;

    /// <summary>
    /// How a thread is told apart when matching a system call to its return. The default is
    /// (CR3 without its PCID/PTI bits, user RSP, user return RIP): at SYSCALL the user stack pointer and the address
    /// after the instruction, at SYSRET/IRET the same values restored, and no two threads share a stack. Guest-OS
    /// awareness can set a better one (Linux: the current task_struct), returning null where it cannot tell.
    /// </summary>
    public Func<IGuestCpu, ThreadKey?>? ThreadKeyProvider
    {
        get => _threadKey;
        set { _threadKey = value; lock (_pending) _pending.Clear(); }
    }

    public IDisposable AddSyscallHook(Action<IGuestCpu, SyscallEvent>? enter, Action<IGuestCpu, SyscallEvent>? exit = null)
    {
        var entry = (enter, exit);
        lock (_lock) { _syscall = [.. _syscall, entry]; SyscallsArmed = true; }
        return new Remover(() => { lock (_lock) { _syscall = Without(_syscall, entry); SyscallsArmed = _syscall.Length > 0; if (!SyscallsArmed) lock (_pending) _pending.Clear(); } });
    }

    /// <summary>CR3 writes: (vCPU, old value, new value), after the write.</summary>
    public IDisposable AddAddressSpaceHook(Action<IGuestCpu, ulong, ulong> callback)
    {
        lock (_lock) { _cr3 = [.. _cr3, callback]; Cr3Armed = true; }
        return new Remover(() => { lock (_lock) { _cr3 = Without(_cr3, callback); Cr3Armed = _cr3.Length > 0; } });
    }

    /// <summary>Exceptions, software interrupts, external interrupts and NMIs, before the guest's handler is entered.</summary>
    public IDisposable AddInterruptHook(Action<IGuestCpu, InterruptEvent> callback)
    {
        lock (_lock) { _interrupt = [.. _interrupt, callback]; InterruptsArmed = true; }
        return new Remover(() => { lock (_lock) { _interrupt = Without(_interrupt, callback); InterruptsArmed = _interrupt.Length > 0; } });
    }

    /// <summary>
    /// Watches [start, start+length) of guest-physical (<paramref name="physical"/>) or guest-virtual memory for the
    /// vCPUs' reads and/or writes (device DMA is not a CPU access and is not reported). Reads report the value read,
    /// writes the value stored, after the access.
    /// </summary>
    public IDisposable AddWatchpoint(ulong start, ulong length, WatchKind kind, bool physical, Action<IGuestCpu, MemoryAccessEvent> callback)
    {
        if (length == 0 || start + length < start) throw new ArgumentException("watchpoint range is empty or wraps");
        var w = new Watchpoint(start, length, kind, physical, callback);
        lock (_lock) { _watch = [.. _watch, w]; WatchArmed = true; }
        Changed?.Invoke();
        return new Remover(() =>
        {
            lock (_lock) { _watch = Without(_watch, w); WatchArmed = _watch.Length > 0; }
            Changed?.Invoke();
        });
    }

    /// <summary>VM exits to devices: every port and MMIO access by a vCPU (reads after the device answered, writes before it sees them).</summary>
    public IDisposable AddDeviceAccessHook(Action<IGuestCpu, DeviceAccessEvent> callback)
    {
        lock (_lock) { _device = [.. _device, callback]; DevicesArmed = true; }
        return new Remover(() => { lock (_lock) { _device = Without(_device, callback); DevicesArmed = _device.Length > 0; } });
    }

    /// <summary>Calls back before each instruction whose address (linear) lies in [start, end).</summary>
    public IDisposable AddExecutionHook(ulong start, ulong end, Action<IGuestCpu, ulong> callback)
    {
        if (end <= start) throw new ArgumentException("execution range is empty");
        var h = new ExecutionHook(start, end, callback);
        lock (_lock) { _exec = [.. _exec, h]; ExecArmed = true; }
        Changed?.Invoke();
        return new Remover(() =>
        {
            lock (_lock) { _exec = Without(_exec, h); ExecArmed = _exec.Length > 0; }
            Changed?.Invoke();
        });
    }

    // ---------------- raised by the accelerator ----------------

    public ThreadKey KeyFor(IGuestCpu cpu, ulong userRsp, ulong returnRip) =>
        _threadKey?.Invoke(cpu) ?? new ThreadKey(cpu.Cr3 & ~0x1FFFUL, userRsp, returnRip);

    public void RaiseSyscallEnter(IGuestCpu cpu, SyscallEvent e, ulong returnRip)
    {
        e.Thread = KeyFor(cpu, e.UserRsp, returnRip);
        foreach (var h in _syscall) h.Enter?.Invoke(cpu, e);
        lock (_pending)
        {
            // Calls that never return (exit) or return elsewhere leave entries behind; drop them past a bound.
            if (_pending.Count >= MaxPending) _pending.Clear();
            _pending[e.Thread] = e;
        }
    }

    /// <summary>A return to user mode (SYSRET, SYSEXIT, IRET to CPL 3): completes the thread's pending call, if any.</summary>
    public void RaiseReturnToUser(IGuestCpu cpu, ulong userRsp, ulong returnRip, ulong rax)
    {
        var key = KeyFor(cpu, userRsp, returnRip);
        SyscallEvent? e;
        lock (_pending)
        {
            if (!_pending.Remove(key, out e)) return;
        }
        e.Return = rax;
        e.ReturnVcpu = cpu.Index;
        foreach (var h in _syscall) h.Exit?.Invoke(cpu, e);
    }

    public void RaiseCr3Write(IGuestCpu cpu, ulong old, ulong value)
    {
        foreach (var h in _cr3) h(cpu, old, value);
    }

    public void RaiseDeviceAccess(IGuestCpu cpu, DeviceAccessEvent e)
    {
        foreach (var h in _device) h(cpu, e);
    }

    public void RaiseInterrupt(IGuestCpu cpu, InterruptEvent e)
    {
        foreach (var h in _interrupt) h(cpu, e);
    }

    /// <summary>Whether a read/write TLB entry for this page may be cached (no watchpoint covers it).</summary>
    public bool PageWatched(ulong linearPage, ulong physPage)
    {
        foreach (var w in _watch)
            if (w.CoversPage(w.Physical ? physPage : linearPage)) return true;
        return false;
    }

    public void CheckAccess(IGuestCpu cpu, ulong rip, ulong linear, ulong physical, int size, ulong value, bool write)
    {
        MemoryAccessEvent? e = null;
        foreach (var w in _watch)
        {
            if ((w.Kind & (write ? WatchKind.Write : WatchKind.Read)) == 0) continue;
            if (!w.Covers(w.Physical ? physical : linear, size)) continue;
            e ??= new MemoryAccessEvent { Vcpu = cpu.Index, Rip = rip, Linear = linear, Physical = physical, Size = size, Value = value, IsWrite = write };
            w.Callback(cpu, e);
        }
    }

    /// <summary>Whether any execution hook covers [start, end).</summary>
    public bool ExecCovers(ulong start, ulong end)
    {
        foreach (var h in _exec) if (h.Covers(start, end)) return true;
        return false;
    }

    public void CheckExecution(IGuestCpu cpu, ulong rip)
    {
        foreach (var h in _exec) if (rip >= h.Start && rip < h.End) h.Callback(cpu, rip);
    }

    private static T[] Without<T>(T[] a, T item)
    {
        int k = Array.IndexOf(a, item);
        return k < 0 ? a : [.. a[..k], .. a[(k + 1)..]];
    }

    private sealed class Remover(Action remove) : IDisposable
    {
        private int _done;
        public void Dispose() { if (Interlocked.Exchange(ref _done, 1) == 0) remove(); }
    }
}
