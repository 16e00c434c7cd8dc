using System.Globalization;
using System.Net;

namespace Dirigent.Vmm;

/// <summary>
/// A `--net user` card: the guest's network is libslirp's, with QEMU's default addresses (10.0.2.0/24; the gateway
/// 10.0.2.2 is the host, its loopback included; DNS 10.0.2.3; DHCP hands out 10.0.2.15 first) and the host ports
/// forwarded into it.
/// </summary>
public sealed class UserNetConfig
{
    public const string Network = "10.0.2.0", Netmask = "255.255.255.0", Gateway = "10.0.2.2", Dns = "10.0.2.3",
        DhcpStart = "10.0.2.15";

    /// <summary>
    /// restrict=on (QEMU's -netdev user,restrict=on; libslirp's restricted mode): the guest reaches only the virtual
    /// network's own services (DHCP, and the gateway's hostfwd= ports from the host); every connection or datagram it
    /// sends elsewhere is dropped inside libslirp, so nothing it does leaves the host (what --sandbox uses).
    /// </summary>
    public bool Restricted;

    /// <summary>
    /// The sandbox's network log (DIR/network.jsonl): when set, the card's frames pass the sinkhole
    /// (<see cref="Net.NetSinkhole"/>) first, which logs every connection attempt there and answers it itself.
    /// </summary>
    public string? SinkholeLog;

    /// <summary>hostfwd= entries in the order given.</summary>
    public List<HostForward> HostForwards = new();
}

/// <summary>
/// One hostfwd=: connections (or datagrams) to HOSTADDR:HOSTPORT on the host reach GUESTADDR:GUESTPORT in the
/// guest. QEMU's syntax <c>[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT</c>; as in QEMU an empty HOSTADDR
/// means every host address (0.0.0.0) and an empty GUESTADDR the first DHCP address, 10.0.2.15.
/// </summary>
public sealed class HostForward
{
    public bool Udp;
    public string HostAddress = "0.0.0.0";
    public int HostPort;
    public string GuestAddress = UserNetConfig.DhcpStart;
    public int GuestPort;

    public override string ToString() => $"{(Udp ? "udp" : "tcp")}:{HostAddress}:{HostPort}-{GuestAddress}:{GuestPort}";

    public static HostForward Parse(string value)
    {
        string What(string why) => $"--net: hostfwd='{value}': {why} (expected [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, e.g. tcp:127.0.0.1:2222-:22)";
        int dash = value.IndexOf('-');
        if (dash < 0) throw new FormatException(What("no '-' between the host and the guest side"));
        string[] host = value[..dash].Split(':'), guest = value[(dash + 1)..].Split(':');
        if (host.Length != 3) throw new FormatException(What("the host side must be PROTOCOL:HOSTADDR:HOSTPORT (each part may be empty but the protocol and the port)"));
        if (guest.Length != 2) throw new FormatException(What("the guest side must be [GUESTADDR]:GUESTPORT"));
        var f = new HostForward
        {
            Udp = host[0] switch
            {
                "" or "tcp" => false,
                "udp" => true,
                _ => throw new FormatException(What($"protocol '{host[0]}' is neither tcp nor udp")),
            },
        };
        if (host[1].Length > 0) f.HostAddress = Ipv4(host[1], "host address", What);
        f.HostPort = Port(host[2], "host port", What);
        if (guest[0].Length > 0)
        {
            f.GuestAddress = Ipv4(guest[0], "guest address", What);
            var b = IPAddress.Parse(f.GuestAddress).GetAddressBytes();
            if (b[0] != 10 || b[1] != 0 || b[2] != 2 || b[3] is 0 or 2 or 3 or 255)
                throw new FormatException(What($"the guest address must be a guest's in 10.0.2.0/24 (not .0, .2, .3 or .255)"));
        }
        f.GuestPort = Port(guest[1], "guest port", What);
        return f;
    }

    private static string Ipv4(string s, string what, Func<string, string> msg)
    {
        var parts = s.Split('.');
        if (parts.Length != 4 || parts.Any(p => p.Length is 0 or > 3 || !p.All(char.IsAsciiDigit) || int.Parse(p, CultureInfo.InvariantCulture) > 255))
            throw new FormatException(msg($"{what} '{s}' is not an IPv4 address in dotted-quad form"));
        return string.Join('.', parts.Select(p => int.Parse(p, CultureInfo.InvariantCulture)));
    }

    private static int Port(string s, string what, Func<string, string> msg)
    {
        if (s.Length is 0 or > 5 || !s.All(char.IsAsciiDigit) || int.Parse(s, CultureInfo.InvariantCulture) is < 1 or > 65535)
            throw new FormatException(msg($"{what} '{s}' is not a port number 1-65535"));
        return int.Parse(s, CultureInfo.InvariantCulture);
    }
}
