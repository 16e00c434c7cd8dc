using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;

namespace Dirigent.Accel.Kvm;

/// <summary>
/// One KVM vCPU: a vCPU fd, its mmap'ed kvm_run page, and the loop that runs KVM_RUN and dispatches exits to the
/// machine's buses. Without the in-kernel irqchip, interrupts come from <see cref="InjectInterrupt"/> or an attached
/// controller: they are queued here and handed to KVM with KVM_INTERRUPT when the guest can take them, otherwise an
/// interrupt window is requested. With it, KVM's LAPIC takes them and HLT waits inside KVM_RUN.
/// </summary>
/// <remarks>
/// Kicking a vCPU out of KVM_RUN (stop requests, new interrupts) uses a real-time signal without a handler: the
/// vCPU thread keeps it blocked, KVM_SET_SIGNAL_MASK unblocks it only while inside KVM_RUN, so a kick makes
/// KVM_RUN return EINTR and the signal stays pending until sigtimedwait consumes it. No signal handler ever runs,
/// so no managed code runs in signal context. immediate_exit covers the window just before KVM_RUN is entered.
/// </remarks>
public sealed unsafe partial class KvmVcpu : IVcpu, IDisposable
{
    private readonly KvmAccelerator _accel;
    private readonly MachineModel _vm;
    private int _fd;
    private KvmRun* _run;
    private readonly nuint _runSize;

    private volatile bool _stopRequested;
    private volatile bool _nmiPending;
    private readonly ulong[] _pendingVectors = new ulong[4];
    /// <summary>Userspace irqchip only: the guest executed HLT and no interrupt has woken it yet (kept across Run calls,
    /// so a vCPU stopped while halted stays halted, and set by SetState for a halted state).</summary>
    private bool _halted;
    /// <summary>In-kernel irqchip only: vectors a restored state had pending beyond the one KVM takes as being
    /// delivered; sent to the LAPIC when the vCPU next runs (after the LAPIC's own state is restored).</summary>
    private readonly List<byte> _deferredVectors = new();
    private readonly ManualResetEventSlim _wake = new(false);

    // The thread inside Run, for kicks; guarded by _kickLock so a kick never targets a thread that has left Run.
    private readonly object _kickLock = new();
    private nuint _runThread;
    private bool _inRun;
    /// <summary>The last exit was I/O or MMIO: KVM completes it only on the next KVM_RUN.</summary>
    private bool _pendingCompletion;

    public int Index { get; }

    /// <summary>KVM does not count retired instructions for us.</summary>
    public ulong InstructionsRetired => 0;

    private long _exits;
    /// <summary>Exits to user space (KVM_RUN returns that were not kicks), for metrics; read from any thread.</summary>
    public long Exits => Volatile.Read(ref _exits);

    /// <summary>The real-time signal used for kicks (SIGRTMAX-3: clear of glibc's and .NET's own RT signals at SIGRTMIN).</summary>
    private static readonly int s_kickSignal = Libc.SigRtMax() - 3;

