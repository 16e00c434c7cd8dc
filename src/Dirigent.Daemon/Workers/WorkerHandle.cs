using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Limits;

namespace Dirigent.Daemon.Workers;

/// <summary>
/// One live worker (a `dirigent run` process serving one VM): where to reach it, and <see cref="Exited"/>, which
/// completes with how it ended. Made by <see cref="WorkerSupervisor.StartAsync"/> (the daemon is its parent) or
/// <see cref="WorkerSupervisor.TryAdopt"/> (a worker left running by a previous daemon).
/// </summary>
public sealed class WorkerHandle : IDisposable
{
    /// <summary>How often an adopted worker (not our child: no SIGCHLD for us) is looked up in /proc.</summary>
    internal static readonly TimeSpan AdoptedPollInterval = TimeSpan.FromMilliseconds(250);

    private readonly Process? _process;
    private readonly CancellationTokenSource _disposed = new();
    private readonly Action<string> _log;

    public string VmName { get; }
    public string VmDir { get; }
    public int Pid { get; }
    /// <summary>/proc/PID/stat field 22: with <see cref="Pid"/>, names this process across a daemon restart.</summary>
    public long ProcessStartTime { get; }
    public string SocketPath { get; }
    public WorkerClient Client { get; }
    /// <summary>The worker's cgroup when it has limits; the supervisor removes it once the worker has ended.</summary>
    public IVmCgroup? Cgroup { get; }
    /// <summary>False for an adopted worker: its exit status goes to its new parent, only exit.json tells how it ended.</summary>
    public bool IsChild => _process != null;
    /// <summary>
    /// Completes when the worker process has ended (never faults). Cancelled only when this handle is disposed
    /// first (the daemon shutting down and leaving its workers running).
    /// </summary>
    public Task<WorkerExit> Exited { get; }

    internal WorkerHandle(string vmName, string vmDir, int pid, long startTime, Process? process, IVmCgroup? cgroup, Action<string> log)
    {
        VmName = vmName;
        VmDir = vmDir;
        Pid = pid;
        ProcessStartTime = startTime;
        SocketPath = WorkerSupervisor.SocketPathOf(vmDir);
        Client = new WorkerClient(SocketPath);
        Cgroup = cgroup;
        _process = process;
        _log = log;
        Exited = MonitorAsync();
    }

    /// <summary>SIGKILL the worker (a stop that did not work, a hung worker); false if it is already gone.</summary>
    public bool Kill() => SendSignal(ProcessInfo.SIGKILL);

    /// <summary>SIGTERM: the worker stops its VM in order (disks flushed) and exits; false if it is already gone.</summary>
    public bool Terminate() => SendSignal(ProcessInfo.SIGTERM);

    /// <summary>
    /// By PID and start time even for our own child (its Process object may already be disposed): a child not yet
    /// reaped is a zombie, which counts as gone, and a reaped one's PID, if reused, has another start time.
    /// </summary>
    private bool SendSignal(int signal) => ProcessInfo.Signal(Pid, ProcessStartTime, signal);

    /// <summary>
    /// Lets go of the worker without touching it (it keeps running): closes the client and stops watching, which
    /// cancels <see cref="Exited"/> if it has not completed.
    /// </summary>
    public void Dispose()
    {
        if (_disposed.IsCancellationRequested) return;
        _disposed.Cancel();
        Client.Dispose();
        _process?.Dispose();
    }

    private async Task<WorkerExit> MonitorAsync()
    {
        var ct = _disposed.Token;
        int? status = null;
        if (_process != null)
        {
            // Our child: .NET reaps it (SIGCHLD) and gives its status; 128+N means it was killed by signal N.
            await _process.WaitForExitAsync(ct).ConfigureAwait(false);
            status = _process.ExitCode;
        }
        else
        {
            // Adopted: not our child, so no SIGCHLD; /proc tells us when it is gone (or a zombie, or the PID reused by
            // another process: the start time differs).
            while (ProcessInfo.IsAlive(Pid, ProcessStartTime))
                await Task.Delay(AdoptedPollInterval, ct).ConfigureAwait(false);
        }
        var exit = WorkerSupervisor.ReadExitFile(VmDir) ?? Synthesize(status);
        _log($"worker for VM '{VmName}' (pid {Pid}) ended: {exit.State}, {exit.Kind}: {exit.Detail}");
        if (Cgroup != null)
        {
            // The worker is gone, so its group is empty and can go (a failure only leaves an empty group behind, and
            // must not fault Exited: whatever the cgroup layer throws is logged).
            try { Cgroup.Dispose(); }
            catch (Exception e)
            {
                _log($"worker for VM '{VmName}': cannot remove its cgroup {Cgroup.Path}: {e.Message}");
            }
        }
        return exit;
    }

    /// <summary>No exit.json: the worker died before it could write one (killed, or the runtime itself failed).</summary>
    private WorkerExit Synthesize(int? status)
    {
        if (status is not { } s)
            return new WorkerExit(WorkerExit.Crashed, WorkerExit.WorkerVanished, "worker process vanished", null);
        // A worker that exits by itself writes exit.json first, so a status with no exit.json is a death either way.
        return new WorkerExit(WorkerExit.Crashed, WorkerExit.WorkerDied, $"worker process died ({DescribeStatus(s)})", s);
    }

    /// <summary>"signal N" for .NET's 128+N (a death by signal, as a shell reports it), else "exit status N".</summary>
    internal static string DescribeStatus(int status) =>
        status is > 128 and < 128 + 65 ? $"signal {status - 128}" : $"exit status {status}";

    /// <summary>Parses exit.json (see the daemon contract); an unreadable record is itself a crash with the reason.</summary>
    internal static WorkerExit ParseExitJson(string json)
    {
        try
        {
            if (JsonNode.Parse(json) is not JsonObject o) throw new JsonException("not a JSON object");
            string state = Str(o, "state") ?? throw new JsonException("no \"state\"");
            if (state is not (WorkerExit.Stopped or WorkerExit.Crashed)) throw new JsonException($"unknown state '{state}'");
            string kind = Str(o, "kind") ?? throw new JsonException("no \"kind\"");
            string detail = Str(o, "detail") ?? "";
            int? code = o["exit_code"] is JsonValue v && v.TryGetValue(out int c) ? c : null;
            return new WorkerExit(state, kind, OneLine(detail), code);
        }
        catch (JsonException e)
        {
            return new WorkerExit(WorkerExit.Crashed, "vmm_error", $"the worker's exit.json is unreadable: {OneLine(e.Message)}", null);
        }
    }

    private static string? Str(JsonObject o, string name) =>
        o[name] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

    private static string OneLine(string s) => string.Join(" ", s.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries)).Trim();
}
