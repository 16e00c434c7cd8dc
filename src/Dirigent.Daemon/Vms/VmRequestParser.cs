using System.Text.Json;
using System.Text.RegularExpressions;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// Strict reading of VM create/patch bodies: every field is checked by name and type, and every mistake is a 400 that
/// names the field with its path, so a typo ("memroy_mib") is never silently ignored.
/// </summary>
internal static partial class VmRequestParser
{
    [GeneratedRegex("^[a-z0-9][a-z0-9-]{0,62}$")]
    private static partial Regex NameRegex();

    public const string NameRule = "1-63 characters of a-z, 0-9 and '-', starting with a letter or digit";

    public static bool IsValidName(string? name) => name != null && NameRegex().IsMatch(name);

    public static void RequireValidName(string name, string field)
    {
        if (!IsValidName(name)) throw Bad($"field '{field}': invalid name '{name}' ({NameRule})");
    }

    private static readonly string[] RestartPolicies = ["no", "on-failure", "always"];

    /// <summary>POST /vms: name, spec, limits, restart, autostart, image (only name is required).</summary>
    public static VmRecord ParseCreate(JsonElement root) => ParseCreate(root, out _);

    /// <summary>Also returns the "image" field: a system image the VM boots from through a linked clone (or null).</summary>
    public static VmRecord ParseCreate(JsonElement root, out string? image)
    {
        var f = Fields(root, "", "name", "spec", "limits", "restart", "autostart", "image", "placement");
        image = f.TryGetValue("image", out var im) ? NullableString(im, "image") : null;
        if (image != null) RequireValidName(image, "image");
        if (!f.TryGetValue("name", out var n)) throw Bad("missing field 'name'");
        var rec = new VmRecord { Name = String(n, "name") };
        RequireValidName(rec.Name, "name");
        if (f.TryGetValue("spec", out var spec) && spec.ValueKind != JsonValueKind.Null) ApplySpec(spec, rec.Spec);
        if (f.TryGetValue("limits", out var lim) && lim.ValueKind != JsonValueKind.Null) ApplyLimits(lim, rec.Limits);
        if (f.TryGetValue("restart", out var r)) rec.Restart = ParseRestart(r);
        if (f.TryGetValue("autostart", out var a)) rec.Autostart = Bool(a, "autostart");
        if (f.TryGetValue("placement", out var pl) && pl.ValueKind != JsonValueKind.Null) rec.Placement = ParsePlacement(pl);
        // A system image boots through its own bootloader, as with `dirigent run --disk IMAGE`.
        if (image != null && rec.Spec.Kernel == null && rec.Spec.Firmware == null) rec.Spec.Firmware = "bios";
        return rec;
    }

    /// <summary>What a PATCH body asks to change (merge semantics: absent fields stay as they are).</summary>
    public sealed record Patch(JsonElement? Spec, JsonElement? Limits, string? Restart, bool? Autostart);

    public static Patch ParsePatch(JsonElement root)
    {
        var f = Fields(root, "", "spec", "limits", "restart", "autostart");
        return new Patch(
            f.TryGetValue("spec", out var s) ? s : null,
            f.TryGetValue("limits", out var l) ? l : null,
            f.TryGetValue("restart", out var r) ? ParseRestart(r) : null,
            f.TryGetValue("autostart", out var a) ? Bool(a, "autostart") : null);
    }

    /// <summary>"placement": {"host":"NAME","anti_affinity":"GROUP"} (names as VM names: a-z, 0-9, '-').</summary>
    private static VmPlacementModel? ParsePlacement(JsonElement e)
    {
        var f = Fields(e, "placement", "host", "anti_affinity");
        var p = new VmPlacementModel();
        if (f.TryGetValue("host", out var h) && NullableString(h, "placement.host") is { } host)
        {
            RequireValidName(host, "placement.host");
            p.Host = host;
        }
        if (f.TryGetValue("anti_affinity", out var g) && NullableString(g, "placement.anti_affinity") is { } group)
        {
            RequireValidName(group, "placement.anti_affinity");
            p.AntiAffinity = group;
        }
        return p.Host == null && p.AntiAffinity == null ? null : p;
    }

