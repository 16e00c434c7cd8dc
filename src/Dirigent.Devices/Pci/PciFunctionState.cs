using Dirigent.Machine.State;

namespace Dirigent.Devices.Pci;

/// <summary>
/// Saved state of one PCI function: its 256 bytes of configuration space as the guest left them (BARs as programmed,
/// command register, interrupt line, MSI-X Message Control with its enable and function-mask bits, Status.Interrupt
/// for a function asserting INTx), and, for a function with MSI-X, the vector table and the pending-bit array.
/// Restoring it re-establishes BAR decoding on the MMIO bus from Command.Memory and the BAR values.
/// </summary>
public sealed record PciFunctionState(byte[] Config, byte[]? MsixTable, byte[]? MsixPba) : ISavedState
{
    public static int FormatVersion => 1;
}

/// <summary>
/// Saved state of the host bridge: its own configuration space and CONFIG_ADDRESS (0xCF8), the host bridge register
/// that selects what the next CONFIG_DATA access reaches (a vCPU may be stopped between the two accesses).
/// </summary>
public sealed record PciHostBridgeState(PciFunctionState Function, uint ConfigAddress) : ISavedState
{
    public static int FormatVersion => 1;
}
