using Dirigent.Machine.State;

namespace Dirigent.Devices.Firmware;

/// <summary>The fw_cfg registers (<see cref="FwCfg"/>); the items are rebuilt from the VM spec, not saved.</summary>
public sealed record FwCfgState : ISavedState
{
    public static int FormatVersion => 1;
    /// <summary>The selected key as the guest wrote it.</summary>
    public ushort Selector;
    /// <summary>How far into the selected item the data port / DMA has read.</summary>
    public uint Offset;
    /// <summary>The high half of the DMA address, written at 0x514 and not yet used.</summary>
    public uint DmaAddressHigh;
}
