using Dirigent.Devices.Virtio;

namespace Dirigent.Vmm;

public enum AccelKind { Auto, Emu, Kvm }

/// <summary>What the vCPUs start in: the kernel loaded directly (None), or SeaBIOS from its ROM image (Bios).</summary>
public enum FirmwareKind { None, Bios }

/// <summary>A fw_cfg file the user adds (<c>--fw-cfg name=opt/NAME,string=TEXT|file=PATH</c>).</summary>
public sealed record FwCfgFileConfig(string Name, byte[] Data)
{
    /// <summary>The longest file content accepted: fw_cfg carries small configuration blobs, not disks.</summary>
    public const int MaxSize = 1 << 20;

    /// <summary>Where the daemon puts a VM's name for the guest to take as its hostname (the Debian image's
    /// dirigent-hostname.service reads it; the image builder names it too, in GuestConfig.HostnameFwCfgName).</summary>
    public const string GuestHostnameFile = "opt/org.dirigent/hostname";

    /// <summary>
    /// Parses QEMU's <c>-fw_cfg</c> value: <c>name=opt/...,string=TEXT</c> or <c>name=opt/...,file=PATH</c>. Names
    /// live under <c>opt/</c> (the rest of the namespace is the firmware's), 1..55 printable ASCII characters;
    /// a string may not contain commas (as in QEMU). Errors are one line (<see cref="FormatException"/>).
    /// </summary>
    public static FwCfgFileConfig Parse(string value)
    {
        string? name = null, text = null, file = null;
        foreach (var part in value.Split(','))
        {
            int eq = part.IndexOf('=');
            string key = eq < 0 ? part : part[..eq], val = eq < 0 ? "" : part[(eq + 1)..];
            switch (key)
            {
                case "name": name = val; break;
                case "string": text = val; break;
                case "file": file = val; break;
                default: throw new FormatException($"--fw-cfg: unknown option '{key}' (name=opt/...,string=TEXT or name=opt/...,file=PATH)");
            }
        }
        if (string.IsNullOrEmpty(name)) throw new FormatException("--fw-cfg: name=opt/... is required");
        if (!name.StartsWith("opt/", StringComparison.Ordinal) || name.Length <= 4)
            throw new FormatException($"--fw-cfg: name '{name}' must start with opt/ (the rest of fw_cfg's names belong to the firmware)");
        if (name.Length > 55 || name.Any(c => c < 0x21 || c > 0x7E))
            throw new FormatException($"--fw-cfg: name '{name}': at most 55 printable ASCII characters without spaces");
        if ((text == null) == (file == null)) throw new FormatException("--fw-cfg: give exactly one of string= and file=");
        byte[] data;
        if (text != null) data = System.Text.Encoding.UTF8.GetBytes(text);
        else
        {
            var fi = new FileInfo(file!);
            if (!fi.Exists) throw new FormatException($"--fw-cfg: {file}: no such file");
            if (fi.Length > MaxSize) throw new FormatException($"--fw-cfg: {file} is {fi.Length} bytes; at most {MaxSize}");
            try { data = File.ReadAllBytes(file!); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new FormatException($"--fw-cfg: {file}: {e.Message}"); }
        }
        if (data.Length > MaxSize) throw new FormatException($"--fw-cfg: the content of {name} is over {MaxSize} bytes");
        return new FwCfgFileConfig(name, data);
    }
}

/// <summary>A --disk image's format; Auto probes the file's magic (a qcow2 file is never taken for raw).</summary>
public enum DiskFormat { Auto, Raw, Qcow2 }

/// <summary>
/// One --disk: an image file attached as a virtio-blk device, optionally rate-limited (bytes read or written per
/// second, requests per second; 0: unlimited).
/// </summary>
public sealed record DiskConfig(string Path, DiskFormat Format, bool ReadOnly, long BytesPerSecond = 0, long OpsPerSecond = 0)
{
    /// <summary>The device's limits (a burst of one second's worth), or null when unlimited.</summary>
    public RateLimitConfig? ToRateLimit() => RateLimits.Config(BytesPerSecond, OpsPerSecond);
}

/// <summary>The bps=/iops=/pps= options of --disk and --net.</summary>
public static class RateLimits
{
    public static RateLimitConfig? Config(long bytesPerSecond, long opsPerSecond) =>
        bytesPerSecond == 0 && opsPerSecond == 0 ? null : new RateLimitConfig(
            bytesPerSecond == 0 ? null : TokenBucketConfig.PerSecond(bytesPerSecond),
            opsPerSecond == 0 ? null : TokenBucketConfig.PerSecond(opsPerSecond));

