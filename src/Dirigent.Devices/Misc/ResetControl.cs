using Dirigent.Machine;
using Dirigent.Machine.Bus;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Misc;

/// <summary>
/// PIIX reset control register at port 0xCF9: bit 1 selects a hard reset, bit 2 (RST_CPU) starts the reset.
/// Linux's "reboot=pci" and the FADT reset register (0xCF9 / 0x06) use it. Both reset kinds reset the machine.
/// </summary>
public sealed class ResetControl(MachineModel vm) : IPortDevice, ILifecycle
{
    private const byte SysRst = 0x02, RstCpu = 0x04, FullReset = 0x08;
    private readonly object _lock = new();
    private byte _value;

    /// <summary>Power-on value 0 (the reset kind bits do not survive the reset they select).</summary>
    public void Reset() { lock (_lock) _value = 0; }

    public uint Read(ushort offset, int size)
    {
        uint v;
        lock (_lock) v = offset == 0 ? _value : 0xFFu;
        return size switch { 2 => v | 0xFF00, 4 => v | 0xFFFF_FF00, _ => v };
    }

    public void Write(ushort offset, int size, uint value)
    {
        if (offset != 0) return;
        lock (_lock) _value = (byte)(value & (SysRst | FullReset));
        if ((value & RstCpu) != 0) vm.RequestPowerEvent(PowerEventKind.Reset);
    }
}
