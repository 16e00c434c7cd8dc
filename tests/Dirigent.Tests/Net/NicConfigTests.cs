using Dirigent.Vmm;

namespace Dirigent.Tests.Net;

[Trait("Category", "Net")]
public class NicConfigTests
{
    [Fact]
    public void ParsesTapMacAndNamespace()
    {
        var n = NicConfig.Parse("tap=tap7,mac=02:AA:bb:0c:0d:0e,netns=blue", 0);
        Assert.Equal("tap7", n.Tap);
        Assert.Equal("blue", n.Netns);
        Assert.Equal(new byte[] { 0x02, 0xaa, 0xbb, 0x0c, 0x0d, 0x0e }, n.Mac);
        Assert.Equal(new byte[] { 0x02, 0xaa, 0xbb, 0x0c, 0x0d, 0x0e }, NicConfig.Parse("mac=02-aa-bb-0c-0d-0e,tap=x", 0).Mac);
    }

    [Fact]
    public void DefaultMacsDifferPerCard()
    {
        var a = NicConfig.Parse("tap=t0", 0);
        var b = NicConfig.Parse("tap=t1", 1);
        Assert.Null(a.Netns);
        Assert.Equal(new byte[] { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 }, a.Mac);
        Assert.Equal(new byte[] { 0x52, 0x54, 0x00, 0x12, 0x34, 0x57 }, b.Mac);
    }

    [Theory]
    [InlineData("tap=t0,mac=52:54:00:12:34", "invalid MAC")]
    [InlineData("tap=t0,mac=52:54:00:12:34:5g", "invalid MAC")]
    [InlineData("tap=t0,mac=52:54:00:12:34:567", "invalid MAC")]
    [InlineData("tap=t0,mac=01:00:5e:00:00:01", "multicast")]
    [InlineData("tap=t0,mac=00:00:00:00:00:00", "all zeros")]
    [InlineData("mac=52:54:00:12:34:56", "names no backend")]
    [InlineData("tap=t0,model=e1000", "unknown option 'model'")]
    [InlineData("tap=", "empty")]
    [InlineData("tap=sixteen-chars-xx", "too long")]
    [InlineData("tap=a b", "contains")]
    [InlineData("tap=t0,netns=", "netns= needs")]
    public void BadSpecsGiveOneLineErrors(string spec, string expected)
    {
        var e = Assert.Throws<FormatException>(() => NicConfig.Parse(spec, 0));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("--net: ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
