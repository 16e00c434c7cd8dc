using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>What started a hardware task switch: it decides the busy bits, NT and the previous-task link (SDM table 7-2).</summary>
public enum TaskSwitchSource { Jmp, Call, Iret, Interrupt }

/// <summary>
/// Hardware task switching (SDM vol. 3 §7.3) in legacy protected mode: far JMP/CALL to a TSS or a task gate, an
/// interrupt or exception through a task gate, and IRET with NT=1 back to the previous task. Long mode has none
/// (far transfers to TSS selectors raise #GP there, IRET with NT=1 raises #GP(0)). Old guests (and BIOS-era
/// double-fault handlers) use it; Linux does not.
/// </summary>
/// <remarks>
/// Everything that can fault in the old task's context (privilege, presence, limits, busy bits, and every read of
/// the new TSS) is done before any state changes, so such a fault is precise. From the point the new task's
/// registers are loaded, faults (segment descriptors that fail their checks, the error-code push, an EIP beyond
/// the CS limit) are taken in the new task's context, as the SDM says — delivered here, with the new task's CS:EIP.
/// A new task with EFLAGS.VM=1 runs in virtual-8086 mode (Cpu.V86.cs).
/// </remarks>
public sealed partial class Cpu
{
    private const int Tss32MinLimit = 0x67, Tss16MinLimit = 0x2B;
    private static readonly int[] DataSegments = [ES, DS, FS, GS];

