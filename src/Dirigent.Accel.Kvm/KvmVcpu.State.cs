using System.Buffers.Binary;
using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Kvm;

/// <summary>Translation between <see cref="CpuState"/> and KVM's register structures.</summary>
public sealed unsafe partial class KvmVcpu
{
    /// <summary>kvm_regs slot of each GPR in encoding order (RAX RCX RDX RBX RSP RBP RSI RDI R8..R15).</summary>
    private static readonly int[] s_gprSlot = [0, 2, 3, 1, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];

    private const uint MsrTsc = 0x10, MsrApicBase = 0x1B, MsrEfer = 0xC000_0080, MsrFsBase = 0xC000_0100, MsrGsBase = 0xC000_0101;

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
        GetFxsave(s.Fxsave);
        return s;
    }

    public void SetState(CpuState state)
    {
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
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_SREGS, &sregs), "KVM_SET_SREGS");
        if (_accel.IrqChip != null)
        {
            // With the in-kernel LAPIC a HLT leaves the vCPU HALTED in KVM (it would wait for an interrupt before running
            // the new state); a state we set is one that runs, as with the software CPU.
            uint mp = KvmAbi.MP_STATE_RUNNABLE;
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_MP_STATE, &mp), "KVM_SET_MP_STATE");
        }
        // Without an in-kernel LAPIC every KVM_RUN loads CR8 from kvm_run.cr8 (last exit's value): keep it in step.
        _run->Cr8 = state.Cr8;

        KvmRegs regs;
        for (int i = 0; i < 16; i++) regs.R[s_gprSlot[i]] = state.Gpr[i];
        regs.Rip = state.Rip;
        regs.Rflags = state.Rflags | 2;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_REGS, &regs), "KVM_SET_REGS");

        SetFxsave(state.Fxsave);

        KvmDebugRegs dbg = default;
        for (int i = 0; i < 4; i++) dbg.Db[i] = state.Dr[i];
        dbg.Dr6 = state.Dr[6];
        dbg.Dr7 = state.Dr[7];
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_DEBUGREGS, &dbg), "KVM_SET_DEBUGREGS");

        // MSRs one by one: KVM_SET_MSRS stops at the first it rejects, and an MSR KVM does not model (the software
        // CPU keeps any the guest writes) must not keep the others from being set. Those live in sregs are skipped.
        _extraMsrs.Clear();
        foreach (var (idx, value) in state.Msrs)
        {
            if (idx is MsrApicBase or MsrEfer or MsrFsBase or MsrGsBase) continue;
            if (TrySetMsr(idx, value) && Array.IndexOf(s_reportedMsrs, idx) < 0) _extraMsrs.Add(idx);
        }
    }

    /// <summary>
    /// x87/SSE state goes through KVM_GET/SET_XSAVE, whose first 512 bytes are exactly the FXSAVE image. KVM_GET_FPU
    /// is the fallback only: on this project's test host (a PVM kernel) it reports MXCSR as 0 while XSAVE has 0x1F80.
    /// </summary>
    private void GetFxsave(Span<byte> fx)
    {
        if (_accel.HasXsave)
        {
            var x = new KvmXsave();
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_XSAVE, &x), "KVM_GET_XSAVE");
            new ReadOnlySpan<byte>(x.Region, 512).CopyTo(fx);
            return;
        }
        KvmFpu fpu;
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_FPU, &fpu), "KVM_GET_FPU");
        FpuToFxsave(in fpu, fx);
    }

    private void SetFxsave(ReadOnlySpan<byte> fx)
    {
        if (_accel.HasXsave)
        {
            // Read-modify-write keeps KVM's MXCSR_MASK and any other components; XSTATE_BV bits 0 and 1 say the x87
            // and SSE parts are live rather than in their init state.
            var x = new KvmXsave();
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.GET_XSAVE, &x), "KVM_GET_XSAVE");
            var region = new Span<byte>(x.Region, 4096);
            uint mxcsrMask = BinaryPrimitives.ReadUInt32LittleEndian(region[28..]);
            fx[..512].CopyTo(region);
            BinaryPrimitives.WriteUInt32LittleEndian(region[28..], mxcsrMask);
            region[512] |= 3;
            KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_XSAVE, &x), "KVM_SET_XSAVE");
            return;
        }
        var fpu = FxsaveToFpu(fx);
        KvmAccelerator.Check(Libc.Ioctl(_fd, KvmAbi.SET_FPU, &fpu), "KVM_SET_FPU");
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
