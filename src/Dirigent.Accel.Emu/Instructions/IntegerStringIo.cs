using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>INS/OUTS (byte, word, dword; all address sizes) with REP, through the I/O bus and its permission check.</summary>
internal static unsafe class IntegerStringIo
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Ins, Code.Insb_m8_DX, Code.Insw_m16_DX, Code.Insd_m32_DX);
        // A device may ask to stop the VM or raise an interrupt: end the block after every OUTS, as OUT does.
        r.Add(&Outs, true, Code.Outsb_DX_m8, Code.Outsw_DX_m16, Code.Outsd_DX_m32);
    }

    /// <summary>
    /// Checks that ES:DI is writable before the port is read, so a page fault does not lose the data the device
    /// has already handed over (the instruction restarts and reads the port again only if nothing was consumed).
    /// </summary>
    private static ulong InsTarget(Cpu c, ulong di, int sz)
    {
        ulong la = c.Linear(Cpu.ES, di, sz, true);
        if ((c.Cr0 & Cpu.Cr0PG) != 0)
        {
            c.Translate(la, Access.Write, c.Cpl == 3);
            if (((la + (ulong)sz - 1) >> 12) != (la >> 12)) c.Translate(la + (ulong)sz - 1, Access.Write, c.Cpl == 3);
        }
        return la;
    }

    private static void Ins(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = IntegerString.AddrSize(ref i);
        ulong mask = IntegerString.AddrMask(asz);
        ushort port = (ushort)c.Gpr[Cpu.RDX];
        ulong di = c.Gpr[Cpu.RDI] & mask;
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        bool rep = i.HasRepPrefix || i.HasRepnePrefix;
        ulong count = rep ? c.Gpr[Cpu.RCX] & mask : 1;
        if (count == 0) return;
        SystemInstructions.CheckIo(c, port, sz);
        long budget = IntegerString.Budget;
        try
        {
            while (count != 0 && budget > 0)
            {
                ulong la = InsTarget(c, di, sz);
                uint v = c.PortRead(port, sz);
                c.WriteLinear(la, sz, v);
                di = (di + step) & mask;
                count--;
                budget -= IntegerString.ElemCost;
            }
        }
        finally
        {
            IntegerString.SetIndex(c, Cpu.RDI, di, asz);
            if (rep) IntegerString.SetIndex(c, Cpu.RCX, count, asz);
        }
        if (rep && count != 0) IntegerString.Restart(c);
    }

    private static void Outs(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = IntegerString.AddrSize(ref i);
        int seg = Cpu.MemSeg(ref i);
        ulong mask = IntegerString.AddrMask(asz);
        ushort port = (ushort)c.Gpr[Cpu.RDX];
        ulong si = c.Gpr[Cpu.RSI] & mask;
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        bool rep = i.HasRepPrefix || i.HasRepnePrefix;
        ulong count = rep ? c.Gpr[Cpu.RCX] & mask : 1;
        if (count == 0) return;
        SystemInstructions.CheckIo(c, port, sz);
        long budget = IntegerString.Budget;
        try
        {
            while (count != 0 && budget > 0)
            {
                ulong v = c.ReadMem(seg, si, sz);
                c.PortWrite(port, sz, (uint)v);
                si = (si + step) & mask;
                count--;
                budget -= IntegerString.ElemCost;
            }
        }
        finally
        {
            IntegerString.SetIndex(c, Cpu.RSI, si, asz);
            if (rep) IntegerString.SetIndex(c, Cpu.RCX, count, asz);
        }
        if (rep && count != 0) IntegerString.Restart(c);
        c.EndBlock();
    }
}
