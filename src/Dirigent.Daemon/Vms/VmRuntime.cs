using Dirigent.Daemon.Limits;
using Dirigent.Daemon.Workers;

namespace Dirigent.Daemon.Vms;

/// <summary>The daemon's in-memory side of a VM whose worker is alive: its handle and cgroup.</summary>
internal sealed class VmRuntime(WorkerHandle handle)
{
    public WorkerHandle Handle { get; } = handle;

    /// <summary>The worker's cgroup: the supervisor's, or one made later when limits are set on the running VM.</summary>
    public IVmCgroup? Cgroup { get; set; } = handle.Cgroup;

    /// <summary>Completed once the daemon has recorded the worker's exit (state, reason, events).</summary>
    public TaskCompletionSource Processed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}
