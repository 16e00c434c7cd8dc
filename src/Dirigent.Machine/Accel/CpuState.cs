namespace Dirigent.Machine.Accel;

/// <summary>A segment register with its hidden descriptor cache, laid out like KVM's kvm_segment.</summary>
public struct SegmentState
{
    public ushort Selector;
    public ulong Base;
    public uint Limit;
    /// <summary>Descriptor access rights as in the SDM's descriptor bits 40..55: type(4) S DPL(2) P | AVL L D/B G at bits 12..15.</summary>
    public ushort Attributes;

    public readonly byte Type => (byte)(Attributes & 0xF);
    public readonly bool S => (Attributes & 0x10) != 0;
    public readonly int Dpl => (Attributes >> 5) & 3;
    public readonly bool Present => (Attributes & 0x80) != 0;
    public readonly bool L => (Attributes & 0x2000) != 0;
    public readonly bool DB => (Attributes & 0x4000) != 0;
    public readonly bool G => (Attributes & 0x8000) != 0;

    public static SegmentState RealMode(ushort selector) =>
        new() { Selector = selector, Base = (ulong)selector << 4, Limit = 0xFFFF, Attributes = 0x93 };
}

public struct TableRegister
{
    public ulong Base;
    public ushort Limit;
}

public enum Seg { ES = 0, CS = 1, SS = 2, DS = 3, FS = 4, GS = 5 }

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
    /// <summary>Model-specific registers other than EFER, by index.</summary>
    public Dictionary<uint, ulong> Msrs = new();
    /// <summary>x87/MMX/SSE state in the FXSAVE layout (512 bytes).</summary>
    public byte[] Fxsave = new byte[512];

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
        return c;
    }
}
