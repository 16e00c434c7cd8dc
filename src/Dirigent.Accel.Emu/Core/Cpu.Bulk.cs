namespace Dirigent.Accel.Emu.Core;

public sealed unsafe partial class Cpu
{
    // Bulk access for REP string instructions: one translation (with the same permission checks and A/D updates as
    // a single access) yields a host pointer for a run of bytes inside one page, so a REP MOVS/STOS can move a
    // page with one memcpy/memset instead of thousands of TLB lookups.

    /// <summary>
    /// Host pointer for reading [la, la+len), which must lie within one page; null when the page is not RAM
    /// (MMIO: the caller falls back to element accesses). Page faults are raised as for a read of la.
    /// </summary>
    internal byte* BulkReadPointer(ulong la, int len)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbR + (page & TlbMask);
        if (e->Tag == page) return (byte*)(la + e->Addend);
        // A data breakpoint in the run: element accesses, each checked on the slow path.
        if (_dataBpArmed && OverlapsDataBp(la, len)) return null;
        ulong pa = TranslateAndFill(la, Access.Read);
        // A watched page (Cpu.Introspection.cs): element accesses, each reported by the slow path.
        if (WatchRefusesFill(la, pa & ~0xFFFUL, Access.Read)) return null;
        return _mem.TryGetHostPointer(pa, (ulong)len);
    }

    /// <summary>
    /// Host pointer for writing [la, la+len) within one page; null when not RAM. After storing, the caller must
    /// pass <paramref name="notifyPa"/> to <see cref="BulkWriteDone"/> so blocks decoded from the page are dropped
    /// (a TLB hit means the page holds no code, so nothing needs notifying then).
    /// </summary>
    internal byte* BulkWritePointer(ulong la, int len, out ulong notifyPa)
    {
        ulong page = la >> 12;
        TlbEntry* e = _tlbW + (page & TlbMask);
        if (e->Tag == page)
        {
            notifyPa = ulong.MaxValue;
            return (byte*)(la + e->Addend);
        }
        if (_dataBpArmed && OverlapsDataBp(la, len)) { notifyPa = ulong.MaxValue; return null; }
        ulong pa = TranslateAndFill(la, Access.Write);
        if (WatchRefusesFill(la, pa & ~0xFFFUL, Access.Write)) { notifyPa = ulong.MaxValue; return null; }
        notifyPa = pa;
        return _mem.TryGetHostPointer(pa, (ulong)len);
    }

    internal void BulkWriteDone(ulong notifyPa, int len)
    {
        if (notifyPa != ulong.MaxValue) _codeCache.NotifyWrite(notifyPa, len, this);
    }
}
