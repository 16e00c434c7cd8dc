namespace Dirigent.Daemon.Limits;

public sealed record ResourceLimits(double? Cpu /*cores, e.g. 0.5*/, int? CpuWeight /*1..10000, default 100*/, long? MemoryBytes);

public interface ICgroupManager {            // CgroupManager.Detect() picks v2, v1 or Unavailable
    string Kind { get; }                     // "v2", "v1", "none"
    string? UnavailableReason { get; }       // why limits cannot be applied (not root, no controllers...)
    IVmCgroup Create(string vmName, ResourceLimits limits);   // throws CgroupException (one line) if unavailable
    IVmCgroup? Open(string vmName);          // existing group after a daemon restart, else null
}

public interface IVmCgroup : IDisposable {   // Dispose = remove the group (after its processes are gone)
    string Path { get; }
    void AddProcess(int pid);
    void Update(ResourceLimits limits);
    TimeSpan CpuUsage { get; }               // total CPU time used by the group's processes
    long MemoryUsageBytes { get; }
}

public sealed class CgroupException(string message) : Exception(message);
