using System.Text.Json.Serialization;

namespace Dirigent.Machine.Accel;

/// <summary>A segment register with its hidden descriptor cache, laid out like KVM's kvm_segment.</summary>
public struct SegmentState
{
    public ushort Selector;
    public ulong Base;
    public uint Limit;
    /// <summary>Descriptor access rights as in the SDM's descriptor bits 40..55: type(4) S DPL(2) P | AVL L D/B G at bits 12..15.</summary>
    public ushort Attributes;

    [JsonIgnore] public readonly byte Type => (byte)(Attributes & 0xF);
    [JsonIgnore] public readonly bool S => (Attributes & 0x10) != 0;
    [JsonIgnore] public readonly int Dpl => (Attributes >> 5) & 3;
    [JsonIgnore] public readonly bool Present => (Attributes & 0x80) != 0;
    [JsonIgnore] public readonly bool L => (Attributes & 0x2000) != 0;
    [JsonIgnore] public readonly bool DB => (Attributes & 0x4000) != 0;
    [JsonIgnore] public readonly bool G => (Attributes & 0x8000) != 0;

    public static SegmentState RealMode(ushort selector) =>
        new() { Selector = selector, Base = (ulong)selector << 4, Limit = 0xFFFF, Attributes = 0x93 };
}

public struct TableRegister
{
    public ulong Base;
    public ushort Limit;
}

public enum Seg { ES = 0, CS = 1, SS = 2, DS = 3, FS = 4, GS = 5 }

/// <summary>What a vCPU is doing (KVM's mp_state, the SDM's activity state).</summary>
public enum VcpuActivity
{
    /// <summary>Executing instructions.</summary>
    Running,
    /// <summary>In HLT: resumes at the next instruction when an interrupt, NMI or INIT arrives.</summary>
    Halted,
    /// <summary>An application processor after INIT: waits for a STARTUP IPI (SIPI).</summary>
    WaitForSipi,
}

/// <summary>An exception raised but not yet delivered through the IDT (e.g. a vCPU stopped mid-delivery under KVM).</summary>
public struct PendingException
{
    public byte Vector;
    public bool HasErrorCode;
    public uint ErrorCode;
}

/// <summary>
/// The architectural state of one vCPU, accelerator-neutral. Loaders set it, snapshots save it, tests compare it.
/// Plain fields so it serializes as it is.
/// </summary>
public sealed class CpuState
{
    /// <summary>RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 in encoding order.</summary>
    public ulong[] Gpr = new ulong[16];
    public ulong Rip;
    public ulong Rflags = 0x2;
    /// <summary>Indexed by <see cref="Seg"/>.</summary>
    public SegmentState[] Segments = new SegmentState[6];
    public SegmentState Ldtr;
    public SegmentState Tr;
    public TableRegister Gdtr;
    public TableRegister Idtr;
    public ulong Cr0 = 0x6000_0010, Cr2, Cr3, Cr4, Cr8;
    public ulong Efer;
    public ulong[] Dr = new ulong[8];
    /// <summary>
    /// Model-specific registers other than EFER, by index. The guest TSC is IA32_TIME_STAMP_COUNTER (0x10), read at the
    /// moment of the save; restoring it makes the TSC continue from there on the VM clock.
    /// </summary>
    public Dictionary<uint, ulong> Msrs = new();
    /// <summary>x87/MMX/SSE state in the FXSAVE layout (512 bytes).</summary>
    public byte[] Fxsave = new byte[512];
    /// <summary>
    /// The whole XSAVE area (KVM's 4 KiB kvm_xsave region) when the accelerator has state beyond FXSAVE; null when
    /// <see cref="Fxsave"/> is everything. Its first 512 bytes repeat <see cref="Fxsave"/>, which wins when they differ.
    /// An accelerator without XSAVE ignores it (the guest was not offered components beyond SSE).
    /// </summary>
    public byte[]? Xsave;

    // ---- what a paused vCPU has besides registers (KVM_GET_VCPU_EVENTS / KVM_GET_MP_STATE) ----
    /// <summary>Running, halted (HLT) or waiting for a SIPI.</summary>
    public VcpuActivity Activity;
    /// <summary>The vector of a SIPI received while <see cref="VcpuActivity.WaitForSipi"/> (KVM's SIPI_RECEIVED), else -1.</summary>
    public int SipiVector = -1;
    /// <summary>STI or MOV SS/POP SS blocking: interrupts are held off until after the next instruction.</summary>
    public bool InterruptShadow;
    /// <summary>NMIs are blocked (an NMI handler runs and has not executed IRET yet).</summary>
    public bool NmiMasked;
    /// <summary>An NMI is latched and will be delivered when not masked.</summary>
    public bool NmiPending;
    /// <summary>
    /// External interrupt vectors accepted from the interrupt controller (or injected directly) but not yet delivered
    /// through the IDT; delivered before anything the controller still holds. Empty when none.
    /// </summary>
    public byte[] PendingInterrupts = [];
    /// <summary>An exception being delivered when the vCPU stopped; delivered first on resume.</summary>
    public PendingException? PendingException;

    /// <summary>16, 32 or 64: the code size the vCPU executes in (real mode 16; long mode with CS.L 64; else CS.D/B).</summary>
    [JsonIgnore]
    public int CodeBits
    {
        get
        {
            var cs = Segments[(int)Seg.CS];
            if ((Cr0 & 1) == 0) return 16;                // CR0.PE
            if ((Efer & 0x400) != 0 && cs.L) return 64;   // EFER.LMA
            return cs.DB ? 32 : 16;
        }
    }

    /// <summary>The state after RESET/INIT as the SDM's table 10-1 gives it, with CS:IP = F000:FFF0.</summary>
    public static CpuState Reset()
    {
        var s = new CpuState();
        for (int i = 0; i < 6; i++) s.Segments[i] = SegmentState.RealMode(0);
        s.Segments[(int)Seg.CS] = new SegmentState { Selector = 0xF000, Base = 0xFFFF_0000, Limit = 0xFFFF, Attributes = 0x9B };
        s.Rip = 0xFFF0;
        s.Gdtr.Limit = 0xFFFF;
        s.Idtr.Limit = 0xFFFF;
        s.Ldtr = new SegmentState { Limit = 0xFFFF, Attributes = 0x82 };
        s.Tr = new SegmentState { Limit = 0xFFFF, Attributes = 0x8B };
        s.Dr[6] = 0xFFFF0FF0;
        s.Dr[7] = 0x400;
        // FCW=0x37F and MXCSR=0x1F80 as after FNINIT / power-up.
        s.Fxsave[0] = 0x7F; s.Fxsave[1] = 0x03;
        s.Fxsave[24] = 0x80; s.Fxsave[25] = 0x1F;
        return s;
    }

    public CpuState Clone()
    {
        var c = (CpuState)MemberwiseClone();
        c.Gpr = (ulong[])Gpr.Clone();
        c.Segments = (SegmentState[])Segments.Clone();
        c.Dr = (ulong[])Dr.Clone();
        c.Msrs = new Dictionary<uint, ulong>(Msrs);
        c.Fxsave = (byte[])Fxsave.Clone();
        c.Xsave = (byte[]?)Xsave?.Clone();
        c.PendingInterrupts = (byte[])PendingInterrupts.Clone();
        return c;
    }
}
