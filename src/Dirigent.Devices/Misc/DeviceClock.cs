using Dirigent.Machine.Time;

namespace Dirigent.Devices.Misc;

/// <summary>
/// The slice of <see cref="VirtualClock"/> the timer-driven devices use: current time and one-shot callbacks.
/// Devices take a <see cref="VirtualClock"/> in their public constructors; tests substitute a hand-advanced clock
/// through the internal constructors so timing behaviour is checked exactly, not against a loaded host.
/// </summary>
internal abstract class DeviceClock
{
    public abstract long NowNs { get; }

    /// <summary>Runs the callback (on some other thread, never inline) once NowNs reaches the deadline; returns
    /// the cancel action.</summary>
    public abstract Action Schedule(long deadlineNs, Action callback);

    public static DeviceClock From(VirtualClock clock) => new Virtual(clock);

    private sealed class Virtual(VirtualClock clock) : DeviceClock
    {
        public override long NowNs => clock.NowNs;

        public override Action Schedule(long deadlineNs, Action callback)
        {
            var entry = clock.Schedule(deadlineNs, callback);
            return entry.Cancel;
        }
    }
}
