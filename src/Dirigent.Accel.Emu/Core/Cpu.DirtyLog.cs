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
    // The drop requested by CollectDirtyPages never touches the TLB of a thread that is executing guest code: the
    // vCPU honours the request at its next block boundary (the Run loop and the chained inner loop both leave on
    // _pendingEvents) and acknowledges it. A vCPU that is not executing (not in Run, or asleep in HLT) cannot use its
    // TLB while _tlbSync is held, so the requester drops its entries itself, which is that vCPU's implicit
    // acknowledgement; doing it then rather than when the vCPU next runs keeps a vCPU that never runs again (the VM
    // paused for the final round) from holding unmarked stores.

    private readonly object _tlbSync = new();
    // Under _tlbSync: the vCPU thread is between EnterExecution and LeaveExecution and may use its TLB.
    private bool _executing;
    // Under _tlbSync: the managed thread id of the thread in Run while _executing.
    private int _runThread;
    private volatile bool _writeFlushRequested;

    /// <summary>
    /// Test hook: called on the vCPU thread each time it goes to sleep (HLT with nothing deliverable, or waiting for a
    /// SIPI), after it stopped counting as executing.
    /// </summary>
    internal Action? OnIdle;

    /// <summary>
    /// Any thread: asks this vCPU to drop its write-TLB entries (logging their pages when dirty logging is on). A vCPU
    /// that is not executing has them dropped here and now; a running one does it at its next block boundary, which
    /// <see cref="WaitWriteTlbDropped"/> waits for. Posting to every vCPU before waiting lets them all work at once.
    /// </summary>
    internal void PostWriteTlbDrop()
    {
        lock (_tlbSync)
        {
            // Not executing: its TLB is ours while we hold the lock. Asked from the vCPU's own thread (a device handler
            // collecting): waiting for itself would deadlock, and dropping entries mid-instruction is safe (a store
            // under way holds a host pointer, not an entry, and its page was marked when the entry was filled).
            if (!_executing || _runThread == Environment.CurrentManagedThreadId)
            {
                DropWriteEntries();
                return;
            }
            _writeFlushRequested = true;
            // After the flag: DeliverPendingEvents clears _pendingEvents with a full fence and then re-reads the flag.
            _pendingEvents = 1;
        }
    }

    /// <summary>Returns once the drop posted by <see cref="PostWriteTlbDrop"/> is done.</summary>
    internal void WaitWriteTlbDropped()
    {
        lock (_tlbSync)
        {
            while (_writeFlushRequested && _executing) Monitor.Wait(_tlbSync);
            if (_writeFlushRequested)
            {
                // It stopped executing before reaching a block boundary: its TLB is ours while we hold the lock.
                DropWriteEntries();
                _writeFlushRequested = false;
            }
        }
    }

    /// <summary>vCPU thread, at a block boundary with _pendingEvents set.</summary>
    private void HonourWriteFlush()
    {
        lock (_tlbSync)
        {
            if (!_writeFlushRequested) return;
            DropWriteEntries();
            _writeFlushRequested = false;
            Monitor.PulseAll(_tlbSync);
        }
    }

    private void EnterExecution()
    {
        lock (_tlbSync)
        {
            _executing = true;
            _runThread = Environment.CurrentManagedThreadId;
        }
    }

    private void LeaveExecution()
    {
        lock (_tlbSync)
        {
            _executing = false;
            // A requester waiting for our acknowledgement now drops the entries itself.
            Monitor.PulseAll(_tlbSync);
        }
    }

    /// <summary>Sleeps in HLT or wait-for-SIPI until InjectInterrupt/InjectNmi/RequestStop (or a poll interval).</summary>
    private void Idle()
    {
        LeaveExecution();
        try
        {
            OnIdle?.Invoke();
            _wake.Wait(100);
            _wake.Reset();
        }
        finally { EnterExecution(); }
    }

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
