namespace Dirigent.Devices.Virtio;

/// <summary>
/// Saved state of one split virtqueue: what the driver programmed (size, enable, MSI-X vector, notify offset, ring
/// addresses) and the device's side of the rings: the next avail index to consume, the used index, the used index
/// last signalled (EVENT_IDX), the ring features taken when the queue was enabled, and why it stopped if it did.
/// Chains the driver made available past <see cref="LastAvail"/> are still in guest memory and are processed
/// after restore.
/// </summary>
public sealed record VirtqueueState(
    ushort Size, bool Enabled, ushort MsixVector, ushort NotifyOff,
    ulong DescAddress, ulong DriverAddress, ulong DeviceAddress,
    ushort LastAvail, ushort UsedIdx, ushort SignalledUsed, bool EventIdx, bool Indirect, string? Error);
