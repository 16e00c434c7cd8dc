using System.Diagnostics;
using Dirigent.Machine.State;

namespace Dirigent.Machine.Time;

/// <summary>The VM clock's saved state: VM time at the save.</summary>
public sealed record ClockState : ISavedState
{
    public static int FormatVersion => 1;
    /// <summary>Nanoseconds of VM time (time the VM has run) when it was saved.</summary>
    public long NowNs;
}

/// <summary>
/// VM time: the one clock every virtual timer (PIT, RTC, APIC timer, ACPI PM timer, TSC, device deadlines) derives
/// from, in nanoseconds. It advances with the host's monotonic clock only while it runs: <see cref="Stop"/> freezes
/// it (a paused VM sees no time pass, so no burst of timer interrupts follows a resume) and timers are not fired while
/// it is stopped; <see cref="Save"/>/<see cref="Restore"/> carry it across snapshots and migration. A new clock runs.
/// </summary>
public sealed class VirtualClock : IStateful<ClockState>, IDisposable
{
    private readonly PriorityQueue<TimerEntry, long> _queue = new();
    private readonly object _lock = new();
    private readonly Thread _thread;
    private readonly HostWait _changed = new();
    private volatile bool _disposed;
    private long _seq;
    // VM time = (host timestamp - _epoch) scaled, while running; _frozenNs while stopped.
    private long _epoch = Stopwatch.GetTimestamp();
    private volatile bool _running = true;
    private long _frozenNs;
    // Instruction time (record/replay): while running, VM time = _itBaseNs + (retired - _itBaseCount) * _itNsPer.
    private Func<ulong>? _icount;
    private long _itNsPer, _itBaseNs;
    private ulong _itBaseCount;
    // The earliest queued deadline (stale-early after a cancel), for the vCPU's check at each block boundary.
    private long _nextDeadline = long.MaxValue;

    public VirtualClock()
    {
        _thread = new Thread(TimerLoop) { IsBackground = true, Name = "dirigent-timers" };
        _thread.Start();
    }

    /// <summary>Nanoseconds of VM time.</summary>
    public long NowNs
    {
        get
        {
            if (!_running) return Volatile.Read(ref _frozenNs);
            if (_icount is { } ic) return InstructionNs(ic());
            return HostToVm(Stopwatch.GetTimestamp(), Volatile.Read(ref _epoch));
        }
    }

    private long InstructionNs(ulong count) => Volatile.Read(ref _itBaseNs) + (long)(count - _itBaseCount) * _itNsPer;

    /// <summary>
    /// Switches to instruction time, as QEMU's -icount: VM time advances by <paramref name="nsPerInstruction"/> for
    /// each instruction <paramref name="retired"/> counts, and only then; timers no longer fire on the timer thread
    /// but where the (single) vCPU calls <see cref="RunDueTimers"/>, at instruction boundaries, so where they fire is
    /// a function of the instruction count. A vCPU with nothing to do but wait <see cref="Advance"/>s time to the next
    /// deadline instead of sleeping. VM time starts again from 0 (a record and its replays start from the same
    /// time, not from however long the VM took to build). Call before the VM runs.
    /// </summary>
    public void UseInstructionTime(Func<ulong> retired, long nsPerInstruction)
    {
        lock (_lock)
        {
            _itNsPer = nsPerInstruction;
            _itBaseCount = retired();
            _itBaseNs = 0;
            _frozenNs = 0;
            _icount = retired;
        }
        _changed.Set();
    }

    public bool InstructionTime => _icount != null;

    /// <summary>The earliest timer deadline (VM ns), or long.MaxValue; may be early by a cancelled timer.</summary>
    public long NextDeadlineNs => Volatile.Read(ref _nextDeadline);

    /// <summary>Instruction time: moves VM time forward by <paramref name="deltaNs"/> (an idle vCPU skipping to a deadline).</summary>
    public void Advance(long deltaNs)
    {
        if (deltaNs <= 0) return;
        lock (_lock)
        {
            if (_running) Volatile.Write(ref _itBaseNs, _itBaseNs + deltaNs);
            else _frozenNs += deltaNs;
        }
    }

    /// <summary>Instruction time: runs, on the calling thread (the vCPU's), every callback whose deadline has passed.</summary>
    public void RunDueTimers()
    {
        while (true)
        {
            TimerEntry? due = null;
            lock (_lock)
            {
                while (_queue.TryPeek(out var e, out long dl))
                {
                    if (e.Cancelled) { _queue.Dequeue(); continue; }
                    if (_running && dl <= NowNs) due = _queue.Dequeue();
                    break;
                }
                Volatile.Write(ref _nextDeadline, _queue.TryPeek(out _, out long head) ? head : long.MaxValue);
            }
            if (due == null) return;
            try { due.Callback(); }
            catch (Exception ex) { Console.Error.WriteLine($"dirigent: timer callback failed: {ex.Message}"); }
        }
    }

