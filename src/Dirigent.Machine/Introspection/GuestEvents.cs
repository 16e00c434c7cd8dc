namespace Dirigent.Machine.Introspection;

/// <summary>
/// What an introspection callback may look at on the vCPU that raised the event: its registers and the guest's
/// memory through its current page tables. Valid only during the callback, on the vCPU's own thread; reads have no
/// side effects on the guest (no accessed/dirty bits, no faults).
/// </summary>
public interface IGuestCpu
{
    int Index { get; }
    /// <summary>The instruction that raised the event (for a syscall exit: the SYSRET/SYSEXIT/IRET).</summary>
    ulong InstructionPointer { get; }
    /// <summary>RAX..R15 in encoding order.</summary>
    ulong Gpr(int n);
    ulong Cr3 { get; }
    int Cpl { get; }
    /// <summary>The GS segment base in force now, and IA32_KERNEL_GS_BASE (the one SWAPGS would bring in).</summary>
    ulong GsBase { get; }
    ulong KernelGsBase { get; }
    /// <summary>IA32_LSTAR: where SYSCALL enters the kernel (Linux awareness derives the KASLR slide from it).</summary>
    ulong Lstar { get; }
    ulong InstructionsRetired { get; }
    /// <summary>Linear → guest-physical through the current page tables, without setting A/D bits or faulting.</summary>
    bool TryTranslate(ulong linear, out ulong physical);
    /// <summary>Reads guest-virtual memory; returns the number of bytes read (less than asked where a page is unmapped).</summary>
    int ReadVirtual(ulong linear, Span<byte> dst);
}

public enum SyscallKind
{
    /// <summary>SYSCALL (64-bit ABI: number in RAX, arguments RDI, RSI, RDX, R10, R8, R9).</summary>
    Syscall,
    /// <summary>SYSENTER (i386 ABI: EAX, then EBX, ECX, EDX, ESI, EDI, EBP).</summary>
    Sysenter,
    /// <summary>INT 0x80 from user mode (i386 ABI).</summary>
    Int80,
}

/// <summary>
/// One system call: filled at entry; <see cref="Return"/> is set when the matching return to user mode (SYSRET,
/// SYSEXIT or IRET of the same thread) is seen, and the same object is then passed to the exit callbacks.
/// </summary>
public sealed class SyscallEvent
{
    public int Vcpu { get; init; }
    public SyscallKind Kind { get; init; }
    /// <summary>Address of the SYSCALL/SYSENTER/INT instruction.</summary>
    public ulong Rip { get; init; }
    public ulong Cr3 { get; init; }
    public ulong UserRsp { get; init; }
    public ulong Number { get; init; }
    public ulong[] Args { get; init; } = new ulong[6];
    /// <summary>Retired-instruction count of the vCPU at entry.</summary>
    public ulong Instructions { get; init; }
    /// <summary>The key the entry was matched to its return by (see <see cref="GuestHooks.ThreadKey"/>).</summary>
    public ThreadKey Thread { get; internal set; }
    /// <summary>RAX at the return to user mode; null until then (and for calls that never return: exit, execve's success
    /// when the thread key changes).</summary>
    public ulong? Return { get; internal set; }
    /// <summary>vCPU the call returned on (a blocked thread may move).</summary>
    public int ReturnVcpu { get; internal set; } = -1;
    // Consumers' data, by owner (a decoder keeps what it read at entry until the exit): several hooks see one event.
    private List<(object Owner, object? Value)>? _tags;

    /// <summary>Data <paramref name="owner"/> attached at entry (null if none); the callbacks of one event run on one thread.</summary>
    public object? GetTag(object owner)
    {
        if (_tags != null) foreach (var (o, v) in _tags) if (ReferenceEquals(o, owner)) return v;
        return null;
    }

    public void SetTag(object owner, object? value)
    {
        _tags ??= new(1);
        for (int k = 0; k < _tags.Count; k++)
            if (ReferenceEquals(_tags[k].Owner, owner)) { _tags[k] = (owner, value); return; }
        _tags.Add((owner, value));
    }
}

/// <summary>Identifies a guest thread for matching a system call to its return.</summary>
public readonly record struct ThreadKey(ulong A, ulong B, ulong C);

public sealed class InterruptEvent
{
    public int Vcpu { get; init; }
    public int Vector { get; init; }
    public uint? ErrorCode { get; init; }
    /// <summary>INT n / INT3 / INTO executed by the guest.</summary>
    public bool Software { get; init; }
    /// <summary>An external interrupt or NMI (not an exception raised by an instruction).</summary>
    public bool External { get; init; }
    /// <summary>Where the interrupted or faulting instruction is.</summary>
    public ulong Rip { get; init; }
    /// <summary>CR2 at delivery (the faulting address for #PF).</summary>
    public ulong Cr2 { get; init; }
    public int Cpl { get; init; }
}

[Flags]
public enum WatchKind { Read = 1, Write = 2, ReadWrite = 3 }

public sealed class MemoryAccessEvent
{
    public int Vcpu { get; init; }
    /// <summary>The accessing instruction.</summary>
    public ulong Rip { get; init; }
    public ulong Linear { get; init; }
    public ulong Physical { get; init; }
    public int Size { get; init; }
    /// <summary>The value read, or the value written.</summary>
    public ulong Value { get; init; }
    public bool IsWrite { get; init; }
}

/// <summary>A VM exit to a device: a port (IN/OUT/INS/OUTS) or MMIO access by a vCPU (not DMA).</summary>
public sealed class DeviceAccessEvent
{
    public int Vcpu { get; init; }
    public ulong Rip { get; init; }
    /// <summary>An I/O port (Address is the port number); else MMIO (Address is guest-physical).</summary>
    public bool IsPort { get; init; }
    public ulong Address { get; init; }
    public int Size { get; init; }
    public ulong Value { get; init; }
    public bool IsWrite { get; init; }
}

/// <summary>A range of guest addresses watched for reads and/or writes.</summary>
public sealed record Watchpoint(ulong Start, ulong Length, WatchKind Kind, bool Physical, Action<IGuestCpu, MemoryAccessEvent> Callback)
{
    public bool Covers(ulong addr, int size) => addr < Start + Length && Start < addr + (ulong)size;
    public bool CoversPage(ulong page) => (Start >> 12) <= page && page <= ((Start + Length - 1) >> 12);
}

public sealed record ExecutionHook(ulong Start, ulong End, Action<IGuestCpu, ulong> Callback)
{
    public bool Covers(ulong start, ulong end) => start < End && Start < end;
}
