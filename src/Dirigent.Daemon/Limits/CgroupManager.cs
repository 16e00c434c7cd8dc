using System.Globalization;

namespace Dirigent.Daemon.Limits;

/// <summary>
/// Picks how per-VM resource limits are enforced on this host (issue #11): cgroup v2 when the unified hierarchy at
/// the root offers the cpu and memory controllers, else the v1 cpu + cpuacct + memory hierarchies (hybrid hosts such
/// as systemd's "legacy"/"hybrid" modes, where the unified mount has no controllers), else none with the reason.
/// </summary>
public static class CgroupManager
{
    public const string DefaultRoot = "/sys/fs/cgroup";

    /// <summary>The group every VM group lives under: /sys/fs/cgroup/dirigent/NAME (v2) or .../cpu/dirigent/NAME (v1).</summary>
    public const string DefaultParent = "dirigent";

    /// <summary>The CFS period both versions use: 100 ms, the kernel default, fine-grained enough for a 0.01-core quota.</summary>
    internal const long PeriodMicroseconds = 100_000;

    /// <summary>The smallest memory limit accepted: below this a VMM process cannot even start its runtime.</summary>
    public const long MinMemoryBytes = 16L << 20;

    /// <summary>The smallest CPU limit: the kernel refuses CFS quotas under 1 ms per 100 ms period.</summary>
    public const double MinCpu = 0.01;

    /// <summary>
    /// Detects the cgroup layout under <paramref name="root"/>. <paramref name="parent"/> names the group (relative to
    /// each hierarchy's root; may contain '/') under which VM groups are made; tests use their own so they never
    /// touch a real daemon's groups. Has no side effects: nothing is created before <see cref="ICgroupManager.Create"/>.
    /// </summary>
    public static ICgroupManager Detect(string root = DefaultRoot, string parent = DefaultParent)
        => Detect(new CgroupFs(), root, parent);

    internal static ICgroupManager Detect(CgroupFs fs, string root, string parent)
    {
        CheckParent(parent);
        root = root.TrimEnd('/');
        if (root.Length == 0)
            root = "/";

        // v2: the unified hierarchy is mounted at the root itself and lists both controllers as available.
        string controllersFile = Path.Combine(root, "cgroup.controllers");
        if (fs.FileExists(controllersFile))
        {
            string[] available = Tokens(fs.Read(controllersFile));
            if (available.Contains("cpu") && available.Contains("memory"))
            {
                string? why = fs.WhyNotWritable(root);
                return why is null ? new CgroupV2Manager(fs, root, parent) : new UnavailableCgroupManager(why);
            }
        }

        // v1: one hierarchy per controller. cpu and cpuacct may be co-mounted (cpu,cpuacct with two symlinks): the
        // same directory then appears twice, which every v1 step tolerates.
        string cpu = Path.Combine(root, "cpu"), cpuacct = Path.Combine(root, "cpuacct"), memory = Path.Combine(root, "memory");
        if (fs.FileExists(Path.Combine(cpu, "cpu.cfs_quota_us"))
            && fs.FileExists(Path.Combine(cpuacct, "cpuacct.usage"))
            && fs.FileExists(Path.Combine(memory, "memory.limit_in_bytes")))
        {
            string? why = fs.WhyNotWritable(cpu) ?? fs.WhyNotWritable(cpuacct) ?? fs.WhyNotWritable(memory);
            return why is null ? new CgroupV1Manager(fs, cpu, cpuacct, memory, parent) : new UnavailableCgroupManager(why);
        }

        return new UnavailableCgroupManager(
            $"no usable cgroup controllers under {root}: neither v2 (cgroup.controllers with cpu and memory) nor v1 (cpu, cpuacct and memory hierarchies)");
    }

    /// <summary>One line saying what is wrong with <paramref name="limits"/>, or null when they are valid on this host.</summary>
    public static string? ValidationError(ResourceLimits limits) => ValidationError(limits, Environment.ProcessorCount);

