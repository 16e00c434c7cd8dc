namespace Dirigent.Machine.Bus;

/// <summary>A device's view of a port-I/O range. Offsets are relative to the range start; size is 1, 2 or 4.</summary>
public interface IPortDevice
{
    uint Read(ushort offset, int size);
    void Write(ushort offset, int size, uint value);
}

/// <summary>
/// The 64 KiB x86 I/O port space. Unclaimed ports read as all-ones and swallow writes, like an ISA bus with no device.
/// </summary>
public sealed class IoBus
{
    private readonly IPortDevice?[] _owner = new IPortDevice?[0x10000];
    private readonly ushort[] _base = new ushort[0x10000];
    private readonly object _lock = new();

    public void Register(ushort start, int count, IPortDevice device)
    {
        if (count <= 0 || start + count > 0x10000) throw new ArgumentOutOfRangeException(nameof(count));
        lock (_lock)
        {
            for (int p = start; p < start + count; p++)
                if (_owner[p] != null) throw new InvalidOperationException($"I/O port 0x{p:x} already claimed");
            for (int p = start; p < start + count; p++) { _owner[p] = device; _base[p] = start; }
        }
    }

    public uint Read(ushort port, int size)
    {
        var d = _owner[port];
        if (d == null) return size == 4 ? 0xFFFF_FFFFu : size == 2 ? 0xFFFFu : 0xFFu;
        return d.Read((ushort)(port - _base[port]), size);
    }

    public void Write(ushort port, int size, uint value)
    {
        _owner[port]?.Write((ushort)(port - _base[port]), size, value);
    }
}
