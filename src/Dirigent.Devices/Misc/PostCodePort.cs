using Dirigent.Machine.Bus;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Misc;

/// <summary>
/// The POST diagnostic port 0x80. Linux writes it as an I/O delay (outb_p); we keep the last byte for debugging.
/// Reads return 0xFF like an unpopulated POST card.
/// </summary>
public sealed class PostCodePort : IPortDevice, ILifecycle
{
    private volatile byte _last;

    public byte LastValue => _last;

    /// <summary>Nothing written yet (the value is a debugging aid, not saved in snapshots).</summary>
    public void Reset() => _last = 0;

    public uint Read(ushort offset, int size) => size switch { 1 => 0xFFu, 2 => 0xFFFFu, _ => 0xFFFF_FFFFu };

    public void Write(ushort offset, int size, uint value)
    {
        if (offset == 0) _last = (byte)value;
    }
}
