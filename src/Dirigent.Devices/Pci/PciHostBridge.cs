using Dirigent.Machine.State;

namespace Dirigent.Devices.Pci;

/// <summary>
/// The host bridge at 00:00.0 with Intel 440FX (82441FX PMC) IDs 8086:1237, class 06/00/00, no BARs and no
/// interrupt: the ID pair every PC guest knows, so Linux's conf1 sanity check (a host bridge on bus 0) passes.
/// CONFIG_ADDRESS belongs to it (on the 440FX it is a register of the PMC), so its saved state carries that too.
/// </summary>
public sealed class PciHostBridge : PciDevice, IStateful<PciHostBridgeState>
{
    public const ushort IntelVendorId = 0x8086, I440FxDeviceId = 0x1237;

    /// <summary>The 440FX's PAM0..PAM6 registers (config 0x59-0x5F) that steer shadow RAM.</summary>
    public const int PamFirst = 0x59, PamCount = 7;

    private readonly Action<int, byte>? _pamWritten;

    public PciHostBridge() : base(IntelVendorId, I440FxDeviceId, 0x06_00_00, 2, 0x1AF4, 0x1100, 0) { }

    /// <param name="pamWritten">Called with the PAM index (0..6) and value after each guest write to a PAM register
    /// (their read and write enable bits, 0x33, are writable only when this is given: firmware boot).</param>
    public PciHostBridge(Action<int, byte> pamWritten) : this()
    {
        _pamWritten = pamWritten;
        SetWritable(PamFirst, PamCount, 0x33);
    }

    protected override void OnConfigWritten(int offset, int size, uint value)
    {
        if (_pamWritten == null) return;
        for (int o = offset; o < offset + size; o++)
            if (o is >= PamFirst and < PamFirst + PamCount) _pamWritten(o - PamFirst, ConfigBytes[o]);
    }

    public override void ResetConfig()
    {
        if (Bus != null) Bus.ConfigAddress = 0;
        base.ResetConfig();
    }

    public override void RegisterState(StateRegistry registry, string name) => registry.Add<PciHostBridgeState>(name, this);

    public PciHostBridgeState Save() => new(SaveFunction(), Bus?.ConfigAddress ?? 0);

    public void Restore(PciHostBridgeState state)
    {
        if (state.Function == null) throw new StateRestoreException("PCI host bridge: saved state has no configuration space");
        if ((state.ConfigAddress & ~PciBus.ConfigAddressMask) != 0)
            throw new StateRestoreException($"PCI host bridge: CONFIG_ADDRESS 0x{state.ConfigAddress:x8} has reserved bits set");
        CheckFunction(state.Function);
        RestoreFunction(state.Function);
        if (Bus != null) Bus.ConfigAddress = state.ConfigAddress;
    }
}
