namespace Dirigent.Daemon.Limits;

/// <summary>
/// cgroup v2: one unified hierarchy. VM groups are ROOT/PARENT/NAME; the cpu and memory controllers must be enabled
/// in cgroup.subtree_control of every group above them (a controller's files only appear in a child when its parent
/// delegates it). The groups on the way hold no processes, as v2's "no internal processes" rule requires.
/// </summary>
internal sealed class CgroupV2Manager(CgroupFs fs, string root, string parent) : ICgroupManager
{
    public string Kind => "v2";

    public string? UnavailableReason => null;

    public IVmCgroup Create(string vmName, ResourceLimits limits)
    {
        CgroupManager.CheckName(vmName);
        CgroupManager.Validate(limits);
        string dir = PrepareParent();
        string group = Path.Combine(dir, vmName);
        bool existed = fs.DirectoryExists(group);
        fs.CreateDirectory(group);
        var cgroup = new CgroupV2Group(fs, group);
        try
        {
            cgroup.Update(limits);
        }
        catch when (!existed)
        {
            // Leave nothing behind for a limit the kernel refused; a group that was there before is not ours to drop.
            TryRemove(group);
            throw;
        }
        return cgroup;
    }

    public IVmCgroup? Open(string vmName)
    {
        CgroupManager.CheckName(vmName);
        string group = Path.Combine(root, parent, vmName);
        return fs.DirectoryExists(group) ? new CgroupV2Group(fs, group) : null;
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

    /// <summary>Creates ROOT/PARENT (each level) with +cpu +memory delegated down to the VM groups; returns its path.</summary>
    private string PrepareParent()
    {
        string dir = root;
        EnableControllers(dir);
        foreach (string part in parent.Split('/'))
        {
            dir = Path.Combine(dir, part);
            fs.CreateDirectory(dir);
            EnableControllers(dir);
        }
        return dir;
    }

    private void EnableControllers(string dir)
    {
        string file = Path.Combine(dir, "cgroup.subtree_control");
        // The kernel lists enabled controllers without '+'; skip the write when both are on, so an already prepared
        // hierarchy works even where writing would be refused (e.g. a namespace root that has processes).
        string[] enabled = CgroupManager.Tokens(fs.Read(file)).Select(t => t.TrimStart('+')).ToArray();
        if (enabled.Contains("cpu") && enabled.Contains("memory"))
            return;
        fs.Write(file, "+cpu +memory");
    }
}

internal sealed class CgroupV2Group(CgroupFs fs, string path) : IVmCgroup
{
    public string Path => path;

    public void AddProcess(int pid) => fs.Write(File("cgroup.procs"), CgroupManager.Fmt(pid));

    public void Update(ResourceLimits limits)
    {
        CgroupManager.Validate(limits);
        string period = CgroupManager.Fmt(CgroupManager.PeriodMicroseconds);
        fs.Write(File("cpu.max"), limits.Cpu is double cpu
            ? $"{CgroupManager.Fmt(CgroupManager.QuotaMicroseconds(cpu))} {period}"
            : $"max {period}");
        fs.Write(File("cpu.weight"), CgroupManager.Fmt(limits.CpuWeight ?? 100));
        fs.Write(File("memory.max"), limits.MemoryBytes is long bytes ? CgroupManager.Fmt(bytes) : "max");
    }

    public TimeSpan CpuUsage => TimeSpan.FromMicroseconds(CgroupManager.ReadKey(fs, File("cpu.stat"), "usage_usec"));

    public long MemoryUsageBytes => CgroupManager.ReadNumber(fs, File("memory.current"));

    /// <summary>Removes the group; throws <see cref="CgroupException"/> if processes still keep it busy.</summary>
    public void Dispose()
    {
        if (!fs.RemoveDirectory(path, TimeSpan.FromSeconds(2)))
            throw new CgroupException($"cannot remove cgroup {path}: processes are still in it");
    }

    private string File(string name) => System.IO.Path.Combine(path, name);
}
