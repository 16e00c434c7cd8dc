using Dirigent.Daemon.Limits;
using Dirigent.Daemon.Workers;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Daemon.Workers;

/// <summary>
/// A temporary state directory with the tiny API guest's kernel in it, a <see cref="WorkerSupervisor"/> that runs the
/// real CLI built beside the tests (`dotnet dirigent.dll run ...`), and every worker it started killed on dispose.
/// </summary>
internal sealed class WorkerFixture : IAsyncDisposable
{
    /// <summary>Hang guard for a worker's start-up and end: generous, the machine may be loaded.</summary>
    public static readonly TimeSpan Hang = TimeSpan.FromSeconds(120);

    public string Dir { get; }
    public string Kernel { get; }
    public FakeCgroupManager Cgroups { get; } = new();
    public StringWriter Log { get; } = new();
    public WorkerSupervisor Supervisor { get; }
    private readonly List<WorkerHandle> _handles = [];

    public WorkerFixture()
    {
        // /tmp, not a long per-user temp path: socket paths must stay under 108 bytes.
        Dir = Directory.CreateTempSubdirectory("dirigent-workers-").FullName;
        Kernel = Path.Combine(Dir, "guest.bin");
        File.WriteAllBytes(Kernel, ApiTestVm.BuildGuest());
        Supervisor = NewSupervisor();
    }

    public static WorkerCommand CliCommand => WorkerCommand.DotnetDll(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));

    /// <summary>Another supervisor over the same directories: a restarted daemon.</summary>
    public WorkerSupervisor NewSupervisor() => new(CliCommand, Cgroups, TextWriter.Synchronized(Log)) { StartTimeout = Hang };

    public string VmDir(string name) => Path.Combine(Dir, "vms", name);

    /// <summary>The tiny guest on the software CPU in 16 MiB: prints <see cref="ApiTestVm.ReadyLine"/>, then idles.</summary>
    public WorkerLaunch Launch(string name, ResourceLimits? limits = null, string? kernel = null) =>
        new(name, VmDir(name), ["--kernel", kernel ?? Kernel, "--memory", "16M", "--accel", "emu"], limits);

    public async Task<WorkerHandle> StartAsync(string name, ResourceLimits? limits = null)
    {
        var h = await Supervisor.StartAsync(Launch(name, limits)).WaitAsync(Hang);
        return Track(h);
    }

    /// <summary>Kills this handle's worker when the fixture ends, if it still runs.</summary>
    public WorkerHandle Track(WorkerHandle h)
    {
        lock (_handles) _handles.Add(h);
        return h;
    }

    public async ValueTask DisposeAsync()
    {
        List<WorkerHandle> hs;
        lock (_handles) hs = [.. _handles];
        foreach (var h in hs)
        {
            h.Kill();
            try { await h.Exited.WaitAsync(TimeSpan.FromSeconds(30)); }
            catch (Exception e) when (e is TimeoutException or OperationCanceledException) { }
            h.Dispose();
        }
        try { Directory.Delete(Dir, recursive: true); }
        catch (IOException) { }
    }
}

/// <summary>Records what the supervisor asks of the cgroup layer; <see cref="FailWith"/> makes Create refuse.</summary>
internal sealed class FakeCgroupManager : ICgroupManager
{
    public readonly List<FakeCgroup> Created = [];
    public readonly Dictionary<string, FakeCgroup> Existing = [];
    public string? FailWith;
    /// <summary>Given to every group this manager creates.</summary>
    public Action<int>? OnAddProcess;

    public string Kind => "fake";
    public string? UnavailableReason => FailWith;

    public IVmCgroup Create(string vmName, ResourceLimits limits)
    {
        if (FailWith != null) throw new CgroupException(FailWith);
        var g = new FakeCgroup($"/fake/dirigent/{vmName}", limits) { OnAddProcess = OnAddProcess };
        lock (Created) { Created.Add(g); Existing[vmName] = g; }
        return g;
    }

    public IVmCgroup? Open(string vmName)
    {
        lock (Created) return Existing.GetValueOrDefault(vmName);
    }
}

internal sealed class FakeCgroup(string path, ResourceLimits limits) : IVmCgroup
{
    public string Path { get; } = path;
    public ResourceLimits Limits = limits;
    public readonly List<int> Pids = [];
    public int Disposals;
    /// <summary>Runs in AddProcess: right after the spawn, before the worker answers.</summary>
    public Action<int>? OnAddProcess;

    public void AddProcess(int pid)
    {
        lock (Pids) Pids.Add(pid);
        OnAddProcess?.Invoke(pid);
    }

    public void Update(ResourceLimits limits) => Limits = limits;
    public TimeSpan CpuUsage => TimeSpan.Zero;
    public long MemoryUsageBytes => 0;
    public void Dispose() => Interlocked.Increment(ref Disposals);
}
