using System.Buffers.Binary;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Dirigent.Vmm.Net;

/// <summary>A frame for the guest (Ethernet, no virtio-net header), valid only during the call.</summary>
public delegate void FrameSink(ReadOnlySpan<byte> frame);

/// <summary>
/// DIR/network.jsonl of a sandbox: one JSON object per line, shared by the VM's user-network cards (each line names
/// its card). Writes are serialized and flushed per line, so a reader (a test, an analyst's tail -f) sees whole lines.
/// Beyond <see cref="MaxLines"/> lines only counts go on (a guest flooding the network cannot fill the host's disk).
/// </summary>
public sealed class NetworkLog : IDisposable
{
    public const int MaxLines = 100_000;
    private readonly FileStream _file;
    private readonly object _lock = new();
    private int _lines;
    public long NotLogged;

    public NetworkLog(string path)
    {
        _file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete);
    }

    public void Write(Action<Utf8JsonWriter> fields)
    {
        lock (_lock)
        {
            if (_lines >= MaxLines) { NotLogged++; return; }
            _lines++;
            using (var w = new Utf8JsonWriter(_file, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                w.WriteString("time", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", System.Globalization.CultureInfo.InvariantCulture));
                fields(w);
                w.WriteEndObject();
            }
            _file.WriteByte((byte)'\n');
            _file.Flush();
        }
    }

    public void Dispose()
    {
        lock (_lock) _file.Dispose();
    }
}

/// <summary>
/// The sandbox's network sinkhole (FakeNet/INetSim style), in front of a user-network card: it sees every frame the
/// guest sends before libslirp does, logs each connection attempt to <see cref="NetworkLog"/> and answers it itself,
/// so nothing the guest starts reaches libslirp's sockets, let alone the host's network:
/// <list type="bullet">
/// <item>DNS (UDP port 53, to any address): every name is answered with <see cref="SinkholeAddress"/> (an A record;
/// other types get an empty answer); the log line has the name and type.</item>
/// <item>TCP: a SYN to any address and port is answered from that address (the handshake completes), the first bytes
/// the guest sends (up to <see cref="MaxDataLogged"/>) are logged and acknowledged, then the sinkhole closes the
/// connection (FIN). No application protocol is spoken.</item>
/// <item>ICMP echo requests are logged and answered; other UDP datagrams and IP protocols are logged and dropped.</item>
/// </list>
/// ARP, DHCP (UDP to port 67) and the guest's side of connections the host opened through hostfwd= (to the gateway)
/// pass on to libslirp (restricted, so it would drop anything else too); ARP for the sinkhole address is answered
/// here, and libslirp's DHCP answers get the router and DNS server back (<see cref="FromSlirp"/>). IPv6 frames
/// are dropped (the user network is IPv4 only) and counted. Runs on the backend's I/O thread only.
/// </summary>
public sealed class NetSinkhole
{
    /// <summary>What DNS answers: an address of the virtual network that no one else has (slirp uses .2, .3, .15+).</summary>
    public const string SinkholeAddress = "10.0.2.4";
    public const int MaxDataLogged = 512, MaxConnections = 1024;
    private static readonly uint s_sinkhole = Ip(SinkholeAddress);
    private static readonly byte[] s_sinkholeMac = [0x52, 0x55, 10, 0, 2, 4];

    private readonly NetworkLog _log;
    private readonly int _nic;
    private readonly Dictionary<(uint, ushort, uint, ushort), TcpConn> _conns = new();
    private readonly Queue<(uint, ushort, uint, ushort)> _order = new();
    private readonly byte[] _out = new byte[1600];
    public long Ipv6Dropped;

    private sealed class TcpConn
    {
        public uint Ours;      // our next sequence number
        public uint Theirs;    // the next byte we expect from the guest
        public int Logged;     // payload bytes logged so far
        public bool FinSent, FinReceived;
    }

    private static readonly uint s_gateway = Ip(UserNetConfig.Gateway);
    private readonly HashSet<int> _udpForwarded;

    /// <param name="udpForwardedGuestPorts">Guest ports of udp hostfwd= entries: the guest's answers from them to the
    /// gateway are libslirp's (the host asked).</param>
    public NetSinkhole(NetworkLog log, int nic, IEnumerable<int>? udpForwardedGuestPorts = null)
    {
        _log = log;
        _nic = nic;
        _udpForwarded = [.. udpForwardedGuestPorts ?? []];
    }

    private static uint Ip(string dotted) => BinaryPrimitives.ReadUInt32BigEndian(IPAddress.Parse(dotted).GetAddressBytes());
    private static string Dotted(uint a) => $"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}";

    /// <summary>
    /// One frame from the guest: true when it goes on to libslirp; false when the sinkhole took it (answers, if any,
    /// went to <paramref name="toGuest"/>).
    /// </summary>
    public bool Inspect(ReadOnlySpan<byte> f, FrameSink toGuest)
    {
        if (f.Length < 14) return false;
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(f[12..]);
        if (type == 0x0806) return Arp(f, toGuest);
        if (type == 0x86DD) { Ipv6Dropped++; return false; }
        if (type != 0x0800 || f.Length < 34) return false;
        var ip = f[14..];
        int ihl = (ip[0] & 15) * 4;
        int total = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
        if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl || total > ip.Length) return false;
        ip = ip[..total];
        byte proto = ip[9];
        uint src = BinaryPrimitives.ReadUInt32BigEndian(ip[12..]), dst = BinaryPrimitives.ReadUInt32BigEndian(ip[16..]);
        // A fragment other than the first has no port numbers: nothing to say about it.
        bool laterFragment = (BinaryPrimitives.ReadUInt16BigEndian(ip[6..]) & 0x1FFF) != 0;
        var l4 = ip[ihl..];
        switch (proto)
        {
            case 6 when !laterFragment && l4.Length >= 20:
                return Tcp(f, src, dst, l4, toGuest);
            case 17 when !laterFragment && l4.Length >= 8:
                return Udp(f, src, dst, l4, toGuest);
            case 1 when !laterFragment && l4.Length >= 8:
                if (l4[0] == 8) // echo request
                {
                    Log("icmp", dst, null, w => w.WriteString("event", "echo"));
                    Reply(f, dst, src, 1, l4, toGuest, icmpEcho: true);
                }
                return false;
            default:
                if (!laterFragment) Log(proto switch { 1 => "icmp", 6 => "tcp", 17 => "udp", _ => $"ip-proto-{proto}" }, dst, null, _ => { });
                return false;
        }
    }

    private void Log(string protocol, uint dst, int? port, Action<Utf8JsonWriter> more) => _log.Write(w =>
    {
        w.WriteNumber("nic", _nic);
        w.WriteString("protocol", protocol);
        w.WriteString("destination", port is { } p ? $"{Dotted(dst)}:{p}" : Dotted(dst));
        more(w);
    });

    /// <summary>ARP: requests for the sinkhole address are answered here (no one else has it), the rest go to libslirp.</summary>
    private bool Arp(ReadOnlySpan<byte> f, FrameSink toGuest)
    {
        if (f.Length < 42) return false;
        var a = f[14..];
        if (BinaryPrimitives.ReadUInt16BigEndian(a[6..]) != 1 || BinaryPrimitives.ReadUInt32BigEndian(a[24..]) != s_sinkhole) return true;
        var o = _out.AsSpan(0, 42);
        f[6..12].CopyTo(o);                 // to the asker
        s_sinkholeMac.CopyTo(o[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(o[12..], 0x0806);
        a[..6].CopyTo(o[14..]);             // hardware and protocol types and sizes
        BinaryPrimitives.WriteUInt16BigEndian(o[20..], 2); // reply
        s_sinkholeMac.CopyTo(o[22..]);
        a[24..28].CopyTo(o[28..]);          // sender: the sinkhole
        a[8..18].CopyTo(o[32..]);           // target: the asker's MAC and address
        toGuest(o);
        return false;
    }

    private bool Udp(ReadOnlySpan<byte> f, uint src, uint dst, ReadOnlySpan<byte> u, FrameSink toGuest)
    {
        ushort sport = BinaryPrimitives.ReadUInt16BigEndian(u), dport = BinaryPrimitives.ReadUInt16BigEndian(u[2..]);
        if (dport == 67) return true; // DHCP: the virtual network's own
        if (dst == s_gateway && _udpForwarded.Contains(sport)) return true;
        int len = Math.Min(BinaryPrimitives.ReadUInt16BigEndian(u[4..]), u.Length);
        var payload = len >= 8 ? u[8..len] : [];
        if (dport == 53 && ParseQuestion(payload, out string name, out ushort qtype, out int qend))
        {
            Log("udp", dst, dport, w =>
            {
                w.WriteString("event", "dns");
                w.WriteString("name", name);
                w.WriteString("type", qtype switch { 1 => "A", 28 => "AAAA", 5 => "CNAME", 15 => "MX", 16 => "TXT", 255 => "ANY", _ => qtype.ToString(System.Globalization.CultureInfo.InvariantCulture) });
            });
            Span<byte> dns = stackalloc byte[qend + 16];
            payload[..qend].CopyTo(dns);
            bool answer = qtype is 1 or 255;
            BinaryPrimitives.WriteUInt16BigEndian(dns[2..], (ushort)(0x8180 | (payload[2] & 0x79) << 8)); // QR, opcode and RD kept, RA
            BinaryPrimitives.WriteUInt16BigEndian(dns[4..], 1);
            BinaryPrimitives.WriteUInt16BigEndian(dns[6..], (ushort)(answer ? 1 : 0));
            dns[8..12].Clear();
            int n = qend;
            if (answer)
            {
                BinaryPrimitives.WriteUInt16BigEndian(dns[n..], 0xC00C); n += 2;   // the question's name
                BinaryPrimitives.WriteUInt16BigEndian(dns[n..], 1); n += 2;        // A
                BinaryPrimitives.WriteUInt16BigEndian(dns[n..], 1); n += 2;        // IN
                BinaryPrimitives.WriteUInt32BigEndian(dns[n..], 60); n += 4;       // TTL
                BinaryPrimitives.WriteUInt16BigEndian(dns[n..], 4); n += 2;
                BinaryPrimitives.WriteUInt32BigEndian(dns[n..], s_sinkhole); n += 4;
            }
            Span<byte> udp = stackalloc byte[8 + n];
            BinaryPrimitives.WriteUInt16BigEndian(udp, dport);
            BinaryPrimitives.WriteUInt16BigEndian(udp[2..], sport);
            BinaryPrimitives.WriteUInt16BigEndian(udp[4..], (ushort)udp.Length);
            dns[..n].CopyTo(udp[8..]);
            Reply(f, dst, src, 17, udp, toGuest);
            return false;
        }
        int size = payload.Length;
        Log("udp", dst, dport, w => w.WriteNumber("bytes", size));
        return false;
    }

    /// <summary>The first question of a DNS query: its name (dotted), type, and where the question ends.</summary>
    private static bool ParseQuestion(ReadOnlySpan<byte> m, out string name, out ushort qtype, out int end)
    {
        name = "";
        qtype = 0;
        end = 0;
        if (m.Length < 17 || (m[2] & 0x80) != 0 || BinaryPrimitives.ReadUInt16BigEndian(m[4..]) == 0) return false;
        var sb = new StringBuilder();
        int p = 12;
        while (true)
        {
            if (p >= m.Length) return false;
            int l = m[p++];
            if (l == 0) break;
            if (l > 63 || p + l > m.Length || sb.Length + l > 253) return false; // no compression in a question
            if (sb.Length > 0) sb.Append('.');
            foreach (byte b in m.Slice(p, l)) sb.Append(b is > 32 and < 127 ? (char)b : '?');
            p += l;
        }
        if (p + 4 > m.Length) return false;
        qtype = BinaryPrimitives.ReadUInt16BigEndian(m[p..]);
        name = sb.ToString();
        end = p + 4;
        return true;
    }

    private bool Tcp(ReadOnlySpan<byte> f, uint src, uint dst, ReadOnlySpan<byte> t, FrameSink toGuest)
    {
        ushort sport = BinaryPrimitives.ReadUInt16BigEndian(t), dport = BinaryPrimitives.ReadUInt16BigEndian(t[2..]);
        uint seq = BinaryPrimitives.ReadUInt32BigEndian(t[4..]);
        int off = (t[12] >> 4) * 4;
        byte flags = t[13];
        const byte FIN = 1, SYN = 2, RST = 4, ACK = 16;
        if (off < 20 || off > t.Length) return false;
        var key = (src, sport, dst, dport);
        _conns.TryGetValue(key, out var c);
        if ((flags & SYN) != 0 && (flags & ACK) == 0)
        {
            // A fixed initial sequence number per connection (a sandbox has nothing to protect from guessing).
            uint isn = 0x5EED0000u ^ ((uint)sport << 8);
            if (c == null)
            {
                Log("tcp", dst, dport, w => w.WriteString("event", "connect"));
                c = new TcpConn { Ours = isn + 1 };
                Remember(key, c);
            }
            c.Theirs = seq + 1;
            Segment(f, dst, src, dport, sport, isn, c.Theirs, SYN | ACK, toGuest);
            return false;
        }
        // The guest's side of a connection the host opened (hostfwd=, so from the gateway): libslirp's. Anything
        // else of no connection here has nowhere to go.
        if (c == null) return dst == s_gateway;
        if ((flags & RST) != 0) { _conns.Remove(key); return false; }
        var data = t[off..];
        bool inOrder = seq == c.Theirs;
        if (data.Length > 0 && inOrder)
        {
            if (c.Logged < MaxDataLogged)
            {
                var first = data[..Math.Min(data.Length, MaxDataLogged - c.Logged)];
                c.Logged += first.Length;
                string text = Encoding.Latin1.GetString(first);
                int bytes = data.Length;
                Log("tcp", dst, dport, w =>
                {
                    w.WriteString("event", "data");
                    w.WriteNumber("bytes", bytes);
                    w.WriteString("data", text);
                });
            }
            c.Theirs += (uint)data.Length;
        }
        bool fin = (flags & FIN) != 0 && inOrder;
        if (fin && !c.FinReceived) { c.Theirs++; c.FinReceived = true; }
        if (data.Length > 0 || (flags & FIN) != 0)
        {
            // Acknowledge, and close our side after the first data (the sinkhole speaks no protocol).
            int fl = ACK;
            uint segSeq = c.Ours;
            if (!c.FinSent) { fl |= FIN; c.FinSent = true; c.Ours++; }
            Segment(f, dst, src, dport, sport, segSeq, c.Theirs, fl, toGuest);
        }
        else if (c.FinSent && c.FinReceived && (flags & ACK) != 0 && BinaryPrimitives.ReadUInt32BigEndian(t[8..]) == c.Ours)
            _conns.Remove(key); // both sides closed and our FIN acknowledged
        return false;
    }

    private void Remember((uint, ushort, uint, ushort) key, TcpConn c)
    {
        while (_conns.Count >= MaxConnections && _order.TryDequeue(out var old)) _conns.Remove(old);
        _conns[key] = c;
        _order.Enqueue(key);
    }

    private void Segment(ReadOnlySpan<byte> f, uint from, uint to, ushort sport, ushort dport, uint seq, uint ack, int flags,
        FrameSink toGuest)
    {
        Span<byte> t = stackalloc byte[20];
        BinaryPrimitives.WriteUInt16BigEndian(t, sport);
        BinaryPrimitives.WriteUInt16BigEndian(t[2..], dport);
        BinaryPrimitives.WriteUInt32BigEndian(t[4..], seq);
        BinaryPrimitives.WriteUInt32BigEndian(t[8..], ack);
        t[12] = 5 << 4;
        t[13] = (byte)flags;
        BinaryPrimitives.WriteUInt16BigEndian(t[14..], 65535);
        t[16] = t[17] = t[18] = t[19] = 0;
        Reply(f, from, to, 6, t, toGuest);
    }

    /// <summary>An IPv4 packet from <paramref name="from"/> back to the guest, in the Ethernet frame's reverse
    /// direction; the transport checksum is filled in here (for ICMP echo: the request turned into the reply).</summary>
    private void Reply(ReadOnlySpan<byte> f, uint from, uint to, byte proto, ReadOnlySpan<byte> l4, FrameSink toGuest, bool icmpEcho = false)
    {
        int total = 20 + l4.Length;
        if (14 + total > _out.Length) return;
        var o = _out.AsSpan(0, 14 + total);
        f[6..12].CopyTo(o);          // to the guest's MAC
        f[..6].CopyTo(o[6..]);       // from the MAC it sent to (the gateway's, or the sinkhole's)
        BinaryPrimitives.WriteUInt16BigEndian(o[12..], 0x0800);
        var ip = o[14..];
        ip[0] = 0x45; ip[1] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)total);
        BinaryPrimitives.WriteUInt32BigEndian(ip[4..], 0x4000); // id 0, DF
        ip[8] = 64; ip[9] = proto;
        ip[10] = ip[11] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(ip[12..], from);
        BinaryPrimitives.WriteUInt32BigEndian(ip[16..], to);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum(ip[..20], 0));
        var body = ip[20..];
        l4.CopyTo(body);
        if (icmpEcho)
        {
            body[0] = 0; // echo reply
            body[2] = body[3] = 0;
            BinaryPrimitives.WriteUInt16BigEndian(body[2..], Checksum(body, 0));
        }
        else
        {
            int at = proto == 6 ? 16 : 6;
            body[at] = body[at + 1] = 0;
            uint pseudo = (from >> 16) + (from & 0xFFFF) + (to >> 16) + (to & 0xFFFF) + proto + (uint)body.Length;
            ushort sum = Checksum(body, pseudo);
            if (proto == 17 && sum == 0) sum = 0xFFFF;
            BinaryPrimitives.WriteUInt16BigEndian(body[at..], sum);
        }
        toGuest(o);
    }

    private readonly byte[] _fromSlirp = new byte[1600];

    /// <summary>
    /// A frame libslirp sends the guest. In restricted mode libslirp's DHCP leaves out the router and the DNS server
    /// (nothing is reachable there), which would leave a sandboxed guest with no route to try anything on: the
    /// sinkhole adds both (the gateway and 10.0.2.3, as unrestricted), so what the guest then starts comes here.
    /// Every other frame goes through as it is.
    /// </summary>
    public ReadOnlySpan<byte> FromSlirp(ReadOnlySpan<byte> f)
    {
        if (f.Length < 14 + 20 + 8 + 240 || BinaryPrimitives.ReadUInt16BigEndian(f[12..]) != 0x0800) return f;
        var ip = f[14..];
        int ihl = (ip[0] & 15) * 4, total = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
        if (ip[9] != 17 || ihl < 20 || total > ip.Length || total < ihl + 8 + 240) return f;
        var u = ip[ihl..total];
        if (BinaryPrimitives.ReadUInt16BigEndian(u) != 67 || BinaryPrimitives.ReadUInt16BigEndian(u[2..]) != 68) return f;
        var bootp = u[8..];
        if (bootp[0] != 2 || BinaryPrimitives.ReadUInt32BigEndian(bootp[236..]) != 0x63825363) return f;
        int p = 240, end = -1;
        while (p < bootp.Length)
        {
            byte code = bootp[p];
            if (code == 255) { end = p; break; }
            if (code == 0) { p++; continue; }
            if (code is 3 or 6) return f; // already there (an unrestricted network)
            if (p + 1 >= bootp.Length) return f;
            p += 2 + bootp[p + 1];
        }
        ReadOnlySpan<byte> extra = [3, 4, 10, 0, 2, 2, 6, 4, 10, 0, 2, 3];
        int at = 14 + ihl + 8 + end;
        int length = 14 + total + extra.Length;
        if (end < 0 || length > _fromSlirp.Length) return f;
        var o = _fromSlirp.AsSpan(0, length);
        f[..at].CopyTo(o);
        extra.CopyTo(o[at..]);
        f[at..(14 + total)].CopyTo(o[(at + extra.Length)..]);
        var oip = o[14..];
        BinaryPrimitives.WriteUInt16BigEndian(oip[2..], (ushort)(total + extra.Length));
        oip[10] = oip[11] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(oip[10..], Checksum(oip[..ihl], 0));
        var ou = oip[ihl..];
        BinaryPrimitives.WriteUInt16BigEndian(ou[4..], (ushort)ou.Length);
        ou[6] = ou[7] = 0;
        uint from = BinaryPrimitives.ReadUInt32BigEndian(oip[12..]), to = BinaryPrimitives.ReadUInt32BigEndian(oip[16..]);
        ushort sum = Checksum(ou, (from >> 16) + (from & 0xFFFF) + (to >> 16) + (to & 0xFFFF) + 17 + (uint)ou.Length);
        BinaryPrimitives.WriteUInt16BigEndian(ou[6..], sum == 0 ? (ushort)0xFFFF : sum);
        return o;
    }

    /// <summary>The Internet checksum (RFC 1071) of <paramref name="b"/>, starting from a partial sum.</summary>
    private static ushort Checksum(ReadOnlySpan<byte> b, uint sum)
    {
        ulong s = sum;
        int i = 0;
        for (; i + 1 < b.Length; i += 2) s += BinaryPrimitives.ReadUInt16BigEndian(b[i..]);
        if (i < b.Length) s += (uint)b[i] << 8;
        while ((s >> 16) != 0) s = (s & 0xFFFF) + (s >> 16);
        return (ushort)~s;
    }
}
