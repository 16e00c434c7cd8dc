using Dirigent.Tests.Infrastructure;
using System.Buffers.Binary;
using System.Text.Json.Nodes;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Net;
using Dirigent.Vmm.Sandbox;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// The sandbox's network sinkhole (README "Sandbox"): every connection attempt the guest makes is logged to
/// DIR/network.jsonl and answered inside the VMM, never sent on. The guest only ever addresses 169.254.0.0/16 (and
/// the virtual network's DHCP, which libslirp answers in-process).
/// </summary>
public class SandboxNetworkTests
{
    private static readonly byte[] GuestMac = [0x52, 0x54, 0, 0x12, 0x34, 0x56], GatewayMac = [0x52, 0x55, 10, 0, 2, 2];
    private const uint Guest = 0x0A00020F; // 10.0.2.15

    private static ushort Sum(ReadOnlySpan<byte> b, uint sum = 0)
    {
        ulong s = sum;
        int i = 0;
        for (; i + 1 < b.Length; i += 2) s += BinaryPrimitives.ReadUInt16BigEndian(b[i..]);
        if (i < b.Length) s += (uint)b[i] << 8;
        while ((s >> 16) != 0) s = (s & 0xFFFF) + (s >> 16);
        return (ushort)~s;
    }

    /// <summary>An Ethernet + IPv4 frame from the guest to the gateway's MAC (checksums left zero: the sinkhole does not check them).</summary>
    private static byte[] Ipv4(uint dst, byte proto, byte[] l4)
    {
        var f = new byte[34 + l4.Length];
        GatewayMac.CopyTo(f, 0);
        GuestMac.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0800);
        f[14] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(16), (ushort)(20 + l4.Length));
        f[22] = 64; f[23] = proto;
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(26), Guest);
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(30), dst);
        l4.CopyTo(f, 34);
        return f;
    }

    private static byte[] Tcp(ushort sport, ushort dport, uint seq, uint ack, byte flags, string data = "")
    {
        var t = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt16BigEndian(t, sport);
        BinaryPrimitives.WriteUInt16BigEndian(t.AsSpan(2), dport);
        BinaryPrimitives.WriteUInt32BigEndian(t.AsSpan(4), seq);
        BinaryPrimitives.WriteUInt32BigEndian(t.AsSpan(8), ack);
        t[12] = 5 << 4; t[13] = flags;
        System.Text.Encoding.ASCII.GetBytes(data).CopyTo(t, 20);
        return t;
    }

    /// <summary>Checks a reply frame's IPv4 header and transport checksums and returns its transport part.</summary>
    private static byte[] CheckedL4(byte[] f, uint from, byte proto)
    {
        Assert.Equal(GuestMac, f[..6]);
        Assert.Equal(0x0800, BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(12)));
        var ip = f.AsSpan(14, BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(16)));
        Assert.Equal(0, Sum(ip[..20]));
        Assert.Equal(from, BinaryPrimitives.ReadUInt32BigEndian(ip[12..]));
        Assert.Equal(Guest, BinaryPrimitives.ReadUInt32BigEndian(ip[16..]));
        Assert.Equal(proto, ip[9]);
        var l4 = ip[20..];
        uint pseudo = (from >> 16) + (from & 0xFFFF) + (Guest >> 16) + (Guest & 0xFFFF) + proto + (uint)l4.Length;
        Assert.Equal(0, Sum(l4, proto == 1 ? 0 : pseudo));
        return l4.ToArray();
    }

    [Fact]
    public void SinkholeAnswersAndLogsTcpDnsIcmpAndArpAndPassesDhcpAndHostForwardedTraffic()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-sinkhole-").FullName;
        try
        {
            string path = Path.Combine(dir, "network.jsonl");
            var replies = new List<byte[]>();
            bool pass;
            using (var log = new NetworkLog(path))
            {
                var s = new NetSinkhole(log, 0);
                FrameSink sink = f => replies.Add(f.ToArray());
                const uint dst = 0xA9FE0707; // 169.254.7.7

                // TCP: SYN → SYN-ACK from the address the guest called; data → logged, acknowledged, then our FIN.
                Assert.False(s.Inspect(Ipv4(dst, 6, Tcp(40000, 8080, 1000, 0, 0x02)), sink));
                var synAck = CheckedL4(Assert.Single(replies), dst, 6);
                Assert.Equal(0x12, synAck[13]);
                Assert.Equal(1001u, BinaryPrimitives.ReadUInt32BigEndian(synAck.AsSpan(8)));
                uint isn = BinaryPrimitives.ReadUInt32BigEndian(synAck.AsSpan(4));
                replies.Clear();
                Assert.False(s.Inspect(Ipv4(dst, 6, Tcp(40000, 8080, 1001, isn + 1, 0x18, "HELLO\n")), sink));
                var finAck = CheckedL4(Assert.Single(replies), dst, 6);
                Assert.Equal(0x11, finAck[13]);
                Assert.Equal(isn + 1, BinaryPrimitives.ReadUInt32BigEndian(finAck.AsSpan(4)));
                Assert.Equal(1007u, BinaryPrimitives.ReadUInt32BigEndian(finAck.AsSpan(8)));
                replies.Clear();
                // A segment of no connection the sinkhole knows (the guest's side of a hostfwd= one) is libslirp's.
                Assert.True(s.Inspect(Ipv4(0x0A000202, 6, Tcp(22, 50000, 5, 6, 0x10)), sink));

                // DNS: a query for A is answered with the sinkhole address, from the server asked.
                var q = new List<byte> { 0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };
                foreach (var label in new[] { "evil", "example" }) { q.Add((byte)label.Length); q.AddRange(System.Text.Encoding.ASCII.GetBytes(label)); }
                q.AddRange(new byte[] { 0, 0, 1, 0, 1 });
                var udp = new byte[8 + q.Count];
                BinaryPrimitives.WriteUInt16BigEndian(udp, 33333);
                BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), 53);
                BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)udp.Length);
                q.ToArray().CopyTo(udp, 8);
                const uint dns = 0xA9FE3535;
                Assert.False(s.Inspect(Ipv4(dns, 17, udp), sink));
                var answer = CheckedL4(Assert.Single(replies), dns, 17).AsSpan(8);
                Assert.Equal(0x1234, BinaryPrimitives.ReadUInt16BigEndian(answer));
                Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(answer[6..])); // one answer
                Assert.Equal(new byte[] { 10, 0, 2, 4 }, answer[^4..].ToArray());
                replies.Clear();

                // ICMP echo: answered; other UDP: logged and dropped; DHCP: libslirp's.
                var echo = new byte[] { 8, 0, 0, 0, 0, 1, 0, 1, 0xAB };
                Assert.False(s.Inspect(Ipv4(dst, 1, echo), sink));
                Assert.Equal(0, CheckedL4(Assert.Single(replies), dst, 1)[0]);
                replies.Clear();
                var other = new byte[10];
                BinaryPrimitives.WriteUInt16BigEndian(other, 1234);
                BinaryPrimitives.WriteUInt16BigEndian(other.AsSpan(2), 9999);
                BinaryPrimitives.WriteUInt16BigEndian(other.AsSpan(4), 10);
                Assert.False(s.Inspect(Ipv4(dst, 17, other), sink));
                BinaryPrimitives.WriteUInt16BigEndian(other.AsSpan(2), 67);
                pass = s.Inspect(Ipv4(0xFFFFFFFF, 17, other), sink);
                Assert.Empty(replies);

                // ARP for the sinkhole address is answered here; for the gateway it is libslirp's.
                var arp = new byte[42];
                Array.Fill(arp, (byte)0xFF, 0, 6);
                GuestMac.CopyTo(arp, 6);
                BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(12), 0x0806);
                byte[] head = [0, 1, 8, 0, 6, 4, 0, 1];
                head.CopyTo(arp, 14);
                GuestMac.CopyTo(arp, 22);
                BinaryPrimitives.WriteUInt32BigEndian(arp.AsSpan(28), Guest);
                BinaryPrimitives.WriteUInt32BigEndian(arp.AsSpan(38), 0x0A000204);
                Assert.False(s.Inspect(arp, sink));
                var arpReply = Assert.Single(replies);
                Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(arpReply.AsSpan(20)));
                Assert.Equal(0x0A000204u, BinaryPrimitives.ReadUInt32BigEndian(arpReply.AsSpan(28)));
                Assert.Equal(GuestMac, arpReply[32..38]);
                BinaryPrimitives.WriteUInt32BigEndian(arp.AsSpan(38), 0x0A000202);
                Assert.True(s.Inspect(arp, sink));
            }
            Assert.True(pass, "DHCP must pass on to libslirp");

            var lines = File.ReadAllLines(path).Select(l => JsonNode.Parse(l)!).ToList();
            string Describe(JsonNode n) => $"{n["protocol"]} {n["destination"]}" + (n["event"] is { } e ? $" {e}" : "")
                + (n["name"] is { } name ? $" {name}" : "") + (n["data"] is { } d ? $" {d}" : "");
            Assert.Equal(new[]
            {
                "tcp 169.254.7.7:8080 connect",
                "tcp 169.254.7.7:8080 data HELLO\n",
                "udp 169.254.53.53:53 dns evil.example",
                "icmp 169.254.7.7 echo",
                "udp 169.254.7.7:9999",
            }, lines.Select(Describe).ToArray());
            Assert.All(lines, l => Assert.NotNull((string?)l["time"]));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [SkippableFact]
    [Trait("Category", "Boot")]
    public void GuestConnectionsInASandboxAreLoggedAndOnlyReachTheSinkhole()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        string dir = Directory.CreateTempSubdirectory("dirigent-sbnet-").FullName;
        try
        {
            string box = Path.Combine(dir, "box");
            // Every destination is link-local: TCP (nc, wget), UDP (tftp), ICMP echo, and a DNS query to a server there.
            // (wget runs under timeout: this busybox's own -T crashes it.)
            string script = """
                printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router && echo "LEASE ip=$ip"\nexit 0\n' >/tmp/dhcp.sh
                chmod +x /tmp/dhcp.sh
                ip link set eth0 up
                udhcpc -q -n -f -i eth0 -s /tmp/dhcp.sh || exit 3
                ip route
                echo "NC-OUT:[$(echo HELLO-SINKHOLE | nc -w 5 169.254.7.7 8080)]"
                timeout 10 wget -q -O /tmp/page http://169.254.7.7:8081/stage2.bin; echo WGET-RC=$?
                timeout 3 tftp -g -r stage3.bin -l /tmp/stage3 169.254.7.8; echo TFTP-DONE
                ping -c 1 -W 5 169.254.7.7 >/dev/null && echo PING-OK
                nslookup evil.example 169.254.53.53 | grep -A1 evil.example | sed -n 's/^Address[^:]*: */DNS-ANSWER /p'
                echo NET-DONE
                """;
            var spec = DefaultGuestSpec.For(img, script);
            spec.Nics = [NicConfig.Parse("user", 0)];
            var r = new GuestRunner();
            int rc = r.Run(spec, TimeSpan.FromMinutes(8), new RunOptions { Sandbox = box });
            string o = r.Output, why = $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}";
            Assert.True(rc == 0, why);
            Assert.True(o.Contains("NET-DONE"), why);
            Assert.True(o.Contains("LEASE ip=10.0.2.15"), why);
            // The sinkhole took the connection and closed it without a word: nothing came back to nc, wget failed.
            Assert.True(o.Contains("NC-OUT:[]"), why);
            Assert.True(!o.Contains("WGET-RC=0"), why);
            Assert.True(o.Contains("PING-OK"), why);
            Assert.True(o.Contains($"DNS-ANSWER {NetSinkhole.SinkholeAddress}"), why);

            var lines = File.ReadAllLines(Path.Combine(box, VmSandbox.NetworkLogFile)).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
            string all = string.Join("\n", lines.Select(l => l.ToJsonString())) + "\n" + GuestRunner.Tail(o, 1500);
            bool Has(string protocol, string destination, string? ev = null, Func<JsonObject, bool>? more = null) =>
                lines.Any(l => (string?)l["protocol"] == protocol && (string?)l["destination"] == destination
                               && (ev == null || (string?)l["event"] == ev) && (more == null || more(l)));
            Assert.True(Has("tcp", "169.254.7.7:8080", "connect"), all);
            Assert.True(Has("tcp", "169.254.7.7:8080", "data", l => (string?)l["data"] == "HELLO-SINKHOLE\n"), all);
            Assert.True(Has("tcp", "169.254.7.7:8081", "connect"), all);
            Assert.True(Has("tcp", "169.254.7.7:8081", "data", l => ((string?)l["data"])!.StartsWith("GET /stage2.bin HTTP/1.", StringComparison.Ordinal)), all);
            Assert.True(Has("udp", "169.254.7.8:69"), all);
            Assert.True(Has("icmp", "169.254.7.7", "echo"), all);
            Assert.True(Has("udp", "169.254.53.53:53", "dns", l => (string?)l["name"] == "evil.example"), all);
            // Nothing else was addressed: only link-local destinations (DHCP is libslirp's and not logged).
            Assert.All(lines, l => Assert.StartsWith("169.254.", (string?)l["destination"]));

            Assert.Contains($"{lines.Count} network events", r.Errors);
            var net = JsonNode.Parse(File.ReadAllText(Path.Combine(box, VmSandbox.ReportFile)))!["network"]!;
            Assert.Equal(lines.Count, (long)net["events"]!);
            Assert.Contains("evil.example", net["dns_names"]!.AsArray().Select(n => (string?)n));
            Assert.Contains("tcp:169.254.7.7:8080", net["destinations"]!.AsArray().Select(n => (string?)n));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
