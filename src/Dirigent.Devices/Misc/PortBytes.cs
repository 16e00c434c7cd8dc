namespace Dirigent.Devices.Misc;

/// <summary>
/// Splits a wide port access into byte accesses for devices whose registers are byte-wide (an x86 `in ax, dx`
/// on such a device reads port dx and dx+1). Bytes past the device's window read as 0xFF and swallow writes.
/// </summary>
internal static class PortBytes
{
    public static uint Read(ushort offset, int size, int windowLength, Func<int, byte> readByte)
    {
        if (size is not (1 or 2 or 4)) size = 1;
        uint v = 0;
        for (int i = 0; i < size; i++)
        {
            int o = offset + i;
            uint b = o < windowLength ? readByte(o) : 0xFFu;
            v |= b << (8 * i);
        }
        return v;
    }

    public static void Write(ushort offset, int size, uint value, int windowLength, Action<int, byte> writeByte)
    {
        if (size is not (1 or 2 or 4)) size = 1;
        for (int i = 0; i < size; i++)
        {
            int o = offset + i;
            if (o < windowLength) writeByte(o, (byte)(value >> (8 * i)));
        }
    }
}
