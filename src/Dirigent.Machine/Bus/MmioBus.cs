namespace Dirigent.Machine.Bus;

/// <summary>A device's view of an MMIO range. Offsets are relative to the range start; size is 1, 2, 4 or 8.</summary>
public interface IMmioDevice
{
    ulong Read(ulong offset, int size);
    void Write(ulong offset, int size, ulong value);
}

/// <summary>
/// Guest-physical MMIO dispatch. Accesses that hit no device read as all-ones and are dropped, as on a PC's open bus.
/// </summary>
public sealed class MmioBus
{
    private readonly record struct Range(ulong Start, ulong Length, IMmioDevice Device);
    private volatile Range[] _ranges = [];
    private readonly object _lock = new();

    public void Register(ulong start, ulong length, IMmioDevice device)
    {
        if (length == 0 || start + length < start) throw new ArgumentOutOfRangeException(nameof(length));
        lock (_lock)
        {
            foreach (var r in _ranges)
                if (start < r.Start + r.Length && r.Start < start + length)
                    throw new InvalidOperationException($"MMIO range 0x{start:x}+0x{length:x} overlaps 0x{r.Start:x}");
            var list = _ranges.ToList();
            list.Add(new Range(start, length, device));
            list.Sort((a, b) => a.Start.CompareTo(b.Start));
            _ranges = list.ToArray();
        }
    }

    public void Unregister(IMmioDevice device)
    {
        lock (_lock) _ranges = _ranges.Where(r => r.Device != device).ToArray();
    }

    private bool Find(ulong addr, out Range range)
    {
        foreach (var r in _ranges)
            if (addr - r.Start < r.Length) { range = r; return true; }
        range = default;
        return false;
    }

    public ulong Read(ulong addr, int size)
    {
        if (Find(addr, out var r)) return r.Device.Read(addr - r.Start, size);
        return size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
    }

    public void Write(ulong addr, int size, ulong value)
    {
        if (Find(addr, out var r)) r.Device.Write(addr - r.Start, size, value);
    }
}
