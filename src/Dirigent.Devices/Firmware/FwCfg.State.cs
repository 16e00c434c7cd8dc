using Dirigent.Machine.State;

namespace Dirigent.Devices.Firmware;

public sealed partial class FwCfg : IStateful<FwCfgState>
{
    /// <summary>Power-on: signature selected, nothing read, no DMA address half written.</summary>
    public void Reset()
    {
        lock (_lock) { _selector = 0; _offset = 0; _dmaHigh = 0; }
    }

    public FwCfgState Save()
    {
        lock (_lock) return new FwCfgState { Selector = _selector, Offset = _offset, DmaAddressHigh = _dmaHigh };
    }

    public void Restore(FwCfgState state)
    {
        lock (_lock)
        {
            // An offset past the item's end reads as the end (zeros), as it would after reading it all.
            _selector = state.Selector;
            _offset = state.Offset;
            _dmaHigh = state.DmaAddressHigh;
        }
    }
}
