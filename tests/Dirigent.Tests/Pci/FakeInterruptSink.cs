using Dirigent.Machine.Interrupts;
using Dirigent.Tests.Devices.Misc;

namespace Dirigent.Tests.Pci;

/// <summary>An interrupt sink that records the lines devices take and the MSIs they send.</summary>
public sealed class FakeInterruptSink : IInterruptSink
{
    private readonly object _lock = new();
    private readonly List<(ulong Address, uint Data)> _msis = new();
    public Dictionary<int, FakeIrqLine> Lines { get; } = new();

    public IIrqLine Line(int isaIrqOrGsi)
    {
        lock (_lock)
        {
            var l = new FakeIrqLine();
            Lines[isaIrqOrGsi] = l;
            return l;
        }
    }

    public void SignalMsi(ulong address, uint data)
    {
        lock (_lock) _msis.Add((address, data));
    }

    public List<(ulong Address, uint Data)> Msis { get { lock (_lock) return _msis.ToList(); } }
    public int MsiCount { get { lock (_lock) return _msis.Count; } }
}