    /// <summary>
    /// Switches to the task whose TSS descriptor is <paramref name="desc"/> (selector <paramref name="sel"/>, in the
    /// GDT; its type, presence and privilege already checked by the caller). RIP holds the old task's EIP to save.
    /// An <paramref name="errorCode"/> is pushed on the new task's stack (an exception through a task gate).
    /// </summary>
    public void TaskSwitch(ushort sel, ulong desc, TaskSwitchSource src, uint? errorCode = null)
    {
        var nt = DescriptorToCache(sel, desc);
        bool new32 = (nt.Type & 8) != 0;
        bool busy = (nt.Type & 2) != 0;
        uint tsErr = (uint)(sel & 0xFFFC);
        if (src == TaskSwitchSource.Iret ? !busy : busy) throw new CpuException(src == TaskSwitchSource.Iret ? Vec.TS : Vec.GP, tsErr);
        if (nt.Limit < (new32 ? Tss32MinLimit : Tss16MinLimit)) throw new CpuException(Vec.TS, tsErr);
        var old = Tr;
        bool old32 = (old.Type & 8) != 0;
        if (old.Limit < (old32 ? Tss32MinLimit : Tss16MinLimit)) throw new CpuException(Vec.TS, (uint)(old.Selector & 0xFFFC));

        // The new task's state, read completely before anything changes (a #PF here is in the old task's context).
        Span<uint> gpr = stackalloc uint[8];
        Span<ushort> sregs = stackalloc ushort[6];
        uint eip, eflags, cr3 = 0;
        ushort ldt;
        bool debugTrap = false;
        ulong b = nt.Base;
        if (new32)
        {
            cr3 = (uint)ReadSystem(b + 0x1C, 4);
            eip = (uint)ReadSystem(b + 0x20, 4);
            eflags = (uint)ReadSystem(b + 0x24, 4);
            for (int r = 0; r < 8; r++) gpr[r] = (uint)ReadSystem(b + 0x28 + (ulong)(4 * r), 4);
            for (int s = 0; s < 6; s++) sregs[s] = (ushort)ReadSystem(b + 0x48 + (ulong)(4 * s), 2);
            ldt = (ushort)ReadSystem(b + 0x60, 2);
            debugTrap = (ReadSystem(b + 0x64, 2) & 1) != 0;
        }
        else
        {
            // A 16-bit TSS holds the low halves; the high halves read as ones (what Bochs and QEMU load). No FS/GS.
            eip = (ushort)ReadSystem(b + 0x0E, 2);
            eflags = (ushort)ReadSystem(b + 0x10, 2);
            for (int r = 0; r < 8; r++) gpr[r] = 0xFFFF_0000u | (ushort)ReadSystem(b + 0x12 + (ulong)(2 * r), 2);
            for (int s = 0; s < 4; s++) sregs[s] = (ushort)ReadSystem(b + 0x22 + (ulong)(2 * s), 2);
            sregs[FS] = sregs[GS] = 0;
            ldt = (ushort)ReadSystem(b + 0x2A, 2);
        }

        // The old task's state goes to its TSS (IRET saves its EFLAGS with NT clear), then the busy bits and link.
        ulong oflags = Rflags;
        if (src == TaskSwitchSource.Iret) oflags &= ~NT;
        ulong ob = old.Base;
        if (old32)
        {
            WriteSystem(ob + 0x20, 4, (uint)Rip);
            WriteSystem(ob + 0x24, 4, (uint)oflags);
            for (int r = 0; r < 8; r++) WriteSystem(ob + 0x28 + (ulong)(4 * r), 4, (uint)Gpr[r]);
            for (int s = 0; s < 6; s++) WriteSystem(ob + 0x48 + (ulong)(4 * s), 2, Sreg[s].Selector);
        }
        else
        {
            WriteSystem(ob + 0x0E, 2, (ushort)Rip);
            WriteSystem(ob + 0x10, 2, (ushort)oflags);
            for (int r = 0; r < 8; r++) WriteSystem(ob + 0x12 + (ulong)(2 * r), 2, (ushort)Gpr[r]);
            for (int s = 0; s < 4; s++) WriteSystem(ob + 0x22 + (ulong)(2 * s), 2, Sreg[s].Selector);
        }
        if (src is TaskSwitchSource.Jmp or TaskSwitchSource.Iret) SetTssBusy(old.Selector, false);
        if (src is TaskSwitchSource.Call or TaskSwitchSource.Interrupt)
        {
            WriteSystem(b, 2, old.Selector);
            eflags |= (uint)NT;
        }
        if (src != TaskSwitchSource.Iret) SetTssBusy(sel, true);

        // From here on the new task runs: TR, CR0.TS, CR3, registers, flags, EIP.
        nt.Attributes |= 2;
        Tr = nt;
        Cr0 |= Cr0TS;
        if (new32 && (Cr0 & Cr0PG) != 0) WriteCr3(cr3);
        for (int r = 0; r < 8; r++) Gpr[r] = gpr[r];
        Rflags = eflags;
        Rip = eip;
        if ((eflags & VM) != 0)
        {
            // A virtual-8086 task: real-mode segments, CPL 3; only its LDT is checked.
            Ldtr = new SegmentState { Selector = ldt };
            try { LoadTaskLdt(ldt); }
            catch (CpuException fault) { EnterV86(eip, eflags, gpr[RSP], sregs); DeliverTaskFault(fault, sel); return; }
            EnterV86(eip, eflags, gpr[RSP], sregs);
            EndBlock();
            if (debugTrap) RaiseDebugException(Dr6BT);
            return;
        }
        // The selectors are in place at once (a fault below shows them); the caches become usable as each loads.
        for (int s = 0; s < 6; s++) Sreg[s] = new SegmentState { Selector = sregs[s] };
        Ldtr = new SegmentState { Selector = ldt };
        int cpl = sregs[CS] & 3;
        // CPL is the new CS's RPL from the start (SS and the data segments are checked against it).
        Sreg[CS] = new SegmentState { Selector = sregs[CS], Attributes = 0x9B, Limit = 0xFFFF, };
        try
        {
            LoadTaskLdt(ldt);
            LoadTaskCode(sregs[CS]);
            LoadTaskStack(sregs[SS], cpl);
            foreach (int s in DataSegments) LoadTaskData(s, sregs[s], cpl);
            if (errorCode is { } ec) Push(ec, new32 ? 4 : 2);
            if (Rip > Sreg[CS].Limit) throw GP0();
        }
        catch (CpuException fault)
        {
            UpdateMode();
            DeliverTaskFault(fault, sel);
            return;
        }
        UpdateMode();
        if (InterruptsEnabled) OnInterruptsMaybeEnabled();
        EndBlock();
        // The TSS's T flag: a debug trap before the new task's first instruction, with DR6.BT (SDM 17.2.3).
        if (debugTrap) RaiseDebugException(Dr6BT);
    }

