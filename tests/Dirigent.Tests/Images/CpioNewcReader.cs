using System.Text;

namespace Dirigent.Tests.Images;

/// <summary>Independent newc reader for the tests: parses every header field and checks the format's padding rules.</summary>
internal static class CpioNewcReader
{
    public sealed record Entry(string Name, uint Ino, uint Mode, uint NLink, uint RdevMajor, uint RdevMinor, byte[] Data);

    public static List<Entry> Read(byte[] a)
    {
        var list = new List<Entry>();
        int pos = 0;
        while (true)
        {
            Assert.True(pos % 4 == 0, $"entry at unaligned offset {pos}");
            Assert.Equal("070701", Encoding.ASCII.GetString(a, pos, 6));
            uint F(int i) => Convert.ToUInt32(Encoding.ASCII.GetString(a, pos + 6 + i * 8, 8), 16);
            uint ino = F(0), mode = F(1), nlink = F(4), size = F(6), rmaj = F(9), rmin = F(10), namesize = F(11), check = F(12);
            Assert.Equal(0u, check);
            string name = Encoding.UTF8.GetString(a, pos + 110, (int)namesize - 1);
            Assert.Equal(0, a[pos + 110 + namesize - 1]);
            int data = (pos + 110 + (int)namesize + 3) & ~3;
            if (name == "TRAILER!!!")
            {
                Assert.Equal(0u, size);
                Assert.Equal(a.Length, data);
                return list;
            }
            list.Add(new Entry(name, ino, mode, nlink, rmaj, rmin, a.AsSpan(data, (int)size).ToArray()));
            pos = (data + (int)size + 3) & ~3;
        }
    }
}
