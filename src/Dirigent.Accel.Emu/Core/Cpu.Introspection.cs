using System.Runtime.CompilerServices;
using Dirigent.Machine.Introspection;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// The software CPU's side of <see cref="GuestHooks"/>. Nothing here runs unless a hook of its kind is set: system
/// calls, CR3 writes and interrupts are rare instructions whose handlers test one flag; watchpoints keep the watched
/// pages out of the soft TLB (as data breakpoints do, Cpu.Debug.cs), so only accesses to those pages reach the slow
/// path's check; execution hooks make the dispatcher interpret (no compiled code, no chaining, see
/// <see cref="_instrumented"/>) and step one instruction at a time through blocks that overlap a hooked range.
/// </summary>
public sealed partial class Cpu : IGuestCpu
{
    /// <summary>The machine's hooks (one object per machine, shared by its vCPUs).</summary>
    internal GuestHooks Hooks => _hooks;
    private readonly GuestHooks _hooks;
    // BlockTrace or an execution hook: every block goes through the dispatcher, interpreted.
    private bool _instrumented;

    private Action<Cpu, ulong, int>? _blockTrace;
    /// <summary>Tracing hook: called before each block runs with its linear address and instruction count (interprets everything).</summary>
    public Action<Cpu, ulong, int>? BlockTrace
    {
        get => _blockTrace;
        set { _blockTrace = value; UpdateInstrumented(); }
    }

    /// <summary>Safe-point work after the hook set changed: drop translations of newly watched pages; leave compiled code.</summary>
    internal void OnHooksChanged()
    {
        FlushTlb();
        UpdateInstrumented();
    }

    private void UpdateInstrumented() => _instrumented = _blockTrace != null || _hooks.ExecArmed;

    // ---- IGuestCpu ----
    ulong IGuestCpu.InstructionPointer => InstrIp;
    ulong IGuestCpu.Gpr(int n) => Gpr[n];
    ulong IGuestCpu.Cr3 => Cr3;
    ulong IGuestCpu.GsBase => Sreg[GS].Base;
    ulong IGuestCpu.KernelGsBase => KernelGsBase;
    ulong IGuestCpu.Lstar => Lstar;

    public bool TryTranslate(ulong linear, out ulong physical) =>
        PageWalk.TryTranslate(_mem, Cr0, Cr3, Cr4, Efer, linear, out physical);

    public int ReadVirtual(ulong linear, Span<byte> dst) => PageWalk.ReadVirtual(_mem, Cr0, Cr3, Cr4, Efer, linear, dst);

    // ---- raised by handlers ----

    /// <summary>SYSCALL/SYSENTER/INT 0x80 from user mode, before the transition (registers are the caller's).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void HookSyscallEnter(SyscallKind kind, ulong returnRip)
    {
        bool abi64 = kind == SyscallKind.Syscall;
        var e = new SyscallEvent
        {
            Vcpu = Index, Kind = kind, Rip = InstrIp, Cr3 = Cr3, UserRsp = Gpr[RSP], Instructions = _instret,
            Number = abi64 ? Gpr[RAX] : (uint)Gpr[RAX],
            Args = abi64
                ? [Gpr[RDI], Gpr[RSI], Gpr[RDX], Gpr[10], Gpr[8], Gpr[9]]
                : [(uint)Gpr[RBX], (uint)Gpr[RCX], (uint)Gpr[RDX], (uint)Gpr[RSI], (uint)Gpr[RDI], (uint)Gpr[RBP]],
        };
        _hooks.RaiseSyscallEnter(this, e, returnRip);
    }

    /// <summary>SYSRET/SYSEXIT/IRET that landed in user mode: the thread's pending call (if any) returns RAX.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void HookReturnToUser() => _hooks.RaiseReturnToUser(this, Gpr[RSP], Rip, Gpr[RAX]);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void HookDelivery(int vector, uint errorCode, bool hasError, bool softwareInt, bool external)
    {
        // INT 0x80 from user mode is the i386 system-call gate (Linux's compat entry).
        if (softwareInt && vector == 0x80 && Cpl == 3 && _hooks.SyscallsArmed) HookSyscallEnter(SyscallKind.Int80, Rip);
        if (_hooks.InterruptsArmed)
            _hooks.RaiseInterrupt(this, new InterruptEvent
            {
                Vcpu = Index, Vector = vector, ErrorCode = hasError ? errorCode : null, Software = softwareInt,
                External = external, Rip = softwareInt || external ? Rip : InstrIp, Cr2 = Cr2, Cpl = Cpl,
            });
    }

    /// <summary>IN/INS: the port's value, reported to device-access hooks.</summary>
    internal uint PortRead(ushort port, int size)
    {
        uint v = _rr == null ? _vm.Io.Read(port, size) : RrPortRead(port, size);
        if (_hooks.DevicesArmed) HookDevice(true, port, size, v, write: false);
        return v;
    }

    /// <summary>OUT/OUTS: reported to device-access hooks before the device sees it (it may stop the VM).</summary>
    internal void PortWrite(ushort port, int size, uint v)
    {
        if (_hooks.DevicesArmed) HookDevice(true, port, size, v, write: true);
        if (_rr != null) RrPortWrite(port, size, v);
        else _vm.Io.Write(port, size, v);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void HookDevice(bool port, ulong addr, int size, ulong v, bool write) =>
        _hooks.RaiseDeviceAccess(this, new DeviceAccessEvent { Vcpu = Index, Rip = InstrIp, IsPort = port, Address = addr, Size = size, Value = v, IsWrite = write });

    /// <summary>Whether a read/write translation of this page may be cached (no watchpoint covers it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool WatchRefusesFill(ulong la, ulong ppage, Access acc) =>
        _hooks.WatchArmed && acc != Access.Exec && _hooks.PageWatched(la >> 12, ppage >> 12);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void WatchAccess(ulong la, ulong pa, int size, ulong v, bool write) =>
        _hooks.CheckAccess(this, InstrIp, la, pa, size, v, write);

    /// <summary>
    /// Dispatcher, with execution hooks set: calls them for the instruction at the block's start and says whether the
    /// block overlaps a hooked range (then only that instruction runs, so each one in the range is seen).
    /// </summary>
    private bool ExecHookStep(Block b)
    {
        if (b.Count == 0) return false;
        ulong end = b.Linear + (b.Instrs[b.Count - 1].NextIP - b.Ip);
        if (!_hooks.ExecCovers(b.Linear, end)) return false;
        _hooks.CheckExecution(this, b.Linear);
        return true;
    }
}
