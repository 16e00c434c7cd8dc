using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// MOVS, STOS, LODS, CMPS, SCAS (byte..quad, all address sizes) with REP/REPE/REPNE; INS/OUTS are in
/// <see cref="IntegerStringIo"/>. A REP instruction runs at most <see cref="Budget"/> units per execution and then
/// restarts itself (RIP back at the instruction, block ended) so interrupts are taken during long copies; SI/DI/CX
/// always describe the progress made, so a fault in the middle also restarts where it stopped.
/// </summary>
internal static unsafe class IntegerString
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Movs, Code.Movsb_m8_m8, Code.Movsw_m16_m16, Code.Movsd_m32_m32, Code.Movsq_m64_m64);
        r.Add(&Stos, Code.Stosb_m8_AL, Code.Stosw_m16_AX, Code.Stosd_m32_EAX, Code.Stosq_m64_RAX);
        r.Add(&Lods, Code.Lodsb_AL_m8, Code.Lodsw_AX_m16, Code.Lodsd_EAX_m32, Code.Lodsq_RAX_m64);
        r.Add(&Cmps, Code.Cmpsb_m8_m8, Code.Cmpsw_m16_m16, Code.Cmpsd_m32_m32, Code.Cmpsq_m64_m64);
        r.Add(&Scas, Code.Scasb_AL_m8, Code.Scasw_AX_m16, Code.Scasd_EAX_m32, Code.Scasq_RAX_m64);
        IntegerStringIo.Install(r);
    }

    /// <summary>Work per execution of a REP instruction: bytes moved in bulk, or <see cref="ElemCost"/> per element.</summary>
    internal const int Budget = 32768;
    internal const int ElemCost = 8;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int KindAddrSize(OpKind k) => k switch
    {
        OpKind.MemorySegSI or OpKind.MemorySegDI or OpKind.MemoryESDI => 2,
        OpKind.MemorySegESI or OpKind.MemorySegEDI or OpKind.MemoryESEDI => 4,
        OpKind.MemorySegRSI or OpKind.MemorySegRDI or OpKind.MemoryESRDI => 8,
        _ => 0,
    };

    /// <summary>Address size (2, 4, 8) of a string instruction: it selects SI/ESI/RSI, DI/EDI/RDI and CX/ECX/RCX.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int AddrSize(ref Instruction i) => KindAddrSize(i.Op0Kind) | KindAddrSize(i.Op1Kind);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong AddrMask(int asz) => asz == 8 ? ulong.MaxValue : asz == 4 ? 0xFFFF_FFFFUL : 0xFFFFUL;

    /// <summary>Writes SI/DI/CX at the address size: 16-bit merges, 32-bit zero-extends.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SetIndex(Cpu c, int reg, ulong v, int asz)
    {
        switch (asz)
        {
            case 8: c.Gpr[reg] = v; break;
            case 4: c.Gpr[reg] = (uint)v; break;
            default: c.Gpr[reg] = (c.Gpr[reg] & ~0xFFFFUL) | (ushort)v; break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsRep(ref Instruction i) => i.HasRepPrefix || i.HasRepnePrefix;

    /// <summary>Resumes the instruction after the block boundary (where pending interrupts are looked at).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Restart(Cpu c)
    {
        c.Rip = c.InstrIp;
        c.EndBlock();
    }

    /// <summary>
    /// How many elements of size sz starting at offset off fit in the segment and the address-size wrap, counted
    /// up to max (0 when the caller should use single element accesses, e.g. expand-down segments).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Room(Cpu c, int seg, ulong off, int sz, ulong mask, ulong max)
    {
        ulong n = max;
        if (mask != ulong.MaxValue) n = Math.Min(n, (mask - off + 1) / (ulong)sz);
        if (!c.Is64BitMode)
        {
            ref var s = ref c.Sreg[seg];
            if (GrowsDown(c, seg)) return 0;
            ulong lim = s.Limit;
            n = off > lim ? 0 : Math.Min(n, (lim - off + 1) / (ulong)sz);
        }
        return n;
    }

    // ---------------- MOVS ----------------

    private static void Movs(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = AddrSize(ref i);
        int seg = Cpu.MemSeg(ref i);
        ulong mask = AddrMask(asz);
        ulong si = c.Gpr[Cpu.RSI] & mask, di = c.Gpr[Cpu.RDI] & mask;
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        if (!IsRep(ref i))
        {
            ulong v = c.ReadMem(seg, si, sz);
            c.WriteMem(Cpu.ES, di, sz, v);
            SetIndex(c, Cpu.RSI, si + step, asz);
            SetIndex(c, Cpu.RDI, di + step, asz);
            return;
        }
        ulong count = c.Gpr[Cpu.RCX] & mask;
        if (count == 0) return;
        long budget = Budget;
        bool forward = !c.DirectionFlag;
        try
        {
            while (count != 0 && budget > 0)
            {
                ulong n = forward ? MovsBulk(c, seg, si, di, count, sz, mask, (ulong)budget)
                                  : MovsBulkBackward(c, seg, si, di, count, sz, mask, (ulong)budget);
                if (n != 0)
                {
                    ulong bytes = n * (ulong)sz;
                    si = (forward ? si + bytes : si - bytes) & mask;
                    di = (forward ? di + bytes : di - bytes) & mask;
                    count -= n;
                    budget -= (long)bytes;
                    continue;
                }
                ulong v = c.ReadMem(seg, si, sz);
                c.WriteMem(Cpu.ES, di, sz, v);
                si = (si + step) & mask;
                di = (di + step) & mask;
                count--;
                budget -= ElemCost;
            }
        }
        finally
        {
            SetIndex(c, Cpu.RSI, si, asz);
            SetIndex(c, Cpu.RDI, di, asz);
            SetIndex(c, Cpu.RCX, count, asz);
        }
        if (count != 0) Restart(c);
    }

    /// <summary>
    /// Forward MOVS of up to count elements that stay inside one source page and one destination page, with a
    /// host copy. Returns the elements moved, 0 when this run needs element accesses (page-straddling element,
    /// MMIO, segment limit). Overlap closer than the run length keeps element-by-element semantics.
    /// </summary>
    private static ulong MovsBulk(Cpu c, int seg, ulong si, ulong di, ulong count, int sz, ulong mask, ulong budget)
    {
        // The first element's checks raise exactly the faults the element path would.
        ulong las = c.Linear(seg, si, sz, false);
        ulong lad = c.Linear(Cpu.ES, di, sz, true);
        ulong n = Math.Min(count, budget / (ulong)sz);
        n = Math.Min(n, (0x1000 - (las & 0xFFF)) / (ulong)sz);
        n = Math.Min(n, (0x1000 - (lad & 0xFFF)) / (ulong)sz);
        n = Room(c, seg, si, sz, mask, n);
        n = Room(c, Cpu.ES, di, sz, mask, n);
        if (n < 2) return 0;
        int len = (int)n * sz;
        byte* ps = c.BulkReadPointer(las, len);
        if (ps == null) return 0;
        byte* pd = c.BulkWritePointer(lad, len, out ulong notify);
        if (pd == null) return 0;
        long d = pd - ps;
        if (d > 0 && d < len)
        {
            // The destination starts inside the source run: each element must see earlier elements' stores.
            CopyElements(pd, ps, len, sz, down: false);
        }
        else
        {
            Buffer.MemoryCopy(ps, pd, len, len);
        }
        c.BulkWriteDone(notify, len);
        return n;
    }

    /// <summary>An expand-down data segment (outside 64-bit mode): its offsets run the other way, so bulk runs skip it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool GrowsDown(Cpu c, int seg) => !c.Is64BitMode && (c.Sreg[seg].Type & 0xC) == 0x4;

    /// <summary>
    /// Copies len bytes as sz-byte elements one at a time, from the bottom up or (down) from the top down: where
    /// source and destination overlap closer than the run, each element then sees the stores of the ones before it,
    /// as MOVS's elements do.
    /// </summary>
    private static void CopyElements(byte* pd, byte* ps, int len, int sz, bool down)
    {
        int k = down ? len - sz : 0, step = down ? -sz : sz;
        for (int done = 0; done < len; done += sz, k += step)
        {
            switch (sz)
            {
                case 1: pd[k] = ps[k]; break;
                case 2: Unsafe.WriteUnaligned(pd + k, Unsafe.ReadUnaligned<ushort>(ps + k)); break;
                case 4: Unsafe.WriteUnaligned(pd + k, Unsafe.ReadUnaligned<uint>(ps + k)); break;
                default: Unsafe.WriteUnaligned(pd + k, Unsafe.ReadUnaligned<ulong>(ps + k)); break;
            }
        }
    }

    /// <summary>
    /// MOVS with DF=1 (Linux's decompressor moves the compressed kernel up this way, memmove copies overlapping
    /// buffers down this way): up to count elements from si and di downwards that stay inside the first element's
    /// source and destination pages, with a host copy; 0 when this run needs element accesses. Each pointer is taken
    /// for the first element first, so a fault is the one the element path raises (CR2 included).
    /// </summary>
    private static ulong MovsBulkBackward(Cpu c, int seg, ulong si, ulong di, ulong count, int sz, ulong mask, ulong budget)
    {
        ulong las = c.Linear(seg, si, sz, false);
        ulong lad = c.Linear(Cpu.ES, di, sz, true);
        // A first element that straddles a page, or a segment that grows down: element accesses.
        if ((las & 0xFFF) + (ulong)sz > 0x1000 || (lad & 0xFFF) + (ulong)sz > 0x1000) return 0;
        if (GrowsDown(c, seg) || GrowsDown(c, Cpu.ES)) return 0;
        ulong n = Math.Min(count, budget / (ulong)sz);
        // Elements below the first one down to its page's start, and offsets that do not wrap below zero (the upper
        // end is the first element, which Linear checked against the segment limit).
        n = Math.Min(n, (las & 0xFFF) / (ulong)sz + 1);
        n = Math.Min(n, (lad & 0xFFF) / (ulong)sz + 1);
        n = Math.Min(n, si / (ulong)sz + 1);
        n = Math.Min(n, di / (ulong)sz + 1);
        if (n < 2) return 0;
        int len = (int)n * sz;
        ulong span = (ulong)(len - sz);
        if (c.BulkReadPointer(las, sz) == null) return 0;
        byte* ps = c.BulkReadPointer(las - span, len);
        if (ps == null) return 0;
        if (c.BulkWritePointer(lad, sz, out _) == null) return 0;
        byte* pd = c.BulkWritePointer(lad - span, len, out ulong notify);
        if (pd == null) return 0;
        long d = ps - pd;
        if (d > 0 && d < len)
        {
            // The destination starts below the source and overlaps it: going down, each element must see the
            // stores of the elements above it.
            CopyElements(pd, ps, len, sz, down: true);
        }
        else
        {
            // No element reads what an earlier one wrote: a copy as if through a buffer is the same.
            Buffer.MemoryCopy(ps, pd, len, len);
        }
        c.BulkWriteDone(notify, len);
        return n;
    }

    // ---------------- STOS ----------------

    private static void Stos(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = AddrSize(ref i);
        ulong mask = AddrMask(asz);
        ulong di = c.Gpr[Cpu.RDI] & mask;
        ulong val = c.Gpr[Cpu.RAX];
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        if (!IsRep(ref i))
        {
            c.WriteMem(Cpu.ES, di, sz, val);
            SetIndex(c, Cpu.RDI, di + step, asz);
            return;
        }
        ulong count = c.Gpr[Cpu.RCX] & mask;
        if (count == 0) return;
        long budget = Budget;
        bool forward = !c.DirectionFlag;
        try
        {
            while (count != 0 && budget > 0)
            {
                if (forward)
                {
                    ulong n = StosBulk(c, di, count, sz, mask, (ulong)budget, val);
                    if (n != 0)
                    {
                        ulong bytes = n * (ulong)sz;
                        di = (di + bytes) & mask;
                        count -= n;
                        budget -= (long)bytes;
                        continue;
                    }
                }
                c.WriteMem(Cpu.ES, di, sz, val);
                di = (di + step) & mask;
                count--;
                budget -= ElemCost;
            }
        }
        finally
        {
            SetIndex(c, Cpu.RDI, di, asz);
            SetIndex(c, Cpu.RCX, count, asz);
        }
        if (count != 0) Restart(c);
    }

    private static ulong StosBulk(Cpu c, ulong di, ulong count, int sz, ulong mask, ulong budget, ulong val)
    {
        ulong lad = c.Linear(Cpu.ES, di, sz, true);
        ulong n = Math.Min(count, budget / (ulong)sz);
        n = Math.Min(n, (0x1000 - (lad & 0xFFF)) / (ulong)sz);
        n = Room(c, Cpu.ES, di, sz, mask, n);
        if (n < 2) return 0;
        int len = (int)n * sz;
        byte* pd = c.BulkWritePointer(lad, len, out ulong notify);
        if (pd == null) return 0;
        // x86 has no alignment requirement here, and neither do spans over host memory on x64.
        switch (sz)
        {
            case 1: new Span<byte>(pd, (int)n).Fill((byte)val); break;
            case 2: new Span<ushort>(pd, (int)n).Fill((ushort)val); break;
            case 4: new Span<uint>(pd, (int)n).Fill((uint)val); break;
            default: new Span<ulong>(pd, (int)n).Fill(val); break;
        }
        c.BulkWriteDone(notify, len);
        return n;
    }

    // ---------------- LODS ----------------

    private static void Lods(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = AddrSize(ref i);
        int seg = Cpu.MemSeg(ref i);
        ulong mask = AddrMask(asz);
        ulong si = c.Gpr[Cpu.RSI] & mask;
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        Register acc = i.Op0Register;
        if (!IsRep(ref i))
        {
            c.SetReg(acc, c.ReadMem(seg, si, sz));
            SetIndex(c, Cpu.RSI, si + step, asz);
            return;
        }
        ulong count = c.Gpr[Cpu.RCX] & mask;
        if (count == 0) return;
        long budget = Budget;
        try
        {
            while (count != 0 && budget > 0)
            {
                c.SetReg(acc, c.ReadMem(seg, si, sz));
                si = (si + step) & mask;
                count--;
                budget -= ElemCost;
            }
        }
        finally
        {
            SetIndex(c, Cpu.RSI, si, asz);
            SetIndex(c, Cpu.RCX, count, asz);
        }
        if (count != 0) Restart(c);
    }

    // ---------------- CMPS / SCAS ----------------

    private static void Cmps(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = AddrSize(ref i);
        int seg = Cpu.MemSeg(ref i);
        ulong mask = AddrMask(asz);
        ulong smask = Cpu.SizeMask(sz);
        ulong si = c.Gpr[Cpu.RSI] & mask, di = c.Gpr[Cpu.RDI] & mask;
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        bool rep = i.HasRepePrefix, repne = i.HasRepnePrefix;
        if (!rep && !repne)
        {
            ulong a = c.ReadMem(seg, si, sz), b = c.ReadMem(Cpu.ES, di, sz);
            c.SetLazyFlags(LazyOp.Sub, sz, (a - b) & smask, a, b);
            SetIndex(c, Cpu.RSI, si + step, asz);
            SetIndex(c, Cpu.RDI, di + step, asz);
            return;
        }
        ulong count = c.Gpr[Cpu.RCX] & mask;
        if (count == 0) return;
        long budget = Budget;
        bool stop = false;
        bool bulk = sz == 1 && rep && !c.DirectionFlag;
        try
        {
            while (budget > 0)
            {
                if (bulk)
                {
                    ulong n = CmpsbBulk(c, seg, si, di, count, mask, (ulong)budget, out bool mismatch);
                    if (n != 0)
                    {
                        si = (si + n) & mask;
                        di = (di + n) & mask;
                        count -= n;
                        budget -= (long)n;
                        if (count == 0 || mismatch) { stop = true; break; }
                        continue;
                    }
                }
                ulong a = c.ReadMem(seg, si, sz), b = c.ReadMem(Cpu.ES, di, sz);
                c.SetLazyFlags(LazyOp.Sub, sz, (a - b) & smask, a, b);
                si = (si + step) & mask;
                di = (di + step) & mask;
                count--;
                budget -= ElemCost;
                // REPE stops on the first difference, REPNE on the first match.
                if (count == 0 || (a == b) == repne) { stop = true; break; }
            }
        }
        finally
        {
            SetIndex(c, Cpu.RSI, si, asz);
            SetIndex(c, Cpu.RDI, di, asz);
            SetIndex(c, Cpu.RCX, count, asz);
        }
        if (!stop) Restart(c);
    }

    private static void Scas(Cpu c, ref Instruction i)
    {
        int sz = Cpu.MemSize(ref i);
        int asz = AddrSize(ref i);
        ulong mask = AddrMask(asz);
        ulong smask = Cpu.SizeMask(sz);
        ulong a = c.Gpr[Cpu.RAX] & smask;
        ulong di = c.Gpr[Cpu.RDI] & mask;
        ulong step = c.DirectionFlag ? (ulong)-sz : (ulong)sz;
        bool rep = i.HasRepePrefix, repne = i.HasRepnePrefix;
        if (!rep && !repne)
        {
            ulong b = c.ReadMem(Cpu.ES, di, sz);
            c.SetLazyFlags(LazyOp.Sub, sz, (a - b) & smask, a, b);
            SetIndex(c, Cpu.RDI, di + step, asz);
            return;
        }
        ulong count = c.Gpr[Cpu.RCX] & mask;
        if (count == 0) return;
        long budget = Budget;
        bool stop = false;
        bool bulk = sz == 1 && !c.DirectionFlag;
        try
        {
            while (budget > 0)
            {
                if (bulk)
                {
                    ulong n = ScasbBulk(c, di, count, mask, (ulong)budget, (byte)a, repne, out bool found);
                    if (n != 0)
                    {
                        di = (di + n) & mask;
                        count -= n;
                        budget -= (long)n;
                        if (count == 0 || found) { stop = true; break; }
                        continue;
                    }
                }
                ulong b = c.ReadMem(Cpu.ES, di, sz);
                c.SetLazyFlags(LazyOp.Sub, sz, (a - b) & smask, a, b);
                di = (di + step) & mask;
                count--;
                budget -= ElemCost;
                if (count == 0 || (a == b) == repne) { stop = true; break; }
            }
        }
        finally
        {
            SetIndex(c, Cpu.RDI, di, asz);
            SetIndex(c, Cpu.RCX, count, asz);
        }
        if (!stop) Restart(c);
    }

    /// <summary>
    /// REPE CMPSB, forward, within one page of each operand: compares on the host and stops after the first
    /// difference. Returns the bytes consumed (0: use element accesses) and sets the flags of the last compare.
    /// </summary>
    private static ulong CmpsbBulk(Cpu c, int seg, ulong si, ulong di, ulong count, ulong mask, ulong budget, out bool mismatch)
    {
        mismatch = false;
        ulong las = c.Linear(seg, si, 1, false);
        ulong lad = c.Linear(Cpu.ES, di, 1, false);
        ulong n = Math.Min(count, budget);
        n = Math.Min(n, 0x1000 - (las & 0xFFF));
        n = Math.Min(n, 0x1000 - (lad & 0xFFF));
        n = Room(c, seg, si, 1, mask, n);
        n = Room(c, Cpu.ES, di, 1, mask, n);
        if (n < 2) return 0;
        byte* ps = c.BulkReadPointer(las, (int)n);
        if (ps == null) return 0;
        byte* pd = c.BulkReadPointer(lad, (int)n);
        if (pd == null) return 0;
        var a = new ReadOnlySpan<byte>(ps, (int)n);
        var b = new ReadOnlySpan<byte>(pd, (int)n);
        int same = a.CommonPrefixLength(b);
        int last = same < (int)n ? same : (int)n - 1;
        mismatch = same < (int)n;
        c.SetLazyFlags(LazyOp.Sub, 1, (byte)(a[last] - b[last]), a[last], b[last]);
        return (ulong)last + 1;
    }

    /// <summary>REPNE/REPE SCASB, forward, within one page: searches on the host (the strlen/memchr idiom).</summary>
    private static ulong ScasbBulk(Cpu c, ulong di, ulong count, ulong mask, ulong budget, byte al, bool repne, out bool found)
    {
        found = false;
        ulong lad = c.Linear(Cpu.ES, di, 1, false);
        ulong n = Math.Min(count, budget);
        n = Math.Min(n, 0x1000 - (lad & 0xFFF));
        n = Room(c, Cpu.ES, di, 1, mask, n);
        if (n < 2) return 0;
        byte* pd = c.BulkReadPointer(lad, (int)n);
        if (pd == null) return 0;
        var s = new ReadOnlySpan<byte>(pd, (int)n);
        // REPNE stops at the first byte equal to AL, REPE at the first one that differs.
        int idx = repne ? s.IndexOf(al) : s.IndexOfAnyExcept(al);
        found = idx >= 0;
        int last = found ? idx : (int)n - 1;
        c.SetLazyFlags(LazyOp.Sub, 1, (byte)(al - s[last]), al, s[last]);
        return (ulong)last + 1;
    }
}
