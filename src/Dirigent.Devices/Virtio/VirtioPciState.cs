using Dirigent.Devices.Pci;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Net;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Virtio;

/// <summary>
/// Saved state of a virtio PCI device: the PCI function (config space, MSI-X), the transport's registers (device
/// status, feature selects, the driver's and the negotiated features, queue select, config generation, ISR, config
/// MSI-X vector, whether the device was activated at DRIVER_OK, why DEVICE_NEEDS_RESET was set), every queue, and
/// the device type's own state in the field for its type (null for the others; the entropy device has none).
/// </summary>
public sealed record VirtioPciState(
    PciFunctionState Function,
    ushort DeviceType,
    byte Status,
    uint DeviceFeatureSelect,
    uint DriverFeatureSelect,
    ulong DriverFeatures,
    ulong NegotiatedFeatures,
    ushort QueueSelect,
    byte ConfigGeneration,
    byte Isr,
    ushort ConfigMsixVector,
    bool Active,
    string? NeedsResetReason,
    VirtqueueState[] Queues,
    VirtioNetState? Net = null,
    VirtioBlockState? Block = null) : ISavedState
{
    public static int FormatVersion => 1;
}
