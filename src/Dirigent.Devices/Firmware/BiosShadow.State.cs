using Dirigent.Machine.State;

namespace Dirigent.Devices.Firmware;

public sealed partial class BiosShadow : IStateful<BiosShadowState>
{
    public void Reset() => Load();

    public BiosShadowState Save()
    {
        lock (_lock)
            return new BiosShadowState { Pam = (byte[])_pam.Clone(), HiddenRam = _hidden.Select(h => (byte[]?)h?.Clone()).ToArray() };
    }

    /// <summary>
    /// The guest's memory (restored from the snapshot) already holds what reads see; the ROM is written again from
    /// the image this VM was built with.
    /// </summary>
    public void Restore(BiosShadowState state)
    {
        if (state.Pam is not { Length: PamCount } || state.HiddenRam is not { Length: SegmentCount })
            throw new StateRestoreException("BIOS shadow: saved state has the wrong number of PAM registers or segments");
        for (int i = 0; i < PamCount; i++)
            if ((state.Pam[i] & ~0x33) != 0) throw new StateRestoreException($"BIOS shadow: PAM{i} 0x{state.Pam[i]:x2} has reserved bits set");
        lock (_lock)
        {
            for (int seg = 0; seg < SegmentCount; seg++)
            {
                bool ram = (FieldOf(state.Pam, seg) & 1) != 0;
                var h = state.HiddenRam[seg];
                if (ram != (h == null) || h != null && h.Length != Segment(seg).Size)
                    throw new StateRestoreException($"BIOS shadow: segment {seg}: the hidden RAM does not match PAM");
            }
            Array.Copy(state.Pam, _pam, PamCount);
            for (int seg = 0; seg < SegmentCount; seg++) _hidden[seg] = (byte[]?)state.HiddenRam[seg]?.Clone();
            _mem.Write(RomBase, _rom);
        }
    }
}
