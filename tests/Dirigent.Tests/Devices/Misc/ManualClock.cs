using System.Runtime.CompilerServices;
using Dirigent.Devices.Misc;

namespace Dirigent.Tests.Devices.Misc;

/// <summary>A device clock that only moves when the test advances it; due callbacks run in deadline order.</summary>
internal sealed class ManualClock : DeviceClock
{
    private readonly object _lock = new();
    private readonly List<(long Deadline, long Seq, Action Callback, StrongBox<bool> Cancelled)> _timers = new();
    private long _now = 1_000_000_000;
    private long _seq;

    public override long NowNs { get { lock (_lock) return _now; } }

    public int PendingTimers { get { lock (_lock) return _timers.Count(t => !t.Cancelled.Value); } }

    public override Action Schedule(long deadlineNs, Action callback)
    {
        var cancelled = new StrongBox<bool>();
        lock (_lock) _timers.Add((deadlineNs, ++_seq, callback, cancelled));
        return () => cancelled.Value = true;
    }

    public void AdvanceNs(long ns)
    {
        long target;
        lock (_lock) target = _now + ns;
        while (true)
        {
            Action? due = null;
            lock (_lock)
            {
                _timers.RemoveAll(t => t.Cancelled.Value);
                int best = -1;
                for (int i = 0; i < _timers.Count; i++)
                {
                    var t = _timers[i];
                    if (t.Deadline > target) continue;
                    if (best < 0 || t.Deadline < _timers[best].Deadline ||
                        (t.Deadline == _timers[best].Deadline && t.Seq < _timers[best].Seq)) best = i;
                }
                if (best >= 0)
                {
                    var t = _timers[best];
                    _timers.RemoveAt(best);
                    _now = Math.Max(_now, t.Deadline);
                    due = t.Callback;
                }
                else _now = target;
            }
            if (due == null) return;
            due();
        }
    }

    /// <summary>
    /// Moves time on without running the timers that fall due (they run at the next <see cref="AdvanceNs"/>): a VM
    /// clock stopped for a save before its timer thread reached a due timer.
    /// </summary>
    public void SkipNs(long ns) { lock (_lock) _now += ns; }

    public void AdvanceUs(double us) => AdvanceNs((long)(us * 1000));
    public void AdvanceMs(double ms) => AdvanceNs((long)(ms * 1_000_000));
}
