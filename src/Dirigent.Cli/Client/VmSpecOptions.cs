using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Dirigent.Vmm;

namespace Dirigent.Cli.Client;

/// <summary>
/// The VM options of `vm create` and `vm set`, and their mapping to the daemon's JSON (POST /vms, PATCH /vms/{name}).
/// Only options given on the command line are sent, so the daemon's defaults apply to the rest on create and the
/// rest stay as they are on set. Values are checked here with the same parsers `dirigent run` uses, so a typo is
/// status 2 before any request; paths are made absolute because the daemon does not share our working directory.
/// </summary>
public sealed partial class VmSpecOptions
{
    public Option<string?> Memory { get; } = new("--memory", "-m") { Description = "Guest RAM: 512, 512M, 2G (default 512M)" };
    public Option<int?> Cpus { get; } = new("--cpus") { Description = "Number of vCPUs (default 1)" };
    public Option<string[]> Disks { get; } = new("--disk")
    {
        Description = "A daemon disk by NAME (see `disk add`), or an image PATH[,format=raw|qcow2][,readonly][,bps=N][,iops=N] (repeatable; on `set` the list replaces the old one)",
        AllowMultipleArgumentsPerToken = false,
    };
    public Option<string[]> Nics { get; } = new("--net")
    {
        Description = "virtio-net card: tap=NAME[,mac=MAC][,netns=NS][,bps=N][,pps=N] or user[,hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...[,mac=MAC] (repeatable; on `set` the list replaces the old one)",
        AllowMultipleArgumentsPerToken = false,
    };
    public Option<string?> Kernel { get; } = new("--kernel") { Description = "Kernel: bzImage, vmlinux ELF or Multiboot image (default: the built-in Debian guest)" };
    public Option<string?> Initrd { get; } = new("--initrd") { Description = "Initial ramdisk(s), comma-separated" };
    public Option<string?> Append { get; } = new("--append") { Description = "Kernel command line" };
    public Option<string?> Accel { get; } = new("--accel") { Description = "emu, kvm or auto (default auto)" };
    public Option<string?> Firmware { get; } = new("--firmware") { Description = "bios: boot the first disk through SeaBIOS (the default with --image); none: the kernel or the default guest" };
    public Option<bool?> Rng { get; } = new("--rng") { Description = "Attach a virtio-rng device (--rng false removes it)", Arity = ArgumentArity.ZeroOrOne };
    public Option<string?> CpuLimit { get; } = new("--cpu-limit") { Description = "CPU time limit in cores, e.g. 0.5 (none: no limit)" };
    public Option<string?> CpuWeight { get; } = new("--cpu-weight") { Description = "CPU weight against other VMs, 1..10000 (default 100; none: unset)" };
    public Option<string?> MemoryLimit { get; } = new("--memory-limit") { Description = "Memory limit of the VM's worker (guest RAM + VMM), e.g. 768M (none: no limit)" };
    public Option<string?> Restart { get; } = new("--restart") { Description = "Restart policy: no, on-failure or always" };
    public Option<bool?> Autostart { get; } = new("--autostart") { Description = "Start the VM when the daemon starts (--autostart false: don't)", Arity = ArgumentArity.ZeroOrOne };

    public void AddTo(Command command)
    {
        foreach (Option o in new Option[] { Memory, Cpus, Disks, Nics, Kernel, Initrd, Append, Accel, Firmware, Rng, CpuLimit, CpuWeight, MemoryLimit, Restart, Autostart })
            command.Options.Add(o);
    }

    /// <summary>The VM names the daemon accepts (issue #11 contract); also what makes a --disk value a disk name.</summary>
    [GeneratedRegex("^[a-z0-9][a-z0-9-]{0,62}$")]
    public static partial Regex NameRegex();

    /// <summary>POST /vms body: <c>{"name","spec":{...},"limits":{...},"restart","autostart"}</c>, given fields only.</summary>
    public JsonObject CreateBody(ParseResult r, string name)
    {
        var body = new JsonObject { ["name"] = name };
        foreach (var (k, v) in PatchBody(r)) body[k] = v?.DeepClone();
        return body;
    }

