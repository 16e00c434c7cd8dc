using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Dirigent.Machine.Bus;

namespace Dirigent.Accel.Emu.Core;

public enum Access { Read = 0, Write = 1, Exec = 2 }

/// <summary>One software-TLB entry: linear page → host pointer (as an addend) and guest-physical page.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct TlbEntry
{
    public ulong Tag;       // linear page number, or ulong.MaxValue when empty
    public ulong Addend;    // host address = linear + Addend
    public ulong PhysPage;  // guest-physical page base
    public ulong Global;    // 1: a global translation (G bit with CR4.PGE), which a CR3 write keeps (SDM 4.10.4.1)
}

public sealed unsafe partial class Cpu
{
    // QEMU-softmmu-style TLB: direct-mapped, one table per (privilege, access kind), so a hit is a shift, a mask,
    // one compare and a load from host memory. Entries only ever point at RAM; MMIO and code pages that must trap
    // writes (for self-modifying code) always take the slow path.
    // 2048 entries a table: with 512 a workload starting processes (fork, exec, exit; `bench boot`'s 100 x /bin/true)
    // missed 4x as often (12 million misses for 800 processes against 3.9 million with 1024 or 2048, 3.5 with 8192),
    // mostly kernel pages evicting each other.
    private const int TlbBits = 11;
    private const int TlbSize = 1 << TlbBits;
    private const ulong TlbMask = TlbSize - 1;
    /// <summary>The TLB's index mask, for compiled code's inline probe.</summary>
    internal const ulong TlbIndexMask = TlbMask;
    private TlbEntry* _tlbBase;
    private TlbEntry* _tlbR, _tlbW, _tlbX;
    public ulong TlbMisses;

    // Which entries hold something, so a flush clears those instead of sweeping all six tables (a CR3 write per
    // context switch would otherwise cost a sweep of the whole TLB): the non-global entries filled since the last CR3
    // write or flush, and the global ones filled since the last flush, in two logs of indices into _tlbBase. A fill
    // logs its entry when the entry was empty or held the other kind (one of the same kind is in its log already).
    // Past LogSize fills a log overflows and the flush that needs it sweeps instead.
    private const int LogSize = 2048;
    private int* _localLog, _globalLog;
    private int _locals, _globals;

    private void AllocTlb()
    {
        _tlbBase = (TlbEntry*)NativeMemory.AlignedAlloc((nuint)(sizeof(TlbEntry) * TlbSize * 6), 64);
        _localLog = (int*)NativeMemory.Alloc(LogSize, sizeof(int));
        _globalLog = (int*)NativeMemory.Alloc(LogSize, sizeof(int));
        _locals = _globals = int.MaxValue;
        FlushTlb();
        SelectTlb();
    }

    private void FreeTlb()
    {
        if (_tlbBase != null) NativeMemory.AlignedFree(_tlbBase);
        _tlbBase = null;
        if (_localLog != null) NativeMemory.Free(_localLog);
        if (_globalLog != null) NativeMemory.Free(_globalLog);
        _localLog = _globalLog = null;
    }

    /// <summary>
    /// MOV to CR3 (SDM 4.10.4.1): drops the translations that are not global; with CR4.PGE the global ones (the
    /// kernel's, on Linux) stay, so its code and data need no new walks after every context switch, and the links
    /// between its compiled blocks, validated through the execute TLB, stay usable.
    /// </summary>
    private void FlushTlbNonGlobal()
    {
        if ((Cr4 & Cr4PGE) == 0 || _mem.DirtyLog.Enabled) { FlushTlb(); return; }
        int n = _locals;
        if (n <= LogSize)
        {
            for (int k = 0; k < n; k++)
            {
                TlbEntry* e = _tlbBase + _localLog[k];
                if (e->Global == 0) e->Tag = ulong.MaxValue;
            }
        }
        else for (int k = 0; k < TlbSize * 6; k++) if (_tlbBase[k].Global == 0) _tlbBase[k].Tag = ulong.MaxValue;
        _locals = 0;
    }

