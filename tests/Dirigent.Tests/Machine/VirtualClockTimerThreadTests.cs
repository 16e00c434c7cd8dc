using Dirigent.Machine.Time;

namespace Dirigent.Tests.Machine;

/// <summary>
/// The timer thread sleeps until the next deadline, however near, instead of polling: .NET's wait handles take whole
/// milliseconds, and a deadline under 1 ms away used to become a zero wait, so the thread spun for the last
/// millisecond before every timer (15% of a host core under a guest's 250 Hz tick). Counted in wake-ups of the
/// thread, not in host time: a spinning thread wakes thousands of times per millisecond, a sleeping one once or twice.
/// </summary>
public sealed class VirtualClockTimerThreadTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task ATimerDueInUnderAMillisecondFiresWithoutPolling()
    {
        using var clock = new VirtualClock();
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long before = clock.TimerThreadWakeups;
        clock.Schedule(clock.NowNs + 700_000, () => fired.TrySetResult());
        await fired.Task.WaitAsync(Hang);
        long wakeups = clock.TimerThreadWakeups - before;
        Assert.True(wakeups <= 10, $"the timer thread woke {wakeups} times for one timer 0.7 ms away");
    }

    [Fact]
    public async Task AChainOfShortTimersFiresInOrderAndTheThreadSleepsBetweenThem()
    {
        using var clock = new VirtualClock();
        const int Count = 40;
        var order = new List<int>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long before = clock.TimerThreadWakeups;
        void Next(int k)
        {
            // Each callback (on the timer thread) schedules the next one 150 µs of VM time later.
            lock (order) order.Add(k);
            if (k == Count) { done.TrySetResult(); return; }
            clock.Schedule(clock.NowNs + 150_000, () => Next(k + 1));
        }
        clock.Schedule(clock.NowNs + 150_000, () => Next(1));
        await done.Task.WaitAsync(Hang);
        long wakeups = clock.TimerThreadWakeups - before;
        lock (order) Assert.Equal(Enumerable.Range(1, Count), order);
        Assert.True(wakeups <= 4 * Count, $"the timer thread woke {wakeups} times for {Count} timers 150 µs apart");
    }
}