    /// <summary>A fault after the switch is the new task's: delivered with its CS:EIP (SDM 7.3, step 12).</summary>
    /// <summary>
    /// The stack for privilege level <paramref name="cpl"/> from the current TSS (SSn:ESPn of a 32-bit TSS, SSn:SPn
    /// of a 16-bit one), with the checks of an inter-privilege CALL or interrupt (SDM 5.8.5, 6.12.1): #TS(TSS) when
    /// the TSS is too short to hold that entry; #TS(SS) for a null selector, RPL or DPL other than the CPL, or a
    /// segment that is not writable data; #SS(SS) when not present. Error codes carry <paramref name="extBit"/>.
    /// Nothing is changed: the caller marks SS accessed and loads it once the rest of its checks passed.
    /// </summary>
    internal (ushort Selector, ulong Descriptor, SegmentState Cache, ulong Sp) ReadInnerStack(int cpl, uint extBit)
    {
        bool tss32 = (Tr.Type & 8) != 0;
        // The entry's last byte: SSn ends at 8n+9 (32-bit) or 4n+5 (16-bit); the TSS limit is its last valid offset.
        uint last = tss32 ? (uint)(8 * cpl + 9) : (uint)(4 * cpl + 5);
        if (last > Tr.Limit) throw new CpuException(Vec.TS, (uint)(Tr.Selector & 0xFFFC) | extBit);
        ulong sp = tss32 ? ReadSystem(Tr.Base + 4 + (ulong)(8 * cpl), 4) : ReadSystem(Tr.Base + 2 + (ulong)(4 * cpl), 2);
        ushort ssSel = (ushort)(tss32 ? ReadSystem(Tr.Base + 8 + (ulong)(8 * cpl), 2) : ReadSystem(Tr.Base + 4 + (ulong)(4 * cpl), 2));
        uint ssErr = (uint)(ssSel & 0xFFFC) | extBit;
        if ((ssSel & 0xFFFC) == 0 || (ssSel & 3) != cpl) throw new CpuException(Vec.TS, ssErr);
        ulong ssDesc = ReadDescriptor(ssSel);
        var ssc = DescriptorToCache(ssSel, ssDesc);
        if (!ssc.S || (ssc.Type & 8) != 0 || (ssc.Type & 2) == 0 || ssc.Dpl != cpl) throw new CpuException(Vec.TS, ssErr);
        if (!ssc.Present) throw new CpuException(Vec.SS, ssErr);
        return (ssSel, ssDesc, ssc, sp);
    }

    private void DeliverTaskFault(CpuException fault, ushort tssSel)
    {
        if (!DeliverException(fault.Vector, fault.ErrorCode, fault.HasErrorCode, softwareInt: false))
            throw new TripleFaultException($"triple fault in a task switch to TSS {tssSel:x4}");
        EndBlock();
    }

    private void SetTssBusy(ushort sel, bool busy)
    {
        ulong at = DescriptorAddress(sel) + 5;
        byte access = (byte)ReadSystem(at, 1);
        WriteSystem(at, 1, busy ? (byte)(access | 2) : (byte)(access & ~2));
    }

    private void LoadTaskLdt(ushort ldt)
    {
        if ((ldt & 0xFFFC) == 0) return; // a null LDT selector leaves LDTR unusable
        uint err = (uint)(ldt & 0xFFFC);
        if ((ldt & 4) != 0 || (ldt | 7) > Gdtr.Limit) throw new CpuException(Vec.TS, err);
        var s = DescriptorToCache(ldt, ReadSystem(Gdtr.Base + (ulong)(ldt & ~7), 8));
        if (s.S || s.Type != 2) throw new CpuException(Vec.TS, err);
        if (!s.Present) throw new CpuException(Vec.TS, err);
        Ldtr = s;
    }

    /// <summary>A selector of the new task: null, or outside its table, is #TS(selector) (SDM table 7-1).</summary>
    private ulong ReadTaskDescriptor(ushort sel)
    {
        uint err = (uint)(sel & 0xFFFC);
        uint idx = (uint)(sel & ~7);
        if ((sel & 4) != 0) { if (!Ldtr.Present || idx + 7 > Ldtr.Limit) throw new CpuException(Vec.TS, err); }
        else if (idx + 7 > Gdtr.Limit) throw new CpuException(Vec.TS, err);
        return ReadDescriptor(sel);
    }

    private void LoadTaskCode(ushort sel)
    {
        uint err = (uint)(sel & 0xFFFC);
        if ((sel & 0xFFFC) == 0) throw new CpuException(Vec.TS, err);
        ulong d = ReadTaskDescriptor(sel);
        var c = DescriptorToCache(sel, d);
        int rpl = sel & 3;
        if (!c.S || (c.Type & 8) == 0) throw new CpuException(Vec.TS, err);
        bool conforming = (c.Type & 4) != 0;
        if (conforming ? c.Dpl > rpl : c.Dpl != rpl) throw new CpuException(Vec.TS, err);
        if (!c.Present) throw new CpuException(Vec.NP, err);
        MarkDescriptorAccessed(sel, d);
        SetCodeSegment(sel, d, rpl);
    }

