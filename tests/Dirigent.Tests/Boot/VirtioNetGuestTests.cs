using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Dirigent.Tests.Net;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;
using Xunit.Abstractions;

namespace Dirigent.Tests.Boot;

/// <summary>
/// The stock kernel's virtio_net driver on our virtio-net over a TAP. The TAP lives in a namespace the test
/// creates (<see cref="NetNamespace"/>): the VMM opens it from there (--net tap=NAME,netns=NS joins the namespace on
/// one thread just for the open), so the TAP never appears in the root namespace and all traffic stays between the
/// guest and that namespace's kernel, on link-local 169.254.N.0/24. The host end of the TCP transfers is a socket
/// created inside the namespace the same way. Needs root, /dev/net/tun and iproute2.
/// </summary>
[Trait("Category", "Boot")]
public class VirtioNetGuestTests(ITestOutputHelper log)
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);
    private static readonly byte[] GuestMac = [0x52, 0x54, 0x00, 0x4e, 0x45, 0x54];

    private static VmSpec Config(NetNamespace ns, string script) => new()
    {
        Kernel = s_image.Value.Kernel,
        Initrds = [s_image.Value.Initramfs],
        Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
        MemoryBytes = 256UL << 20,
        Nics = [new NicConfig { Tap = ns.TapName, Netns = ns.Name, Mac = GuestMac }],
    };

    private static string Up(NetNamespace ns) =>
        $"ip addr add {ns.GuestAddress}/24 dev eth0 && ip link set eth0 up && ";

    [Theory]
    [InlineData("dtest-no-such-namespace", "dirigent run: --net: network namespace 'dtest-no-such-namespace' does not exist (/run/netns/dtest-no-such-namespace not found)")]
    [InlineData(null, "dirigent run: --net: 'lo' exists and is not a single-queue TAP interface")]
    public void TapThatCannotBeOpenedEndsTheRunBeforeTheGuestStarts(string? netns, string expected)
    {
        var cfg = new VmSpec
        {
            Kernel = s_image.Value.Kernel,
            Initrds = [s_image.Value.Initramfs],
            Nics = [new NicConfig { Tap = "lo", Netns = netns, Mac = GuestMac }],
        };
        var r = new GuestRunner();
        int rc = r.Run(cfg, TimeSpan.FromMinutes(1));
        Assert.Equal(ExitCodes.VmmFailure, rc);
        Assert.Equal(expected, r.Errors.Trim());
        Assert.Equal("", r.Output);
    }

    [Fact]
    public void GuestPingsTheNamespace()
    {
        using var ns = new NetNamespace();
        var r = new GuestRunner();
        int rc = r.Run(Config(ns, Up(ns) + $"cat /sys/class/net/eth0/address; ping -c 3 -W 5 {ns.HostAddress}"), BootTimeout);
        string o = r.Output;
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}");
        Assert.Contains("52:54:00:4e:45:54", o);
        Assert.Contains("3 packets transmitted, 3 packets received, 0% packet loss", o);
        Assert.Contains($"{InitScript.ExitStatusPrefix}0", o);
        foreach (var line in o.Split('\n').Where(l => l.Contains("bytes from") || l.Contains("round-trip"))) log.WriteLine(line.TrimEnd());
    }

    [Fact]
    public void TcpTransfersOf16MiBArriveIntactBothWays()
    {
        const int Size = 16 << 20;
        var data = new byte[Size];
        new Random(16).NextBytes(data); // fixed seed: a failed transfer can be replayed with the same bytes
        string sha = Convert.ToHexStringLower(SHA256.HashData(data));
        using var ns = new NetNamespace();
        // Both listeners live in the namespace: the guest connects to them, the host side never leaves it.
        var (toGuest, fromGuest) = ns.Run(() =>
        {
            var a = new TcpListener(IPAddress.Parse(ns.HostAddress), 0);
            var b = new TcpListener(IPAddress.Parse(ns.HostAddress), 0);
            a.Start();
            b.Start();
            return (a, b);
        });
        try
        {
            int p1 = ((IPEndPoint)toGuest.LocalEndpoint).Port, p2 = ((IPEndPoint)fromGuest.LocalEndpoint).Port;
            double sendSeconds = 0, receiveSeconds = 0;
            string? receivedSha = null;
            Exception? hostError = null;
            var sender = new Thread(() => Guarded(ref hostError, () =>
            {
                using var c = toGuest.AcceptSocket();
                var sw = Stopwatch.StartNew();
                c.Send(data);
                c.Shutdown(SocketShutdown.Send);
                // The guest's nc closes once it has everything; wait for that so the time covers delivery.
                var sink = new byte[4096];
                while (c.Receive(sink) > 0) { }
                sendSeconds = sw.Elapsed.TotalSeconds;
            })) { IsBackground = true };
            var receiver = new Thread(() => Guarded(ref hostError, () =>
            {
                using var c = fromGuest.AcceptSocket();
                var sw = Stopwatch.StartNew();
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                var buf = new byte[1 << 16];
                long total = 0;
                int n;
                while ((n = c.Receive(buf)) > 0) { hash.AppendData(buf, 0, n); total += n; }
                receiveSeconds = sw.Elapsed.TotalSeconds;
                receivedSha = total == Size ? Convert.ToHexStringLower(hash.GetHashAndReset()) : $"{total} bytes";
            })) { IsBackground = true };
            sender.Start();
            receiver.Start();
            string script = Up(ns) +
                $"nc {ns.HostAddress} {p1} </dev/null >/tmp/in && echo RX-SHA=$(sha256sum /tmp/in) && " +
                $"nc {ns.HostAddress} {p2} </tmp/in && echo TX-DONE && grep eth0: /proc/net/dev";
            var r = new GuestRunner();
            int rc = r.Run(Config(ns, script), BootTimeout);
            string o = r.Output;
            Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}");
            Assert.True(sender.Join(TimeSpan.FromSeconds(10)) && receiver.Join(TimeSpan.FromSeconds(10)),
                $"the host side did not finish\n{GuestRunner.Tail(o)}");
            Assert.Null(hostError);
            var m = Regex.Match(o, "RX-SHA=([0-9a-f]{64})");
            Assert.True(m.Success, $"no checksum from the guest\n{GuestRunner.Tail(o)}");
            Assert.Equal(sha, m.Groups[1].Value);
            Assert.Contains("TX-DONE", o);
            Assert.Equal(sha, receivedSha);
            log.WriteLine($"host -> guest: 16 MiB in {sendSeconds:F2} s ({16 / sendSeconds:F1} MiB/s); " +
                $"guest -> host: 16 MiB in {receiveSeconds:F2} s ({16 / receiveSeconds:F1} MiB/s)");
            log.WriteLine("guest counters: " + Regex.Match(o, @"eth0:\s+\d.*").Value.TrimEnd());
        }
        finally
        {
            toGuest.Stop();
            fromGuest.Stop();
        }
    }

    /// <summary>Runs a host-side thread body, keeping its exception for the test instead of ending the process.</summary>
    private static void Guarded(ref Exception? error, Action body)
    {
        try { body(); }
        catch (Exception e) { error ??= e; }
    }
}
