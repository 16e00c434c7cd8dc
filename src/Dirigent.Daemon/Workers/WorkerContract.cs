using System.Text.Json.Nodes;
using Dirigent.Daemon.Limits;

namespace Dirigent.Daemon.Workers;

// Interface from the issue #11 contract (notes/daemon.md); d-super owns the implementation. This file is a stand-in
// so the daemon compiles before that branch lands: take d-super's version on merge.

public sealed record WorkerLaunch(string VmName, string VmDir, IReadOnlyList<string> RunArgs, ResourceLimits? Limits);

public sealed record WorkerExit(string State, string Kind, string Detail, int? ExitCode);

public sealed class WorkerStartException(string message) : Exception(message);

public sealed class WorkerHandle
{
    public required string VmName { get; init; }
    public required int Pid { get; init; }
    public required long ProcessStartTime { get; init; }
    public required string SocketPath { get; init; }
    public required WorkerClient Client { get; init; }
    public required Task<WorkerExit> Exited { get; init; }
    public IVmCgroup? Cgroup { get; init; }
}

public sealed class WorkerSupervisor(string workerExecutable, ICgroupManager cgroups, TextWriter log)
{
    public string WorkerExecutable { get; } = workerExecutable;
    public ICgroupManager Cgroups { get; } = cgroups;
    public TextWriter Log { get; } = log;

    public Task<WorkerHandle> StartAsync(WorkerLaunch launch, CancellationToken ct)
        => throw new WorkerStartException("worker supervisor not merged yet");

    public WorkerHandle? TryAdopt(string vmName, string vmDir, int pid, long processStartTime) => null;
}

public sealed class WorkerClient
{
    public Task<JsonObject> GetVmAsync(CancellationToken ct) => throw new NotSupportedException();
    public Task PutAsync(string action, CancellationToken ct) => throw new NotSupportedException();
    public Task SnapshotAsync(string dir, CancellationToken ct) => throw new NotSupportedException();
    public Task<JsonObject> GetMetricsAsync(CancellationToken ct) => throw new NotSupportedException();
    public Task<System.Net.WebSockets.WebSocket> ConnectConsoleAsync(CancellationToken ct) => throw new NotSupportedException();
}
