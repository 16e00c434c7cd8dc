using System.Buffers.Binary;
using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Accel.Kvm;

/// <summary>Translation between <see cref="CpuState"/> and KVM's register structures.</summary>
public sealed unsafe partial class KvmVcpu
{
    /// <summary>kvm_regs slot of each GPR in encoding order (RAX RCX RDX RBX RSP RBP RSI RDI R8..R15).</summary>
    private static readonly int[] s_gprSlot = [0, 2, 3, 1, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];

    private const uint MsrTsc = 0x10, MsrApicBase = 0x1B, MsrTscDeadline = 0x6E0, MsrEfer = 0xC000_0080, MsrFsBase = 0xC000_0100, MsrGsBase = 0xC000_0101;

    /// <summary>MSRs GetState always reports (those the software CPU reports too, where KVM has them).</summary>
    private static readonly uint[] s_reportedMsrs =
    [
        MsrTsc, 0x174, 0x175, 0x176, 0x1A0, 0x277,
        0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0102, 0xC000_0103,
    ];

    /// <summary>Further MSRs a SetState handed us that KVM accepted, so GetState gives them back.</summary>
    private readonly HashSet<uint> _extraMsrs = new();

    public CpuState GetState()
    {
        KvmRegs regs;
        KvmSregs sregs;
        KvmDebugRegs dbg;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_REGS, &regs), "KVM_GET_REGS");
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_SREGS, &sregs), "KVM_GET_SREGS");
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_DEBUGREGS, &dbg), "KVM_GET_DEBUGREGS");

        var s = new CpuState();
        for (int i = 0; i < 16; i++) s.Gpr[i] = regs.R[s_gprSlot[i]];
        s.Rip = regs.Rip;
        s.Rflags = regs.Rflags;
        s.Segments[(int)Seg.CS] = FromKvm(sregs.Cs);
        s.Segments[(int)Seg.DS] = FromKvm(sregs.Ds);
        s.Segments[(int)Seg.ES] = FromKvm(sregs.Es);
        s.Segments[(int)Seg.FS] = FromKvm(sregs.Fs);
        s.Segments[(int)Seg.GS] = FromKvm(sregs.Gs);
        s.Segments[(int)Seg.SS] = FromKvm(sregs.Ss);
        s.Tr = FromKvm(sregs.Tr);
        s.Ldtr = FromKvm(sregs.Ldt);
        s.Gdtr = new TableRegister { Base = sregs.Gdt.Base, Limit = sregs.Gdt.Limit };
        s.Idtr = new TableRegister { Base = sregs.Idt.Base, Limit = sregs.Idt.Limit };
        s.Cr0 = sregs.Cr0; s.Cr2 = sregs.Cr2; s.Cr3 = sregs.Cr3; s.Cr4 = sregs.Cr4; s.Cr8 = sregs.Cr8;
        s.Efer = sregs.Efer;
        s.Msrs[MsrApicBase] = sregs.ApicBase;
        for (int i = 0; i < 4; i++) s.Dr[i] = dbg.Db[i];
        s.Dr[4] = s.Dr[6] = dbg.Dr6;
        s.Dr[5] = s.Dr[7] = dbg.Dr7;
        foreach (uint idx in s_reportedMsrs.Concat(_extraMsrs))
            if (TryGetMsr(idx, out ulong v)) s.Msrs[idx] = v;
        s.Xsave = GetExtendedState(s.Fxsave);
        GetEvents(s);
        return s;
    }

    /// <summary>
    /// Activity and events in flight: KVM_GET_VCPU_EVENTS and (in-kernel LAPIC) KVM_GET_MP_STATE, plus what this vCPU
    /// still holds itself (vectors and an NMI not yet handed to KVM, a HLT waited out in userspace).
    /// </summary>
    private void GetEvents(CpuState s)
    {
        var pending = new SortedSet<byte>();
        if (_accel.HasVcpuEvents)
        {
            KvmVcpuEvents ev;
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_VCPU_EVENTS, &ev), "KVM_GET_VCPU_EVENTS");
            EventsToState(ev, s, pending);
        }
        for (int v = 0; v < 256; v++)
            if ((Volatile.Read(ref _pendingVectors[v >> 6]) & (1UL << (v & 63))) != 0) pending.Add((byte)v);
        lock (_deferredVectors) pending.UnionWith(_deferredVectors);
        s.PendingInterrupts = pending.ToArray();
        s.NmiPending |= _nmiPending;
        if (_accel.IrqChip != null)
        {
            uint mp;
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_MP_STATE, &mp), "KVM_GET_MP_STATE");
            (s.Activity, bool sipiReceived) = FromMpState(mp);
            if (!sipiReceived) s.SipiVector = -1;
        }
        else
        {
            s.Activity = _halted ? VcpuActivity.Halted : VcpuActivity.Running;
            s.SipiVector = -1;
        }
    }

    /// <summary>kvm_vcpu_events to CpuState. An NMI KVM was delivering when it stopped is reported as pending, and
    /// unmasked (the masking was that delivery's); an interrupt being delivered joins <paramref name="pending"/>.</summary>
    internal static void EventsToState(in KvmVcpuEvents ev, CpuState s, ISet<byte> pending)
    {
        if (ev.ExceptionInjected != 0 || ev.ExceptionPending != 0)
            s.PendingException = new PendingException
            {
                Vector = ev.ExceptionNr, HasErrorCode = ev.ExceptionHasErrorCode != 0, ErrorCode = ev.ExceptionErrorCode,
            };
        // A software interrupt (INT n) being delivered is re-executed from its instruction, not pending.
        if (ev.InterruptInjected != 0 && ev.InterruptSoft == 0) pending.Add(ev.InterruptNr);
        s.InterruptShadow = ev.InterruptShadow != 0;
        s.NmiPending = ev.NmiPending != 0 || ev.NmiInjected != 0;
        s.NmiMasked = ev.NmiMasked != 0 && ev.NmiInjected == 0;
        s.SipiVector = (int)(ev.SipiVector & 0xFF);
    }

    /// <summary>
    /// CpuState to kvm_vcpu_events. <paramref name="injectVector"/>: the interrupt to hand KVM as being delivered, or
    /// -1. The interrupt shadow is STI's when IF is set, else MOV SS's (VMX refuses STI blocking with IF clear).
    /// </summary>
    internal static KvmVcpuEvents StateToEvents(CpuState s, int injectVector, bool nmiPending)
    {
        var ev = new KvmVcpuEvents
        {
            Flags = KvmAbi.VCPUEVENT_VALID_NMI_PENDING | KvmAbi.VCPUEVENT_VALID_SHADOW | KvmAbi.VCPUEVENT_VALID_SIPI_VECTOR,
            NmiPending = nmiPending ? (byte)1 : (byte)0,
            NmiMasked = s.NmiMasked ? (byte)1 : (byte)0,
            SipiVector = s.SipiVector >= 0 ? (uint)s.SipiVector : 0,
            InterruptShadow = !s.InterruptShadow ? (byte)0 : (s.Rflags & 0x200) != 0 ? KvmAbi.SHADOW_INT_STI : KvmAbi.SHADOW_INT_MOV_SS,
        };
        if (injectVector >= 0)
        {
            ev.InterruptInjected = 1;
            ev.InterruptNr = (byte)injectVector;
        }
        if (s.PendingException is { } pe)
        {
            ev.ExceptionInjected = 1;
            ev.ExceptionNr = pe.Vector;
            ev.ExceptionHasErrorCode = pe.HasErrorCode ? (byte)1 : (byte)0;
            ev.ExceptionErrorCode = pe.ErrorCode;
        }
        return ev;
    }

    /// <summary>KVM's mp_state as an activity; true when a SIPI was received (its vector is kvm_vcpu_events.sipi_vector).
    /// An AP that has not seen INIT yet waits for INIT-SIPI as one after INIT does.</summary>
    internal static (VcpuActivity Activity, bool SipiReceived) FromMpState(uint mp) => mp switch
    {
        KvmAbi.MP_STATE_HALTED => (VcpuActivity.Halted, false),
        KvmAbi.MP_STATE_INIT_RECEIVED or KvmAbi.MP_STATE_UNINITIALIZED => (VcpuActivity.WaitForSipi, false),
        KvmAbi.MP_STATE_SIPI_RECEIVED => (VcpuActivity.WaitForSipi, true),
        _ => (VcpuActivity.Running, false),
    };

    internal static uint ToMpState(VcpuActivity a, int sipiVector) => a switch
    {
        VcpuActivity.Halted => KvmAbi.MP_STATE_HALTED,
        VcpuActivity.WaitForSipi => sipiVector >= 0 ? KvmAbi.MP_STATE_SIPI_RECEIVED : KvmAbi.MP_STATE_INIT_RECEIVED,
        _ => KvmAbi.MP_STATE_RUNNABLE,
    };

    /// <summary>Throws <see cref="StateRestoreException"/> for a state no CPU can be in, before anything is set.</summary>
    internal static void Validate(CpuState s, bool inKernelLapic)
    {
        static void Check(bool ok, string what)
        {
            if (!ok) throw new StateRestoreException($"invalid CPU state: {what}");
        }
        Check(s.Gpr is { Length: 16 }, "Gpr must hold 16 registers");
        Check(s.Segments is { Length: 6 }, "Segments must hold 6 segment registers");
        Check(s.Dr is { Length: 8 }, "Dr must hold 8 debug registers");
        Check(s.Msrs != null, "Msrs missing");
        Check(s.Fxsave is { Length: >= 512 } || s.Xsave is { Length: >= 512 }, "no 512-byte FXSAVE area (Fxsave or the start of Xsave)");
        Check(s.Xsave is not { Length: > 4096 }, $"XSAVE area of {s.Xsave?.Length} bytes, KVM's holds 4096");
        Check(Enum.IsDefined(s.Activity), $"unknown activity {(int)s.Activity}");
        Check(s.SipiVector is >= -1 and <= 255, $"SIPI vector {s.SipiVector} out of range");
        Check(s.PendingInterrupts != null, "PendingInterrupts missing");
        Check(s.PendingException is not { } pe || (pe.Vector < 32 && pe.Vector != 2),
            $"pending exception vector {s.PendingException?.Vector} is not an exception (0..31 but NMI)");
        Check(inKernelLapic || s.Activity != VcpuActivity.WaitForSipi, "waiting for SIPI needs KVM's in-kernel local APIC");
    }

    public void SetState(CpuState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        bool inKernel = _accel.IrqChip != null;
        Validate(state, inKernel);
        KvmSregs sregs;
        // Start from KVM's own sregs so fields CpuState does not carry keep their values; then overwrite the rest.
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_SREGS, &sregs), "KVM_GET_SREGS");
        sregs.Cs = ToKvm(state.Segments[(int)Seg.CS]);
        sregs.Ds = ToKvm(state.Segments[(int)Seg.DS]);
        sregs.Es = ToKvm(state.Segments[(int)Seg.ES]);
        sregs.Fs = ToKvm(state.Segments[(int)Seg.FS]);
        sregs.Gs = ToKvm(state.Segments[(int)Seg.GS]);
        sregs.Ss = ToKvm(state.Segments[(int)Seg.SS]);
        sregs.Tr = ToKvm(state.Tr);
        sregs.Ldt = ToKvm(state.Ldtr);
        sregs.Gdt = new KvmDtable { Base = state.Gdtr.Base, Limit = state.Gdtr.Limit };
        sregs.Idt = new KvmDtable { Base = state.Idtr.Base, Limit = state.Idtr.Limit };
        sregs.Cr0 = state.Cr0; sregs.Cr2 = state.Cr2; sregs.Cr3 = state.Cr3; sregs.Cr4 = state.Cr4; sregs.Cr8 = state.Cr8;
        sregs.Efer = state.Efer;
        // IA32_APIC_BASE lives in sregs; a state without it gets the power-on value (xAPIC enabled, BSP for vCPU 0).
        sregs.ApicBase = state.Msrs.TryGetValue(MsrApicBase, out ulong apicBase) ? apicBase : 0xFEE0_0800UL | (Index == 0 ? 0x100UL : 0);
        // A new state has no interrupt half-delivered.
        for (int i = 0; i < 4; i++) sregs.InterruptBitmap[i] = 0;
        CheckState(Libc.Ioctl(_fd, KvmAbi.SET_SREGS, &sregs), "KVM_SET_SREGS");
        // Without an in-kernel LAPIC every KVM_RUN loads CR8 from kvm_run.cr8 (last exit's value): keep it in step.
        _run->Cr8 = state.Cr8;

        KvmRegs regs;
        for (int i = 0; i < 16; i++) regs.R[s_gprSlot[i]] = state.Gpr[i];
        regs.Rip = state.Rip;
        regs.Rflags = state.Rflags | 2;
        CheckState(Libc.Ioctl(_fd, KvmAbi.SET_REGS, &regs), "KVM_SET_REGS");

        SetExtendedState(state.Fxsave is { Length: >= 512 } ? state.Fxsave : state.Xsave!, state.Xsave);

        KvmDebugRegs dbg = default;
        for (int i = 0; i < 4; i++) dbg.Db[i] = state.Dr[i];
        dbg.Dr6 = state.Dr[6];
        dbg.Dr7 = state.Dr[7];
        CheckState(Libc.Ioctl(_fd, KvmAbi.SET_DEBUGREGS, &dbg), "KVM_SET_DEBUGREGS");

        // MSRs one by one: KVM_SET_MSRS stops at the first it rejects, and an MSR KVM does not model (the software
        // CPU keeps any the guest writes) must not keep the others from being set. Those live in sregs are skipped.
        _extraMsrs.Clear();
        foreach (var (idx, value) in state.Msrs)
        {
            if (idx is MsrApicBase or MsrEfer or MsrFsBase or MsrGsBase) continue;
            if (TrySetMsr(idx, value) && Array.IndexOf(s_reportedMsrs, idx) < 0) _extraMsrs.Add(idx);
        }
        SetEvents(state, inKernel);
    }

    /// <summary>
    /// Activity and events in flight. With the in-kernel LAPIC: KVM_SET_MP_STATE as the state says (a halted vCPU
    /// waits in KVM_RUN for an interrupt) and the highest pending vector handed to KVM as being delivered (only with
    /// IF set, as VMX requires); further vectors go to the LAPIC as fixed interrupts when the vCPU next runs, after the
    /// LAPIC itself has been restored. Without it, KVM only runs: vectors and an NMI wait in this vCPU's own queue and a
    /// HLT is waited out by <see cref="WaitInHalt"/>.
    /// </summary>
    private void SetEvents(CpuState state, bool inKernel)
    {
        for (int k = 0; k < 4; k++) Volatile.Write(ref _pendingVectors[k], 0);
        lock (_deferredVectors) _deferredVectors.Clear();
        _nmiPending = false;
        int inject = -1;
        if (inKernel)
        {
            var vectors = state.PendingInterrupts.Distinct().OrderByDescending(v => v).ToList();
            if (vectors.Count > 0 && (state.Rflags & 0x200) != 0)
            {
                inject = vectors[0];
                vectors.RemoveAt(0);
            }
            lock (_deferredVectors) _deferredVectors.AddRange(vectors);
            uint mp = ToMpState(state.Activity, state.SipiVector);
            CheckState(Libc.Ioctl(_fd, KvmAbi.SET_MP_STATE, &mp), "KVM_SET_MP_STATE");
            _halted = false;
        }
        else
        {
            // kvm_run's "ready for injection" and IF are the last exit's, not this state's: until KVM reports again,
            // vectors wait for an interrupt window (KVM_INTERRUPT with IF clear would fail the VM entry).
            _run->ReadyForInterruptInjection = 0;
            _run->IfFlag = 0;
            foreach (byte v in state.PendingInterrupts) Interlocked.Or(ref _pendingVectors[v >> 6], 1UL << (v & 63));
            _nmiPending = state.NmiPending;
            _halted = state.Activity == VcpuActivity.Halted;
        }
        if (_accel.HasVcpuEvents)
        {
            var ev = StateToEvents(state, inject, inKernel && state.NmiPending);
            CheckState(Libc.Ioctl(_fd, KvmAbi.SET_VCPU_EVENTS, &ev), "KVM_SET_VCPU_EVENTS");
        }
        else if (state.PendingException != null || state.InterruptShadow || state.NmiMasked || inject >= 0 || (inKernel && state.NmiPending))
            throw new StateRestoreException("the CPU state has events in flight and this KVM lacks KVM_CAP_VCPU_EVENTS");
    }

    /// <summary>An ioctl that sets state: KVM refusing it means the state is not one this vCPU can be in.</summary>
    private static void CheckState(int result, string what)
    {
        if (result < 0) throw new StateRestoreException($"{what} refused the CPU state: {Libc.ErrorText(Libc.LastErrno)}");
    }

    // ---------------- local APIC (in-kernel irqchip) ----------------

    /// <summary>KVM_GET_LAPIC, IA32_APIC_BASE (from sregs) and IA32_TSC_DEADLINE as the neutral record.</summary>
    internal LocalApicState SaveLocalApic()
    {
        var s = new LocalApicState { Page = GetLocalApicState() };
        KvmSregs sregs;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_SREGS, &sregs), "KVM_GET_SREGS");
        s.ApicBase = sregs.ApicBase;
        s.TscDeadline = TryGetMsr(MsrTscDeadline, out ulong deadline) ? deadline : 0;
        return s;
    }

    /// <summary>
    /// IA32_APIC_BASE first (KVM_SET_LAPIC reads the page in the mode it sets), then the page, then the TSC deadline
    /// (armed only once the LVT timer is in TSC-deadline mode, and against the guest TSC: restore the CPU state first).
    /// </summary>
    internal void RestoreLocalApic(LocalApicState state)
    {
        RequireInKernelLapic();
        if (state.Page is not { Length: 1024 })
            throw new StateRestoreException($"lapic/{Index}: register page of {state.Page?.Length ?? 0} bytes, expected 1024");
        // Reserved bits 0-7 and 9; x2APIC mode (bit 10) only with the APIC enabled (bit 11).
        if ((state.ApicBase & 0x2FF) != 0 || (state.ApicBase & 0xC00) == 0x400)
            throw new StateRestoreException($"lapic/{Index}: IA32_APIC_BASE {state.ApicBase:x} is not a valid value");
        if (!TrySetMsr(MsrApicBase, state.ApicBase))
            throw new StateRestoreException($"lapic/{Index}: KVM refused IA32_APIC_BASE {state.ApicBase:x}");
        KvmLapicState s;
        state.Page.CopyTo(new Span<byte>(s.Regs, sizeof(KvmLapicState)));
        CheckState(Libc.Ioctl(_fd, KvmAbi.SET_LAPIC, &s), $"lapic/{Index}: KVM_SET_LAPIC");
        if (state.TscDeadline != 0) TrySetMsr(MsrTscDeadline, state.TscDeadline);
    }

    /// <summary>
    /// x87/SSE state goes through KVM_GET/SET_XSAVE, whose first 512 bytes are exactly the FXSAVE image; the whole
    /// 4 KiB area is returned for <see cref="CpuState.Xsave"/>. KVM_GET_FPU is the fallback only (null returned): on
    /// this project's test host (a PVM kernel) it reports MXCSR as 0 while XSAVE has 0x1F80.
    /// </summary>
    private byte[]? GetExtendedState(Span<byte> fx)
    {
        if (_accel.HasXsave)
        {
            var x = new KvmXsave();
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_XSAVE, &x), "KVM_GET_XSAVE");
            var region = new ReadOnlySpan<byte>(x.Region, 4096);
            region[..512].CopyTo(fx);
            return region.ToArray();
        }
        KvmFpu fpu;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_FPU, &fpu), "KVM_GET_FPU");
        FpuToFxsave(in fpu, fx);
        return null;
    }

    /// <summary>
    /// <paramref name="xsave"/> (when given) over KVM's current area, then the FXSAVE image over its first 512 bytes
    /// (it wins where they differ); without an XSAVE area only the FXSAVE part changes, as for a state from the
    /// software CPU.
    /// </summary>
    private void SetExtendedState(ReadOnlySpan<byte> fx, byte[]? xsave)
    {
        if (_accel.HasXsave)
        {
            // Read-modify-write keeps KVM's MXCSR_MASK and any components not given; XSTATE_BV bits 0 and 1 say the
            // x87 and SSE parts are live rather than in their init state.
            var x = new KvmXsave();
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_XSAVE, &x), "KVM_GET_XSAVE");
            var region = new Span<byte>(x.Region, 4096);
            uint mxcsrMask = BinaryPrimitives.ReadUInt32LittleEndian(region[28..]);
            xsave?.CopyTo(region);
            fx[..512].CopyTo(region);
            BinaryPrimitives.WriteUInt32LittleEndian(region[28..], mxcsrMask);
            region[512] |= 3;
            CheckState(Libc.Ioctl(_fd, KvmAbi.SET_XSAVE, &x), "KVM_SET_XSAVE");
            return;
        }
        var fpu = FxsaveToFpu(fx);
        CheckState(Libc.Ioctl(_fd, KvmAbi.SET_FPU, &fpu), "KVM_SET_FPU");
    }

    private bool TryGetMsr(uint index, out ulong value)
    {
        var m = new KvmOneMsr { NMsrs = 1, Index = index };
        bool ok = Libc.Ioctl(_fd, KvmAbi.GET_MSRS, &m) == 1;
        value = m.Data;
        return ok;
    }

    private bool TrySetMsr(uint index, ulong value)
    {
        var m = new KvmOneMsr { NMsrs = 1, Index = index, Data = value };
        return Libc.Ioctl(_fd, KvmAbi.SET_MSRS, &m) == 1;
    }

    /// <summary>SDM descriptor bits 40..55 to kvm_segment's unpacked fields; KVM's "unusable" is !present.</summary>
    internal static KvmSegment ToKvm(in SegmentState s)
    {
        int a = s.Attributes;
        return new KvmSegment
        {
            Base = s.Base, Limit = s.Limit, Selector = s.Selector,
            Type = (byte)(a & 0xF), S = (byte)((a >> 4) & 1), Dpl = (byte)((a >> 5) & 3), Present = (byte)((a >> 7) & 1),
            Avl = (byte)((a >> 12) & 1), L = (byte)((a >> 13) & 1), Db = (byte)((a >> 14) & 1), G = (byte)((a >> 15) & 1),
            Unusable = (byte)(((a >> 7) & 1) ^ 1),
        };
    }

    internal static SegmentState FromKvm(in KvmSegment k)
    {
        bool present = k.Present != 0 && k.Unusable == 0;
        int a = (k.Type & 0xF) | ((k.S & 1) << 4) | ((k.Dpl & 3) << 5) | ((present ? 1 : 0) << 7)
                | ((k.Avl & 1) << 12) | ((k.L & 1) << 13) | ((k.Db & 1) << 14) | ((k.G & 1) << 15);
        return new SegmentState { Selector = k.Selector, Base = k.Base, Limit = k.Limit, Attributes = (ushort)a };
    }

    /// <summary>FXSAVE image (FCW FSW FTW FOP FIP FDP MXCSR, ST0-7 at 32, XMM0-15 at 160) to kvm_fpu.</summary>
    internal static KvmFpu FxsaveToFpu(ReadOnlySpan<byte> fx)
    {
        KvmFpu f = default;
        f.Fcw = BinaryPrimitives.ReadUInt16LittleEndian(fx[0..]);
        f.Fsw = BinaryPrimitives.ReadUInt16LittleEndian(fx[2..]);
        f.Ftwx = fx[4];
        f.LastOpcode = BinaryPrimitives.ReadUInt16LittleEndian(fx[6..]);
        f.LastIp = BinaryPrimitives.ReadUInt64LittleEndian(fx[8..]);
        f.LastDp = BinaryPrimitives.ReadUInt64LittleEndian(fx[16..]);
        f.Mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(fx[24..]);
        fx.Slice(32, 128).CopyTo(new Span<byte>(f.Fpr, 128));
        fx.Slice(160, 256).CopyTo(new Span<byte>(f.Xmm, 256));
        return f;
    }

    internal static void FpuToFxsave(in KvmFpu f, Span<byte> fx)
    {
        fx.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(fx[0..], f.Fcw);
        BinaryPrimitives.WriteUInt16LittleEndian(fx[2..], f.Fsw);
        fx[4] = f.Ftwx;
        BinaryPrimitives.WriteUInt16LittleEndian(fx[6..], f.LastOpcode);
        BinaryPrimitives.WriteUInt64LittleEndian(fx[8..], f.LastIp);
        BinaryPrimitives.WriteUInt64LittleEndian(fx[16..], f.LastDp);
        BinaryPrimitives.WriteUInt32LittleEndian(fx[24..], f.Mxcsr);
        BinaryPrimitives.WriteUInt32LittleEndian(fx[28..], 0xFFFF); // MXCSR_MASK (kvm_fpu has none): DAZ-capable, as every x86-64 host is
        fixed (byte* fpr = f.Fpr) new ReadOnlySpan<byte>(fpr, 128).CopyTo(fx.Slice(32, 128));
        fixed (byte* xmm = f.Xmm) new ReadOnlySpan<byte>(xmm, 256).CopyTo(fx.Slice(160, 256));
    }
}
