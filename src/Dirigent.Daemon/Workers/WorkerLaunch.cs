using System.Net;
using System.Reflection;
using Dirigent.Daemon.Limits;

namespace Dirigent.Daemon.Workers;

/// <summary>What to start: one VM's worker.</summary>
/// <param name="VmName">The VM's name (the cgroup is named after it).</param>
/// <param name="VmDir">The VM's state directory: worker.sock, console.log, worker.log and exit.json live there.</param>
/// <param name="RunArgs">
/// Options after `run` (--memory, --kernel, --disk, ... or --restore DIR), WITHOUT --api-socket, --console-log,
/// --exit-file, --serial or --detach: the supervisor adds those, pointing into <paramref name="VmDir"/>.
/// </param>
/// <param name="Limits">CPU/memory limits (a cgroup is made for the worker), or null for none (no cgroup at all).</param>
public sealed record WorkerLaunch(string VmName, string VmDir, IReadOnlyList<string> RunArgs, ResourceLimits? Limits);

/// <summary>How a worker ended.</summary>
/// <param name="State">"stopped" (the VM ended the way a VM may end) or "crashed".</param>
/// <param name="Kind">
/// The worker's exit kind from exit.json (snake_case of VmExitKind: power_off, reset, stopped_by_request,
/// triple_fault, ...), or, when the worker left no exit.json, <see cref="WorkerExit.WorkerDied"/> (we are its parent
/// and saw its status) or <see cref="WorkerExit.WorkerVanished"/> (an adopted worker: nobody told us how it ended).
/// </param>
/// <param name="Detail">One line for people.</param>
/// <param name="ExitCode">The worker's exit status (from exit.json or the process), or null when unknown.</param>
public sealed record WorkerExit(string State, string Kind, string Detail, int? ExitCode)
{
    public const string Stopped = "stopped";
    public const string Crashed = "crashed";
    /// <summary>Kind for a worker that ended without writing exit.json while we were its parent.</summary>
    public const string WorkerDied = "worker_died";
    /// <summary>Kind for an adopted worker that is gone without an exit.json (its status went to its new parent).</summary>
    public const string WorkerVanished = "worker_vanished";
}

/// <summary>
/// The command line that runs `dirigent` itself: the daemon's own executable, or, under the dotnet host
/// (`dotnet dirigent.dll daemon`), the host followed by the entry assembly's path.
/// </summary>
public sealed record WorkerCommand(string Executable, IReadOnlyList<string> PrefixArgs)
{
    /// <summary>This process's own `dirigent` (the daemon runs the same binary as its workers).</summary>
    public static WorkerCommand Current()
    {
        string exe = Environment.ProcessPath ?? throw new InvalidOperationException("cannot tell this process's executable");
        string name = Path.GetFileNameWithoutExtension(exe);
        if (name == "dotnet")
        {
            string dll = Assembly.GetEntryAssembly()?.Location
                ?? throw new InvalidOperationException("running under the dotnet host, but the entry assembly has no path");
            return new WorkerCommand(exe, [dll]);
        }
        return new WorkerCommand(exe, []);
    }

    /// <summary>`dotnet PATH/dirigent.dll` (tests: the CLI built beside them).</summary>
    public static WorkerCommand DotnetDll(string dllPath, string dotnet = "dotnet") => new(dotnet, [dllPath]);
}

/// <summary>
/// A worker did not come up. The message is one line (it names the VM, what happened and the worker's last log line,
/// which is its own one-line error); <see cref="LogTail"/> holds the end of worker.log for the curious.
/// </summary>
public sealed class WorkerStartException(string message, string logTail = "", Exception? inner = null) : Exception(message, inner)
{
    public string LogTail { get; } = logTail;
}

/// <summary>
/// The worker's API refused a request (<see cref="Status"/> and the problem's detail as the message) or could not be
/// reached at all (<see cref="Status"/> null: the worker is gone or not answering).
/// </summary>
public sealed class WorkerApiException(HttpStatusCode? status, string detail, Exception? inner = null) : Exception(detail, inner)
{
    public HttpStatusCode? Status { get; } = status;
}
