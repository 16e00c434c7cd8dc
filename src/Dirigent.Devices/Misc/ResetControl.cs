using Dirigent.Machine;
using Dirigent.Machine.Bus;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Misc;

/// <summary>
/// PIIX3 reset control register at port 0xCF9: bit 2 (RST_CPU) starts a reset, of the kind bit 1 (SYS_RST) selects.
/// A hard reset (SYS_RST set, or bit 3 full reset) resets the whole machine: Linux's "reboot=pci" and the FADT reset
/// register (0xCF9 / 0x06), SeaBIOS's own reboot. A soft reset (SYS_RST clear: 0x04) only asserts INIT to the
/// processors: RAM, devices and the shadowed BIOS stay, so SeaBIOS finds its POST done and takes its resume path,
/// which honours the CMOS shutdown status byte (0x0F) and the resume vector at 40:67 (the warm reset old software
/// uses to leave protected mode).
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
        if ((value & RstCpu) == 0) return;
        if ((value & (SysRst | FullReset)) != 0) vm.RequestPowerEvent(PowerEventKind.Reset);
        else vm.RequestCpuInit();
    }
}
