using Dirigent.Daemon.Limits;

namespace Dirigent.Tests.Daemon.Limits;

/// <summary>
/// The cgroup logic (issue #11 limits) against fake trees of both layouts: what is written where, what is read back,
/// how detection falls back, and the one-line errors. The real-kernel behaviour is in <see cref="CgroupHostTests"/>.
/// </summary>
public sealed class CgroupManagerTests
{
    private static readonly ResourceLimits Half = new(0.5, 200, 64L << 20);
    private static readonly ResourceLimits None = new(null, null, null);

    [Fact]
    public void V2WritesCpuMaxWeightAndMemoryMaxAndDelegatesControllers()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V2);
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Equal("v2", m.Kind);
        Assert.Null(m.UnavailableReason);

        IVmCgroup g = m.Create("web", Half); // holds a fake process to the end: the tree's removal cleans up
        Assert.Equal(tree.File("dirigent", "web"), g.Path);
        Assert.Equal("50000 100000", tree.Text("dirigent", "web", "cpu.max"));
        Assert.Equal("200", tree.Text("dirigent", "web", "cpu.weight"));
        Assert.Equal("67108864", tree.Text("dirigent", "web", "memory.max"));
        // Each level above the VM group hands both controllers down.
        Assert.Equal("+cpu +memory", tree.Text("cgroup.subtree_control"));
        Assert.Equal("+cpu +memory", tree.Text("dirigent", "cgroup.subtree_control"));
        Assert.Equal("", tree.Text("dirigent", "web", "cgroup.subtree_control"));

        g.AddProcess(4242);
        Assert.Equal("4242", tree.Text("dirigent", "web", "cgroup.procs"));

        tree.Set("usage_usec 1500000\nuser_usec 1400000\nsystem_usec 100000\nnr_periods 3\n", "dirigent", "web", "cpu.stat");
        tree.Set("12345678\n", "dirigent", "web", "memory.current");
        Assert.Equal(TimeSpan.FromMilliseconds(1500), g.CpuUsage);
        Assert.Equal(12345678, g.MemoryUsageBytes);

        g.Update(None);
        Assert.Equal("max 100000", tree.Text("dirigent", "web", "cpu.max"));
        Assert.Equal("100", tree.Text("dirigent", "web", "cpu.weight"));
        Assert.Equal("max", tree.Text("dirigent", "web", "memory.max"));
    }

    [Fact]
    public void V2SkipsEnablingControllersThatAreAlreadyOn()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V2);
        tree.Set("cpu memory pids\n", "cgroup.subtree_control");
        tree.FailWritesTo = "cgroup.subtree_control";
        // A root where the write would be refused (e.g. a namespace root with processes) but the controllers are on.
        Assert.Throws<CgroupException>(() => CgroupManager.Detect(tree, tree.Root, "dirigent").Create("a", None));
        tree.Set("cpu memory\n", "dirigent", "cgroup.subtree_control");
        using IVmCgroup g = CgroupManager.Detect(tree, tree.Root, "dirigent").Create("a", None);
        Assert.Equal("cpu memory pids", tree.Text("cgroup.subtree_control"));
    }

    [Fact]
    public void V2NestedParentDelegatesAtEveryLevel()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V2);
        using IVmCgroup g = CgroupManager.Detect(tree, tree.Root, "system.slice/dirigent").Create("vm1", None);
        Assert.Equal(tree.File("system.slice", "dirigent", "vm1"), g.Path);
        Assert.Equal("+cpu +memory", tree.Text("system.slice", "cgroup.subtree_control"));
        Assert.Equal("+cpu +memory", tree.Text("system.slice", "dirigent", "cgroup.subtree_control"));
    }

    [Fact]
    public void V1WritesQuotaSharesAndLimitInEachHierarchy()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V1);
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Equal("v1", m.Kind);

        IVmCgroup g = m.Create("web", Half); // holds a fake process to the end: the tree's removal cleans up
        Assert.Equal(tree.File("cpu", "dirigent", "web"), g.Path);
        Assert.Equal("100000", tree.Text("cpu", "dirigent", "web", "cpu.cfs_period_us"));
        Assert.Equal("50000", tree.Text("cpu", "dirigent", "web", "cpu.cfs_quota_us"));
        Assert.Equal("2048", tree.Text("cpu", "dirigent", "web", "cpu.shares"));
        Assert.Equal("67108864", tree.Text("memory", "dirigent", "web", "memory.limit_in_bytes"));

        g.AddProcess(77);
        foreach (string controller in new[] { "cpu", "cpuacct", "memory" })
            Assert.Equal("77", tree.Text(controller, "dirigent", "web", "cgroup.procs"));

        tree.Set("2500000000\n", "cpuacct", "dirigent", "web", "cpuacct.usage");
        tree.Set("8192\n", "memory", "dirigent", "web", "memory.usage_in_bytes");
        Assert.Equal(TimeSpan.FromMilliseconds(2500), g.CpuUsage);
        Assert.Equal(8192, g.MemoryUsageBytes);

        g.Update(new ResourceLimits(1.25, 1, null));
        Assert.Equal("125000", tree.Text("cpu", "dirigent", "web", "cpu.cfs_quota_us"));
        Assert.Equal("10", tree.Text("cpu", "dirigent", "web", "cpu.shares"));
        Assert.Equal("-1", tree.Text("memory", "dirigent", "web", "memory.limit_in_bytes"));
        g.Update(None);
        Assert.Equal("-1", tree.Text("cpu", "dirigent", "web", "cpu.cfs_quota_us"));
        Assert.Equal("1024", tree.Text("cpu", "dirigent", "web", "cpu.shares"));
    }

    [Fact]
    public void HybridHostWithEmptyUnifiedMountUsesV1()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.Hybrid);
        Assert.Equal("v1", CgroupManager.Detect(tree, tree.Root, "dirigent").Kind);
    }

    [Fact]
    public void V2RootWithoutMemoryControllerAndNoV1IsUnavailable()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V2);
        tree.Set("cpu io pids\n", "cgroup.controllers");
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Equal("none", m.Kind);
        Assert.Contains("no usable cgroup controllers", m.UnavailableReason);
    }

    [Fact]
    public void NoControllersMeansNoneWithOneLineErrors()
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.Empty);
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Equal("none", m.Kind);
        Assert.Null(m.Open("web"));
        var e = Assert.Throws<CgroupException>(() => m.Create("web", Half));
        Assert.StartsWith("resource limits are not available on this host: no usable cgroup controllers", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData(FakeCgroupLayout.V2)]
    [InlineData(FakeCgroupLayout.V1)]
    public void NotWritableMeansNoneWithTheReason(FakeCgroupLayout layout)
    {
        using var tree = new FakeCgroupTree(layout) { NotWritableReason = "not root: no write access to /sys/fs/cgroup" };
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Equal("none", m.Kind);
        Assert.Equal("not root: no write access to /sys/fs/cgroup", m.UnavailableReason);
        Assert.Contains("not root", Assert.Throws<CgroupException>(() => m.Create("web", None)).Message);
    }

    [Theory]
    [InlineData(FakeCgroupLayout.V2)]
    [InlineData(FakeCgroupLayout.V1)]
    public void OpenFindsAGroupAfterARestartAndDisposeRemovesItOnceEmpty(FakeCgroupLayout layout)
    {
        using var tree = new FakeCgroupTree(layout);
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Null(m.Open("web"));
        IVmCgroup created = m.Create("web", Half);
        created.AddProcess(99);

        // A new manager (the restarted daemon) finds the group by name.
        IVmCgroup? opened = CgroupManager.Detect(tree, tree.Root, "dirigent").Open("web");
        Assert.NotNull(opened);
        Assert.Equal(created.Path, opened.Path);

        // Still holding a process: removal is refused with one line, and the group stays.
        var e = Assert.Throws<CgroupException>(opened.Dispose);
        Assert.Contains("processes are still in it", e.Message);
        Assert.True(Directory.Exists(opened.Path));

        foreach (string procs in Directory.GetFiles(tree.Root, "cgroup.procs", SearchOption.AllDirectories))
            System.IO.File.WriteAllText(procs, "");
        opened.Dispose();
        Assert.False(Directory.Exists(opened.Path));
        Assert.Null(m.Open("web"));
        // The parent stays for the other VMs.
        Assert.True(Directory.Exists(Path.GetDirectoryName(opened.Path)));
        opened.Dispose();
    }

    [Theory]
    [InlineData(FakeCgroupLayout.V2, "memory.max")]
    [InlineData(FakeCgroupLayout.V1, "memory.limit_in_bytes")]
    public void RefusedLimitLeavesNoGroupBehind(FakeCgroupLayout layout, string file)
    {
        using var tree = new FakeCgroupTree(layout) { FailWritesTo = file };
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        var e = Assert.Throws<CgroupException>(() => m.Create("web", Half));
        Assert.Contains(file, e.Message);
        Assert.Null(m.Open("web"));
    }

    [Theory]
    [InlineData(0.0, null, null, "cpu limit 0 is too small: it must be at least 0.01 of a core")]
    [InlineData(-1.0, null, null, "cpu limit -1 is too small: it must be at least 0.01 of a core")]
    [InlineData(double.NaN, null, null, "cpu limit NaN is too small: it must be at least 0.01 of a core")]
    [InlineData(2.5, null, null, "cpu limit 2.5 exceeds the host's 2 cores")]
    [InlineData(null, 0, null, "cpu weight 0 is out of range: it must be 1..10000")]
    [InlineData(null, 10001, null, "cpu weight 10001 is out of range: it must be 1..10000")]
    [InlineData(null, null, 1L << 20, "memory limit 1048576 bytes is too small: it must be at least 16 MiB")]
    public void InvalidLimitsAreRefusedWithOneLine(double? cpu, int? weight, long? memory, string expected)
        => Assert.Equal(expected, CgroupManager.ValidationError(new ResourceLimits(cpu, weight, memory), hostCores: 2));

    [Fact]
    public void ValidLimitsPassAndCreateChecksThemFirst()
    {
        Assert.Null(CgroupManager.ValidationError(new ResourceLimits(2, 10000, 16L << 20), hostCores: 2));
        Assert.Null(CgroupManager.ValidationError(new ResourceLimits(0.01, 1, null), hostCores: 2));
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V2);
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Contains("cpu weight 0", Assert.Throws<CgroupException>(() => m.Create("web", new ResourceLimits(null, 0, null))).Message);
        Assert.Null(m.Open("web"));
    }

    [Theory]
    [InlineData("../etc")]
    [InlineData("..")]
    [InlineData("")]
    public void NamesThatWouldLeaveTheParentAreRefused(string name)
    {
        using var tree = new FakeCgroupTree(FakeCgroupLayout.V2);
        ICgroupManager m = CgroupManager.Detect(tree, tree.Root, "dirigent");
        Assert.Throws<CgroupException>(() => m.Create(name, None));
        Assert.Throws<CgroupException>(() => m.Open(name));
    }

    [Fact]
    public void WeightMapsToV1SharesAroundTheDefault()
    {
        Assert.Equal(1024, CgroupManager.SharesForWeight(100));
        Assert.Equal(10, CgroupManager.SharesForWeight(1));
        Assert.Equal(102400, CgroupManager.SharesForWeight(10000));
    }
}