    /// <summary>A positive rate: digits with an optional K, M or G suffix (binary: K = 1024), e.g. 50M.</summary>
    public static long Parse(string option, string spec, string value)
    {
        string t = value.Trim().ToUpperInvariant();
        long mul = 1;
        if (t.Length > 0 && t[^1] is 'K' or 'M' or 'G')
        {
            mul = t[^1] switch { 'K' => 1L << 10, 'M' => 1L << 20, _ => 1L << 30 };
            t = t[..^1];
        }
        if (t.Length == 0 || !t.All(char.IsAsciiDigit) || !long.TryParse(t, out long n) || n <= 0 || n > long.MaxValue / mul / 1024)
            throw new FormatException($"{spec}: {option}='{value}' is not a positive rate (digits with an optional K, M or G suffix, e.g. 50M)");
        return n * mul;
    }
}

/// <summary>What `dirigent run` was asked for, after parsing and validation.</summary>
public sealed class VmSpec
{
    public ulong MemoryBytes = 512UL << 20;
    /// <summary>vCPUs, 1..<see cref="MaxCpus"/>; vCPU i has APIC ID i, vCPU 0 is the boot processor.</summary>
    public int Cpus = 1;
    /// <summary>
    /// The most vCPUs a VM may have: one host thread each, and the software CPU tracks which vCPUs may write a page in
    /// one 64-bit mask. (xAPIC IDs would allow 255; QEMU's q35 allows 288 with x2APIC.)
    /// </summary>
    public const int MaxCpus = 64;
    public string? Kernel;
    public List<string> Initrds = new();
    public string Append = "";
    public AccelKind Accel = AccelKind.Auto;
    /// <summary>"stdio", "none" or "file:PATH".</summary>
    public string Serial = "stdio";
    public bool NoReboot;
    /// <summary>One virtio-net card per entry, in PCI slot order (--net tap=NAME[,...] or --net user[,hostfwd=...]...).</summary>
    public List<NicConfig> Nics = new();
    /// <summary>virtio-blk disks in PCI slot order (the guest sees /dev/vda, /dev/vdb, ...).</summary>
    public List<DiskConfig> Disks = new();
    /// <summary>Attach a virtio entropy device (/dev/hwrng in the guest).</summary>
    public bool Rng;
    /// <summary>Bios: the vCPUs start at the reset vector in SeaBIOS, which boots the disks (no kernel is loaded).</summary>
    public FirmwareKind Firmware = FirmwareKind.None;
    /// <summary>The BIOS image; null: Debian's SeaBIOS (<c>/usr/share/seabios/bios-256k.bin</c>).</summary>
    public string? FirmwarePath;
    /// <summary>Disks (indexes into <see cref="Disks"/>) in the order the firmware tries them; empty: SeaBIOS's default.</summary>
    public List<int> BootOrder = new();
    /// <summary>Firmware boot: extra fw_cfg files (QEMU's <c>-fw_cfg name=opt/...</c>), e.g. the guest's hostname
    /// under <c>opt/org.dirigent/hostname</c>; the guest reads them in /sys/firmware/qemu_fw_cfg/by_name.</summary>
    public List<FwCfgFileConfig> FwCfgFiles = new();

    /// <summary>
    /// Parses --boot-order: comma-separated items, QEMU's <c>c</c> (the hard disks, in --disk order) or <c>diskN</c>
    /// (the N-th --disk, from 0). Each disk goes where it is first named.
    /// </summary>
    public static List<int> ParseBootOrder(string value, int diskCount)
    {
        var order = new List<int>();
        foreach (string raw in value.Split(','))
        {
            string item = raw.Trim();
            if (item == "c") { for (int k = 0; k < diskCount; k++) if (!order.Contains(k)) order.Add(k); continue; }
            if (item.StartsWith("disk", StringComparison.Ordinal) && int.TryParse(item.AsSpan(4), System.Globalization.NumberStyles.None, null, out int n))
            {
                if (n >= diskCount) throw new FormatException($"--boot-order: '{item}' names disk {n}, but there {(diskCount == 1 ? "is 1 disk" : $"are {diskCount} disks")} (disk0 is the first --disk)");
                if (!order.Contains(n)) order.Add(n);
                continue;
            }
            if (item is "a" or "b" or "d" or "n")
                throw new FormatException($"--boot-order: '{item}': this machine has no floppy, CD-ROM or network boot ROM (use c or diskN)");
            throw new FormatException($"--boot-order: unknown item '{item}' (use c for the disks in order, or diskN)");
        }
        return order;
    }

