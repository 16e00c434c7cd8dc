namespace Dirigent.Devices.Pci;

/// <summary>Type 0 configuration header offsets and bits (PCI Local Bus Specification 3.0, chapter 6).</summary>
public static class PciConfig
{
    public const int VendorId = 0x00, DeviceId = 0x02, Command = 0x04, Status = 0x06, RevisionId = 0x08;
    public const int ClassProgIf = 0x09, HeaderType = 0x0E, Bar0 = 0x10, SubsystemVendorId = 0x2C, SubsystemId = 0x2E;
    public const int CapabilitiesPointer = 0x34, InterruptLine = 0x3C, InterruptPin = 0x3D;
    public const int CacheLineSize = 0x0C, LatencyTimer = 0x0D;

    public const ushort CommandIo = 1 << 0, CommandMemory = 1 << 1, CommandBusMaster = 1 << 2, CommandIntxDisable = 1 << 10;
    public const ushort StatusInterrupt = 1 << 3, StatusCapabilitiesList = 1 << 4;

    public const byte CapIdMsix = 0x11, CapIdVendor = 0x09;
    /// <summary>Capabilities live after the 64-byte header.</summary>
    public const int FirstCapability = 0x40;
    public const int BarCount = 6;
}
