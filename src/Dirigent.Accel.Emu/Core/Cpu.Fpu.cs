using System.Buffers.Binary;
using System.Runtime.Intrinsics;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    /// <summary>Writes x87/MMX/SSE state in the FXSAVE layout (SDM vol. 1, table 10-2), 512 bytes.</summary>
    public void SaveFxsave(Span<byte> area)
    {
        area[..512].Clear();
        SaveX87(area);
        BinaryPrimitives.WriteUInt32LittleEndian(area[24..], Mxcsr);
        BinaryPrimitives.WriteUInt32LittleEndian(area[28..], MxcsrMask);
        for (int k = 0; k < 16; k++) Xmm[k].CopyTo(area.Slice(160 + 16 * k, 16));
    }

    public void LoadFxsave(ReadOnlySpan<byte> area)
    {
        LoadX87(area);
        Mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(area[24..]) & MxcsrMask;
        for (int k = 0; k < 16; k++) Xmm[k] = Vector128.Create(area.Slice(160 + 16 * k, 16));
    }

    /// <summary>MXCSR bits we implement (DAZ included): writing others raises #GP.</summary>
    public const uint MxcsrMask = 0xFFFF;
}
