using Dirigent.Devices.Misc;
using Dirigent.Machine.Bus;

namespace Dirigent.Devices.Timer;

/// <summary>
/// System control port B (port 0x61, NMI status and control): bit 0 drives the GATE of PIT counter 2, bit 1 the
/// speaker data enable, bits 2-3 the (unused) parity/channel-check enables. Read-only bits: 4 toggles with every
/// DRAM refresh cycle (15.085 us, derived from the clock so delay loops that count toggles see real time), 5 is
/// PIT counter 2's OUT, 6-7 (IOCHK/SERR) stay clear since we never raise NMIs. The written bits live in the
/// <see cref="Pit8254"/> (its saved state and reset cover them), so this port has no state of its own.
/// </summary>
public sealed class SystemControlPortB(Pit8254 pit) : IPortDevice
{
    private readonly DeviceClock _clock = pit.Clock;
    private const long RefreshPeriodNs = 15_085;

    public uint Read(ushort offset, int size)
    {
        if (offset != 0) return 0xFF;
        byte control = pit.PortBControl;
        bool refresh = ((_clock.NowNs / RefreshPeriodNs) & 1) != 0;
        bool out2 = pit.GetOut(2);
        uint v = (uint)(control & 0x0F) | (refresh ? 0x10u : 0) | (out2 ? 0x20u : 0);
        // Wider reads see open bus above the single port.
        return size switch { 2 => v | 0xFF00, 4 => v | 0xFFFF_FF00, _ => v };
    }

    public void Write(ushort offset, int size, uint value)
    {
        if (offset != 0) return;
        pit.WritePortB((byte)value);
    }
}
