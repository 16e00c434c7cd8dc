using System.Diagnostics;
using Dirigent.Daemon.Limits;

namespace Dirigent.Tests.Daemon.Limits;

/// <summary>
/// The limits on this host's real cgroups (v1 or v2, whichever <see cref="CgroupManager.Detect(string, string)"/>
/// picks), with real processes. Each test class instance uses its own parent group, so parallel tests and a real
/// daemon's "dirigent" groups never meet; processes and groups are removed whatever the outcome. Skipped where
/// cgroups cannot be used (not root, read-only, no controllers).
/// </summary>
public sealed class CgroupHostTests : IDisposable
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(60);

    private readonly string _parent = $"dirigent-test-{Environment.ProcessId}-{Guid.NewGuid():N}";
    private readonly ICgroupManager _cgroups;
    private readonly List<Process> _processes = [];
    private readonly List<IVmCgroup> _groups = [];

    public CgroupHostTests() => _cgroups = CgroupManager.Detect(parent: _parent);

    private void RequireCgroups()
        => Skip.If(_cgroups.Kind == "none", $"cgroup limits are not available on this host: {_cgroups.UnavailableReason}");

    private IVmCgroup Create(string name, ResourceLimits limits)
    {
        IVmCgroup group = _cgroups.Create(name, limits);
        _groups.Add(group);
        return group;
    }

    private Process Shell(string script)
    {
        var info = new ProcessStartInfo("/bin/sh") { RedirectStandardInput = true, RedirectStandardOutput = true };
        info.ArgumentList.Add("-c");
        info.ArgumentList.Add(script);
        Process process = Process.Start(info)!;
        _processes.Add(process);
        return process;
    }

    [SkippableFact]
    public void HalfCoreLimitHoldsASpinningProcessAtHalfACore()
    {
        RequireCgroups();
        IVmCgroup group = Create("spin", new ResourceLimits(0.5, null, null));
        Process spinner = Shell("while :; do :; done");
        group.AddProcess(spinner.Id);

        // The sampling window ends when the group's own accounting has charged 1.5 s of CPU: at most half a core,
        // that takes at least 3 s of CLOCK_MONOTONIC (Stopwatch). The ratio of the two is the share of a core used.
        TimeSpan used0 = group.CpuUsage;
        long start = Stopwatch.GetTimestamp();
        TimeSpan used;
        while ((used = group.CpuUsage - used0) < TimeSpan.FromSeconds(1.5))
        {
            // Waiting on the spinner doubles as the check that it is alive; the window is measured, not slept.
            Assert.False(spinner.WaitForExit(TimeSpan.FromMilliseconds(100)), "the spinning process ended by itself");
            Assert.True(Stopwatch.GetElapsedTime(start) < Hang, $"the group used only {used.TotalSeconds:F2} s of CPU within the hang guard");
        }
        TimeSpan elapsed = Stopwatch.GetElapsedTime(start);
        double share = used.TotalSeconds / elapsed.TotalSeconds;
        string stat = File.ReadAllText(Path.Combine(group.Path, "cpu.stat")).ReplaceLineEndings(", ");
        Assert.True(share <= 0.55, $"a 0.5-core limit let the process use {share:P1} of a core ({used.TotalSeconds:F2} s over {elapsed.TotalSeconds:F2} s; {stat})");
    }

    [SkippableFact]
    public void MemoryLimitEndsAProcessThatOutgrowsIt()
    {
        RequireCgroups();
        IVmCgroup group = Create("mem", new ResourceLimits(null, null, CgroupManager.MinMemoryBytes));
        // The shell waits for "go" so it is in the group before it grows; then it builds a 64 MiB string.
        Process grower = Shell("read go; v=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#v}");
        group.AddProcess(grower.Id);
        grower.StandardInput.WriteLine("go");
        grower.StandardInput.Close();
        Assert.True(grower.WaitForExit(Hang), "the growing process neither finished nor was killed");
        string output = grower.StandardOutput.ReadToEnd();
        Assert.DoesNotContain("survived", output);
        Assert.Equal(128 + 9, grower.ExitCode); // SIGKILL from the group's OOM killer
    }

    [SkippableFact]
    public void ProcessJoinsEveryHierarchyAndTheGroupGoesAwayAfterIt()
    {
        RequireCgroups();
        IVmCgroup group = Create("join", new ResourceLimits(1, 300, 256L << 20));
        Process cat = Shell("exec cat");
        group.AddProcess(cat.Id);

        string[] membership = File.ReadAllLines($"/proc/{cat.Id}/cgroup");
        string where = $"/{_parent}/join";
        if (_cgroups.Kind == "v2")
            Assert.Contains($"0::{where}", membership);
        else
            foreach (string controller in new[] { "cpu", "cpuacct", "memory" })
                Assert.Contains(membership, line => line.EndsWith($":{where}", StringComparison.Ordinal)
                    && line.Split(':')[1].Split(',').Contains(controller));

        // A restarted daemon finds the group and can change its limits while the process runs.
        IVmCgroup? reopened = CgroupManager.Detect(parent: _parent).Open("join");
        Assert.NotNull(reopened);
        reopened.Update(new ResourceLimits(0.25, null, null));
        Assert.True(reopened.MemoryUsageBytes >= 0);

        // Busy while the process lives; gone once it has exited.
        Assert.Throws<CgroupException>(reopened.Dispose);
        cat.StandardInput.Close();
        Assert.True(cat.WaitForExit(Hang));
        reopened.Dispose();
        Assert.False(Directory.Exists(group.Path));
        Assert.Null(_cgroups.Open("join"));
    }

    public void Dispose()
    {
        foreach (Process process in _processes)
        {
            try
            {
                process.Kill();
            }
            catch (InvalidOperationException)
            {
                // Already exited.
            }
            process.WaitForExit(Hang);
            process.Dispose();
        }
        foreach (IVmCgroup group in _groups)
            group.Dispose();
        // The per-test parent groups, now empty.
        var fs = new CgroupFs();
        foreach (string hierarchy in _cgroups.Kind == "v2" ? [""] : new[] { "cpu", "cpuacct", "memory" })
            fs.RemoveDirectory(Path.Combine(CgroupManager.DefaultRoot, hierarchy, _parent), TimeSpan.FromSeconds(2));
    }
}
