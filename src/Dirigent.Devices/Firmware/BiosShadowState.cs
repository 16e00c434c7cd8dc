using Dirigent.Machine.State;

namespace Dirigent.Devices.Firmware;

/// <summary>The shadow-RAM control (<see cref="BiosShadow"/>): the PAM registers and the RAM hidden behind ROM.</summary>
public sealed record BiosShadowState : ISavedState
{
    public static int FormatVersion => 1;
    /// <summary>PAM0..PAM6 (host bridge config 0x59-0x5F).</summary>
    public byte[] Pam = new byte[BiosShadow.PamCount];
    /// <summary>Per segment (0: 0xF0000, 1..12: 16 KiB from 0xC0000): the RAM bytes while reads see ROM, else null.</summary>
    public byte[]?[] HiddenRam = new byte[]?[BiosShadow.SegmentCount];
}