    private static long HostToVm(long ts, long epoch) => (long)((double)(ts - epoch) * 1e9 / Stopwatch.Frequency);

    /// <summary>Freezes VM time (pause). Idempotent.</summary>
    public void Stop()
    {
        lock (_lock)
        {
            if (!_running) return;
            _frozenNs = _icount is { } ic ? InstructionNs(ic()) : HostToVm(Stopwatch.GetTimestamp(), _epoch);
            _running = false;
        }
        _changed.Set();
    }

    /// <summary>Lets VM time advance again from where it stopped. Idempotent.</summary>
    public void Start()
    {
        lock (_lock)
        {
            if (_running) return;
            SetEpochFor(_frozenNs);
            _running = true;
        }
        _changed.Set();
    }

    private void SetEpochFor(long vmNs)
    {
        if (_icount is { } ic)
        {
            _itBaseCount = ic();
            Volatile.Write(ref _itBaseNs, vmNs);
            return;
        }
        Volatile.Write(ref _epoch, Stopwatch.GetTimestamp() - (long)((double)vmNs * Stopwatch.Frequency / 1e9));
    }

    /// <summary>The clock has no power-on state of its own to return to: VM time keeps counting across a reboot,
    /// as a PC's does; the devices reset their own timers.</summary>
    public void Reset() { }

    public ClockState Save() => new() { NowNs = NowNs };

    /// <summary>Sets VM time (timers already queued keep their VM-time deadlines); the clock stays stopped or running.</summary>
    public void Restore(ClockState state)
    {
        if (state.NowNs < 0) throw new StateRestoreException($"clock: negative VM time {state.NowNs}");
        lock (_lock)
        {
            if (_running) SetEpochFor(state.NowNs);
            else _frozenNs = state.NowNs;
        }
        _changed.Set();
    }

    public sealed class TimerEntry
    {
        internal long Deadline;
        internal Action Callback = null!;
        internal volatile bool Cancelled;
        internal long Seq;

        /// <summary>Cancels the callback if it has not run yet.</summary>
        public void Cancel() => Cancelled = true;
    }

    /// <summary>Runs the callback on the timer thread once <see cref="NowNs"/> reaches the deadline (VM time).</summary>
    public TimerEntry Schedule(long deadlineNs, Action callback)
    {
        var e = new TimerEntry { Deadline = deadlineNs, Callback = callback };
        bool earliest;
        lock (_lock)
        {
            e.Seq = ++_seq;
            // The timer thread sleeps until the queue's head: only a new head needs to wake it. A guest reprograms
            // its APIC timer on every tick, and waking the thread for each later deadline kept a host core busy.
            earliest = !_queue.TryPeek(out _, out long head) || deadlineNs < head;
            _queue.Enqueue(e, deadlineNs);
            if (deadlineNs < _nextDeadline) Volatile.Write(ref _nextDeadline, deadlineNs);
        }
        if (earliest) _changed.Set();
        return e;
    }

    private void TimerLoop()
    {
        while (!_disposed)
        {
            TimerEntry? due = null;
            // With no timer due sooner, sleep up to a second: Schedule/Stop/Start/Restore wake the loop, so a longer
            // sleep only saves an idle VM's wake-ups.
            long waitNs = 1_000_000_000;
            lock (_lock)
            {
                // Instruction time: the vCPU fires the timers (RunDueTimers); this thread only waits to be disposed.
                while (_running && _icount == null && _queue.TryPeek(out var e, out long dl))
                {
                    if (e.Cancelled) { _queue.Dequeue(); continue; }
                    long now = NowNs;
                    if (dl <= now) { due = _queue.Dequeue(); break; }
                    waitNs = Math.Min(waitNs, dl - now);
                    break;
                }
            }
            if (due != null)
            {
                try { due.Callback(); }
                catch (Exception ex) { Console.Error.WriteLine($"dirigent: timer callback failed: {ex.Message}"); }
                continue;
            }
            // Sleep until the next deadline, a new earlier timer, or a stop/start/restore.
            _changed.Wait(waitNs);
            Interlocked.Increment(ref _wakeups);
        }
    }

    private long _wakeups;

    /// <summary>How often the timer thread has woken from its wait (a busy-polling timer thread shows here).</summary>
    public long TimerThreadWakeups => Interlocked.Read(ref _wakeups);

    /// <summary>
    /// Stops the timer thread and waits until no callback runs any more: the machine frees guest memory right after,
    /// and a device timer still running would touch it (unless a callback itself disposes the clock).
    /// </summary>
    public void Dispose()
    {
        _disposed = true;
        _changed.Set();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
            _changed.Dispose();
        }
    }
}