    /// <summary>Parses <c>PATH[,format=raw|qcow2][,readonly][,bps=N][,iops=N]</c> (also <c>readonly=on|off</c>).</summary>
    public static DiskConfig ParseDisk(string spec)
    {
        var parts = spec.Split(',');
        if (parts[0].Length == 0) throw new FormatException($"--disk '{spec}': missing image path");
        var format = DiskFormat.Auto;
        bool ro = false;
        long bps = 0, iops = 0;
        foreach (var opt in parts.Skip(1))
        {
            if (opt.StartsWith("bps=", StringComparison.Ordinal)) { bps = RateLimits.Parse("bps", $"--disk '{spec}'", opt[4..]); continue; }
            if (opt.StartsWith("iops=", StringComparison.Ordinal)) { iops = RateLimits.Parse("iops", $"--disk '{spec}'", opt[5..]); continue; }
            switch (opt)
            {
                case "format=raw": format = DiskFormat.Raw; break;
                case "format=qcow2": format = DiskFormat.Qcow2; break;
                case "readonly" or "readonly=on": ro = true; break;
                case "readonly=off": ro = false; break;
                default:
                    throw new FormatException($"--disk '{spec}': unknown option '{opt}' (use format=raw|qcow2, readonly, bps=N, iops=N)");
            }
        }
        return new DiskConfig(parts[0], format, ro, bps, iops);
    }

    /// <summary>
    /// Parses a memory size the way QEMU's -m does: a bare number is MiB; K/M/G/T suffixes (optionally with B/iB).
    /// </summary>
    public static ulong ParseMemory(string s)
    {
        string t = s.Trim();
        if (t.Length == 0) throw new FormatException("empty memory size");
        string upper = t.ToUpperInvariant();
        if (upper.EndsWith("IB")) upper = upper[..^2];
        else if (upper.EndsWith('B')) upper = upper[..^1];
        ulong mul = 1UL << 20;
        char last = upper[^1];
        if (char.IsLetter(last))
        {
            mul = last switch
            {
                'K' => 1UL << 10,
                'M' => 1UL << 20,
                'G' => 1UL << 30,
                'T' => 1UL << 40,
                _ => throw new FormatException($"unknown memory size suffix in '{s}' (use K, M, G or T)"),
            };
            upper = upper[..^1];
        }
        if (!ulong.TryParse(upper, out ulong n) || n == 0)
            throw new FormatException($"invalid memory size '{s}' (examples: 512, 512M, 2G)");
        ulong bytes = n * mul;
        if (bytes / mul != n) throw new FormatException($"memory size '{s}' is too large");
        if (bytes < (16UL << 20)) throw new FormatException($"memory size '{s}' is too small (at least 16M)");
        if (bytes > Dirigent.Machine.Memory.GuestMemory.MaxRamSize)
            throw new FormatException($"memory size '{s}' is more than the guest can address: at most " +
                $"{Dirigent.Machine.Memory.GuestMemory.MaxRamSize >> 20}M ({Dirigent.Machine.Memory.GuestMemory.PhysAddrBits} physical address bits)");
        if ((bytes & 0xFFF) != 0) throw new FormatException($"memory size '{s}' is not a multiple of 4 KiB");
        return bytes;
    }
}

/// <summary>A virtio-net card backed by a TAP interface or by user-mode networking (libslirp).</summary>
public sealed class NicConfig
{
    /// <summary>The TAP interface behind the card; null for a user-mode card (<see cref="User"/>).</summary>
    public string? Tap;
    /// <summary>User-mode networking (QEMU's -netdev user); null for a TAP card. Exactly one of the two is set.</summary>
    public UserNetConfig? User;
    public required byte[] Mac;
    /// <summary>Network namespace (name under /run/netns, or a path) the TAP is opened in; null: the VMM's own.</summary>
    public string? Netns;
    /// <summary>Frame bytes and packets per second, each direction separately; 0: unlimited.</summary>
    public long BytesPerSecond, PacketsPerSecond;

    /// <summary>Each direction's limits (a burst of one second's worth), or null when unlimited.</summary>
    public RateLimitConfig? ToRateLimit() => RateLimits.Config(BytesPerSecond, PacketsPerSecond);

    private const string Syntax = "tap=NAME[,mac=MAC][,netns=NS][,bps=N][,pps=N] or user[,hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...[,restrict=on][,mac=MAC][,bps=N][,pps=N]";

