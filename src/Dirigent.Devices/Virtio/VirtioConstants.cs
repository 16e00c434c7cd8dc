namespace Dirigent.Devices.Virtio;

/// <summary>Numbers from the virtio 1.2 specification shared by the transport and the devices.</summary>
public static class VirtioConstants
{
    public const ushort PciVendorId = 0x1AF4;
    /// <summary>Modern (non-transitional) devices: PCI device ID = 0x1040 + virtio device ID (§4.1.2).</summary>
    public const ushort PciDeviceIdBase = 0x1040;

    // Device IDs (§5)
    public const ushort DeviceNet = 1, DeviceBlock = 2, DeviceConsole = 3, DeviceEntropy = 4;

    // Reserved feature bits (§6)
    public const int FeatureRingIndirectDesc = 28, FeatureRingEventIdx = 29, FeatureVersion1 = 32;
    public const ulong RingIndirectDesc = 1UL << FeatureRingIndirectDesc;
    public const ulong RingEventIdx = 1UL << FeatureRingEventIdx;
    public const ulong Version1 = 1UL << FeatureVersion1;

    // Device status (§2.1)
    public const byte StatusAcknowledge = 1, StatusDriver = 2, StatusDriverOk = 4, StatusFeaturesOk = 8;
    public const byte StatusNeedsReset = 64, StatusFailed = 128;

    /// <summary>"No MSI-X vector" in config_msix_vector / queue_msix_vector (§4.1.5.1.2).</summary>
    public const ushort NoVector = 0xFFFF;

    // Split virtqueue flags (§2.7)
    public const ushort DescFlagNext = 1, DescFlagWrite = 2, DescFlagIndirect = 4;
    public const ushort AvailFlagNoInterrupt = 1;
    public const ushort UsedFlagNoNotify = 1;
    public const int DescriptorSize = 16;
    /// <summary>Largest split queue (§2.7: Queue Size up to 32768).</summary>
    public const int MaxQueueSize = 32768;
    /// <summary>Longest indirect table we walk; longer ones are treated as malformed (Linux never builds more than its queue size).</summary>
    public const int MaxIndirectDescriptors = 1024;

    // ISR status bits (§4.1.4.5)
    public const byte IsrQueue = 1, IsrConfig = 2;
}
