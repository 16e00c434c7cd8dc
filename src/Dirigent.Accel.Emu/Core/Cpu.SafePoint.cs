using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    // Safe points: work that must touch a vCPU's private state (its TLB, its current block) on behalf of another
    // thread, without that thread ever touching it while the vCPU executes guest code.
    //
    // A vCPU that is executing (between EnterExecution and LeaveExecution) runs queued work itself at its next block
    // boundary: the Run loop and the chained inner loop both leave on _pendingEvents, and the loop drains the queue
    // inside its `_pendingEvents != 0` branch, so the single-vCPU path pays nothing more. A vCPU that is not executing
    // (not in Run, asleep in HLT or waiting for a SIPI, or itself waiting for another vCPU's safe point) cannot use its
    // state while _tlbSync is held, so the requester runs the work under that lock: the vCPU's implicit
    // acknowledgement. Doing it then, rather than when the vCPU next runs, keeps a vCPU that never runs again (a VM
    // paused for good) from holding the requester up. A request from the vCPU's own thread runs inline: waiting for
    // itself would deadlock, and the work is written to be safe between two accesses of one instruction.
    //
    // A vCPU that waits for another one's safe point stops counting as executing while it waits, so two vCPUs asking
    // each other (or a ring of them) run each other's work instead of deadlocking.

    private readonly object _tlbSync = new();
    // Under _tlbSync: the vCPU thread is between EnterExecution and LeaveExecution and may use its state.
    private bool _executing;
    // Under _tlbSync: work posted while executing, in order.
    private readonly List<SafePointRequest> _safePointQueue = new();
    // _safePointQueue is not empty (set under _tlbSync before _pendingEvents).
    private volatile bool _safePointPending;

    /// <summary>The vCPU whose Run this thread is in, if any.</summary>
    [ThreadStatic] private static Cpu? t_self;

    /// <summary>One posted piece of work; Done under the target's _tlbSync.</summary>
    internal sealed class SafePointRequest(Action<Cpu> work)
    {
        public readonly Action<Cpu> Work = work;
        public bool Done;
    }

    /// <summary>
    /// Test hook: called on the vCPU thread each time it goes to sleep (HLT with nothing deliverable, or waiting for a
    /// SIPI), after it stopped counting as executing.
    /// </summary>
    internal Action? OnIdle;

    /// <summary>
    /// Any thread: the vCPU's state at its next safe point (a block boundary, or now when it does not execute), so
    /// a monitor can look at a running SMP guest without pausing it. The caller must not race a SetState (the VM
    /// serializes both).
    /// </summary>
    public CpuState QueryState()
    {
        CpuState? state = null;
        RunAtSafePoint(c => state = c.GetState());
        return state!;
    }

    /// <summary>Any thread: runs <paramref name="work"/> on this vCPU's state at a safe point and returns when it is done.</summary>
    internal void RunAtSafePoint(Action<Cpu> work) => WaitSafePoint(PostSafePoint(work));

    /// <summary>
    /// Any thread: posts work for this vCPU, or runs it now when the vCPU is not executing or this is its own thread
    /// (then null is returned). Posting to several vCPUs before waiting lets them all work at once.
    /// </summary>
    internal SafePointRequest? PostSafePoint(Action<Cpu> work)
    {
        if (t_self == this)
        {
            work(this);
            return null;
        }
        lock (_tlbSync)
        {
            if (!_executing)
            {
                work(this);
                return null;
            }
            var req = new SafePointRequest(work);
            _safePointQueue.Add(req);
            _safePointPending = true;
            // After the flag: DeliverPendingEvents clears _pendingEvents with a full fence and then re-reads it.
            _pendingEvents = 1;
            return req;
        }
    }

    /// <summary>Returns once a request from <see cref="PostSafePoint"/> is done (by the vCPU, or here if it stopped executing).</summary>
    internal void WaitSafePoint(SafePointRequest? req)
    {
        if (req == null) return;
        // A vCPU thread waiting here is not using its own state: others may run their work on it meanwhile.
        Cpu? self = t_self;
        self?.LeaveExecution();
        try
        {
            lock (_tlbSync)
            {
                while (!req.Done && _executing) Monitor.Wait(_tlbSync);
                if (req.Done) return;
                // It stopped executing before reaching a boundary: its state is ours while we hold the lock.
                _safePointQueue.Remove(req);
                _safePointPending = _safePointQueue.Count != 0;
                req.Work(this);
                req.Done = true;
            }
        }
        finally { self?.EnterExecution(); }
    }

    /// <summary>vCPU thread, at a block boundary with _pendingEvents set: runs the posted work and acknowledges it.</summary>
    private void RunSafePointWork()
    {
        lock (_tlbSync)
        {
            if (_safePointQueue.Count == 0) return;
            foreach (var req in _safePointQueue)
            {
                req.Work(this);
                req.Done = true;
            }
            _safePointQueue.Clear();
            _safePointPending = false;
            Monitor.PulseAll(_tlbSync);
        }
        if (_holdUntil is { } all)
        {
            // Outside _tlbSync and not counting as executing: a requester does the work of the vCPUs that do not
            // reach a boundary themselves, so the count always reaches zero.
            _holdUntil = null;
            LeaveExecution();
            try { all.Wait(); }
            finally { EnterExecution(); }
        }
    }

    // Set by safe-point work on this vCPU's own thread: after the work, wait (executing nothing) until every vCPU has
    // done its part. See EmuAccelerator.OnHooksChanged.
    private CountdownEvent? _holdUntil;

    /// <summary>
    /// Safe-point work, on this vCPU's thread: once the work is done, run no more guest code until
    /// <paramref name="all"/> reaches zero (a rendezvous of all vCPUs).
    /// </summary>
    internal void HoldAfterSafePoint(CountdownEvent all) => _holdUntil = all;

    private void EnterExecution()
    {
        lock (_tlbSync) _executing = true;
    }

    private void LeaveExecution()
    {
        lock (_tlbSync)
        {
            _executing = false;
            // A requester waiting for our acknowledgement now runs its work itself.
            Monitor.PulseAll(_tlbSync);
        }
    }

    private const int IdlePollMs = 1000;

    /// <summary>Sleeps in HLT or wait-for-SIPI until InjectInterrupt/InjectNmi/InjectInit/RequestStop (or a 1 s safety poll).</summary>
    private void Idle()
    {
        LeaveExecution();
        try
        {
            OnIdle?.Invoke();
            // Every wake source sets _wake (interrupt injection, the APIC's kick, INIT/SIPI, stop); the timeout is only
            // a safety net, long enough that an idle VM is not woken by it more than once a second.
            _wake.Wait(IdlePollMs);
            _wake.Reset();
        }
        finally { EnterExecution(); }
    }
}
