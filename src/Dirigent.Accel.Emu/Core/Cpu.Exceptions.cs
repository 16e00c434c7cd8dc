using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    private static bool IsContributory(int v) => v is Vec.DE or Vec.TS or Vec.NP or Vec.SS or Vec.GP;

    /// <summary>
    /// Delivers an exception or interrupt through the IDT (IVT in real mode). RIP must already hold the address to
    /// push: the faulting instruction for faults, the next one for traps and INT n. Faults raised while delivering
    /// are combined per SDM table 6-5 (double fault); a fault while delivering #DF returns false (triple fault).
    /// </summary>
    /// <summary>Exceptions and interrupts delivered, by vector (statistics).</summary>
    public readonly ulong[] EventsDelivered = new ulong[256];

    public bool DeliverException(int vector, uint errorCode, bool hasError, bool softwareInt, bool external = false)
    {
        EventsDelivered[vector & 0xFF]++;
        if (_hooks.SyscallsArmed | _hooks.InterruptsArmed) HookDelivery(vector, errorCode, hasError, softwareInt, external);
        // The processor clears DR7.GD on entry to the #DB handler, so the handler may use the debug registers (SDM 17.2.4).
        if (vector == Vec.DB) Dr[7] &= ~Dr7GD;
        while (true)
        {
            // Delivery can fault half-way (a stack page not present); restore what it changed before retrying.
            ulong rsp = Gpr[RSP], rip = Rip, flags = Rflags;
            SegmentState cs = Sreg[CS], ss = Sreg[SS];
            try
            {
                DeliverOne(vector, errorCode, hasError, softwareInt, external || !softwareInt);
                if (vector == Vec.NMI && !softwareInt) _nmiBlocked = true;
                return true;
            }
            catch (CpuException nested)
            {
                // A fault while delivering INT n/INT3/INTO is reported at that instruction, not after it.
                Gpr[RSP] = rsp; Rip = softwareInt ? InstrIp : rip; Rflags = flags; Sreg[CS] = cs; Sreg[SS] = ss;
                UpdateMode();
                // The double-fault rules (SDM table 6-5) classify exceptions: INT n with n = 0, 8, 13, 14... is a software
                // interrupt, and a fault delivering it (a DPL-0 gate from CPL 3) is reported as itself, not as #DF.
                if (vector == Vec.DF && !softwareInt) return false;
                int second = nested.Vector;
                bool df = !softwareInt && ((IsContributory(vector) && IsContributory(second)) ||
                          (vector == Vec.PF && (second == Vec.PF || IsContributory(second))));
                if (df) { vector = Vec.DF; errorCode = 0; hasError = true; }
                else { vector = second; errorCode = nested.ErrorCode; hasError = nested.HasErrorCode; }
                softwareInt = false;
                external = false;
            }
        }
    }

    private void DeliverOne(int vector, uint errorCode, bool hasError, bool softwareInt, bool ext)
    {
        uint extBit = ext ? 1u : 0u;
        if (!ProtectedMode)
        {
            DeliverReal(vector);
            return;
        }
        if (IsV86Mode)
        {
            DeliverFromV86(vector, errorCode, hasError, softwareInt, extBit);
            return;
        }
        if (LongModeActive) DeliverLong(vector, errorCode, hasError, softwareInt, extBit);
        else DeliverProtected(vector, errorCode, hasError, softwareInt, extBit);
    }

    private void DeliverReal(int vector)
    {
        if ((ulong)vector * 4 + 3 > Idtr.Limit) throw new CpuException(Vec.GP, 0);
        ulong ent = ReadSystem(Idtr.Base + (ulong)vector * 4, 4);
        Push((ushort)Rflags, 2);
        Push(Sreg[CS].Selector, 2);
        Push((ushort)Rip, 2);
        _flags &= ~(IF | TF | AC | RF);
        SetCodeSegmentReal((ushort)(ent >> 16));
        Rip = ent & 0xFFFF;
    }

    /// <summary>Reads a gate and its target code-segment descriptor, with the checks common to both IDT formats.</summary>
    private (ushort sel, ulong desc) CheckGateTarget(ulong gateLow, int vector, int gateSize, bool softwareInt, uint extBit)
    {
        uint idtErr = (uint)(vector * 8 + 2) | extBit;
        int gateDpl = (int)((gateLow >> 45) & 3);
        if (softwareInt && gateDpl < Cpl) throw new CpuException(Vec.GP, idtErr);
        if (((gateLow >> 47) & 1) == 0) throw new CpuException(Vec.NP, idtErr);
        ushort sel = (ushort)(gateLow >> 16);
        if ((sel & 0xFFFC) == 0) throw new CpuException(Vec.GP, extBit);
        ulong d = ReadDescriptor(sel);
        var c = DescriptorToCache(sel, d);
        if (!c.S || (c.Type & 8) == 0 || c.Dpl > Cpl) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC) | extBit);
        if (!c.Present) throw new CpuException(Vec.NP, (uint)(sel & 0xFFFC) | extBit);
        _ = gateSize;
        return (sel, d);
    }

    private void DeliverProtected(int vector, uint errorCode, bool hasError, bool softwareInt, uint extBit)
    {
        if ((ulong)vector * 8 + 7 > Idtr.Limit) throw new CpuException(Vec.GP, (uint)(vector * 8 + 2) | extBit);
        ulong gate = ReadSystem(Idtr.Base + (ulong)vector * 8, 8);
        int type = (int)((gate >> 40) & 0xF);
        if (type == 0x5)
        {
            DeliverThroughTaskGate(gate, vector, errorCode, hasError, softwareInt, extBit);
            return;
        }
        if (type is not (0x6 or 0x7 or 0xE or 0xF))
            throw new CpuException(Vec.GP, (uint)(vector * 8 + 2) | extBit);
        bool is32 = (type & 8) != 0;
        bool trapGate = (type & 1) != 0;
        var (sel, desc) = CheckGateTarget(gate, vector, 8, softwareInt, extBit);
        var target = DescriptorToCache(sel, desc);
        ulong offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000);
        if (!is32) offset &= 0xFFFF;
        int psize = is32 ? 4 : 2;
        ulong oldFlags = Rflags;
        ushort oldCs = Sreg[CS].Selector;
        ulong oldRip = Rip;
        bool conforming = (target.Type & 4) != 0;
        int newCpl = conforming ? Cpl : target.Dpl;
        if (newCpl < Cpl)
        {
            ushort oldSs = Sreg[SS].Selector;
            ulong oldEsp = Gpr[RSP];
            var (ssSel, ssDesc, ssc, newEsp) = ReadInnerStack(newCpl, extBit);
            MarkDescriptorAccessed(ssSel, ssDesc);
            ssc.Attributes |= 1;
            SetCodeSegment(sel, desc, newCpl);
            Sreg[SS] = ssc;
            UpdateMode();
            Gpr[RSP] = ssc.DB ? (uint)newEsp : (Gpr[RSP] & ~0xFFFFUL) | (ushort)newEsp;
            Push(oldSs, psize);
            Push(oldEsp, psize);
        }
        else
        {
            SetCodeSegment(sel, desc, Cpl);
        }
        Push(oldFlags, psize);
        Push(oldCs, psize);
        Push(oldRip, psize);
        if (hasError) Push(errorCode, psize);
        _flags &= ~(TF | NT | RF | VM);
        if (!trapGate) _flags &= ~IF;
        Rip = offset;
    }

    private void DeliverLong(int vector, uint errorCode, bool hasError, bool softwareInt, uint extBit)
    {
        if ((ulong)vector * 16 + 15 > Idtr.Limit) throw new CpuException(Vec.GP, (uint)(vector * 8 + 2) | extBit);
        ulong lo = ReadSystem(Idtr.Base + (ulong)vector * 16, 8);
        ulong hi = ReadSystem(Idtr.Base + (ulong)vector * 16 + 8, 8);
        int type = (int)((lo >> 40) & 0xF);
        if (type is not (0xE or 0xF)) throw new CpuException(Vec.GP, (uint)(vector * 8 + 2) | extBit);
        var (sel, desc) = CheckGateTarget(lo, vector, 16, softwareInt, extBit);
        var target = DescriptorToCache(sel, desc);
        if (!target.L || target.DB) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC) | extBit);
        ulong offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | (hi << 32);
        int ist = (int)((lo >> 32) & 7);
        bool conforming = (target.Type & 4) != 0;
        int newCpl = conforming ? Cpl : target.Dpl;

        ulong oldFlags = Rflags, oldRip = Rip, oldRsp = Gpr[RSP];
        ushort oldCs = Sreg[CS].Selector, oldSs = Sreg[SS].Selector;
        ulong newRsp = oldRsp;
        if (newCpl < Cpl) newRsp = ReadSystem(Tr.Base + 4 + (ulong)(8 * newCpl), 8);
        if (ist != 0) newRsp = ReadSystem(Tr.Base + 0x24 + (ulong)(8 * (ist - 1)), 8);
        newRsp &= ~0xFUL;

        SetCodeSegment(sel, desc, newCpl);
        if (newCpl < (oldCs & 3))
            Sreg[SS] = new SegmentState { Selector = (ushort)newCpl, Attributes = (ushort)(0x93 | (newCpl << 5)) };
        UpdateMode();
        Gpr[RSP] = newRsp;
        Push(oldSs, 8);
        Push(oldRsp, 8);
        Push(oldFlags, 8);
        Push(oldCs, 8);
        Push(oldRip, 8);
        if (hasError) Push(errorCode, 8);
        _flags &= ~(TF | NT | RF | VM);
        if (type == 0xE) _flags &= ~IF;
        Rip = offset;
    }

    /// <summary>Raises #GP(0) (the common case for privileged instructions at CPL&gt;0).</summary>
    public static CpuException GP0() => new(Vec.GP, 0);
    public static CpuException UD() => new(Vec.UD);

    /// <summary>Privileged instructions: #GP(0) unless CPL is 0.</summary>
    public void RequireCpl0()
    {
        if (Cpl != 0) throw new CpuException(Vec.GP, 0);
    }
}
