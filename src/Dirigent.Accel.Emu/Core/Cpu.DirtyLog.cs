namespace Dirigent.Accel.Emu.Core;

public sealed unsafe partial class Cpu
{
    // Dirty logging for live migration, QEMU-style, through the soft TLB.
    //
    // A store reaches RAM either through a write-TLB entry (the fast path: no hook at all) or through a slow path that
    // calls CodeCache.NotifyWrite (which marks the page in the dirty log). So a page is logged when a write entry for
    // it is filled, and again when that entry is dropped, whatever drops it (eviction by another fill, CR3/INVLPG
    // flushes, the page becoming code, or a flush requested by CollectDirtyPages). Every fast-path store lies between
    // its entry's fill and its drop, so its page is marked at a moment after the store too: a harvest that follows
    // the drop sees it, and the page's contents sent after that harvest include the store. CollectDirtyPages makes
    // every vCPU drop its write entries, so no store made before it returns can stay unmarked until after a harvest
    // that follows it. While logging is off the marks are skipped (one flag test per TLB fill and flush, nothing per
    // instruction).
    //
    // The drop requested by CollectDirtyPages is a safe-point request (Cpu.SafePoint.cs): it never touches the TLB of
    // a thread that is executing guest code. A vCPU that is not executing has its entries dropped by the requester at
    // once, which also keeps a vCPU that never runs again (the VM paused for the final round) from holding unmarked
    // stores; a running one drops them at its next block boundary.

    /// <summary>
    /// Any thread: asks this vCPU to drop its write-TLB entries (logging their pages when dirty logging is on); pass the
    /// result to <see cref="WaitSafePoint"/>. Posting to every vCPU before waiting lets them all work at once.
    /// </summary>
    internal SafePointRequest? PostWriteTlbDrop() => PostSafePoint(s_dropWriteEntries);

    private static readonly Action<Cpu> s_dropWriteEntries = c => c.DropWriteEntries();

    /// <summary>Drops both privilege levels' write entries, logging their pages when dirty logging is on.</summary>
    private void DropWriteEntries()
    {
        bool log = _mem.DirtyLog.Enabled;
        for (int t = 0; t < 2; t++)
        {
            TlbEntry* w = _tlbBase + (t * 3 + 1) * TlbSize;
            for (int k = 0; k < TlbSize; k++)
            {
                if (w[k].Tag == ulong.MaxValue) continue;
                if (log) _mem.DirtyLog.MarkPage(w[k].PhysPage);
                w[k].Tag = ulong.MaxValue;
            }
        }
    }

    /// <summary>A write entry is about to be replaced by one for <paramref name="newPhysPage"/> (dirty logging on).</summary>
    private void LogWriteFill(TlbEntry* e, ulong newPhysPage)
    {
        if (e->Tag != ulong.MaxValue) _mem.DirtyLog.MarkPage(e->PhysPage);
        _mem.DirtyLog.MarkPage(newPhysPage);
    }
}