    /// <summary>Drops every cached translation (CR0/CR4/EFER writes, CR3 without CR4.PGE).</summary>
    public void FlushTlb()
    {
        if (_mem.DirtyLog.Enabled) DropWriteEntries(); // logs the pages first (see Cpu.DirtyLog.cs)
        if (_locals <= LogSize && _globals <= LogSize)
        {
            for (int k = 0; k < _locals; k++) _tlbBase[_localLog[k]].Tag = ulong.MaxValue;
            for (int k = 0; k < _globals; k++) _tlbBase[_globalLog[k]].Tag = ulong.MaxValue;
        }
        else for (int k = 0; k < TlbSize * 6; k++) _tlbBase[k].Tag = ulong.MaxValue;
        _locals = _globals = 0;
    }

    /// <summary>INVLPG: drops the translations of one linear page.</summary>
    public void FlushTlbPage(ulong linear)
    {
        ulong page = linear >> 12;
        int idx = (int)(page & TlbMask);
        for (int t = 0; t < 6; t++)
        {
            TlbEntry* e = _tlbBase + t * TlbSize + idx;
            if (e->Tag != page) continue;
            if ((t == 1 || t == 4) && _mem.DirtyLog.Enabled) _mem.DirtyLog.MarkPage(e->PhysPage);
            e->Tag = ulong.MaxValue;
        }
    }

    /// <summary>This vCPU's bit in CodeCache's per-page writer masks.</summary>
    internal ulong WriterBit => 1UL << (Index & 63);

    /// <summary>
    /// Safe-point work (Cpu.SafePoint.cs) for a page becoming code: drops this vCPU's write entries for it, then says
    /// so (a later fill sets the bit again and sees the page is code).
    /// </summary>
    internal void DropWritesToPage(ulong physPage)
    {
        FlushTlbWritesTo(physPage);
        _codeCache.ClearWriter(physPage, WriterBit);
    }

    /// <summary>Drops write translations that point at a guest-physical page (it is becoming a code page).</summary>
    private void FlushTlbWritesTo(ulong physPage)
    {
        bool dropped = false;
        for (int t = 0; t < 2; t++)
        {
            TlbEntry* w = _tlbBase + (t * 3 + 1) * TlbSize;
            for (int k = 0; k < TlbSize; k++)
                if (w[k].Tag != ulong.MaxValue && w[k].PhysPage == physPage) { w[k].Tag = ulong.MaxValue; dropped = true; }
        }
        // Stores made through the dropped entries must not go unlogged; later ones take the slow path, which logs.
        if (dropped) _mem.DirtyLog.MarkPage(physPage);
    }

    private void SelectTlb()
    {
        TlbEntry* set = _tlbBase + (Cpl == 3 ? 3 * TlbSize : 0);
        _tlbR = set;
        _tlbW = set + TlbSize;
        _tlbX = set + 2 * TlbSize;
    }

