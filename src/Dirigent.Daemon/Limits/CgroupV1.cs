namespace Dirigent.Daemon.Limits;

/// <summary>
/// cgroup v1 (legacy and systemd "hybrid" hosts): one hierarchy per controller, so a VM group is three directories,
/// CPU/PARENT/NAME (CFS quota and shares), CPUACCT/PARENT/NAME (CPU time) and MEMORY/PARENT/NAME (limit and usage),
/// and a process is added to each. Where cpu and cpuacct are co-mounted the first two are one directory; every step
/// is idempotent so that needs no special case.
/// </summary>
internal sealed class CgroupV1Manager(CgroupFs fs, string cpuRoot, string cpuacctRoot, string memoryRoot, string parent)
    : ICgroupManager
{
    public string Kind => "v1";

    public string? UnavailableReason => null;

    public IVmCgroup Create(string vmName, ResourceLimits limits)
    {
        CgroupManager.CheckName(vmName);
        CgroupManager.Validate(limits);
        CgroupV1Group cgroup = Group(vmName);
        bool existed = cgroup.Directories.Any(fs.DirectoryExists);
        foreach (string dir in cgroup.Directories)
            fs.CreateDirectory(dir);
        try
        {
            cgroup.Update(limits);
        }
        catch when (!existed)
        {
            // Leave nothing behind for a limit the kernel refused; a group that was there before is not ours to drop.
            foreach (string dir in cgroup.Directories)
                TryRemove(dir);
            throw;
        }
        return cgroup;
    }

    public IVmCgroup? Open(string vmName)
    {
        CgroupManager.CheckName(vmName);
        CgroupV1Group cgroup = Group(vmName);
        if (!cgroup.Directories.Any(fs.DirectoryExists))
            return null;
        // A daemon that died between the three mkdirs left a partial group: complete it so AddProcess works.
        foreach (string dir in cgroup.Directories)
            fs.CreateDirectory(dir);
        return cgroup;
    }

    /// <summary>Clean-up after a failed Create: the kernel's refusal is the error to report, not this one.</summary>
    private void TryRemove(string dir)
    {
        try
        {
            fs.RemoveDirectory(dir, TimeSpan.Zero);
        }
        catch (CgroupException)
        {
        }
    }

    private CgroupV1Group Group(string vmName)
        => new(fs, Path.Combine(cpuRoot, parent, vmName), Path.Combine(cpuacctRoot, parent, vmName),
            Path.Combine(memoryRoot, parent, vmName));
}

internal sealed class CgroupV1Group(CgroupFs fs, string cpuDir, string cpuacctDir, string memoryDir) : IVmCgroup
{
    public IReadOnlyList<string> Directories { get; } = [cpuDir, cpuacctDir, memoryDir];

    /// <summary>The cpu hierarchy's directory: the one that holds the limits an operator looks for first.</summary>
    public string Path => cpuDir;

    /// <summary>
    /// Moves the process into all three groups. v1 charges pages to the memory group that was current when they were
    /// touched, so memory usage counts from here on: the supervisor adds a worker right after spawning it.
    /// </summary>
    public void AddProcess(int pid)
    {
        string text = CgroupManager.Fmt(pid);
        foreach (string dir in Directories)
            fs.Write(System.IO.Path.Combine(dir, "cgroup.procs"), text);
    }

    public void Update(ResourceLimits limits)
    {
        CgroupManager.Validate(limits);
        // Period first: the kernel checks the quota against the period in force when the quota is written.
        fs.Write(System.IO.Path.Combine(cpuDir, "cpu.cfs_period_us"), CgroupManager.Fmt(CgroupManager.PeriodMicroseconds));
        fs.Write(System.IO.Path.Combine(cpuDir, "cpu.cfs_quota_us"),
            limits.Cpu is double cpu ? CgroupManager.Fmt(CgroupManager.QuotaMicroseconds(cpu)) : "-1");
        fs.Write(System.IO.Path.Combine(cpuDir, "cpu.shares"), CgroupManager.Fmt(CgroupManager.SharesForWeight(limits.CpuWeight ?? 100)));
        fs.Write(System.IO.Path.Combine(memoryDir, "memory.limit_in_bytes"),
            limits.MemoryBytes is long bytes ? CgroupManager.Fmt(bytes) : "-1");
    }

    /// <summary>cpuacct.usage is in nanoseconds; TimeSpan ticks are 100 ns.</summary>
    public TimeSpan CpuUsage => TimeSpan.FromTicks(CgroupManager.ReadNumber(fs, System.IO.Path.Combine(cpuacctDir, "cpuacct.usage")) / 100);

    public long MemoryUsageBytes => CgroupManager.ReadNumber(fs, System.IO.Path.Combine(memoryDir, "memory.usage_in_bytes"));

    /// <summary>Removes the three groups; throws <see cref="CgroupException"/> if processes still keep one busy.</summary>
    public void Dispose()
    {
        // One shared 2 s allowance: the three groups empty at the same moment (when the last task exits).
        long deadline = Environment.TickCount64 + 2000;
        var busy = Directories
            .Where(dir => !fs.RemoveDirectory(dir, TimeSpan.FromMilliseconds(Math.Max(0, deadline - Environment.TickCount64))))
            .ToList();
        if (busy.Count > 0)
            throw new CgroupException($"cannot remove cgroup {string.Join(", ", busy)}: processes are still in it");
    }
}
