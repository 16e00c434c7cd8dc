namespace Dirigent.Devices.Pci;

/// <summary>
/// The host bridge at 00:00.0 with Intel 440FX (82441FX PMC) IDs 8086:1237, class 06/00/00, no BARs and no
/// interrupt: the ID pair every PC guest knows, so Linux's conf1 sanity check (a host bridge on bus 0) passes.
/// </summary>
public sealed class PciHostBridge : PciDevice
{
    public const ushort IntelVendorId = 0x8086, I440FxDeviceId = 0x1237;

    public PciHostBridge() : base(IntelVendorId, I440FxDeviceId, 0x06_00_00, 2, 0x1AF4, 0x1100, 0) { }
}
