using System.Net;
using System.Net.Sockets;
using Dirigent.Vmm;
using Dirigent.Vmm.Net;

namespace Dirigent.Tests.Net;

/// <summary>`--net user[,hostfwd=...]` parsing (QEMU's syntax) and the backend's failures that need no guest.</summary>
[Trait("Category", "Net")]
public class UserNetConfigTests
{
    [Fact]
    public void ParsesUserWithForwardsAndMac()
    {
        var n = NicConfig.Parse("user,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-10.0.2.20:53,hostfwd=::8080-:80,mac=02:00:00:00:00:01", 0);
        Assert.Null(n.Tap);
        Assert.NotNull(n.User);
        Assert.Equal(new byte[] { 2, 0, 0, 0, 0, 1 }, n.Mac);
        Assert.Equal(["tcp:127.0.0.1:2222-10.0.2.15:22", "udp:0.0.0.0:5353-10.0.2.20:53", "tcp:0.0.0.0:8080-10.0.2.15:80"],
            n.User!.HostForwards.Select(f => f.ToString()));
        var plain = NicConfig.Parse("user", 1);
        Assert.Empty(plain.User!.HostForwards);
        Assert.Equal(new byte[] { 0x52, 0x54, 0x00, 0x12, 0x34, 0x57 }, plain.Mac);
    }

    [Theory]
    [InlineData("user,tap=t0", "both a TAP and user networking")]
    [InlineData("tap=t0,hostfwd=tcp::1-:2", "hostfwd= is for user networking")]
    [InlineData("user,netns=blue", "netns= is for a TAP card")]
    [InlineData("user=1", "unknown option 'user'")]
    [InlineData("user,hostfwd=tcp:127.0.0.1:2222", "no '-'")]
    [InlineData("user,hostfwd=127.0.0.1:2222-:22", "the host side must be")]
    [InlineData("user,hostfwd=sctp::2222-:22", "neither tcp nor udp")]
    [InlineData("user,hostfwd=tcp:localhost:2222-:22", "not an IPv4 address")]
    [InlineData("user,hostfwd=tcp:127.0.0.256:2222-:22", "not an IPv4 address")]
    [InlineData("user,hostfwd=tcp::0-:22", "not a port number")]
    [InlineData("user,hostfwd=tcp::65536-:22", "not a port number")]
    [InlineData("user,hostfwd=tcp::2222-:", "not a port number")]
    [InlineData("user,hostfwd=tcp::2222-192.168.1.5:22", "10.0.2.0/24")]
    [InlineData("user,hostfwd=tcp::2222-10.0.2.2:22", "10.0.2.0/24")]
    [InlineData("user,hostfwd=tcp::2222-:22,hostfwd=tcp:0.0.0.0:2222-:23", "already forwarded")]
    public void BadUserSpecsGiveOneLineErrors(string spec, string expected)
    {
        var e = Assert.Throws<FormatException>(() => NicConfig.Parse(spec, 0));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("--net: ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void AMissingLibraryNamesTheDebianPackage()
    {
        Assert.Equal("user networking needs libslirp (libslirp-not-here.so.0 was not found): install the Debian package libslirp0",
            SlirpNative.Probe("libslirp-not-here.so.0"));
    }

    [SkippableFact]
    public void AForwardedPortInUseIsOneLine()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        try
        {
            int port = ((IPEndPoint)taken.LocalEndpoint).Port;
            var cfg = new UserNetConfig { HostForwards = [HostForward.Parse($"tcp:127.0.0.1:{port}-:80")] };
            var e = Assert.Throws<NetBackendException>(() => SlirpBackend.Open(cfg).Dispose());
            Assert.Equal($"hostfwd tcp:127.0.0.1:{port}-10.0.2.15:80: cannot listen on 127.0.0.1:{port} (tcp): Address already in use", e.Message);
        }
        finally
        {
            taken.Stop();
        }
    }

    [SkippableFact]
    public void OpensAndClosesWithForwardsThatThenAreFreeAgain()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        var cfg = new UserNetConfig { HostForwards = [HostForward.Parse($"tcp:127.0.0.1:{port}-:80"), HostForward.Parse($"udp:127.0.0.1:{port}-:53")] };
        using (var b = SlirpBackend.Open(cfg))
        {
            Assert.StartsWith("user (libslirp ", b.Name);
            // While the backend lives the forward listens: a second listener on the port is refused.
            var again = new TcpListener(IPAddress.Loopback, port);
            Assert.Throws<SocketException>(() => again.Start());
        }
        // slirp_cleanup closed the listening socket.
        var after = new TcpListener(IPAddress.Loopback, port);
        after.Start();
        after.Stop();
    }
}
