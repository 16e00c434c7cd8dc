using Dirigent.Machine.State;

namespace Dirigent.Devices.Timer;

/// <summary>The MC146818 RTC and its CMOS RAM (<see cref="CmosRtc"/>).</summary>
public sealed record CmosRtcState : ISavedState
{
    public static int FormatVersion => 1;
    /// <summary>
    /// The 128 bytes: time registers 0x00-0x09 and the century byte (meaningful while SET holds the clock), the
    /// alarm bytes 0x01/0x03/0x05, registers A-D at 0x0A-0x0D (C with its PF/AF/UF/IRQF flags) and the RAM.
    /// </summary>
    public byte[] Cmos = new byte[128];
    /// <summary>Port 0x70: the selected register (0..0x7F) and the NMI-disable bit.</summary>
    public byte Index;
    public bool NmiDisabled;
    /// <summary>Guest wall-clock time at the save, in DateTime ticks (100 ns) of the time the guest keeps.</summary>
    public long GuestTimeTicks;
    /// <summary>Register B's SET bit holds the clock: the time registers keep what the guest wrote.</summary>
    public bool Frozen;
    /// <summary>VM ns since periodic/update/alarm events were last accounted into register C.</summary>
    public long NsSinceEventCheck;
}