    /// <summary>PATCH /vms/{name} body: the same shape without the name; "none" sends null (clears a limit).</summary>
    public JsonObject PatchBody(ParseResult r)
    {
        var spec = new JsonObject();
        if (r.GetValue(Memory) is { } mem) spec["memory_mib"] = Mib(mem, "--memory");
        if (r.GetValue(Cpus) is { } cpus)
        {
            if (cpus is < 1 or > VmSpec.MaxCpus) throw new FormatException($"--cpus must be between 1 and {VmSpec.MaxCpus}, got {cpus}");
            spec["vcpus"] = cpus;
        }
        if (r.GetValue(Kernel) is { } kernel) spec["kernel"] = Path.GetFullPath(kernel);
        if (r.GetValue(Initrd) is { } initrd)
            spec["initrd"] = new JsonArray(initrd.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(f => (JsonNode)Path.GetFullPath(f)).ToArray());
        if (r.GetValue(Append) is { } append) spec["cmdline"] = append;
        if (r.GetValue(Accel) is { } accel)
        {
            if (accel is not ("emu" or "kvm" or "auto")) throw new FormatException($"--accel must be emu, kvm or auto, got '{accel}'");
            spec["accel"] = accel;
        }
        if (r.GetValue(Firmware) is { } fw)
        {
            if (fw is not ("bios" or "none")) throw new FormatException($"--firmware must be bios or none, got '{fw}'");
            spec["firmware"] = fw;
        }
        if (Given(r, Rng)) spec["rng"] = r.GetValue(Rng) ?? true;
        if (Given(r, Disks)) spec["disks"] = new JsonArray((r.GetValue(Disks) ?? []).Select(d => (JsonNode)DiskJson(d)).ToArray());
        if (Given(r, Nics))
        {
            var specs = r.GetValue(Nics) ?? [];
            spec["nics"] = new JsonArray(specs.Select((n, i) => (JsonNode)NicJson(n, i)).ToArray());
        }

        var limits = new JsonObject();
        if (r.GetValue(CpuLimit) is { } cpu) limits["cpu"] = NoneOr(cpu, c =>
        {
            if (!double.TryParse(c, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v > 0) || v > VmSpec.MaxCpus)
                throw new FormatException($"--cpu-limit must be a number of cores above 0, e.g. 0.5, or none; got '{c}'");
            return v;
        });
        if (r.GetValue(CpuWeight) is { } weight) limits["cpu_weight"] = NoneOr(weight, w =>
        {
            if (!int.TryParse(w, NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v is < 1 or > 10000)
                throw new FormatException($"--cpu-weight must be 1..10000 or none, got '{w}'");
            return v;
        });
        if (r.GetValue(MemoryLimit) is { } ml) limits["memory_mib"] = NoneOr(ml, m => Mib(m, "--memory-limit"));

        var body = new JsonObject();
        if (spec.Count > 0) body["spec"] = spec;
        if (limits.Count > 0) body["limits"] = limits;
        if (r.GetValue(Restart) is { } restart)
        {
            if (restart is not ("no" or "on-failure" or "always"))
                throw new FormatException($"--restart must be no, on-failure or always, got '{restart}'");
            body["restart"] = restart;
        }
        if (Given(r, Autostart)) body["autostart"] = r.GetValue(Autostart) ?? true;
        return body;
    }

    private static bool Given(ParseResult r, Option o) => r.GetResult(o) is { Implicit: false };

    private static JsonNode? NoneOr(string text, Func<string, JsonNode> parse) => text == "none" ? null : parse(text);

    private static long Mib(string text, string option)
    {
        try
        {
            ulong bytes = VmSpec.ParseMemory(text);
            if (bytes % (1UL << 20) != 0) throw new FormatException($"'{text}' is not a whole number of MiB");
            return (long)(bytes >> 20);
        }
        catch (FormatException e)
        {
            throw new FormatException($"{option}: {e.Message}");
        }
    }

    /// <summary>
    /// One --disk value. A bare word that is a valid daemon name (or disk=NAME) refers to a disk made with
    /// `disk add`; anything else (a path has a '/' or a '.') is an image file: path=, format, readonly, bps, iops.
    /// </summary>
    public static JsonObject DiskJson(string spec)
    {
        int comma = spec.IndexOf(',');
        string first = comma < 0 ? spec : spec[..comma];
        string rest = comma < 0 ? "" : spec[comma..];
        string? name = first.StartsWith("disk=", StringComparison.Ordinal) ? first[5..]
            : !first.StartsWith("path=", StringComparison.Ordinal) && NameRegex().IsMatch(first) ? first : null;
        string path = first.StartsWith("path=", StringComparison.Ordinal) ? first[5..] : first;
        // The same checks as `dirigent run --disk`, on a stand-in path for a named disk.
        var d = VmSpec.ParseDisk((name != null ? "disk" : path) + rest);
        if (name != null)
        {
            if (!NameRegex().IsMatch(name)) throw new FormatException($"--disk '{spec}': '{name}' is not a disk name");
            if (d.Format != DiskFormat.Auto) throw new FormatException($"--disk '{spec}': format= is for image paths (a daemon disk knows its format)");
            var named = new JsonObject { ["disk"] = name };
            // Only what was asked for: a named disk's record needs nothing more.
            if (d.ReadOnly) named["readonly"] = true;
            if (d.BytesPerSecond != 0) named["bps"] = d.BytesPerSecond;
            if (d.OpsPerSecond != 0) named["iops"] = d.OpsPerSecond;
            return named;
        }
        return new JsonObject
        {
            ["path"] = Path.GetFullPath(d.Path),
            ["format"] = d.Format switch { DiskFormat.Raw => "raw", DiskFormat.Qcow2 => "qcow2", _ => "auto" },
            ["readonly"] = d.ReadOnly,
            ["bps"] = d.BytesPerSecond,
            ["iops"] = d.OpsPerSecond,
        };
    }

    /// <summary>One --net value, checked by `dirigent run`'s parser; the MAC is sent only when given (the daemon picks one).</summary>
    public static JsonObject NicJson(string spec, int index)
    {
        var nic = NicConfig.Parse(spec, index);
        bool macGiven = spec.Split(',').Any(p => p.StartsWith("mac=", StringComparison.Ordinal));
        string? mac = macGiven ? string.Join(':', nic.Mac.Select(b => b.ToString("x2", CultureInfo.InvariantCulture))) : null;
        if (nic.User != null)
            return new JsonObject
            {
                ["user"] = true,
                ["hostfwd"] = new JsonArray(nic.User.HostForwards.Select(f => (JsonNode)f.ToString()).ToArray()),
                ["mac"] = mac,
                ["bps"] = nic.BytesPerSecond,
                ["pps"] = nic.PacketsPerSecond,
            };
        return new JsonObject
        {
            ["tap"] = nic.Tap,
            ["mac"] = mac,
            ["netns"] = nic.Netns,
            ["bps"] = nic.BytesPerSecond,
            ["pps"] = nic.PacketsPerSecond,
        };
    }
}