    internal static string? ValidationError(ResourceLimits limits, int hostCores)
    {
        if (limits.Cpu is double cpu)
        {
            if (double.IsNaN(cpu) || cpu < MinCpu)
                return $"cpu limit {Fmt(cpu)} is too small: it must be at least {Fmt(MinCpu)} of a core";
            // More than the host has can never be reached: a typo rather than a limit.
            if (cpu > hostCores)
                return $"cpu limit {Fmt(cpu)} exceeds the host's {hostCores} cores";
        }
        if (limits.CpuWeight is int weight && weight is < 1 or > 10_000)
            return $"cpu weight {weight} is out of range: it must be 1..10000";
        if (limits.MemoryBytes is long memory && memory < MinMemoryBytes)
            return $"memory limit {memory} bytes is too small: it must be at least {MinMemoryBytes >> 20} MiB";
        return null;
    }

    /// <summary>Throws <see cref="CgroupException"/> with <see cref="ValidationError(ResourceLimits)"/> if there is one.</summary>
    public static void Validate(ResourceLimits limits)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (ValidationError(limits) is string error)
            throw new CgroupException(error);
    }

    /// <summary>The CFS quota for <paramref name="cpu"/> cores per <see cref="PeriodMicroseconds"/>.</summary>
    internal static long QuotaMicroseconds(double cpu) => (long)Math.Round(cpu * PeriodMicroseconds);

    /// <summary>v1 cpu.shares for a v2-style weight: 100 (the default weight) is 1024 (the default shares).</summary>
    internal static long SharesForWeight(int weight) => Math.Clamp(weight * 1024L / 100, 2, 262_144);

    /// <summary>
    /// A VM name becomes a directory name: refuse anything that could leave the parent group. The daemon's own
    /// name rule (^[a-z0-9][a-z0-9-]{0,62}$) is stricter; this only guards the file system.
    /// </summary>
    internal static void CheckName(string vmName)
    {
        ArgumentNullException.ThrowIfNull(vmName);
        if (vmName.Length is 0 or > 255 || vmName is "." or ".." || vmName.Contains('/') || vmName.Contains('\0'))
            throw new CgroupException($"'{vmName}' cannot name a cgroup");
    }

    private static void CheckParent(string parent)
    {
        ArgumentNullException.ThrowIfNull(parent);
        foreach (string part in parent.Split('/'))
            if (part.Length == 0 || part is "." or "..")
                throw new ArgumentException($"'{parent}' cannot name a parent cgroup", nameof(parent));
    }

    internal static string[] Tokens(string text)
        => text.Split((char[])[' ', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>Parses a single-number interface file (memory.current, cpuacct.usage ...).</summary>
    internal static long ReadNumber(CgroupFs fs, string path)
    {
        string text = fs.Read(path).Trim();
        return long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out long value)
            ? value
            : throw new CgroupException($"unexpected content '{text}' in {path}");
    }

    /// <summary>Finds KEY's value in a flat-keyed file ("usage_usec 123\nuser_usec ...").</summary>
    internal static long ReadKey(CgroupFs fs, string path, string key)
    {
        foreach (string line in fs.Read(path).Split('\n'))
        {
            string[] parts = Tokens(line);
            if (parts.Length == 2 && parts[0] == key
                && long.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out long value))
                return value;
        }
        throw new CgroupException($"no '{key}' in {path}");
    }

    internal static string Fmt(double value) => value.ToString("0.###", CultureInfo.InvariantCulture);

    internal static string Fmt(long value) => value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>The manager of a host where limits cannot be applied: every Create says why, in one line.</summary>
internal sealed class UnavailableCgroupManager(string reason) : ICgroupManager
{
    public string Kind => "none";

    public string? UnavailableReason => reason;

    public IVmCgroup Create(string vmName, ResourceLimits limits)
        => throw new CgroupException($"resource limits are not available on this host: {reason}");

    public IVmCgroup? Open(string vmName) => null;
}
