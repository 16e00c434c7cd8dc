using System.Buffers.Binary;
using System.Text;
using Dirigent.Machine.Introspection;
using Dirigent.Machine.Memory;

namespace Dirigent.Vmm.Introspection;

/// <summary>A process as the guest kernel's task list has it.</summary>
public readonly record struct GuestProcess(int Pid, string Comm, ulong Task);

/// <summary>
/// Linux awareness without an agent: from the kernel's System.map and guest memory, the current task (pid, thread
/// id, comm) on a vCPU, the process list and system-call names. Only x86-64 kernels with 4-level paging.
///
/// How each fact is found, so that no structure layout is compiled in:
/// - KASLR slide: IA32_LSTAR holds the run-time address of entry_SYSCALL_64; minus its System.map address.
/// - Current task: the per-CPU variable current_task (its System.map value is an offset into the per-CPU area, not
///   relocated) at the per-CPU base, which is the GS base in the kernel and IA32_KERNEL_GS_BASE in user mode (SWAPGS
///   exchanges them at every kernel entry and exit).
/// - Kernel memory is read through the vCPU's CR3; where that is a user page table without the kernel (page-table
///   isolation: the user PGD is the kernel's + 4 KiB), through the kernel PGD beside it.
/// - task_struct.comm: the offset where init_task (pid 0, the boot idle task) holds "swapper" ("swapper/0" once
///   the scheduler named it).
/// - task_struct.tasks (the list of all processes): the offset of a list_head in init_task whose neighbours point back
///   to it and whose members all have a printable comm at the comm offset.
/// - task_struct.pid and .tgid (adjacent pid_t): the offset where the first three tasks on that list (init_task, then
///   init and kthreadd, created in that order by rest_init) hold 0, 1, 2 twice over.
/// The offsets are derived on first use after boot (the task list must have those tasks) and kept.
/// </summary>
public sealed class LinuxGuest
{
    private readonly SystemMap _map;
    private readonly GuestMemory _mem;
    private readonly ulong _entrySyscall, _currentTask, _initTask, _sysCallTable;
    private long _slide;
    private bool _slideKnown;
    private int _commOff = -1, _tasksOff = -1, _pidOff = -1;
    private bool _layoutTried;
    private readonly object _lock = new();
    private readonly Dictionary<ulong, string?> _names = new();

    public LinuxGuest(SystemMap map, GuestMemory mem)
    {
        _map = map;
        _mem = mem;
        if (!map.TryGet("entry_SYSCALL_64", out _entrySyscall) || !map.TryGet("init_task", out _initTask))
            throw new VmException("System.map has no entry_SYSCALL_64 or init_task: not an x86-64 Linux kernel's", badInput: true);
        // 6.2+ moved current_task into pcpu_hot (at offset 0); 6.1 and older have the variable itself.
        if (!map.TryGet("current_task", out _currentTask) && !map.TryGet("pcpu_hot", out _currentTask))
            throw new VmException("System.map has neither current_task nor pcpu_hot", badInput: true);
        map.TryGet("sys_call_table", out _sysCallTable);
    }

    /// <summary>The task_struct offsets found so far (-1: not yet), for diagnostics.</summary>
    public (int Comm, int Tasks, int Pid) Layout => (_commOff, _tasksOff, _pidOff);

    private bool EnsureSlide(IGuestCpu cpu)
    {
        if (_slideKnown) return true;
        if (cpu.Lstar == 0) return false; // the kernel has not set up SYSCALL yet
        _slide = (long)(cpu.Lstar - _entrySyscall);
        _slideKnown = true;
        return true;
    }

    // ---- reading kernel memory ----

    private bool ReadKernel(ulong cr3, ulong va, Span<byte> dst)
    {
        // Linux on x86-64: long mode, 4-level paging (CR0.PG, CR4.PAE, EFER.LMA).
        const ulong cr0 = 0x8000_0001, cr4 = 0x20, efer = 0x500;
        if (PageWalk.ReadVirtual(_mem, cr0, cr3, cr4, efer, va, dst) == dst.Length) return true;
        // Page-table isolation: a user CR3 maps almost none of the kernel; its kernel twin is the 8 KiB-aligned PGD.
        ulong kcr3 = cr3 & ~0x1FFFUL & 0x000F_FFFF_FFFF_F000UL;
        return kcr3 != (cr3 & 0x000F_FFFF_FFFF_F000UL) && PageWalk.ReadVirtual(_mem, cr0, kcr3, cr4, efer, va, dst) == dst.Length;
    }

