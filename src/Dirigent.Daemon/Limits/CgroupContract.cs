namespace Dirigent.Daemon.Limits;

// Interface from the issue #11 contract (notes/daemon.md); d-limits owns the implementation. This file is a stand-in
// so the daemon compiles before that branch lands: take d-limits' version on merge.

public sealed record ResourceLimits(double? Cpu, int? CpuWeight, long? MemoryBytes);

public interface ICgroupManager
{
    string Kind { get; }
    string? UnavailableReason { get; }
    IVmCgroup Create(string vmName, ResourceLimits limits);
    IVmCgroup? Open(string vmName);
}

public interface IVmCgroup : IDisposable
{
    string Path { get; }
    void AddProcess(int pid);
    void Update(ResourceLimits limits);
    TimeSpan CpuUsage { get; }
    long MemoryUsageBytes { get; }
}

public sealed class CgroupException(string message) : Exception(message);

/// <summary>Stand-in: no cgroups at all until d-limits' CgroupManager lands.</summary>
public static class CgroupManager
{
    public static ICgroupManager Detect() => new Unavailable();

    private sealed class Unavailable : ICgroupManager
    {
        public string Kind => "none";
        public string? UnavailableReason => "cgroup support is not built in yet";
        public IVmCgroup Create(string vmName, ResourceLimits limits) => throw new CgroupException($"cannot apply limits to '{vmName}': {UnavailableReason}");
        public IVmCgroup? Open(string vmName) => null;
    }
}
