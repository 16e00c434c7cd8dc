using System.Buffers.Binary;
using System.Text;

namespace Dirigent.Devices.Firmware;

/// <summary>Little-endian byte builder for firmware tables, with the 8-bit checksum both ACPI and MP use.</summary>
internal sealed class TableWriter
{
    private readonly List<byte> _b = new();
    public int Length => _b.Count;

    public TableWriter U8(int v) { _b.Add((byte)v); return this; }
    public TableWriter U16(int v) { Span<byte> s = stackalloc byte[2]; BinaryPrimitives.WriteUInt16LittleEndian(s, (ushort)v); _b.AddRange(s); return this; }
    public TableWriter U32(ulong v) { Span<byte> s = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(s, (uint)v); _b.AddRange(s); return this; }
    public TableWriter U64(ulong v) { Span<byte> s = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(s, v); _b.AddRange(s); return this; }
    public TableWriter Bytes(ReadOnlySpan<byte> v) { _b.AddRange(v); return this; }

    /// <summary>Fixed-width ASCII field, space-padded like OEM IDs (or zero-padded).</summary>
    public TableWriter Ascii(string s, int width, char pad = ' ')
    {
        for (int i = 0; i < width; i++) _b.Add((byte)(i < s.Length ? s[i] : pad));
        return this;
    }

    public void PatchU16(int at, int v) { _b[at] = (byte)v; _b[at + 1] = (byte)(v >> 8); }
    public void PatchU32(int at, uint v) { for (int i = 0; i < 4; i++) _b[at + i] = (byte)(v >> (8 * i)); }

    /// <summary>Sets the byte at <paramref name="at"/> so bytes [start, end) sum to zero.</summary>
    public void Checksum(int at, int start = 0, int end = -1)
    {
        if (end < 0) end = _b.Count;
        _b[at] = 0;
        int sum = 0;
        for (int i = start; i < end; i++) sum += _b[i];
        _b[at] = (byte)(-sum);
    }

    public byte[] ToArray() => _b.ToArray();

    public static byte Sum(ReadOnlySpan<byte> b) { int s = 0; foreach (var x in b) s += x; return (byte)s; }
    internal static byte[] Ascii(string s) => Encoding.ASCII.GetBytes(s);
}