    private static string ParseRestart(JsonElement e)
    {
        string r = String(e, "restart");
        if (Array.IndexOf(RestartPolicies, r) < 0) throw Bad($"field 'restart' must be no, on-failure or always, got '{r}'");
        return r;
    }

    /// <summary>Applies the fields present in <paramref name="e"/> onto <paramref name="spec"/>.</summary>
    public static void ApplySpec(JsonElement e, VmSpecModel spec)
    {
        var f = Fields(e, "spec", "memory_mib", "vcpus", "kernel", "initrd", "cmdline", "accel", "rng", "disks", "nics", "firmware");
        foreach (var (k, v) in f)
        {
            string p = "spec." + k;
            switch (k)
            {
                // Bounded as `dirigent run --memory` is: RAM must end below the CPU's 40 physical address bits.
                case "memory_mib": spec.MemoryMib = (int)Long(v, p, 1, (long)(Dirigent.Machine.Memory.GuestMemory.MaxRamSize >> 20)); break;
                case "vcpus": spec.Vcpus = (int)Long(v, p, 1, Dirigent.Vmm.VmSpec.MaxCpus); break;
                case "kernel": spec.Kernel = AbsPath(NullableString(v, p), p); break;
                case "cmdline": spec.Cmdline = NullableString(v, p); break;
                case "rng": spec.Rng = Bool(v, p); break;
                case "firmware":
                    spec.Firmware = NullableString(v, p);
                    if (spec.Firmware is not (null or "bios" or "none")) throw Bad($"field '{p}' must be bios or none, got '{spec.Firmware}'");
                    break;
                case "accel":
                    spec.Accel = String(v, p);
                    if (spec.Accel is not ("emu" or "kvm" or "auto")) throw Bad($"field '{p}' must be emu, kvm or auto, got '{spec.Accel}'");
                    break;
                case "initrd":
                    spec.Initrd = v.ValueKind == JsonValueKind.Null ? [] :
                        Items(v, p).Select((x, i) => AbsPath(String(x, $"{p}[{i}]"), $"{p}[{i}]")!).ToList();
                    break;
                case "disks": spec.Disks = v.ValueKind == JsonValueKind.Null ? [] : Items(v, p).Select((x, i) => ParseDisk(x, $"{p}[{i}]")).ToList(); break;
                case "nics": spec.Nics = v.ValueKind == JsonValueKind.Null ? [] : Items(v, p).Select((x, i) => ParseNic(x, $"{p}[{i}]")).ToList(); break;
            }
        }
        if (spec.Firmware == "bios" && spec.Kernel != null)
            throw Bad("field 'spec.firmware' is bios, which boots the disks: it cannot be combined with 'spec.kernel'");
        if (spec.Kernel == null && spec.Initrd.Count > 0)
            throw Bad("field 'spec.initrd' needs 'spec.kernel' (the default guest brings its own initramfs)");
    }

    private static string? AbsPath(string? path, string field)
    {
        // The daemon's working directory means nothing to its users: paths must be absolute.
        if (path != null && !Path.IsPathFullyQualified(path)) throw Bad($"field '{field}' must be an absolute path, got '{path}'");
        return path;
    }

    private static VmDiskModel ParseDisk(JsonElement e, string path)
    {
        var f = Fields(e, path, "disk", "path", "format", "readonly", "bps", "iops");
        var d = new VmDiskModel();
        if (f.TryGetValue("disk", out var n)) { d.Disk = String(n, path + ".disk"); RequireValidName(d.Disk, path + ".disk"); }
        if (f.TryGetValue("path", out var p)) d.Path = CheckOption(AbsPath(String(p, path + ".path"), path + ".path"), path + ".path");
        if ((d.Disk == null) == (d.Path == null)) throw Bad($"field '{path}' needs exactly one of 'disk' (a disk's name) or 'path'");
        if (f.TryGetValue("format", out var fm))
        {
            d.Format = String(fm, path + ".format");
            if (d.Format is not ("auto" or "raw" or "qcow2")) throw Bad($"field '{path}.format' must be auto, raw or qcow2, got '{d.Format}'");
        }
        if (f.TryGetValue("readonly", out var ro)) d.Readonly = Bool(ro, path + ".readonly");
        if (f.TryGetValue("bps", out var b)) d.Bps = Long(b, path + ".bps", 0, long.MaxValue);
        if (f.TryGetValue("iops", out var i)) d.Iops = Long(i, path + ".iops", 0, long.MaxValue);
        return d;
    }

