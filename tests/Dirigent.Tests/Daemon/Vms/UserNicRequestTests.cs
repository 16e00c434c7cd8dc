using System.Text.Json;
using Dirigent.Api;
using Dirigent.Daemon.Api;
using Dirigent.Daemon.Vms;

namespace Dirigent.Tests.Daemon.Vms;

/// <summary>The daemon's VM spec takes a user-network NIC ({"user": true, "hostfwd": [...]}) and hands it to the worker as `--net user,...`.</summary>
[Trait("Category", "Net")]
public class UserNicRequestTests
{
    private static VmRecord Parse(string nics) =>
        VmRequestParser.ParseCreate(JsonDocument.Parse($$$"""{"name":"web","spec":{"nics":{{{nics}}}}}""").RootElement);

    [Fact]
    public async Task AUserNicBecomesTheWorkersNetOption()
    {
        var rec = Parse("""[{"user":true,"hostfwd":["tcp:127.0.0.1:2222-:22","udp::5353-:53"]},{"tap":"tap0"}]""");
        var args = await WorkerArgs.BuildAsync(rec.Spec, rec.Name, null!, CancellationToken.None);
        int i = args.IndexOf("--net");
        Assert.Equal("user,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-:53", args[i + 1]);
        Assert.Equal("tap=tap0", args[args.IndexOf("--net", i + 1) + 1]);
        Assert.Equal("""{"user":true,"hostfwd":["tcp:127.0.0.1:2222-:22","udp::5353-:53"],"mac":null,"netns":null,"bps":0,"pps":0}""",
            JsonSerializer.Serialize(rec.Spec.Nics[0], ApiJson.Options));
    }

    [Theory]
    [InlineData("""[{"user":true,"tap":"tap0"}]""", "needs exactly one of 'tap'")]
    [InlineData("""[{}]""", "needs exactly one of 'tap'")]
    [InlineData("""[{"user":false}]""", "needs exactly one of 'tap'")]
    [InlineData("""[{"tap":"tap0","hostfwd":["tcp::1-:2"]}]""", "is for user networking")]
    [InlineData("""[{"user":true,"hostfwd":["tcp:127.0.0.1:2222"]}]""", "field 'spec.nics[0].hostfwd[0]': hostfwd='tcp:127.0.0.1:2222': no '-'")]
    [InlineData("""[{"user":true,"hostfwd":"tcp::1-:2"}]""", "hostfwd")]
    [InlineData("""[{"user":true,"netns":"blue"}]""", "is for a TAP card")]
    public void BadUserNicsAre400s(string nics, string expected)
    {
        var e = Assert.Throws<ApiRequestException>(() => Parse(nics));
        Assert.Contains(expected, e.Message);
    }
}