    private bool TryU64(ulong cr3, ulong va, out ulong v)
    {
        Span<byte> b = stackalloc byte[8];
        v = 0;
        if (!ReadKernel(cr3, va, b)) return false;
        v = BinaryPrimitives.ReadUInt64LittleEndian(b);
        return true;
    }

    private bool TryI32(ulong cr3, ulong va, out int v)
    {
        Span<byte> b = stackalloc byte[4];
        v = 0;
        if (!ReadKernel(cr3, va, b)) return false;
        v = BinaryPrimitives.ReadInt32LittleEndian(b);
        return true;
    }

    private string? ReadComm(ulong cr3, ulong task)
    {
        Span<byte> b = stackalloc byte[16];
        if (!ReadKernel(cr3, task + (ulong)_commOff, b)) return null;
        int n = b.IndexOf((byte)0);
        if (n <= 0) return null;
        foreach (byte c in b[..n]) if (c < 0x20 || c > 0x7E) return null;
        return Encoding.ASCII.GetString(b[..n]);
    }

    private static bool IsKernelAddress(ulong a) => a >= 0xFFFF_8000_0000_0000UL;

    // ---- the current task ----

    /// <summary>The task_struct running on the vCPU, or 0 when it cannot be read (not booted far enough).</summary>
    public ulong CurrentTask(IGuestCpu cpu)
    {
        // In user mode the kernel's per-CPU base waits in KERNEL_GS_BASE; in the kernel it is the GS base, except in
        // the few instructions between the entry and its SWAPGS (the base that looks like a kernel address is it).
        ulong pcpu = cpu.Cpl == 3 ? cpu.KernelGsBase : IsKernelAddress(cpu.GsBase) ? cpu.GsBase : cpu.KernelGsBase;
        if (!IsKernelAddress(pcpu)) return 0;
        return TryU64(cpu.Cr3, pcpu + _currentTask, out ulong t) && IsKernelAddress(t) ? t : 0;
    }

    /// <summary>Thread key for <see cref="GuestHooks.ThreadKeyProvider"/>: the current task_struct.</summary>
    public ThreadKey? ThreadKeyOf(IGuestCpu cpu)
    {
        ulong t = CurrentTask(cpu);
        return t == 0 ? null : new ThreadKey(t, 0, 0);
    }

    /// <summary>pid (thread group id), thread id and comm of the vCPU's current task; false before the layout is known.</summary>
    public bool TryCurrent(IGuestCpu cpu, out int pid, out int tid, out string? comm)
    {
        pid = tid = 0;
        comm = null;
        ulong task = CurrentTask(cpu);
        if (task == 0 || !EnsureLayout(cpu)) return false;
        if (!TryI32(cpu.Cr3, task + (ulong)_pidOff, out tid) || !TryI32(cpu.Cr3, task + (ulong)_pidOff + 4, out pid)) return false;
        comm = ReadComm(cpu.Cr3, task);
        return true;
    }

    /// <summary>The processes on the kernel's task list (thread-group leaders), init_task (pid 0) first.</summary>
    public List<GuestProcess> ListProcesses(IGuestCpu cpu)
    {
        var list = new List<GuestProcess>();
        if (!EnsureLayout(cpu)) return list;
        ulong init = _initTask + (ulong)_slide, cr3 = cpu.Cr3;
        ulong task = init;
        for (int k = 0; k < 100_000; k++)
        {
            if (!TryI32(cr3, task + (ulong)_pidOff + 4, out int pid)) break;
            list.Add(new GuestProcess(pid, ReadComm(cr3, task) ?? "?", task));
            if (!TryU64(cr3, task + (ulong)_tasksOff, out ulong next)) break;
            task = next - (ulong)_tasksOff;
            if (task == init) break;
        }
        return list;
    }

