using Dirigent.Machine;
using Dirigent.Machine.Bus;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Misc;

/// <summary>
/// QEMU's isa-debug-exit at <see cref="PcPlatform.DebugExitPort"/>: a write of v ends the VM with exit code
/// (v &lt;&lt; 1) | 1, so a test guest can report status without a console. Byte, word and dword writes are all
/// accepted (QEMU's iosize property); like QEMU's 4-port window, any port of it exits.
/// </summary>
public sealed class DebugExit(MachineModel vm) : IPortDevice, ILifecycle
{
    public const int PortCount = 4;

    /// <summary>Nothing to reset: the port has no state.</summary>
    public void Reset() { }

    public uint Read(ushort offset, int size) => size switch { 1 => 0xFFu, 2 => 0xFFFFu, _ => 0xFFFF_FFFFu };

    public void Write(ushort offset, int size, uint value)
    {
        uint v = size switch { 1 => value & 0xFF, 2 => value & 0xFFFF, _ => value };
        vm.RequestPowerEvent(PowerEventKind.DebugExit, (int)((v << 1) | 1));
    }
}