    private void LoadTaskStack(ushort sel, int cpl)
    {
        uint err = (uint)(sel & 0xFFFC);
        if ((sel & 0xFFFC) == 0) throw new CpuException(Vec.TS, err);
        ulong d = ReadTaskDescriptor(sel);
        var c = DescriptorToCache(sel, d);
        if (!c.S || (c.Type & 8) != 0 || (c.Type & 2) == 0 || (sel & 3) != cpl || c.Dpl != cpl) throw new CpuException(Vec.TS, err);
        if (!c.Present) throw new CpuException(Vec.SS, err);
        MarkDescriptorAccessed(sel, d);
        c.Attributes |= 1;
        Sreg[SS] = c;
        UpdateMode();
    }

    private void LoadTaskData(int seg, ushort sel, int cpl)
    {
        if ((sel & 0xFFFC) == 0) return;
        uint err = (uint)(sel & 0xFFFC);
        ulong d = ReadTaskDescriptor(sel);
        var c = DescriptorToCache(sel, d);
        bool code = (c.Type & 8) != 0;
        if (!c.S || (code && (c.Type & 2) == 0)) throw new CpuException(Vec.TS, err);
        bool conformingCode = code && (c.Type & 4) != 0;
        if (!conformingCode && (c.Dpl < cpl || c.Dpl < (sel & 3))) throw new CpuException(Vec.TS, err);
        if (!c.Present) throw new CpuException(Vec.NP, err);
        MarkDescriptorAccessed(sel, d);
        c.Attributes |= 1;
        Sreg[seg] = c;
    }

    /// <summary>
    /// The TSS a JMP/CALL (through a task gate or directly) or a task gate in the IDT names: it must be in the GDT,
    /// not busy and present. Returns its descriptor.
    /// </summary>
    public ulong ReadTargetTss(ushort tssSel, uint extBit = 0)
    {
        uint err = (uint)(tssSel & 0xFFFC) | extBit;
        if ((tssSel & 4) != 0 || (tssSel | 7) > Gdtr.Limit) throw new CpuException(Vec.GP, err);
        ulong d = ReadSystem(Gdtr.Base + (ulong)(tssSel & ~7), 8);
        var t = DescriptorToCache(tssSel, d);
        if (t.S || t.Type is not (1 or 9)) throw new CpuException(Vec.GP, err);
        if (!t.Present) throw new CpuException(Vec.NP, err);
        return d;
    }

    /// <summary>
    /// An interrupt or exception through a task gate in the IDT (from protected or V86 mode): the handler is a task of
    /// its own; an error code goes on that task's stack (SDM 6.12.2).
    /// </summary>
    private void DeliverThroughTaskGate(ulong gate, int vector, uint errorCode, bool hasError, bool softwareInt, uint extBit)
    {
        uint idtErr = (uint)(vector * 8 + 2) | extBit;
        if (softwareInt && (int)((gate >> 45) & 3) < Cpl) throw new CpuException(Vec.GP, idtErr);
        if (((gate >> 47) & 1) == 0) throw new CpuException(Vec.NP, idtErr);
        ushort tss = (ushort)(gate >> 16);
        TaskSwitch(tss, ReadTargetTss(tss, extBit), TaskSwitchSource.Interrupt, hasError ? errorCode : null);
    }

    /// <summary>IRET with NT=1 in protected mode: back to the task in the current TSS's previous-task link.</summary>
    public void TaskReturn()
    {
        ushort link = (ushort)ReadSystem(Tr.Base, 2);
        uint err = (uint)(link & 0xFFFC);
        if ((link & 4) != 0 || (link & 0xFFFC) == 0 || (link | 7) > Gdtr.Limit) throw new CpuException(Vec.TS, err);
        ulong d = ReadSystem(Gdtr.Base + (ulong)(link & ~7), 8);
        var t = DescriptorToCache(link, d);
        if (t.S || t.Type is not (3 or 0xB)) throw new CpuException(Vec.TS, err);
        if (!t.Present) throw new CpuException(Vec.NP, err);
        TaskSwitch(link, d, TaskSwitchSource.Iret);
    }
}
