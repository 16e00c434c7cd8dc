namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    // x87 state. Owned by the x87 instruction group; FXSAVE/FXRSTOR and CpuState go through these two methods.
    public ushort Fcw = 0x37F, Fsw, FtwAbridged;

    internal void SaveX87(Span<byte> area)
    {
        area[0] = (byte)Fcw; area[1] = (byte)(Fcw >> 8);
        area[2] = (byte)Fsw; area[3] = (byte)(Fsw >> 8);
        area[4] = (byte)FtwAbridged;
    }

    internal void LoadX87(ReadOnlySpan<byte> area)
    {
        Fcw = (ushort)(area[0] | area[1] << 8);
        Fsw = (ushort)(area[2] | area[3] << 8);
        FtwAbridged = area[4];
    }
}