    internal KvmVcpu(KvmAccelerator accel, int vmFd, int index)
    {
        _accel = accel;
        _vm = accel.Machine;
        Index = index;
        _fd = KvmAccelerator.Check(Libc.Ioctl(vmFd, KvmAbi.CREATE_VCPU, index), $"KVM_CREATE_VCPU {index}");
        try
        {
            _runSize = (nuint)accel.RunMmapSize;
            nint p = Libc.Mmap(0, _runSize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, _fd, 0);
            if (p == Libc.MapFailed) throw new KvmException($"mmap of kvm_run failed: {Libc.ErrorText(Libc.LastErrno)}");
            _run = (KvmRun*)p;
            SetCpuid(accel.Cpuid);
            if (accel.IrqChip != null)
            {
                KvmLapicState lapic;
                KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_LAPIC, &lapic), "KVM_GET_LAPIC");
                _powerOnLapic = lapic;
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private void SetCpuid(KvmCpuidEntry2[] entries)
    {
        var buf = new byte[8 + entries.Length * sizeof(KvmCpuidEntry2)];
        fixed (byte* p = buf)
        {
            *(uint*)p = (uint)entries.Length;
            var dst = new Span<KvmCpuidEntry2>(p + 8, entries.Length);
            entries.CopyTo(dst);
            for (int i = 0; i < dst.Length; i++)
            {
                // Each vCPU reports its own initial APIC ID (leaf 1 EBX[31:24], x2APIC ID in leaves 0xB/0x1F EDX).
                if (dst[i].Function == 1) dst[i].Ebx = (dst[i].Ebx & 0x00FF_FFFF) | ((uint)Index << 24);
                if (dst[i].Function is 0xB or 0x1F) dst[i].Edx = (uint)Index;
            }
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_CPUID2, p), "KVM_SET_CPUID2");
        }
    }

    /// <summary>The in-kernel local APIC as KVM made it, for system reset (in-kernel irqchip only).</summary>
    private KvmLapicState _powerOnLapic;

    private IInterruptController? _intCtrl;
    private IMmioDevice? _apicMmio;
    private ILocalApicRegisters? _apicRegs;

    /// <summary>
    /// Like the software CPU's method of the same name: maskable interrupts also come from this controller (the
    /// emulated local APIC with the PIC behind it), acknowledged when the guest can take one, and the vCPU's APIC page
    /// (at IA32_APIC_BASE, as KVM reports it on each exit) goes to <paramref name="apicMmio"/> instead of the shared
    /// MMIO bus. The task priority is kept in step with CR8 through <see cref="ILocalApicRegisters"/> when the
    /// controller has them. Call before <see cref="Run"/>.
    /// </summary>
    public void AttachInterruptController(IInterruptController ctrl, IMmioDevice? apicMmio)
    {
        if (_accel.IrqChip != null)
            throw new InvalidOperationException("KVM's in-kernel irqchip is active: the vCPU's local APIC is KVM's, not an emulated one");
        _intCtrl = ctrl;
        _apicMmio = apicMmio;
        _apicRegs = ctrl as ILocalApicRegisters;
        ctrl.Kick = Kick;
    }

    // ---------------- thread-safe requests ----------------

    public void RequestStop()
    {
        _stopRequested = true;
        Kick();
    }

    public void InjectInterrupt(byte vector)
    {
        if (_accel.IrqChip is { } chip)
        {
            // KVM_INTERRUPT is refused with an in-kernel LAPIC: the vector goes through this vCPU's LAPIC instead, as
            // a fixed interrupt (so the guest must have it software-enabled, and EOIs it).
            chip.SendFixed(Index, vector);
            return;
        }
        Interlocked.Or(ref _pendingVectors[vector >> 6], 1UL << (vector & 63));
        Kick();
    }

    public void InjectNmi()
    {
        _nmiPending = true;
        Kick();
    }

    /// <summary>
    /// Not used: with KVM's in-kernel LAPIC the kernel handles INIT and STARTUP itself (KVM_MP_STATE_INIT_RECEIVED /
    /// SIPI_RECEIVED), and without it the VM refuses more than one vCPU (KVM cannot start an AP for a user-space APIC).
    /// </summary>
    public void InjectInit() { }

    /// <inheritdoc cref="InjectInit"/>
    public void InjectSipi(byte vector) { }

    private void Kick()
    {
        Interlocked.MemoryBarrier();
        lock (_kickLock)
        {
            // A device may still kick after teardown (its timer fires late): nothing left to wake.
            if (_fd < 0) return;
            _wake.Set();
            if (!_inRun || _run == null) return;
            _run->ImmediateExit = 1;
            Libc.PthreadKill(_runThread, s_kickSignal);
        }
    }

    // ---------------- run loop ----------------

    public void PrepareRun() => _stopRequested = false;

    public VcpuExit Run()
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        // A stale stop request was dropped by PrepareRun; one made since applies to this run (IVcpu.RequestStop).
        EnterRun();
        try
        {
            return RunLoop();
        }
        finally
        {
            lock (_kickLock) _inRun = false;
        }
    }

    /// <summary>
    /// Blocks the kick signal on this thread (for good: a late kick must stay pending, never take the default action,
    /// which would end the process), tells KVM to run the guest with this thread's mask minus the kick signal, and
    /// publishes the thread for <see cref="Kick"/>.
    /// </summary>
    private void EnterRun()
    {
        SigSet set, old;
        Libc.SigEmptySet(&set);
        Libc.SigAddSet(&set, s_kickSignal);
        Libc.PthreadSigmask(Libc.SIG_BLOCK, &set, &old);
        // The kernel's sigset is glibc's first 64 bits: signal n is bit n-1.
        var m = new KvmSignalMask { Len = 8, Sigset = old.First & ~(1UL << (s_kickSignal - 1)) };
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_SIGNAL_MASK, &m), "KVM_SET_SIGNAL_MASK");
        lock (_kickLock)
        {
            _runThread = Libc.PthreadSelf();
            _inRun = true;
        }
    }

    private static void ConsumeKickSignal()
    {
        SigSet set;
        Libc.SigEmptySet(&set);
        Libc.SigAddSet(&set, s_kickSignal);
        var zero = new Timespec();
        while (Libc.SigTimedWait(&set, null, &zero) > 0) { }
    }

    private VcpuExit RunLoop()
    {
        if (_accel.IrqChip is { } chip)
        {
            lock (_deferredVectors)
            {
                foreach (byte v in _deferredVectors) chip.SendFixed(Index, v);
                _deferredVectors.Clear();
            }
        }
        else if (_halted && WaitInHalt() is { } haltExit) return haltExit;
        while (true)
        {
            if (_stopRequested)
            {
                _stopRequested = false;
                CompletePendingExit();
                return _vm.PowerEvent != PowerEventKind.None
                    ? new VcpuExit(VcpuExitReason.PowerEvent, _vm.PowerEvent.ToString())
                    : new VcpuExit(VcpuExitReason.Stopped);
            }
            PrepareInjection();
            int r = Libc.Ioctl(_fd, KvmAbi.RUN, 0);
            if (r < 0)
            {
                int errno = Libc.LastErrno;
                if (errno is Libc.EINTR or Libc.EAGAIN)
                {
                    // A kick: reset the doorbells before looking at the flags, so a later kick is never lost.
                    _run->ImmediateExit = 0;
                    ConsumeKickSignal();
                    Interlocked.MemoryBarrier();
                    _pendingCompletion = false;
                    continue;
                }
                return new VcpuExit(VcpuExitReason.InternalError, $"KVM_RUN failed: {Libc.ErrorText(errno)}");
            }
            _pendingCompletion = false;
            // Only this thread writes it; a reader elsewhere may see a slightly older count (64-bit loads are atomic).
            _exits++;
            // Without an in-kernel LAPIC, CR8 writes are reported in kvm_run; the emulated APIC's TPR follows them.
            if (_apicRegs != null) _apicRegs.Tpr = (uint)(_run->Cr8 & 0xF) << 4;
            var exit = HandleExit();
            if (exit != null) return exit.Value;
        }
    }

    /// <summary>After an I/O or MMIO exit the instruction is finished only by the next KVM_RUN; with immediate_exit
    /// set KVM completes it and returns without running further, so the state we report is consistent.</summary>
    private void CompletePendingExit()
    {
        if (!_pendingCompletion) return;
        _pendingCompletion = false;
        _run->ImmediateExit = 1;
        Libc.Ioctl(_fd, KvmAbi.RUN, 0);
        _run->ImmediateExit = 0;
        ConsumeKickSignal();
    }

    /// <summary>Queues an NMI or the highest pending vector into KVM when it can be taken now, else asks KVM to
    /// exit as soon as the guest opens an interrupt window.</summary>
    private void PrepareInjection()
    {
        if (_nmiPending)
        {
            _nmiPending = false;
            Libc.Ioctl(_fd, KvmAbi.NMI, 0);
        }
        if (_apicRegs != null) _run->Cr8 = _apicRegs.Tpr >> 4;
        int vector = HighestPendingVector();
        bool fromController = false;
        if (vector < 0 && _intCtrl != null && _intCtrl.HasPendingInterrupt)
        {
            fromController = true;
            if (_run->ReadyForInterruptInjection != 0 && _run->IfFlag != 0)
            {
                // INTA only when KVM can take the vector now: acknowledging moves it in service in the APIC.
                int v = _intCtrl.AcknowledgeInterrupt();
                if (v >= 0)
                {
                    uint irq = (uint)v;
                    KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.INTERRUPT, &irq), "KVM_INTERRUPT");
                    _run->ReadyForInterruptInjection = 0; // see below
                    _run->RequestInterruptWindow = _intCtrl.HasPendingInterrupt ? (byte)1 : (byte)0;
                    return;
                }
            }
        }
        if (vector < 0 && !fromController) { _run->RequestInterruptWindow = 0; return; }
        if (vector >= 0 && _run->ReadyForInterruptInjection != 0 && _run->IfFlag != 0)
        {
            uint irq = (uint)vector;
            if (Libc.Ioctl(_fd, KvmAbi.INTERRUPT, &irq) == 0)
            {
                // KVM holds one queued vector and a second KVM_INTERRUPT would replace it; until the next exit says
                // otherwise (a kick may end this KVM_RUN before the vector is delivered), we are not ready.
                _run->ReadyForInterruptInjection = 0;
                Interlocked.And(ref _pendingVectors[vector >> 6], ~(1UL << (vector & 63)));
                _run->RequestInterruptWindow = HighestPendingVector() >= 0 ? (byte)1 : (byte)0;
                return;
            }
        }
        _run->RequestInterruptWindow = 1;
    }

    private int HighestPendingVector()
    {
        for (int k = 3; k >= 0; k--)
        {
            ulong bits = Volatile.Read(ref _pendingVectors[k]);
            if (bits != 0) return k * 64 + 63 - System.Numerics.BitOperations.LeadingZeroCount(bits);
        }
        return -1;
    }

    /// <summary>Handles one exit; null means keep running.</summary>
    private VcpuExit? HandleExit()
    {
        switch (_run->ExitReason)
        {
            case KvmAbi.EXIT_IO:
                HandleIo();
                _pendingCompletion = true;
                return PowerEventExit();
            case KvmAbi.EXIT_MMIO:
                HandleMmio();
                _pendingCompletion = true;
                return PowerEventExit();
            case KvmAbi.EXIT_IRQ_WINDOW_OPEN:
            case KvmAbi.EXIT_INTR:
                return null;
            case KvmAbi.EXIT_HLT:
                _halted = true;
                return WaitInHalt();
            case KvmAbi.EXIT_SHUTDOWN:
                return new VcpuExit(VcpuExitReason.Shutdown, $"triple fault (KVM shutdown) at {Where()}");
            case KvmAbi.EXIT_SYSTEM_EVENT:
                return SystemEvent();
            case KvmAbi.EXIT_FAIL_ENTRY:
                return new VcpuExit(VcpuExitReason.InternalError,
                    $"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x{_run->FailEntryReason:x} at {Where()}");
            case KvmAbi.EXIT_INTERNAL_ERROR:
                return new VcpuExit(VcpuExitReason.InternalError,
                    $"KVM_EXIT_INTERNAL_ERROR: suberror {_run->UnionU32a}, data {_run->UnionData0:x} {_run->UnionData1:x} {_run->UnionData2:x} {_run->UnionData3:x} at {Where()}");
            default:
                return new VcpuExit(VcpuExitReason.InternalError, $"unhandled KVM exit reason {_run->ExitReason} at {Where()}");
        }
    }

    /// <summary>A device on the bus may have asked for power-off/reset/debug-exit: stop right after the access.</summary>
    private VcpuExit? PowerEventExit()
    {
        if (_vm.PowerEvent == PowerEventKind.None) return null;
        _stopRequested = false;
        CompletePendingExit();
        return new VcpuExit(VcpuExitReason.PowerEvent, _vm.PowerEvent.ToString());
    }

    private void HandleIo()
    {
        byte* data = (byte*)_run + _run->IoDataOffset;
        int size = _run->IoSize;
        ushort port = _run->IoPort;
        // String I/O (INS/OUTS, with REP) arrives as count > 1 elements packed back to back.
        for (uint i = 0; i < _run->IoCount; i++, data += size)
        {
            if (_run->IoDirection == KvmAbi.IO_OUT)
            {
                uint v = size switch { 1 => *data, 2 => *(ushort*)data, _ => *(uint*)data };
                _vm.Io.Write(port, size, v);
            }
            else
            {
                uint v = _vm.Io.Read(port, size);
                switch (size)
                {
                    case 1: *data = (byte)v; break;
                    case 2: *(ushort*)data = (ushort)v; break;
                    default: *(uint*)data = v; break;
                }
            }
        }
    }

    private void HandleMmio()
    {
        int len = (int)_run->MmioLen;
        ulong addr = _run->MmioPhysAddr;
        ulong mask = len >= 8 ? ulong.MaxValue : (1UL << (len * 8)) - 1;
        ulong apicBase = _run->ApicBase;
        if (_apicMmio != null && (apicBase & 0x800) != 0 && (addr & ~0xFFFUL) == (apicBase & 0xF_FFFF_F000UL))
        {
            if (_run->MmioIsWrite != 0) _apicMmio.Write(addr & 0xFFF, len, _run->MmioData & mask);
            else _run->MmioData = _apicMmio.Read(addr & 0xFFF, len) & mask;
            return;
        }
        if (_run->MmioIsWrite != 0) _vm.Mmio.Write(addr, len, _run->MmioData & mask);
        else _run->MmioData = _vm.Mmio.Read(addr, len) & mask;
    }

    /// <summary>
    /// HLT without an in-kernel irqchip exits to us. With IF=0 and no NMI coming the CPU is dead (what the software
    /// CPU reports as well); otherwise sleep until an interrupt, NMI or stop request arrives. Only an interrupt or NMI
    /// ends the halt: after a stop request the vCPU is still halted, and the next Run waits here again.
    /// </summary>
    private VcpuExit? WaitInHalt()
    {
        KvmRegs regs;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_REGS, &regs), "KVM_GET_REGS");
        bool interruptsOn = (regs.Rflags & 0x200) != 0;
        while (true)
        {
            if (_nmiPending) { _halted = false; return null; }
            if (_stopRequested) return null;
            if (!interruptsOn) return new VcpuExit(VcpuExitReason.HaltedForever, $"HLT with IF=0 at {Where(-1)}");
            if (HighestPendingVector() >= 0 || (_intCtrl != null && _intCtrl.HasPendingInterrupt)) { _halted = false; return null; }
            _wake.Wait(100);
            _wake.Reset();
        }
    }

    private VcpuExit? SystemEvent()
    {
        switch (_run->UnionU32a)
        {
            case KvmAbi.SYSTEM_EVENT_SHUTDOWN:
                _vm.RequestPowerEvent(PowerEventKind.PowerOff);
                return new VcpuExit(VcpuExitReason.PowerEvent, _vm.PowerEvent.ToString());
            case KvmAbi.SYSTEM_EVENT_RESET:
                _vm.RequestPowerEvent(PowerEventKind.Reset);
                return new VcpuExit(VcpuExitReason.PowerEvent, _vm.PowerEvent.ToString());
            default:
                return new VcpuExit(VcpuExitReason.InternalError, $"KVM system event {_run->UnionU32a} (guest crash) at {Where()}");
        }
    }

    /// <summary>CS:RIP for messages; best effort (a failing ioctl here must not hide the real exit).</summary>
    /// <param name="ripDelta">-1 for HLT: KVM reports the RIP after it, the software CPU the HLT itself.</param>
    private string Where(int ripDelta = 0)
    {
        KvmRegs regs;
        KvmSregs sregs;
        if (Libc.Ioctl(_fd, KvmAbi.GET_REGS, &regs) < 0 || Libc.Ioctl(_fd, KvmAbi.GET_SREGS, &sregs) < 0) return "?";
        return $"{sregs.Cs.Selector:x4}:{regs.Rip + (ulong)(long)ripDelta:x}";
    }

    /// <summary>
    /// The in-kernel local APIC's registers (struct kvm_lapic_state: the 1 KiB APIC page, one register every 16
    /// bytes, APIC ID at 0x20 in xAPIC form). Only with the in-kernel irqchip; for save/restore.
    /// </summary>
    public byte[] GetLocalApicState()
    {
        RequireInKernelLapic();
        KvmLapicState s;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_LAPIC, &s), "KVM_GET_LAPIC");
        return new ReadOnlySpan<byte>(s.Regs, sizeof(KvmLapicState)).ToArray();
    }

    public void SetLocalApicState(ReadOnlySpan<byte> regs)
    {
        RequireInKernelLapic();
        if (regs.Length != sizeof(KvmLapicState)) throw new ArgumentException($"a local APIC state is {sizeof(KvmLapicState)} bytes, got {regs.Length}", nameof(regs));
        KvmLapicState s;
        regs.CopyTo(new Span<byte>(s.Regs, sizeof(KvmLapicState)));
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_LAPIC, &s), "KVM_SET_LAPIC");
    }

    private void RequireInKernelLapic()
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        if (_accel.IrqChip == null) throw new InvalidOperationException("no in-kernel local APIC: the VM uses the emulated interrupt controllers");
    }

    internal void ResetLocalApic()
    {
        if (_fd < 0 || _accel.IrqChip == null) return;
        var s = _powerOnLapic;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_LAPIC, &s), "KVM_SET_LAPIC");
    }

    /// <summary>Unmaps kvm_run and closes the vCPU fd. The vCPU must not be running (stop it first).</summary>
    public void Dispose()
    {
        lock (_kickLock)
        {
            if (_run != null) { Libc.Munmap((nint)_run, _runSize); _run = null; }
            if (_fd >= 0) { Libc.Close(_fd); _fd = -1; }
            if (_intCtrl != null) _intCtrl.Kick = null;
        }
        _wake.Dispose();
    }
}
