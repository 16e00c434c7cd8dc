using Dirigent.Devices.Net;

namespace Dirigent.Devices.Virtio.Net;

/// <summary>
/// virtio-net's own part of <see cref="VirtioPciState"/>: the MAC and link status the guest saw, the receive
/// offloads the driver accepted (re-applied to the new backend) and the packet counters. Receive chains held for
/// a packet the backend kept are given back to the ring when the device stops, so they are not part of it.
/// </summary>
public sealed record VirtioNetState(byte[] Mac, ushort LinkStatus, NetOffloads ReceiveOffloads,
    long RxPackets, long RxDropped, long TxPackets, long TxDropped);
