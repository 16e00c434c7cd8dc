using System.Buffers.Binary;

namespace Dirigent.Tests.Net;

/// <summary>Ethernet/ARP/IPv4/ICMP frames built and parsed by hand, with the virtio-net header in front.</summary>
public static class Frames
{
    public const int Hdr = 12;
    public static readonly byte[] Broadcast = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

    public static byte[] ArpRequest(byte[] srcMac, byte[] srcIp, byte[] targetIp)
    {
        var p = new byte[Hdr + 14 + 28];
        var f = p.AsSpan(Hdr);
        Broadcast.CopyTo(f);
        srcMac.CopyTo(f[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(f[12..], 0x0806);
        var a = f[14..];
        BinaryPrimitives.WriteUInt16BigEndian(a, 1);           // htype Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(a[2..], 0x0800);  // ptype IPv4
        a[4] = 6; a[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(a[6..], 1);       // request
        srcMac.CopyTo(a[8..]);
        srcIp.CopyTo(a[14..]);
        targetIp.CopyTo(a[24..]);
        return p;
    }

    /// <summary>The ARP reply's sender MAC when <paramref name="packet"/> is a reply from <paramref name="senderIp"/> to <paramref name="targetIp"/>.</summary>
    public static byte[]? ArpReplyFrom(ReadOnlySpan<byte> packet, byte[] senderIp, byte[] targetIp)
    {
        var f = packet[Hdr..];
        if (f.Length < 42 || BinaryPrimitives.ReadUInt16BigEndian(f[12..]) != 0x0806) return null;
        var a = f[14..];
        if (BinaryPrimitives.ReadUInt16BigEndian(a[6..]) != 2) return null;
        if (!a.Slice(14, 4).SequenceEqual(senderIp) || !a.Slice(24, 4).SequenceEqual(targetIp)) return null;
        return a.Slice(8, 6).ToArray();
    }

    public static byte[] IcmpEchoRequest(byte[] dstMac, byte[] srcMac, byte[] srcIp, byte[] dstIp, ushort id, ushort seq, byte[] payload)
    {
        var p = new byte[Hdr + 14 + 20 + 8 + payload.Length];
        var f = p.AsSpan(Hdr);
        dstMac.CopyTo(f);
        srcMac.CopyTo(f[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(f[12..], 0x0800);
        var ip = f.Slice(14, 20);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(20 + 8 + payload.Length));
        BinaryPrimitives.WriteUInt16BigEndian(ip[4..], seq);
        ip[8] = 64; ip[9] = 1; // TTL, ICMP
        srcIp.CopyTo(ip[12..]);
        dstIp.CopyTo(ip[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum(ip));
        var icmp = f[34..];
        icmp[0] = 8;
        BinaryPrimitives.WriteUInt16BigEndian(icmp[4..], id);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[6..], seq);
        payload.CopyTo(icmp[8..]);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], Checksum(icmp));
        return p;
    }

    /// <summary>Whether <paramref name="packet"/> is the echo reply to (id, seq) with that payload and valid checksums.</summary>
    public static bool IsEchoReply(ReadOnlySpan<byte> packet, byte[] fromIp, byte[] toIp, ushort id, ushort seq, byte[] payload)
    {
        var f = packet[Hdr..];
        if (f.Length < 42 || BinaryPrimitives.ReadUInt16BigEndian(f[12..]) != 0x0800) return false;
        var ip = f.Slice(14, 20);
        if (ip[9] != 1 || !ip.Slice(12, 4).SequenceEqual(fromIp) || !ip.Slice(16, 4).SequenceEqual(toIp)) return false;
        if (Checksum(ip) != 0) return false;
        int total = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
        var icmp = f[34..(14 + total)];
        return icmp[0] == 0 && Checksum(icmp) == 0 && BinaryPrimitives.ReadUInt16BigEndian(icmp[4..]) == id &&
            BinaryPrimitives.ReadUInt16BigEndian(icmp[6..]) == seq && icmp[8..].SequenceEqual(payload);
    }

    /// <summary>The Internet checksum (RFC 1071); 0 over data that includes a correct checksum.</summary>
    public static ushort Checksum(ReadOnlySpan<byte> data)
    {
        uint sum = 0;
        int k = 0;
        for (; k + 1 < data.Length; k += 2) sum += BinaryPrimitives.ReadUInt16BigEndian(data[k..]);
        if (k < data.Length) sum += (uint)data[k] << 8;
        while ((sum >> 16) != 0) sum = (sum & 0xFFFF) + (sum >> 16);
        return (ushort)~sum;
    }
}
