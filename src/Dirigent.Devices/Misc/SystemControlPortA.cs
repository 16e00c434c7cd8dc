using Dirigent.Machine;
using Dirigent.Machine.Bus;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Misc;

/// <summary>
/// System control port A (port 0x92, "fast A20 and init"): bit 1 gates A20 (stored only: the machine never wraps
/// addresses at 1 MiB), a 0-to-1 transition of bit 0 resets the CPU.
/// </summary>
public sealed class SystemControlPortA(MachineModel vm) : IPortDevice, ILifecycle
{
    private const byte FastReset = 0x01, FastA20 = 0x02;
    private readonly object _lock = new();
    private byte _value = FastA20;

    /// <summary>Power-on value: A20 enabled (as firmware leaves it), no reset pending.</summary>
    public void Reset() { lock (_lock) _value = FastA20; }

    public bool A20Enabled { get { lock (_lock) return (_value & FastA20) != 0; } }

    public uint Read(ushort offset, int size)
    {
        uint v;
        lock (_lock) v = offset == 0 ? _value : 0xFFu;
        return size switch { 2 => v | 0xFF00, 4 => v | 0xFFFF_FF00, _ => v };
    }

    public void Write(ushort offset, int size, uint value)
    {
        if (offset != 0) return;
        bool reset;
        lock (_lock)
        {
            reset = (_value & FastReset) == 0 && (value & FastReset) != 0;
            // The reset bit is a strobe: it reads back clear once the reset has been requested.
            _value = (byte)(value & ~FastReset);
        }
        if (reset) vm.RequestPowerEvent(PowerEventKind.Reset);
    }
}