    // ---- layout ----

    private bool EnsureLayout(IGuestCpu cpu)
    {
        if (_pidOff >= 0) return true;
        lock (_lock)
        {
            if (_pidOff >= 0) return true;
            if (_layoutTried && _commOff < 0) return false;
            if (!EnsureSlide(cpu)) return false;
            _layoutTried = true;
            return FindLayout(cpu.Cr3);
        }
    }

    private bool FindLayout(ulong cr3)
    {
        ulong init = _initTask + (ulong)_slide;
        var buf = new byte[0x4000]; // task_struct is ~10 KiB in 6.x
        if (!ReadKernel(cr3, init, buf)) return false;
        if (_commOff < 0)
        {
            int at = IndexOf(buf, "swapper/0\0"u8);
            if (at < 0) at = IndexOf(buf, "swapper\0"u8);
            if (at < 0) return false;
            _commOff = at;
        }
        for (int t = 0; t + 16 <= _commOff; t += 8)
        {
            ulong next = BinaryPrimitives.ReadUInt64LittleEndian(buf.AsSpan(t)), prev = BinaryPrimitives.ReadUInt64LittleEndian(buf.AsSpan(t + 8));
            ulong self = init + (ulong)t;
            if (next == self || !IsKernelAddress(next) || !IsKernelAddress(prev)) continue;
            if (!TryU64(cr3, next + 8, out ulong back) || back != self || !TryU64(cr3, prev, out ulong fwd) || fwd != self) continue;
            // Three members with a comm: the list of tasks, not some other list_head.
            ulong t1 = next - (ulong)t;
            if (!TryU64(cr3, next, out ulong n2)) continue;
            ulong t2 = n2 - (ulong)t;
            if (ReadComm(cr3, t1) == null || ReadComm(cr3, t2) == null) continue;
            for (int o = 0; o + 8 <= _commOff; o += 4)
            {
                if (BinaryPrimitives.ReadInt64LittleEndian(buf.AsSpan(o)) != 0) continue;
                if (TryI32(cr3, t1 + (ulong)o, out int p1) && p1 == 1 && TryI32(cr3, t1 + (ulong)o + 4, out int g1) && g1 == 1 &&
                    TryI32(cr3, t2 + (ulong)o, out int p2) && p2 == 2 && TryI32(cr3, t2 + (ulong)o + 4, out int g2) && g2 == 2)
                {
                    _tasksOff = t;
                    _pidOff = o;
                    return true;
                }
            }
        }
        return false;
    }

    private static int IndexOf(byte[] hay, ReadOnlySpan<byte> needle) => hay.AsSpan().IndexOf(needle);

    // ---- system calls ----

    /// <summary>
    /// The name of a 64-bit system call: the built-in table's (the ABI's names: the kernel's entry points differ for
    /// some, e.g. stat is __x64_sys_newstat), else the symbol sys_call_table[nr] points at in the guest, without its
    /// __x64_sys_ prefix (calls newer than the table).
    /// </summary>
    public string? SyscallName(IGuestCpu cpu, ulong nr)
    {
        if (LinuxSyscalls.Name(nr) is { } known) return known;
        lock (_names)
            if (_names.TryGetValue(nr, out var cached)) return cached;
        string? name = null;
        if (_sysCallTable != 0 && nr < 1024 && EnsureSlide(cpu) &&
            TryU64(cpu.Cr3, _sysCallTable + (ulong)_slide + nr * 8, out ulong fn))
        {
            string? sym = _map.NameAt(fn - (ulong)_slide);
            if (sym != null && sym.StartsWith("__x64_sys_", StringComparison.Ordinal)) name = sym["__x64_sys_".Length..];
            else if (sym == "__x64_sys_ni_syscall" || sym == "sys_ni_syscall") name = null;
        }
        name ??= LinuxSyscalls.Name(nr);
        if (name == "ni_syscall") name = null;
        lock (_names) _names[nr] = name;
        return name;
    }
}