    // ---------------- fast paths ----------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte Read8(ulong la)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbR + (page & TlbMask);
        if (e->Tag == page) return *(byte*)(la + e->Addend);
        return (byte)ReadSlow(la, 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ushort Read16(ulong la)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbR + (page & TlbMask);
        if (e->Tag == page && (la & 0xFFF) <= 0xFFE) return *(ushort*)(la + e->Addend);
        return (ushort)ReadSlow(la, 2);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint Read32(ulong la)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbR + (page & TlbMask);
        if (e->Tag == page && (la & 0xFFF) <= 0xFFC) return *(uint*)(la + e->Addend);
        return (uint)ReadSlow(la, 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Read64(ulong la)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbR + (page & TlbMask);
        if (e->Tag == page && (la & 0xFFF) <= 0xFF8) return *(ulong*)(la + e->Addend);
        return ReadSlow(la, 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write8(ulong la, byte v)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbW + (page & TlbMask);
        if (e->Tag == page) { *(byte*)(la + e->Addend) = v; return; }
        WriteSlow(la, 1, v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write16(ulong la, ushort v)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbW + (page & TlbMask);
        if (e->Tag == page && (la & 0xFFF) <= 0xFFE) { *(ushort*)(la + e->Addend) = v; return; }
        WriteSlow(la, 2, v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write32(ulong la, uint v)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbW + (page & TlbMask);
        if (e->Tag == page && (la & 0xFFF) <= 0xFFC) { *(uint*)(la + e->Addend) = v; return; }
        WriteSlow(la, 4, v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write64(ulong la, ulong v)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbW + (page & TlbMask);
        if (e->Tag == page && (la & 0xFFF) <= 0xFF8) { *(ulong*)(la + e->Addend) = v; return; }
        WriteSlow(la, 8, v);
    }

    /// <summary>Reads 1, 2, 4 or 8 bytes at a linear address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong ReadLinear(ulong la, int size) => size switch
    {
        1 => Read8(la),
        2 => Read16(la),
        4 => Read32(la),
        _ => Read64(la),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WriteLinear(ulong la, int size, ulong v)
    {
        switch (size)
        {
            case 1: Write8(la, (byte)v); break;
            case 2: Write16(la, (ushort)v); break;
            case 4: Write32(la, (uint)v); break;
            default: Write64(la, v); break;
        }
    }

    /// <summary>
    /// Host pointer for an aligned-within-page RAM access that the caller will perform atomically (LOCK prefix,
    /// XCHG, CMPXCHG). Returns null for MMIO or page-crossing accesses; callers then fall back to
    /// <see cref="ReadLinear"/>/<see cref="WriteLinear"/> under <see cref="SplitLock"/>.
    /// </summary>
    public byte* HostPointerForRmw(ulong la, int size)
    {
        if ((la & 0xFFF) + (ulong)size > 0x1000) return null;
        ulong page = la >> 12;
        TlbEntry* e = _tlbW + (page & TlbMask);
        if (e->Tag != page)
        {
            // A watched page is never in the TLB: its accesses all come here.
            if (_dataBpArmed) NoteDataAccess(la, size, write: true);
            // Fills the write TLB unless the page is code or MMIO.
            ulong pa = TranslateAndFill(la, Access.Write);
            byte* p = _mem.TryGetHostPointer(pa, (ulong)size);
            if (p == null) return null;
            // A watched page: the caller's fallback reads and writes through the slow paths, which report.
            if (WatchRefusesFill(la, pa & ~0xFFFUL, Access.Write)) return null;
            if (e->Tag != page)
            {
                // A code page: the caller stores after we return, so blocks decoded from it are dropped now (the
                // writer's own current one included) and again at the end of this instruction, when the store is
                // done: another vCPU may have decoded the old bytes in between (see CodeCache's remarks).
                _codeCache.NotifyWrite(pa, size, this);
                _rmwNotifyPa = pa;
                _rmwNotifySize = size;
                BlockExit = true;
            }
            return p;
        }
        return (byte*)(la + e->Addend);
    }

    // A store through HostPointerForRmw to a code page whose notification is due after the instruction (or MaxValue).
    private ulong _rmwNotifyPa = ulong.MaxValue;
    private int _rmwNotifySize;

    /// <summary>At the end of the instruction that set BlockExit: the second notification of an RMW store to code.</summary>
    private void FinishRmwNotify()
    {
        ulong pa = _rmwNotifyPa;
        _rmwNotifyPa = ulong.MaxValue;
        _codeCache.NotifyWrite(pa, _rmwNotifySize, this);
        // The writer's own block was cut short already; a second BlockExit would end the next block early.
        BlockExit = false;
    }

    /// <summary>Serializes atomic operations that cannot use a host atomic (split across pages, MMIO).</summary>
    public static readonly object SplitLock = new();

    // ---------------- slow paths ----------------

    [MethodImpl(MethodImplOptions.NoInlining)]
    private ulong ReadSlow(ulong la, int size)
    {
        if (_dataBpArmed) NoteDataAccess(la, size, write: false);
        if ((la & 0xFFF) + (ulong)size > 0x1000)
        {
            ulong v = 0;
            for (int k = 0; k < size; k++) v |= (ulong)ReadByteSlow(la + (ulong)k) << (8 * k);
            return v;
        }
        ulong pa = TranslateAndFill(la, Access.Read);
        byte* p = _mem.TryGetHostPointer(pa, (ulong)size);
        ulong r = p != null ? size switch { 1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p } : MmioRead(pa, size);
        if (_hooks.WatchArmed) WatchAccess(la, pa, size, r, write: false);
        return r;
    }

    private byte ReadByteSlow(ulong la)
    {
        ulong pa = TranslateAndFill(la, Access.Read);
        byte* p = _mem.TryGetHostPointer(pa);
        byte r = p != null ? *p : (byte)MmioRead(pa, 1);
        if (_hooks.WatchArmed) WatchAccess(la, pa, 1, r, write: false);
        return r;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void WriteSlow(ulong la, int size, ulong v)
    {
        if (_dataBpArmed) NoteDataAccess(la, size, write: true);
        if ((la & 0xFFF) + (ulong)size > 0x1000)
        {
            // Check both pages before storing anything, so a fault on the second page leaves memory untouched.
            Translate(la, Access.Write, Cpl == 3);
            Translate(la + (ulong)size - 1, Access.Write, Cpl == 3);
            for (int k = 0; k < size; k++) WriteByteSlow(la + (ulong)k, (byte)(v >> (8 * k)));
            return;
        }
        ulong pa = TranslateAndFill(la, Access.Write);
        byte* p = _mem.TryGetHostPointer(pa, (ulong)size);
        if (p != null)
        {
            switch (size)
            {
                case 1: *p = (byte)v; break;
                case 2: *(ushort*)p = (ushort)v; break;
                case 4: *(uint*)p = (uint)v; break;
                default: *(ulong*)p = v; break;
            }
            _codeCache.NotifyWrite(pa, size, this);
        }
        else MmioWrite(pa, size, v);
        if (_hooks.WatchArmed) WatchAccess(la, pa, size, v, write: true);
    }

    private void WriteByteSlow(ulong la, byte v)
    {
        ulong pa = TranslateAndFill(la, Access.Write);
        byte* p = _mem.TryGetHostPointer(pa);
        if (p != null) { *p = v; _codeCache.NotifyWrite(pa, 1, this); }
        else MmioWrite(pa, 1, v);
        if (_hooks.WatchArmed) WatchAccess(la, pa, 1, v, write: true);
    }

    private IMmioDevice? _apicMmio;

    /// <summary>The APIC page is per vCPU (IA32_APIC_BASE, when globally enabled); everything else is the shared bus.</summary>
    private bool IsApicPage(ulong pa) => _apicMmio != null && (pa & ~0xFFFUL) == (ApicBase & 0xF_FFFF_F000UL) && (ApicBase & 0x800) != 0;

    private ulong MmioRead(ulong pa, int size)
    {
        ulong v = _rr != null ? RrMmioRead(pa, size, IsApicPage(pa)) : IsApicPage(pa) ? _apicMmio!.Read(pa & 0xFFF, size) : _vm.Mmio.Read(pa, size);
        if (_hooks.DevicesArmed) HookDevice(false, pa, size, v, write: false);
        return v;
    }

    private void MmioWrite(ulong pa, int size, ulong v)
    {
        if (_hooks.DevicesArmed) HookDevice(false, pa, size, v, write: true);
        if (_rr != null) RrMmioWrite(pa, size, v, IsApicPage(pa));
        else if (IsApicPage(pa)) _apicMmio!.Write(pa & 0xFFF, size, v);
        else _vm.Mmio.Write(pa, size, v);
    }

    /// <summary>Translates for the current privilege and fills the TLB when the target is cacheable RAM.</summary>
    private ulong TranslateAndFill(ulong la, Access acc)
    {
        TlbMisses++;
        ulong pa = Translate(la, acc, Cpl == 3);
        ulong ppage = pa & ~0xFFFUL;
        byte* host = _mem.TryGetHostPointer(ppage, 4096);
        // A write entry only for a page that holds no code, and only after saying we may hold one (CodeCache remarks).
        // No read/write entry for a page a data breakpoint watches: its accesses must reach the slow path's check.
        if (host != null && (acc != Access.Write || _codeCache.PrepareWriteFill(ppage, WriterBit)) &&
            !(_dataBpArmed && acc != Access.Exec && IsWatchedPage(la >> 12)) && !WatchRefusesFill(la, ppage, acc))
        {
            ulong page = la >> 12;
            TlbEntry* t = acc switch { Access.Read => _tlbR, Access.Write => _tlbW, _ => _tlbX };
            TlbEntry* e = t + (page & TlbMask);
            if (acc == Access.Write && _mem.DirtyLog.Enabled) LogWriteFill(e, ppage);
            ulong global = _walkGlobal && (Cr4 & Cr4PGE) != 0 ? 1UL : 0UL;
            if (e->Tag == ulong.MaxValue || e->Global != global)
            {
                if (global != 0) { if (_globals < LogSize) _globalLog[_globals++] = (int)(e - _tlbBase); else _globals = int.MaxValue; }
                else if (_locals < LogSize) _localLog[_locals++] = (int)(e - _tlbBase);
                else _locals = int.MaxValue;
            }
            e->Tag = page;
            e->Addend = (ulong)host - (la & ~0xFFFUL);
            e->PhysPage = ppage;
            e->Global = global;
        }
        return pa;
    }

    /// <summary>Linear → guest-physical for an instruction fetch, via the execute TLB.</summary>
    internal ulong TranslateFetch(ulong la)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbX + (page & TlbMask);
        if (e->Tag == page) return e->PhysPage | (la & 0xFFF);
        return TranslateAndFill(la, Access.Exec);
    }

    // ---------------- page walk ----------------

    /// <summary>Physical-address width we advertise in CPUID 0x80000008; page-table bits above it are reserved.</summary>
    public const int MaxPhysAddrBits = Dirigent.Machine.Memory.GuestMemory.PhysAddrBits;
    private const ulong PhysAddrMask = ((1UL << MaxPhysAddrBits) - 1) & ~0xFFFUL;
    private const ulong PteP = 1, PteRW = 2, PteUS = 4, PteA = 0x20, PteD = 0x40, PtePS = 0x80;
    private const ulong PteNX = 1UL << 63;

    /// <summary>
    /// Walks the guest page tables (none, 32-bit, PAE or 4-level, per CR0/CR4/EFER), sets accessed/dirty bits and
    /// checks U/S, R/W (with CR0.WP) and NX. Raises #PF with the SDM error code and CR2 on failure; #GP for a
    /// non-canonical address in long mode.
    /// </summary>
    public ulong Translate(ulong la, Access acc, bool user)
    {
        _walkGlobal = false;
        if ((Cr0 & Cr0PG) == 0)
            return LongModeActive ? la : la & 0xFFFF_FFFF;
        if (LongModeActive)
        {
            if ((ulong)((long)(la << 16) >> 16) != la) throw new CpuException(Vec.GP, 0);
        }
        else la &= 0xFFFF_FFFF;
        _walkRestarts = 0;
        ulong pa;
        // A walk returns NoTranslation when an entry it had read changed before its A/D update (SetPteBits).
        do pa = LongModeActive ? Walk4Level(la, acc, user) : (Cr4 & Cr4PAE) != 0 ? WalkPae(la, acc, user) : Walk32(la, acc, user);
        while (pa == NoTranslation);
        return pa;
    }

    private const ulong NoTranslation = ulong.MaxValue;
    private const ulong PteG = 0x100;
    /// <summary>The last walk's leaf entry had its G bit set (TranslateAndFill marks the entry global if CR4.PGE is on).</summary>
    private bool _walkGlobal;

    private ulong ReadPte(ulong pa, bool wide)
    {
        byte* p = _mem.TryGetHostPointer(pa, wide ? 8UL : 4UL);
        if (p == null) return 0; // page tables outside RAM read as not-present
        return wide ? Volatile.Read(ref *(ulong*)p) : Volatile.Read(ref *(uint*)p);
    }

    /// <summary>
    /// Sets accessed/dirty bits in a paging-structure entry read as <paramref name="seen"/>, the way the processor does
    /// it: a locked compare-exchange against that value. False when the entry changed since it was read (another vCPU,
    /// e.g. Linux's ptep_get_and_clear, cleared or rewrote it): the walk must start again, since setting A/D on an
    /// entry that was cleared would corrupt it. After <see cref="MaxWalkRestarts"/> restarts (only a guest rewriting
    /// the entry in a tight loop gets there) the bits are ORed in regardless, so a vCPU never spins here forever.
    /// </summary>
    private bool SetPteBits(ulong pa, bool wide, ulong seen, ulong bits)
    {
        byte* p = _mem.TryGetHostPointer(pa, wide ? 8UL : 4UL);
        if (p == null) return true;
        BeforePteUpdate?.Invoke(pa);
        if (_walkRestarts >= MaxWalkRestarts)
        {
            if (wide) Interlocked.Or(ref *(ulong*)p, bits);
            else Interlocked.Or(ref *(uint*)p, (uint)bits);
        }
        else if (wide ? Interlocked.CompareExchange(ref *(ulong*)p, seen | bits, seen) != seen
                      : Interlocked.CompareExchange(ref *(uint*)p, (uint)(seen | bits), (uint)seen) != (uint)seen)
        {
            _walkRestarts++;
            return false;
        }
        _codeCache.NotifyWrite(pa, wide ? 8 : 4, this);
        return true;
    }

    private const int MaxWalkRestarts = 64;
    /// <summary>Test hook: called with the entry's address between the walk's read of it and its A/D update.</summary>
    internal Action<ulong>? BeforePteUpdate;
    // Restarts of the walk in progress (reset by Translate).
    private int _walkRestarts;

    private CpuException PageFault(ulong la, Access acc, bool user, bool present, bool rsvd)
    {
        uint ec = 0;
        if (present) ec |= 1;
        if (acc == Access.Write) ec |= 2;
        if (user) ec |= 4;
        if (rsvd) ec |= 8;
        if (acc == Access.Exec && (Efer & EferNXE) != 0 && ((Cr4 & Cr4PAE) != 0)) ec |= 16;
        Cr2 = la;
        return new CpuException(Vec.PF, ec);
    }

    private void CheckLeaf(ulong la, Access acc, bool user, ulong rights, bool nx)
    {
        bool uok = (rights & PteUS) != 0, wok = (rights & PteRW) != 0;
        if (user && !uok) throw PageFault(la, acc, user, true, false);
        if (acc == Access.Write && !wok && (user || (Cr0 & Cr0WP) != 0)) throw PageFault(la, acc, user, true, false);
        if (acc == Access.Exec && nx) throw PageFault(la, acc, user, true, false);
    }

    private static readonly ulong RsvdHigh = ((1UL << 52) - 1) & ~((1UL << MaxPhysAddrBits) - 1);

    private ulong Walk4Level(ulong la, Access acc, bool user)
    {
        bool nxe = (Efer & EferNXE) != 0;
        ulong table = Cr3 & PhysAddrMask;
        ulong rights = PteRW | PteUS;
        bool nx = false;
        for (int level = 3; level >= 0; level--)
        {
            int shift = 12 + 9 * level;
            ulong ea = table + (((la >> shift) & 0x1FF) << 3);
            ulong e = ReadPte(ea, true);
            if ((e & PteP) == 0) throw PageFault(la, acc, user, false, false);
            bool leaf = level == 0 || (level <= 2 && (e & PtePS) != 0);
            ulong pageMask = (1UL << shift) - 1;
            // Large-page frames must be aligned: bits 12..shift-1 other than PAT (bit 12) are reserved.
            bool misaligned = leaf && level > 0 && (e & pageMask & ~0x1FFFUL) != 0;
            if ((e & RsvdHigh) != 0 || (!nxe && (e & PteNX) != 0) || (level == 3 && (e & PtePS) != 0) || misaligned)
                throw PageFault(la, acc, user, true, true);
            rights &= e;
            nx |= nxe && (e & PteNX) != 0;
            if (leaf)
            {
                CheckLeaf(la, acc, user, rights, nx);
                ulong need = PteA | (acc == Access.Write ? PteD : 0);
                if ((e & need) != need && !SetPteBits(ea, true, e, need)) return NoTranslation;
                _walkGlobal = (e & PteG) != 0;
                return (e & PhysAddrMask & ~pageMask) | (la & pageMask);
            }
            // Non-leaf accessed bits are set as the walk passes, even if it later faults (SDM 4.8).
            if ((e & PteA) == 0 && !SetPteBits(ea, true, e, PteA)) return NoTranslation;
            table = e & PhysAddrMask;
        }
        throw new InvalidOperationException("unreachable");
    }

    private ulong WalkPae(ulong la, Access acc, bool user)
    {
        bool nxe = (Efer & EferNXE) != 0;
        ulong pdpte = ReadPte((Cr3 & 0xFFFF_FFE0UL) + ((la >> 30) & 3) * 8, true);
        if ((pdpte & PteP) == 0) throw PageFault(la, acc, user, false, false);
        ulong rights = PteRW | PteUS;
        bool nx = false;
        ulong table = pdpte & PhysAddrMask;
        for (int level = 1; level >= 0; level--)
        {
            int shift = 12 + 9 * level;
            ulong ea = table + (((la >> shift) & 0x1FF) << 3);
            ulong e = ReadPte(ea, true);
            if ((e & PteP) == 0) throw PageFault(la, acc, user, false, false);
            if ((e & RsvdHigh) != 0 || (!nxe && (e & PteNX) != 0)) throw PageFault(la, acc, user, true, true);
            rights &= e;
            nx |= nxe && (e & PteNX) != 0;
            if (level == 0 || (e & PtePS) != 0)
            {
                CheckLeaf(la, acc, user, rights, nx);
                ulong need = PteA | (acc == Access.Write ? PteD : 0);
                if ((e & need) != need && !SetPteBits(ea, true, e, need)) return NoTranslation;
                _walkGlobal = (e & PteG) != 0;
                ulong pageMask = (1UL << shift) - 1;
                return (e & PhysAddrMask & ~pageMask) | (la & pageMask);
            }
            if ((e & PteA) == 0 && !SetPteBits(ea, true, e, PteA)) return NoTranslation;
            table = e & PhysAddrMask;
        }
        throw new InvalidOperationException("unreachable");
    }

    private ulong Walk32(ulong la, Access acc, bool user)
    {
        ulong pdeAddr = (Cr3 & 0xFFFF_F000UL) + ((la >> 22) << 2);
        ulong pde = ReadPte(pdeAddr, false);
        if ((pde & PteP) == 0) throw PageFault(la, acc, user, false, false);
        if ((pde & PtePS) != 0 && (Cr4 & Cr4PSE) != 0)
        {
            CheckLeaf(la, acc, user, pde, false);
            ulong need4m = PteA | (acc == Access.Write ? PteD : 0);
            if ((pde & need4m) != need4m && !SetPteBits(pdeAddr, false, pde, need4m)) return NoTranslation;
            _walkGlobal = (pde & PteG) != 0;
            // PSE-36: bits 13..20 of the PDE are physical-address bits 32..39.
            ulong frame = (pde & 0xFFC0_0000UL) | (((pde >> 13) & 0xFF) << 32);
            return frame | (la & 0x3F_FFFF);
        }
        ulong pteAddr = (pde & 0xFFFF_F000UL) + (((la >> 12) & 0x3FF) << 2);
        ulong pte = ReadPte(pteAddr, false);
        if ((pte & PteP) == 0) throw PageFault(la, acc, user, false, false);
        CheckLeaf(la, acc, user, pde & pte, false);
        if ((pde & PteA) == 0 && !SetPteBits(pdeAddr, false, pde, PteA)) return NoTranslation;
        ulong need = PteA | (acc == Access.Write ? PteD : 0);
        if ((pte & need) != need && !SetPteBits(pteAddr, false, pte, need)) return NoTranslation;
        _walkGlobal = (pte & PteG) != 0;
        return (pte & 0xFFFF_F000UL) | (la & 0xFFF);
    }
}
