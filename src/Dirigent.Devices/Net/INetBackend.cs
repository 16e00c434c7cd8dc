namespace Dirigent.Devices.Net;

/// <summary>
/// The host side of a network card: where the frames a guest transmits go and where the frames it receives come
/// from (a TAP interface, or a test double). Every packet that crosses this interface starts with the 12-byte
/// virtio 1.x <c>struct virtio_net_hdr</c> (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers; <see cref="HeaderLength"/>) followed by the Ethernet frame, because that is what a TAP with
/// IFF_VNET_HDR and a 12-byte vnet header size reads and writes: a virtio NIC passes it through without reshaping.
/// What a received header may ask for (a checksum to complete, a segmented packet) is limited to what
/// <see cref="SetReceiveOffloads"/> allowed; a packet sent may use any offload in <see cref="SupportedOffloads"/>,
/// and the backend (the host kernel, for a TAP) completes the checksum or segments it.
/// </summary>
public interface INetBackend : IDisposable
{
    /// <summary>Size of the virtio-net header in front of every packet.</summary>
    public const int HeaderLength = 12;

    /// <summary>Largest packet (header + frame) the backend will deliver or accept.</summary>
    public const int MaxPacketLength = HeaderLength + 65550;

    /// <summary>What the backend is (for messages), e.g. "tap0".</summary>
    string Name { get; }

    /// <summary>Offloads this backend honours end to end, in both directions.</summary>
    NetOffloads SupportedOffloads { get; }

    /// <summary>
    /// What received packets may carry from now on: partial checksums (<see cref="NetOffloads.Checksum"/>) and
    /// which segmentation types; None (the start state): only complete, checksummed frames of link MTU size.
    /// Packets already queued may still carry the previous set.
    /// </summary>
    void SetReceiveOffloads(NetOffloads offloads);

    /// <summary>
    /// Starts delivering received packets to <paramref name="receiver"/>, on a thread of the backend's own. Called
    /// once.
    /// </summary>
    void Start(INetReceiver receiver);

    /// <summary>
    /// Sends one packet (header + frame). Never blocks for long: a packet the host cannot take now is dropped, as a
    /// full transmit queue on real hardware would. Returns false when it was dropped.
    /// </summary>
    bool Send(ReadOnlySpan<byte> packet);

    /// <summary>
    /// The receiver has room again (the guest posted receive buffers) after refusing a packet: the backend retries
    /// the packet it holds. Cheap when nothing is held.
    /// </summary>
    void ReceiveReady();
}

/// <summary>Offloads in the virtio-net header's terms (the values are Linux's TUN_F_* bits).</summary>
[Flags]
public enum NetOffloads
{
    None = 0,
    /// <summary>NEEDS_CSUM: csum_start/csum_offset name a checksum still to be completed.</summary>
    Checksum = 1,
    /// <summary>GSO_TCPV4: a TCP/IPv4 packet to be cut into gso_size segments.</summary>
    Tso4 = 2,
    /// <summary>GSO_TCPV6.</summary>
    Tso6 = 4,
    /// <summary>GSO_ECN: TSO with the ECN CWR bit set.</summary>
    TsoEcn = 8,
}

/// <summary>The device side of a backend: takes received packets.</summary>
public interface INetReceiver
{
    /// <summary>
    /// One received packet (header + frame), valid only during the call. Returns false when there is no room for
    /// it now: the backend keeps it, stops reading (the host queues or drops what follows, as a real link would),
    /// and offers it again after <see cref="INetBackend.ReceiveReady"/>. A packet the receiver will never accept
    /// (the driver is not ready, the frame is malformed) is consumed, returning true.
    /// </summary>
    bool TryReceive(ReadOnlySpan<byte> packet);
}
