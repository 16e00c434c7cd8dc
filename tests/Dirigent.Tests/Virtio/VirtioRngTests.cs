using Dirigent.Devices.Virtio.Rng;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

public class VirtioRngTests
{
    [Fact]
    public void FillsWritableBuffersWithRandomBytes()
    {
        var rng = new VirtioRng();
        using var h = new VirtioHarness(rng, 0x10_0000);
        Assert.Equal(0x1044_1AF4u, h.ConfigRead(0));
        h.Start(Version1 | RingIndirectDesc);
        h.Desc(0, DataBase, 64, DescFlagWrite | DescFlagNext, 1);
        h.Desc(1, DataBase + 0x100, 64, DescFlagWrite);
        h.Publish(0);
        Assert.Equal((0u, 128u), h.Used(0));
        var a = new byte[64];
        var b = new byte[64];
        h.Mem.Read(DataBase, a);
        h.Mem.Read(DataBase + 0x100, b);
        Assert.False(a.SequenceEqual(new byte[64]));
        Assert.False(a.SequenceEqual(b));
        Assert.Equal(0, h.Mem.ReadU8(DataBase + 64));  // nothing past the buffer

        // A huge buffer gets at most MaxBytesPerRequest bytes (the vCPU thread does this work).
        h.Desc(2, DataBase, 0x8_0000, DescFlagWrite);
        h.Publish(2);
        Assert.Equal((2u, (uint)VirtioRng.MaxBytesPerRequest), h.Used(1));
        Assert.Equal(128 + VirtioRng.MaxBytesPerRequest, rng.BytesProvided);
    }
}
