using Dirigent.Devices.Net;
using Dirigent.Vmm;
using Dirigent.Vmm.Net;

namespace Dirigent.Tests.Net;

/// <summary>
/// The libslirp backend without a guest: frames in with the virtio-net header, answers out with an all-zero one,
/// a refused answer held until ReceiveReady, and what it refuses to send.
/// </summary>
[Trait("Category", "Net")]
public class SlirpBackendTests
{
    private static readonly byte[] GuestMac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    private static readonly byte[] GuestIp = [10, 0, 2, 15], GatewayIp = [10, 0, 2, 2], DnsIp = [10, 0, 2, 3];

    /// <summary>Records packets; refuses the first <see cref="RefuseFirst"/> offers.</summary>
    private sealed class Recorder : INetReceiver
    {
        public int RefuseFirst, Offers;
        public readonly List<byte[]> Packets = new();
        public readonly SemaphoreSlim Arrived = new(0);

        public bool TryReceive(ReadOnlySpan<byte> packet)
        {
            lock (Packets)
            {
                if (Offers++ < RefuseFirst) return false;
                Packets.Add(packet.ToArray());
            }
            Arrived.Release();
            return true;
        }
    }

    private static SlirpBackend Open()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        return SlirpBackend.Open(new UserNetConfig());
    }

    [SkippableFact]
    public void AnswersArpForTheGatewayAndDnsWithPlainFrames()
    {
        using var b = Open();
        var r = new Recorder();
        b.Start(r);
        Assert.Equal(NetOffloads.None, b.SupportedOffloads);
        foreach (var ip in new[] { GatewayIp, DnsIp })
        {
            Assert.True(b.Send(Frames.ArpRequest(GuestMac, GuestIp, ip)));
            Assert.True(r.Arrived.Wait(TimeSpan.FromSeconds(10)), "no ARP reply");
            var p = r.Packets[^1];
            Assert.Equal(new byte[Frames.Hdr], p[..Frames.Hdr]);
            Assert.Equal(GuestMac, p[Frames.Hdr..(Frames.Hdr + 6)]);
            var mac = Frames.ArpReplyFrom(p, ip, GuestIp);
            Assert.NotNull(mac);
            Assert.Equal((byte)0, (byte)(mac![0] & 1));
        }
    }

    [SkippableFact]
    public void ARefusedAnswerIsHeldUntilReceiveReady()
    {
        using var b = Open();
        var r = new Recorder { RefuseFirst = 1 };
        b.Start(r);
        Assert.True(b.Send(Frames.ArpRequest(GuestMac, GuestIp, GatewayIp)));
        // The refusal is not a loss: the frame comes again once the NIC says it has room.
        Assert.False(r.Arrived.Wait(TimeSpan.FromMilliseconds(200)));
        lock (r.Packets) Assert.Equal(1, r.Offers);
        b.ReceiveReady();
        Assert.True(r.Arrived.Wait(TimeSpan.FromSeconds(10)), "the held reply was not offered again");
        Assert.NotNull(Frames.ArpReplyFrom(r.Packets[0], GatewayIp, GuestIp));
    }

    [SkippableFact]
    public void RefusesOffloadedAndRuntPackets()
    {
        using var b = Open();
        b.Start(new Recorder());
        var gso = Frames.ArpRequest(GuestMac, GuestIp, GatewayIp);
        gso[1] = 1;   // GSO_TCPV4: never negotiated, since no offload is advertised
        Assert.False(b.Send(gso));
        var csum = Frames.ArpRequest(GuestMac, GuestIp, GatewayIp);
        csum[0] = 1;  // NEEDS_CSUM
        Assert.False(b.Send(csum));
        Assert.False(b.Send(new byte[Frames.Hdr + 13]));
        Assert.Equal(3, b.SendDropped);
    }
}