    private static VmNicModel ParseNic(JsonElement e, string path)
    {
        var f = Fields(e, path, "tap", "user", "hostfwd", "mac", "netns", "bps", "pps");
        var n = new VmNicModel();
        if (f.TryGetValue("user", out var u)) n.User = Bool(u, path + ".user");
        if (f.TryGetValue("tap", out var t))
        {
            if (n.User) throw Bad($"field '{path}' needs exactly one of 'tap' (a TAP interface) or 'user': true (user networking)");
            n.Tap = String(t, path + ".tap");
            // The worker's --net option is comma-separated key=value: a comma or '=' would change its meaning.
            if (n.Tap.Length == 0 || n.Tap.Length > 15 || n.Tap.IndexOfAny([',', '=', '/', ' ']) >= 0)
                throw Bad($"field '{path}.tap' must be an interface name (1-15 characters, no ',', '=', '/' or space)");
        }
        else if (!n.User) throw Bad($"field '{path}' needs exactly one of 'tap' (a TAP interface) or 'user': true (user networking)");
        if (f.TryGetValue("hostfwd", out var h) && h.ValueKind != JsonValueKind.Null)
        {
            if (!n.User) throw Bad($"field '{path}.hostfwd' is for user networking ('user': true)");
            int k = 0;
            foreach (var x in Items(h, path + ".hostfwd"))
            {
                string field = $"{path}.hostfwd[{k++}]", v = String(x, field);
                // The same parser as `dirigent run --net user,hostfwd=...`, so the worker never refuses what was accepted.
                try { Dirigent.Vmm.HostForward.Parse(v); }
                catch (FormatException ex) { throw Bad($"field '{field}': {ex.Message["--net: ".Length..]}"); }
                if (v.IndexOf(',') >= 0) throw Bad($"field '{field}' must not contain ','");
                (n.Hostfwd ??= []).Add(v);
            }
        }
        if (f.TryGetValue("mac", out var m)) n.Mac = CheckOption(NullableString(m, path + ".mac"), path + ".mac");
        if (f.TryGetValue("netns", out var ns)) n.Netns = CheckOption(NullableString(ns, path + ".netns"), path + ".netns");
        if (n.User && n.Netns != null) throw Bad($"field '{path}.netns' is for a TAP card");
        if (f.TryGetValue("bps", out var b)) n.Bps = Long(b, path + ".bps", 0, long.MaxValue);
        if (f.TryGetValue("pps", out var p)) n.Pps = Long(p, path + ".pps", 0, long.MaxValue);
        return n;
    }

    private static string? CheckOption(string? v, string field)
        => v != null && v.IndexOfAny([',', '=']) >= 0 ? throw Bad($"field '{field}' must not contain ',' or '='") : v;

    public static void ApplyLimits(JsonElement e, VmLimitsModel limits)
    {
        var f = Fields(e, "limits", "cpu", "cpu_weight", "memory_mib");
        foreach (var (k, v) in f)
        {
            string p = "limits." + k;
            bool isNull = v.ValueKind == JsonValueKind.Null;
            switch (k)
            {
                case "cpu": limits.Cpu = isNull ? null : Double(v, p, 0, 1024); break;
                case "cpu_weight": limits.CpuWeight = isNull ? null : (int)Long(v, p, 1, 10000); break;
                case "memory_mib": limits.MemoryMib = isNull ? null : (int)Long(v, p, 1, 1 << 20); break;
            }
        }
    }
}
