using System.Diagnostics;

namespace Dirigent.Machine.Time;

/// <summary>
/// The one clock every virtual timer (PIT, RTC, APIC timer, TSC) derives from: host monotonic time in nanoseconds
/// since the VM was created, so devices agree with each other and with the TSC.
/// </summary>
public sealed class VirtualClock : IDisposable
{
    private readonly long _epoch = Stopwatch.GetTimestamp();
    private readonly PriorityQueue<TimerEntry, long> _queue = new();
    private readonly object _lock = new();
    private readonly Thread _thread;
    private readonly AutoResetEvent _changed = new(false);
    private volatile bool _disposed;
    private long _seq;

    public VirtualClock()
    {
        _thread = new Thread(TimerLoop) { IsBackground = true, Name = "dirigent-timers" };
        _thread.Start();
    }

    /// <summary>Nanoseconds since the VM started.</summary>
    public long NowNs => (long)((double)(Stopwatch.GetTimestamp() - _epoch) * 1e9 / Stopwatch.Frequency);

    public sealed class TimerEntry
    {
        internal long Deadline;
        internal Action Callback = null!;
        internal volatile bool Cancelled;
        internal long Seq;

        /// <summary>Cancels the callback if it has not run yet.</summary>
        public void Cancel() => Cancelled = true;
    }

    /// <summary>Runs the callback on the timer thread once <see cref="NowNs"/> reaches the deadline.</summary>
    public TimerEntry Schedule(long deadlineNs, Action callback)
    {
        var e = new TimerEntry { Deadline = deadlineNs, Callback = callback };
        lock (_lock)
        {
            e.Seq = ++_seq;
            _queue.Enqueue(e, deadlineNs);
        }
        _changed.Set();
        return e;
    }

    private void TimerLoop()
    {
        while (!_disposed)
        {
            TimerEntry? due = null;
            long waitNs = 50_000_000;
            lock (_lock)
            {
                while (_queue.TryPeek(out var e, out long dl))
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
            // Sleep until the next deadline or until a new, earlier timer arrives.
            _changed.WaitOne(TimeSpan.FromTicks(Math.Max(1, waitNs / 100)));
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _changed.Set();
    }
}
