namespace Dirigent.Devices.Virtio.Block;

/// <summary>
/// virtio-blk's own part of <see cref="VirtioPciState"/>: the disk the guest saw (capacity in sectors, read-only),
/// so a snapshot is not restored over a different disk. Requests in flight are not part of it: stopping the device
/// completes the one in progress, and the ones not yet taken are still in the rings.
/// </summary>
public sealed record VirtioBlockState(ulong CapacitySectors, bool ReadOnly);