    /// <summary>
    /// Parses `tap=NAME[,mac=MAC][,netns=NS][,bps=N][,pps=N]` or `user[,hostfwd=...]...[,mac=MAC][,bps=N][,pps=N]`
    /// (hostfwd repeatable, QEMU's syntax). Without mac=, card <paramref name="index"/> gets QEMU's default scheme,
    /// 52:54:00:12:34:56 plus the index, so the cards of one VM differ.
    /// </summary>
    public static NicConfig Parse(string spec, int index)
    {
        string? tap = null, netns = null;
        UserNetConfig? user = null;
        var forwards = new List<HostForward>();
        byte[]? mac = null;
        long bps = 0, pps = 0;
        bool? restrict = null;
        foreach (string part in spec.Split(','))
        {
            int eq = part.IndexOf('=');
            string key = eq < 0 ? part : part[..eq], value = eq < 0 ? "" : part[(eq + 1)..];
            switch (key)
            {
                case "tap": tap = value; break;
                case "user" when eq < 0: user = new UserNetConfig(); break;
                case "hostfwd": forwards.Add(HostForward.Parse(value)); break;
                case "mac": mac = ParseMac(value); break;
                case "netns":
                    if (value.Length == 0) throw new FormatException("--net: netns= needs a namespace name or path");
                    netns = value;
                    break;
                case "restrict":
                    restrict = value switch
                    {
                        "on" or "yes" or "" => true,
                        "off" or "no" => false,
                        _ => throw new FormatException($"--net: restrict must be on or off, got '{value}'"),
                    };
                    break;
                case "bps": bps = RateLimits.Parse("bps", $"--net '{spec}'", value); break;
                case "pps": pps = RateLimits.Parse("pps", $"--net '{spec}'", value); break;
                default: throw new FormatException($"--net: unknown option '{key}' in '{spec}' (expected {Syntax})");
            }
        }
        if (tap != null && user != null) throw new FormatException($"--net: '{spec}' names both a TAP and user networking (a card has one backend)");
        if (tap == null && user == null) throw new FormatException($"--net: '{spec}' names no backend (expected {Syntax})");
        if (user == null && forwards.Count > 0) throw new FormatException($"--net: hostfwd= is for user networking (--net user,hostfwd=...), not a TAP");
        if (user == null && restrict != null) throw new FormatException("--net: restrict= is for user networking (--net user,restrict=on), not a TAP");
        if (user != null) user.Restricted = restrict ?? false;
        if (user != null && netns != null) throw new FormatException("--net: netns= is for a TAP card; user networking uses the VMM's own sockets");
        if (tap != null && Net.TapInterface.InvalidNameReason(tap) is { } bad) throw new FormatException($"--net: {bad}");
        if (user != null)
        {
            foreach (var f in forwards)
                if (user.HostForwards.Any(g => g.Udp == f.Udp && g.HostPort == f.HostPort && g.HostAddress == f.HostAddress))
                    throw new FormatException($"--net: hostfwd {f} forwards a host port already forwarded");
                else user.HostForwards.Add(f);
        }
        if (index > 0xA9) throw new FormatException("--net: too many cards");
        return new NicConfig { Tap = tap, User = user, Netns = netns, BytesPerSecond = bps, PacketsPerSecond = pps, Mac = mac ?? [0x52, 0x54, 0x00, 0x12, 0x34, (byte)(0x56 + index)] };
    }

    /// <summary>A unicast MAC written as six hex pairs separated by ':' or '-'.</summary>
    public static byte[] ParseMac(string s)
    {
        string[] parts = s.Split(s.Contains('-') ? '-' : ':');
        var mac = new byte[6];
        if (parts.Length != 6) throw new FormatException($"--net: invalid MAC '{s}' (expected six hex pairs, e.g. 52:54:00:12:34:56)");
        for (int k = 0; k < 6; k++)
            if (parts[k].Length != 2 || !byte.TryParse(parts[k], System.Globalization.NumberStyles.AllowHexSpecifier, null, out mac[k]))
                throw new FormatException($"--net: invalid MAC '{s}' (expected six hex pairs, e.g. 52:54:00:12:34:56)");
        if ((mac[0] & 1) != 0) throw new FormatException($"--net: MAC '{s}' is a multicast address (the first byte must be even)");
        if (mac.All(b => b == 0)) throw new FormatException($"--net: MAC '{s}' is all zeros");
        return mac;
    }
}
