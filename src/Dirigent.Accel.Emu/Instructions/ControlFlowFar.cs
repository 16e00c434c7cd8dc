using Dirigent.Machine.Accel;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// Far JMP/CALL/RET through code segments and call gates, INT n/INT3/INTO/INT1, IRET, UD2 (SDM vol. 2 and 3 ch. 5-6).
/// Task switches (TSS and task-gate targets, IRET with NT=1 outside long mode) go to <see cref="Cpu.TaskSwitch"/>.
/// Virtual-8086 mode is not implemented: IRET or a task switch into it raises #GP(0) (CPUID does not offer VME).
/// </summary>
internal static unsafe class ControlFlowFar
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&JmpFarPtr, Code.Jmp_ptr1616, Code.Jmp_ptr1632);
        r.Add(&JmpFarMem, Code.Jmp_m1616, Code.Jmp_m1632, Code.Jmp_m1664);
        r.Add(&CallFarPtr, Code.Call_ptr1616, Code.Call_ptr1632);
        r.Add(&CallFarMem, Code.Call_m1616, Code.Call_m1632, Code.Call_m1664);
        r.Add(&RetFar, Code.Retfw, Code.Retfd, Code.Retfq, Code.Retfw_imm16, Code.Retfd_imm16, Code.Retfq_imm16);
        r.Add(&Iret, Code.Iretw, Code.Iretd, Code.Iretq);
        r.Add(&IntN, Code.Int_imm8);
        r.Add(&Int3, Code.Int3);
        r.Add(&Into, Code.Into);
        r.Add(&Int1, Code.Int1);
        r.Add(&Ud2, Code.Ud2);
    }

    // ---------------- shared helpers ----------------

    /// <summary>State a far transfer may change before a later check faults; restored so the fault is precise.</summary>
    private struct Saved
    {
        public SegmentState Cs, Ss;
        public ulong Rsp;

        public static Saved Take(Cpu c) => new() { Cs = c.Sreg[Cpu.CS], Ss = c.Sreg[Cpu.SS], Rsp = c.Gpr[Cpu.RSP] };

        public readonly void Restore(Cpu c)
        {
            c.Sreg[Cpu.CS] = Cs;
            c.Sreg[Cpu.SS] = Ss;
            c.Gpr[Cpu.RSP] = Rsp;
            c.UpdateMode();
        }
    }

    private static CpuException GPSel(ushort sel) => new(Vec.GP, (uint)(sel & 0xFFFC));
    private static CpuException NPSel(ushort sel) => new(Vec.NP, (uint)(sel & 0xFFFC));

    private static int FarOpSize(Code code) => code switch
    {
        Code.Jmp_ptr1616 or Code.Jmp_m1616 or Code.Call_ptr1616 or Code.Call_m1616 or Code.Retfw or Code.Retfw_imm16 or Code.Iretw => 2,
        Code.Jmp_m1664 or Code.Call_m1664 or Code.Retfq or Code.Retfq_imm16 or Code.Iretq => 8,
        _ => 4,
    };

    private static void ReadFarPointer(Cpu c, ref Instruction i, int os, out ushort sel, out ulong off)
    {
        ulong la = c.MemLinear(ref i, os + 2, false);
        off = c.ReadLinear(la, os);
        sel = (ushort)c.ReadLinear(c.Is64BitMode ? la + (ulong)os : (uint)(la + (ulong)os), 2);
    }

    /// <summary>The new RIP must be canonical for 64-bit code and within the CS limit otherwise.</summary>
    private static void CheckTarget(Cpu c, ulong off)
    {
        if (c.Is64BitMode) { if (!Cpu.IsCanonical(off)) throw Cpu.GP0(); }
        else if (off > c.Sreg[Cpu.CS].Limit) throw Cpu.GP0();
    }

    /// <summary>Checks of a code-segment descriptor reached directly by JMP/CALL (SDM 5.8.1).</summary>
    private static void CheckDirectCode(Cpu c, ushort sel, SegmentState s)
    {
        if ((s.Type & 8) == 0) throw GPSel(sel);
        bool conforming = (s.Type & 4) != 0;
        if (conforming ? s.Dpl > c.Cpl : (sel & 3) > c.Cpl || s.Dpl != c.Cpl) throw GPSel(sel);
        if (!s.Present) throw NPSel(sel);
        if (c.LongModeActive && s.L && s.DB) throw GPSel(sel);
    }

    /// <summary>A call gate's target: selector, offset and descriptor, with the gate and target checks.</summary>
    private static void ReadCallGate(Cpu c, ushort gateSel, ulong gate, out ushort tsel, out ulong toff, out ulong tdesc,
        out int gateSize, out int paramCount)
    {
        int type = (int)((gate >> 40) & 0xF);
        bool lm = c.LongModeActive;
        if (!(type == 0xC || (type == 4 && !lm)))
            throw GPSel(gateSel); // an LDT, or a TSS/task gate in long mode (no task switching there)
        int gateDpl = (int)((gate >> 45) & 3);
        if (gateDpl < c.Cpl || gateDpl < (gateSel & 3)) throw GPSel(gateSel);
        if (((gate >> 47) & 1) == 0) throw NPSel(gateSel);
        tsel = (ushort)(gate >> 16);
        toff = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000);
        paramCount = (int)((gate >> 32) & 0x1F);
        gateSize = lm ? 8 : type == 0xC ? 4 : 2;
        if (type == 4) toff &= 0xFFFF;
        if (lm)
        {
            ulong hi = c.ReadSystem(c.DescriptorAddress(gateSel, 16) + 8, 8);
            if (((hi >> 40) & 0x1F) != 0) throw GPSel(gateSel);
            toff |= (hi & 0xFFFF_FFFF) << 32;
            paramCount = 0;
        }
        if ((tsel & 0xFFFC) == 0) throw Cpu.GP0();
        tdesc = c.ReadDescriptor(tsel);
        var t = Cpu.DescriptorToCache(tsel, tdesc);
        if (!t.S || (t.Type & 8) == 0 || t.Dpl > c.Cpl) throw GPSel(tsel);
        if (!t.Present) throw NPSel(tsel);
        if (lm && (!t.L || t.DB)) throw GPSel(tsel);
    }

    /// <summary>A TSS (available or busy, 16- or 32-bit) or a task gate, outside long mode (which has no task switching).</summary>
    private static bool IsTaskTarget(Cpu c, SegmentState s) => !s.S && !c.LongModeActive && s.Type is 1 or 3 or 5 or 9 or 0xB;

    /// <summary>
    /// JMP/CALL to a TSS or through a task gate (SDM JMP/CALL "task switch" operation): the DPL of the descriptor
    /// named (the TSS, or the gate) must be at least CPL and the selector's RPL; a gate must be present; the TSS
    /// must be in the GDT, available and present.
    /// </summary>
    private static void TaskTransfer(Cpu c, ushort sel, ulong desc, TaskSwitchSource src)
    {
        var s = Cpu.DescriptorToCache(sel, desc);
        if (s.Dpl < c.Cpl || s.Dpl < (sel & 3)) throw GPSel(sel);
        if (s.Type == 5)
        {
            if (!s.Present) throw NPSel(sel);
            sel = (ushort)(desc >> 16);
        }
        else if (s.Type is 3 or 0xB) throw GPSel(sel);
        c.TaskSwitch(sel, c.ReadTargetTss(sel), src);
    }

    /// <summary>After a return to an outer level, data segments the new CPL may not use become null (SDM 5.8.6).</summary>
    private static void InvalidateDataSegments(Cpu c)
    {
        for (int seg = 0; seg < 6; seg++)
        {
            if (seg is Cpu.CS or Cpu.SS) continue;
            ref var s = ref c.Sreg[seg];
            bool conformingCode = (s.Type & 0xC) == 0xC;
            if ((s.Selector & 0xFFFC) != 0 && s.S && !conformingCode && s.Dpl < c.Cpl)
                s = new SegmentState { Selector = 0, Base = c.Is64BitMode && seg >= Cpu.FS ? s.Base : 0 };
        }
    }

    // ---------------- JMP far ----------------

    private static void JmpFarPtr(Cpu c, ref Instruction i)
    {
        int os = FarOpSize(i.Code);
        JmpFar(c, i.FarBranchSelector, os == 2 ? i.FarBranch16 : i.FarBranch32, os);
    }

    private static void JmpFarMem(Cpu c, ref Instruction i)
    {
        int os = FarOpSize(i.Code);
        ReadFarPointer(c, ref i, os, out ushort sel, out ulong off);
        JmpFar(c, sel, off, os);
    }

    private static void JmpFar(Cpu c, ushort sel, ulong off, int os)
    {
        if (!c.ProtectedMode || c.IsV86Mode)
        {
            c.SetCodeSegmentReal(sel);
            c.Rip = off & Cpu.SizeMask(os);
            return;
        }
        if ((sel & 0xFFFC) == 0) throw Cpu.GP0();
        ulong desc = c.ReadDescriptor(sel);
        var s = Cpu.DescriptorToCache(sel, desc);
        if (IsTaskTarget(c, s))
        {
            TaskTransfer(c, sel, desc, TaskSwitchSource.Jmp);
            return;
        }
        var saved = Saved.Take(c);
        try
        {
            if (s.S)
            {
                CheckDirectCode(c, sel, s);
                c.MarkDescriptorAccessed(sel, desc);
                c.SetCodeSegment(sel, desc, c.Cpl);
                off &= Cpu.SizeMask(os);
            }
            else
            {
                ReadCallGate(c, sel, desc, out ushort tsel, out ulong toff, out ulong tdesc, out _, out _);
                var t = Cpu.DescriptorToCache(tsel, tdesc);
                // JMP through a gate never changes privilege: a non-conforming target must be at CPL.
                if ((t.Type & 4) == 0 && t.Dpl != c.Cpl) throw GPSel(tsel);
                c.MarkDescriptorAccessed(tsel, tdesc);
                c.SetCodeSegment(tsel, tdesc, c.Cpl);
                off = toff;
            }
            CheckTarget(c, off);
        }
        catch (CpuException)
        {
            saved.Restore(c);
            throw;
        }
        c.Rip = off;
    }

    // ---------------- CALL far ----------------

    private static void CallFarPtr(Cpu c, ref Instruction i)
    {
        int os = FarOpSize(i.Code);
        CallFar(c, i.FarBranchSelector, os == 2 ? i.FarBranch16 : i.FarBranch32, os);
    }

    private static void CallFarMem(Cpu c, ref Instruction i)
    {
        int os = FarOpSize(i.Code);
        ReadFarPointer(c, ref i, os, out ushort sel, out ulong off);
        CallFar(c, sel, off, os);
    }

    private static void CallFar(Cpu c, ushort sel, ulong off, int os)
    {
        ushort oldCs = c.Sreg[Cpu.CS].Selector;
        ulong retIp = c.Rip;
        var saved = Saved.Take(c);
        if (!c.ProtectedMode || c.IsV86Mode)
        {
            try
            {
                c.Push(oldCs, os);
                c.Push(retIp, os);
            }
            catch (CpuException) { saved.Restore(c); throw; }
            c.SetCodeSegmentReal(sel);
            c.Rip = off & Cpu.SizeMask(os);
            return;
        }
        if ((sel & 0xFFFC) == 0) throw Cpu.GP0();
        ulong desc = c.ReadDescriptor(sel);
        var s = Cpu.DescriptorToCache(sel, desc);
        if (IsTaskTarget(c, s))
        {
            TaskTransfer(c, sel, desc, TaskSwitchSource.Call);
            return;
        }
        try
        {
            if (s.S)
            {
                CheckDirectCode(c, sel, s);
                c.Push(oldCs, os);
                c.Push(retIp, os);
                c.MarkDescriptorAccessed(sel, desc);
                c.SetCodeSegment(sel, desc, c.Cpl);
                off &= Cpu.SizeMask(os);
            }
            else
            {
                ReadCallGate(c, sel, desc, out ushort tsel, out ulong toff, out ulong tdesc, out int gsz, out int nparams);
                var t = Cpu.DescriptorToCache(tsel, tdesc);
                bool conforming = (t.Type & 4) != 0;
                if (!conforming && t.Dpl < c.Cpl) CallGateInner(c, tsel, tdesc, t.Dpl, gsz, nparams, oldCs, retIp);
                else
                {
                    c.Push(oldCs, gsz);
                    c.Push(retIp, gsz);
                    c.SetCodeSegment(tsel, tdesc, c.Cpl);
                }
                c.MarkDescriptorAccessed(tsel, tdesc);
                off = toff;
            }
            CheckTarget(c, off);
        }
        catch (CpuException)
        {
            saved.Restore(c);
            throw;
        }
        c.Rip = off;
    }

    /// <summary>CALL through a gate to a more privileged level: new stack from the TSS, parameters copied (SDM 5.8.5).</summary>
    private static void CallGateInner(Cpu c, ushort tsel, ulong tdesc, int newCpl, int gsz, int nparams, ushort oldCs, ulong retIp)
    {
        ulong oldSp = c.Gpr[Cpu.RSP];
        ushort oldSs = c.Sreg[Cpu.SS].Selector;
        var tr = c.Tr;
        if (c.LongModeActive)
        {
            ulong newRsp = c.ReadSystem(tr.Base + 4 + (ulong)(8 * newCpl), 8);
            if (!Cpu.IsCanonical(newRsp)) throw new CpuException(Vec.SS, 0);
            c.Sreg[Cpu.SS] = new SegmentState { Selector = (ushort)newCpl, Attributes = (ushort)(0x93 | (newCpl << 5)) };
            c.SetCodeSegment(tsel, tdesc, newCpl);
            c.Gpr[Cpu.RSP] = newRsp;
            c.Push(oldSs, 8);
            c.Push(oldSp, 8);
            c.Push(oldCs, 8);
            c.Push(retIp, 8);
            return;
        }
        var (ssSel, ssDesc, ss, newSp) = c.ReadInnerStack(newCpl, 0);
        // Parameters come from the caller's stack, read before anything changes.
        Span<ulong> args = stackalloc ulong[32];
        for (int k = 0; k < nparams; k++) args[k] = c.PeekStack((ulong)(k * gsz), gsz);
        c.MarkDescriptorAccessed(ssSel, ssDesc);
        ss.Attributes |= 1;
        c.Sreg[Cpu.SS] = ss;
        c.SetCodeSegment(tsel, tdesc, newCpl);
        c.Gpr[Cpu.RSP] = ss.DB ? (uint)newSp : (c.Gpr[Cpu.RSP] & ~0xFFFFUL) | (ushort)newSp;
        c.Push(oldSs, gsz);
        c.Push(oldSp, gsz);
        for (int k = nparams - 1; k >= 0; k--) c.Push(args[k], gsz);
        c.Push(oldCs, gsz);
        c.Push(retIp, gsz);
    }

    // ---------------- RET far ----------------

    private static void RetFar(Cpu c, ref Instruction i)
    {
        int os = FarOpSize(i.Code);
        ulong imm = i.Code is Code.Retfw_imm16 or Code.Retfd_imm16 or Code.Retfq_imm16 ? i.Immediate16 : 0UL;
        ulong ip = c.PeekStack(0, os);
        ushort cs = (ushort)c.PeekStack((ulong)os, 2);
        if (!c.ProtectedMode || c.IsV86Mode)
        {
            c.SetRspStack(c.StackMask(c.Gpr[Cpu.RSP] + (ulong)(2 * os) + imm));
            c.SetCodeSegmentReal(cs);
            c.Rip = ip & Cpu.SizeMask(os);
            return;
        }
        if ((cs & 0xFFFC) == 0) throw Cpu.GP0();
        int rpl = cs & 3;
        if (rpl < c.Cpl) throw GPSel(cs);
        ulong desc = c.ReadDescriptor(cs);
        var s = Cpu.DescriptorToCache(cs, desc);
        CheckReturnCode(c, cs, s);
        var saved = Saved.Take(c);
        try
        {
            if (rpl == c.Cpl)
            {
                c.SetCodeSegment(cs, desc, rpl);
                c.SetRspStack(c.StackMask(saved.Rsp + (ulong)(2 * os) + imm));
            }
            else
            {
                ulong sp = c.PeekStack((ulong)(2 * os) + imm, os);
                ushort ss = (ushort)c.PeekStack((ulong)(3 * os) + imm, 2);
                c.SetCodeSegment(cs, desc, rpl);
                c.LoadSegment(Cpu.SS, ss);
                c.SetRspStack(sp + imm);
            }
            ip &= Cpu.SizeMask(os);
            CheckTarget(c, ip);
            c.MarkDescriptorAccessed(cs, desc);
        }
        catch (CpuException)
        {
            saved.Restore(c);
            throw;
        }
        if (rpl > (saved.Cs.Selector & 3)) InvalidateDataSegments(c);
        c.Rip = ip;
    }

    /// <summary>Return target: code segment, conforming DPL &lt;= RPL or non-conforming DPL == RPL, present, not L+D.</summary>
    private static void CheckReturnCode(Cpu c, ushort cs, SegmentState s)
    {
        int rpl = cs & 3;
        if (!s.S || (s.Type & 8) == 0) throw GPSel(cs);
        bool conforming = (s.Type & 4) != 0;
        if (conforming ? s.Dpl > rpl : s.Dpl != rpl) throw GPSel(cs);
        if (!s.Present) throw NPSel(cs);
        if (c.LongModeActive && s.L && s.DB) throw GPSel(cs);
    }

    // ---------------- IRET ----------------

    private static void Iret(Cpu c, ref Instruction i)
    {
        int os = FarOpSize(i.Code);
        ulong ip = c.PeekStack(0, os);
        ushort cs = (ushort)c.PeekStack((ulong)os, 2);
        ulong fl = c.PeekStack((ulong)(2 * os), os);
        ulong old = c.Rflags;
        if (!c.ProtectedMode)
        {
            // Real mode: every flag is writable; IRETD keeps VM, VIF and VIP.
            ulong nf = os == 2 ? (old & ~0xFFFFUL) | fl : os == 4 ? (fl & 0x257FD5) | (old & 0x1A0000) : fl;
            c.SetRspStack(c.StackMask(c.Gpr[Cpu.RSP] + (ulong)(3 * os)));
            c.SetCodeSegmentReal(cs);
            c.Rip = ip & Cpu.SizeMask(os);
            c.Rflags = nf & ~Cpu.VM;
            FinishIret(c);
            return;
        }
        if (c.IsV86Mode)
        {
            // IOPL-sensitive (SDM 20.2.7): a monitor below IOPL 3 emulates it. At IOPL 3 a real-mode-style return
            // that cannot change VM, IOPL, VIF or VIP.
            if (((old >> 12) & 3) != 3) throw Cpu.GP0();
            ulong keep = os == 2 ? ~0xFFFFUL | Cpu.IOPL : Cpu.VM | Cpu.IOPL | 0x18_0000;
            if ((ip & Cpu.SizeMask(os)) > 0xFFFF) throw Cpu.GP0();
            c.SetRspStack(c.StackMask(c.Gpr[Cpu.RSP] + (ulong)(3 * os)));
            c.SetCodeSegmentReal(cs);
            c.Rip = ip & Cpu.SizeMask(os);
            c.Rflags = (old & keep) | (fl & ~keep);
            FinishIret(c);
            return;
        }
        if ((old & Cpu.NT) != 0)
        {
            // Long mode has no task return (SDM IRET: #GP(0)); legacy protected mode returns to the linked task.
            if (c.LongModeActive) throw Cpu.GP0();
            c.TaskReturn();
            FinishIret(c);
            return;
        }
        int oldCpl = c.Cpl;
        if (!c.LongModeActive && os == 4 && (fl & Cpu.VM) != 0 && oldCpl == 0)
        {
            // RETURN-TO-VIRTUAL-8086-MODE: EIP, CS, EFLAGS, then ESP, SS, ES, DS, FS, GS, all in 32-bit slots.
            Span<ushort> sregs = stackalloc ushort[6];
            ulong v86Esp = c.PeekStack(12, 4);
            sregs[Cpu.SS] = (ushort)c.PeekStack(16, 2);
            sregs[Cpu.ES] = (ushort)c.PeekStack(20, 2);
            sregs[Cpu.DS] = (ushort)c.PeekStack(24, 2);
            sregs[Cpu.FS] = (ushort)c.PeekStack(28, 2);
            sregs[Cpu.GS] = (ushort)c.PeekStack(32, 2);
            sregs[Cpu.CS] = cs;
            if ((ip & 0xFFFF_FFFF) > 0xFFFF) throw Cpu.GP0();
            c.EnterV86((uint)ip, (uint)fl, (uint)v86Esp, sregs);
            FinishIret(c);
            return;
        }
        if ((cs & 0xFFFC) == 0) throw Cpu.GP0();
        int rpl = cs & 3;
        if (rpl < oldCpl) throw GPSel(cs);
        ulong desc = c.ReadDescriptor(cs);
        var s = Cpu.DescriptorToCache(cs, desc);
        CheckReturnCode(c, cs, s);
        bool popSs = c.Is64BitMode || rpl > oldCpl;

        // Which flags IRET may change depends on the CPL it runs at (SDM IRET operation).
        int iopl = (int)((old >> 12) & 3);
        ulong mask = Cpu.CF | Cpu.PF | Cpu.AF | Cpu.ZF | Cpu.SF | Cpu.TF | Cpu.DF | Cpu.OF | Cpu.NT | Cpu.RF | Cpu.AC | Cpu.ID;
        if (oldCpl <= iopl) mask |= Cpu.IF;
        if (oldCpl == 0) mask |= Cpu.IOPL | 0x18_0000; // VIF, VIP
        if (os == 2) mask &= 0xFFFF;
        ulong newFlags = (old & ~mask) | (fl & mask);

        var saved = Saved.Take(c);
        try
        {
            if (popSs)
            {
                ulong sp = c.PeekStack((ulong)(3 * os), os);
                ushort ss = (ushort)c.PeekStack((ulong)(4 * os), 2);
                c.SetCodeSegment(cs, desc, rpl);
                c.LoadSegment(Cpu.SS, ss);
                c.Gpr[Cpu.RSP] = c.StackAddrSize switch
                {
                    8 => sp,
                    4 => (uint)sp,
                    _ => (saved.Rsp & ~0xFFFFUL) | (ushort)sp,
                };
            }
            else
            {
                c.SetCodeSegment(cs, desc, rpl);
                c.SetRspStack(c.StackMask(saved.Rsp + (ulong)(3 * os)));
            }
            ip &= Cpu.SizeMask(os);
            CheckTarget(c, ip);
            c.MarkDescriptorAccessed(cs, desc);
        }
        catch (CpuException)
        {
            saved.Restore(c);
            throw;
        }
        c.Rflags = newFlags;
        if (rpl > oldCpl) InvalidateDataSegments(c);
        c.Rip = ip;
        FinishIret(c);
    }

    private static void FinishIret(Cpu c)
    {
        c.OnIret();
        if (c.InterruptsEnabled) c.OnInterruptsMaybeEnabled();
        c.EndBlock();
        // A system call that returns through IRET (Linux's slow path, INT 0x80, execve).
        if (c.Hooks.SyscallsArmed && c.Cpl == 3) c.HookReturnToUser();
    }

    // ---------------- software interrupts ----------------

    /// <summary>INT n pushes the address after itself (c.Rip) and checks the gate DPL against CPL.</summary>
    private static void Deliver(Cpu c, int vector, bool software)
    {
        c.NoteSoftwareInterrupt();
        if (!c.DeliverException(vector, 0, false, softwareInt: software))
            throw new TripleFaultException($"triple fault delivering INT {vector:x} at {c.Sreg[Cpu.CS].Selector:x4}:{c.InstrIp:x}");
        c.EndBlock();
    }

    /// <summary>INT n is IOPL-sensitive in V86 mode (INT3 and INTO are not): #GP(0) below IOPL 3 (SDM 20.2.7).</summary>
    private static void IntN(Cpu c, ref Instruction i)
    {
        if (c.IsV86Mode && ((c.Rflags >> 12) & 3) != 3) throw Cpu.GP0();
        Deliver(c, i.Immediate8, true);
    }
    private static void Int3(Cpu c, ref Instruction i) => Deliver(c, Vec.BP, true);

    private static void Into(Cpu c, ref Instruction i)
    {
        if (c.Is64BitMode) throw Cpu.UD();
        if (c.GetOF()) Deliver(c, Vec.OF, true);
    }

    /// <summary>INT1 (ICEBP) is delivered like a hardware #DB: no gate-DPL check.</summary>
    private static void Int1(Cpu c, ref Instruction i) => Deliver(c, Vec.DB, false);

    private static void Ud2(Cpu c, ref Instruction i) => throw Cpu.UD();
}
