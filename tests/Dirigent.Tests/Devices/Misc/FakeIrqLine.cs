using Dirigent.Machine.Interrupts;

namespace Dirigent.Tests.Devices.Misc;

/// <summary>An IRQ line that records its level and counts rising edges, for device tests.</summary>
public sealed class FakeIrqLine : IIrqLine
{
    private readonly object _lock = new();
    private bool _level;
    private int _risingEdges;

    public bool Level { get { lock (_lock) return _level; } }
    public int RisingEdges { get { lock (_lock) return _risingEdges; } }

    public void Set(bool level)
    {
        lock (_lock)
        {
            if (level && !_level) _risingEdges++;
            _level = level;
        }
    }

    /// <summary>
    /// Polls until the condition holds; the timeout is a hang guard (generous: a loaded 2-core host can stall a
    /// worker thread for seconds), never a statement about how fast a device is. Returns whether it held.
    /// </summary>
    public static bool WaitFor(Func<bool> condition, int timeoutMs = 60_000) =>
        SpinWait.SpinUntil(condition, timeoutMs);
}
