using Dirigent.Daemon.Limits;

namespace Dirigent.Tests.Daemon.Limits;

/// <summary>Which cgroup layout a <see cref="FakeCgroupTree"/> imitates.</summary>
public enum FakeCgroupLayout { V2, V1, Hybrid, Empty }

/// <summary>
/// A cgroup file system in a temporary directory, playing the kernel's part: mkdir of a group makes its interface
/// files (per layout), rmdir refuses a group that still has processes, and writes can be made to fail like the
/// kernel's refusals. The real <see cref="CgroupManager"/> logic runs on top of it unchanged.
/// </summary>
internal sealed class FakeCgroupTree : CgroupFs, IDisposable
{
    public string Root { get; }
    public string? NotWritableReason { get; set; }
    /// <summary>File name whose writes fail as the kernel's EINVAL would.</summary>
    public string? FailWritesTo { get; set; }

    public FakeCgroupTree(FakeCgroupLayout layout)
    {
        Root = Directory.CreateTempSubdirectory("dirigent-fake-cgroup-").FullName;
        switch (layout)
        {
            case FakeCgroupLayout.V2:
                Populate(Root);
                System.IO.File.WriteAllText(Path.Combine(Root, "cgroup.controllers"), "cpuset cpu io memory pids\n");
                break;
            case FakeCgroupLayout.V1:
            case FakeCgroupLayout.Hybrid:
                foreach (string controller in new[] { "cpu", "cpuacct", "memory" })
                    CreateDirectory(Path.Combine(Root, controller));
                if (layout == FakeCgroupLayout.Hybrid)
                {
                    // systemd's hybrid mode: a unified mount without controllers beside the v1 ones.
                    Directory.CreateDirectory(Path.Combine(Root, "unified"));
                    System.IO.File.WriteAllText(Path.Combine(Root, "unified", "cgroup.controllers"), "");
                }
                break;
        }
    }

    public string File(params string[] parts) => Path.Combine([Root, .. parts]);

    public string Text(params string[] parts) => System.IO.File.ReadAllText(File(parts)).Trim();

    public void Set(string text, params string[] parts) => System.IO.File.WriteAllText(File(parts), text);

    public override void CreateDirectory(string path)
    {
        base.CreateDirectory(path);
        Populate(path);
    }

    public override void Write(string path, string text)
    {
        if (Path.GetFileName(path) == FailWritesTo)
            throw new CgroupException($"cannot write '{text}' to {path}: Invalid argument");
        base.Write(path, text);
    }

    public override bool RemoveDirectory(string path, TimeSpan busyTimeout)
    {
        if (!Directory.Exists(path))
            return true;
        if (Directory.GetDirectories(path).Length > 0 || System.IO.File.ReadAllText(Path.Combine(path, "cgroup.procs")).Trim().Length > 0)
            return false;
        Directory.Delete(path, recursive: true);
        return true;
    }

    public override string? WhyNotWritable(string path) => NotWritableReason;

    public void Dispose() => Directory.Delete(Root, recursive: true);

    /// <summary>The interface files the kernel would show in a new group of the hierarchy <paramref name="dir"/> is in.</summary>
    private void Populate(string dir)
    {
        string relative = Path.GetRelativePath(Root, dir);
        string top = relative == "." ? "" : relative.Split('/')[0];
        var files = new Dictionary<string, string> { ["cgroup.procs"] = "" };
        switch (top)
        {
            case "cpu":
                files["cpu.cfs_period_us"] = "100000";
                files["cpu.cfs_quota_us"] = "-1";
                files["cpu.shares"] = "1024";
                break;
            case "cpuacct":
                files["cpuacct.usage"] = "0";
                break;
            case "memory":
                files["memory.limit_in_bytes"] = "9223372036854771712";
                files["memory.usage_in_bytes"] = "0";
                break;
            default:
                files["cgroup.subtree_control"] = "";
                files["cpu.max"] = "max 100000";
                files["cpu.weight"] = "100";
                files["cpu.stat"] = "usage_usec 0\nuser_usec 0\nsystem_usec 0\n";
                files["memory.max"] = "max";
                files["memory.current"] = "0";
                break;
        }
        foreach (var (name, content) in files)
            if (!System.IO.File.Exists(Path.Combine(dir, name)))
                System.IO.File.WriteAllText(Path.Combine(dir, name), content);
    }
}
