using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// Virtual-8086 mode (SDM vol. 3 ch. 20) without the VME extensions (CPUID does not offer VME): entered by IRET from
/// CPL 0 with VM=1 in the popped EFLAGS or by a task switch to a task whose EFLAGS has VM=1; left by an interrupt or
/// exception, which goes to a CPL-0 handler through the protected-mode IDT. In V86 mode code runs at CPL 3 with
/// real-mode segments (selector × 16, 64 KiB limits); CLI, STI, PUSHF, POPF, INT n and IRET are IOPL-sensitive
/// (#GP(0) below IOPL 3, so a monitor can emulate them); IN/OUT always consult the TSS I/O bitmap.
/// </summary>
public sealed partial class Cpu
{
    /// <summary>V86 segment caches: base = selector × 16, limit 64 KiB, present, DPL 3, read/write (SDM 20.1.1).</summary>
    private void LoadV86Segment(int seg, ushort sel) =>
        Sreg[seg] = new SegmentState { Selector = sel, Base = (ulong)sel << 4, Limit = 0xFFFF, Attributes = seg == CS ? (ushort)0xFB : (ushort)0xF3 };

    /// <summary>Enters V86 mode with the given registers (IRET's RETURN-TO-VIRTUAL-8086-MODE, or a task switch).</summary>
    public void EnterV86(uint eip, uint eflags, uint esp, ReadOnlySpan<ushort> sregs)
    {
        Rflags = eflags | VM;
        for (int s = 0; s < 6; s++) LoadV86Segment(s, sregs[s]);
        Gpr[RSP] = esp;
        Rip = eip & 0xFFFF;
        UpdateMode();
        if (InterruptsEnabled) OnInterruptsMaybeEnabled();
    }

    /// <summary>
    /// An interrupt or exception in V86 mode (SDM 6.12.1, "interrupted procedure in virtual-8086 mode"): through an
    /// interrupt or trap gate to a non-conforming CPL-0 code segment, on the CPL-0 stack from the TSS; pushes GS, FS,
    /// DS, ES, SS, ESP, EFLAGS, CS, EIP (and the error code), then leaves DS, ES, FS and GS null. A task gate
    /// switches tasks as from protected mode (the old task's EFLAGS keep VM=1 in its TSS).
    /// </summary>
    private void DeliverFromV86(int vector, uint errorCode, bool hasError, bool softwareInt, uint extBit)
    {
        uint idtErr = (uint)(vector * 8 + 2) | extBit;
        if ((ulong)vector * 8 + 7 > Idtr.Limit) throw new CpuException(Vec.GP, idtErr);
        ulong gate = ReadSystem(Idtr.Base + (ulong)vector * 8, 8);
        int type = (int)((gate >> 40) & 0xF);
        if (type == 0x5)
        {
            DeliverThroughTaskGate(gate, vector, errorCode, hasError, softwareInt, extBit);
            return;
        }
        if (type is not (0x6 or 0x7 or 0xE or 0xF)) throw new CpuException(Vec.GP, idtErr);
        var (sel, desc) = CheckGateTarget(gate, vector, 8, softwareInt, extBit);
        var target = DescriptorToCache(sel, desc);
        // Only a CPL-0 handler can take it: it must reload the data segments that were real-mode values.
        if ((target.Type & 4) != 0 || target.Dpl != 0) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC) | extBit);
        bool is32 = (type & 8) != 0;
        int psize = is32 ? 4 : 2;
        ulong offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000);
        if (!is32) offset &= 0xFFFF;

        var (ssSel, ssDesc, ssc, newEsp) = ReadInnerStack(0, extBit);

        ulong oldFlags = Rflags, oldEsp = Gpr[RSP], oldRip = Rip;
        ushort oldCs = Sreg[CS].Selector, oldSs = Sreg[SS].Selector;
        ushort oldEs = Sreg[ES].Selector, oldDs = Sreg[DS].Selector, oldFs = Sreg[FS].Selector, oldGs = Sreg[GS].Selector;
        // Leave V86 first: the pushes below are protected-mode stack accesses at CPL 0. (A fault in them restores
        // EFLAGS, and with it V86 mode, in DeliverException.)
        _flags &= ~(VM | TF | NT | RF);
        if ((type & 1) == 0) _flags &= ~IF;
        MarkDescriptorAccessed(ssSel, ssDesc);
        ssc.Attributes |= 1;
        SetCodeSegment(sel, desc, 0);
        Sreg[SS] = ssc;
        UpdateMode();
        Gpr[RSP] = ssc.DB ? (uint)newEsp : (Gpr[RSP] & ~0xFFFFUL) | (ushort)newEsp;
        Push(oldGs, psize);
        Push(oldFs, psize);
        Push(oldDs, psize);
        Push(oldEs, psize);
        Push(oldSs, psize);
        Push(oldEsp, psize);
        Push(oldFlags, psize);
        Push(oldCs, psize);
        Push(oldRip, psize);
        if (hasError) Push(errorCode, psize);
        foreach (int s in DataSegments) Sreg[s] = new SegmentState { Selector = 0 };
        Rip = offset;
    }
}
