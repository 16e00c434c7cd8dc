using System.Diagnostics;
using System.Text;
using Dirigent.Daemon.Limits;

namespace Dirigent.Daemon.Workers;

/// <summary>
/// Starts and adopts workers: one `dirigent run` process per running VM, serving that VM's API on VMDIR/worker.sock.
/// A worker outlives the daemon (own session, no pipes to us: its output goes to VMDIR/worker.log), so a daemon
/// killed and restarted finds it again with <see cref="TryAdopt"/>; how a worker ended comes from the exit.json it
/// writes just before it exits, or, when it died without one, from its exit status.
/// </summary>
public sealed class WorkerSupervisor
{
    public const string SocketFileName = "worker.sock";
    public const string ConsoleLogFileName = "console.log";
    public const string WorkerLogFileName = "worker.log";
    public const string ExitFileName = "exit.json";
    /// <summary>Where the VM's snapshots go (DaemonPaths.SnapshotsDir): a jailed worker gets it bound in, writable.</summary>
    public const string SnapshotsDirName = "snapshots";

    /// <summary>How many lines of worker.log a <see cref="WorkerStartException"/> carries.</summary>
    private const int LogTailLines = 20;

    /// <summary>
    /// `exec` the worker with stdin from /dev/null and its output appended to the log: the shell only sets up the
    /// descriptors, then becomes the worker (same PID, same start time).
    /// </summary>
    private const string SpawnScript = "exec \"$0\" \"$@\" </dev/null >>\"$DIRIGENT_WORKER_LOG\" 2>&1";

    private readonly WorkerCommand _command;
    private readonly ICgroupManager _cgroups;
    private readonly TextWriter _log;
    private readonly Lock _logLock = new();

    /// <summary>
    /// Run workers as `dirigent run --jail` (user nobody). The daemon gives the jail user the files a worker writes
    /// (its console log and writable disks) before each start; the worker's own exit record and socket go through
    /// the jail's run directory.
    /// </summary>
    public bool JailWorkers { get; init; }
    /// <summary>
    /// Jailed workers keep the host's network namespace (`run --jail-host-net`): in cluster mode, where a VM migrates
    /// out over TCP to another host's worker; a one-host daemon gives NIC-less workers a network namespace of their own.
    /// </summary>
    public bool JailKeepsHostNetwork { get; init; }

    /// <summary>The jail user of <see cref="JailWorkers"/> (`dirigent run --jail-user`'s default, nobody:nogroup).</summary>
    public const int JailUid = 65534, JailGid = 65534;

    /// <summary>How long a worker has to answer on its socket before the start counts as failed.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Runs workers as `<paramref name="workerExecutable"/> run ...` (the daemon's own binary).</summary>
    public WorkerSupervisor(string workerExecutable, ICgroupManager cgroups, TextWriter log)
        : this(new WorkerCommand(workerExecutable, []), cgroups, log) { }

    /// <summary>Runs workers as `EXECUTABLE PREFIX... run ...` (e.g. `dotnet dirigent.dll run ...`).</summary>
    public WorkerSupervisor(WorkerCommand command, ICgroupManager cgroups, TextWriter log)
    {
        _command = command;
        _cgroups = cgroups;
        _log = log;
    }

    public static string SocketPathOf(string vmDir) => Path.Combine(vmDir, SocketFileName);

    /// <summary>
    /// How the VM's last worker ended, from its exit.json (null if there is none): for a VM whose worker ended while
    /// no daemon was watching.
    /// </summary>
    public static WorkerExit? ReadExitFile(string vmDir)
    {
        string path = Path.Combine(vmDir, ExitFileName);
        string json;
        try { json = File.ReadAllText(path); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException) { return null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new WorkerExit(WorkerExit.Crashed, "vmm_error", $"cannot read the worker's exit.json: {e.Message}", null);
        }
        return WorkerHandle.ParseExitJson(json);
    }

    /// <summary>The full argument list after the executable: prefix, `run`, the VM's options, then ours.</summary>
    public IReadOnlyList<string> WorkerArguments(WorkerLaunch launch)
    {
        var args = new List<string>(_command.PrefixArgs) { "run" };
        args.AddRange(launch.RunArgs);
        args.AddRange([
            "--serial", "none",
            "--console-log", Path.Combine(launch.VmDir, ConsoleLogFileName),
            "--api-socket", SocketPathOf(launch.VmDir),
            "--exit-file", Path.Combine(launch.VmDir, ExitFileName),
            "--detach",
        ]);
        if (JailWorkers) args.AddRange(["--jail", "--jail-bind", Path.Combine(launch.VmDir, SnapshotsDirName)]);
        if (JailWorkers && JailKeepsHostNetwork) args.Add("--jail-host-net");
        return args;
    }

    /// <summary>
    /// Spawns the worker, puts it in its cgroup when the launch has limits, and returns once GET /v1/vm answers on its
    /// socket. Throws <see cref="WorkerStartException"/> (one line: what happened and the worker's last log line) if
    /// the worker exits first, does not answer within <see cref="StartTimeout"/> (it is killed then), or its limits
    /// cannot be applied. Cancelling <paramref name="ct"/> kills a worker that has not answered yet.
    /// </summary>
    public async Task<WorkerHandle> StartAsync(WorkerLaunch launch, CancellationToken ct = default)
    {
        string name = launch.VmName;
        string vmDir = Path.GetFullPath(launch.VmDir);
        launch = launch with { VmDir = vmDir };
        foreach (string a in launch.RunArgs)
            if (a is "--api-socket" or "--console-log" or "--exit-file" or "--serial" or "--detach")
                throw new ArgumentException($"RunArgs must not contain {a}: the supervisor sets it", nameof(launch));
        ct.ThrowIfCancellationRequested();
        string logPath = Path.Combine(vmDir, WorkerLogFileName);
        try
        {
            Directory.CreateDirectory(vmDir);
            // A previous run's exit record would be taken for this run's: it goes before this worker can write one.
            File.Delete(Path.Combine(vmDir, ExitFileName));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WorkerStartException($"VM '{name}': cannot prepare its directory {vmDir}: {e.Message}", inner: e);
        }

        if (JailWorkers)
        {
            try { JailFiles.GiveToJailUser(launch, Path.Combine(vmDir, ConsoleLogFileName), Path.Combine(vmDir, SnapshotsDirName), JailUid, JailGid); }
            catch (IOException e) { throw new WorkerStartException($"VM '{name}': cannot prepare its files for the jail: {e.Message}", inner: e); }
        }

        IVmCgroup? cgroup = null;
        if (launch.Limits != null)
        {
            try { cgroup = _cgroups.Create(name, launch.Limits); }
            catch (CgroupException e)
            {
                throw new WorkerStartException($"VM '{name}': cannot apply its resource limits: {e.Message}", inner: e);
            }
        }

        var args = WorkerArguments(launch);
        long logOffset;
        try { logOffset = AppendLogHeader(logPath, args); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            cgroup?.Dispose();
            throw new WorkerStartException($"VM '{name}': cannot write its log {logPath}: {e.Message}", inner: e);
        }
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(SpawnScript);
        psi.ArgumentList.Add(_command.Executable);
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["DIRIGENT_WORKER_LOG"] = logPath;
        // The worker is a VMM: its runtime settings (W^X off, gen0 budget) from its start, unless the daemon's
        // environment says (Dirigent.Cli.RuntimeKnobs; the worker would otherwise re-execute itself to get them).
        foreach (var (variable, value) in Dirigent.Vmm.VmmProcessSettings.All) psi.Environment.TryAdd(variable, value);
        // systemd's hand-over variables are the daemon's (Type=notify, socket activation): a worker that inherited
        // them could report readiness or take sockets on the daemon's behalf.
        foreach (string v in (string[])["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"])
            psi.Environment.Remove(v);

        Process process;
        try { process = Process.Start(psi) ?? throw new InvalidOperationException("Process.Start returned null"); }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            cgroup?.Dispose();
            throw new WorkerStartException($"VM '{name}': cannot start the worker: {e.Message}", inner: e);
        }
        int pid = process.Id;
        // The start time is read right away; if the worker is already gone (and reaped) it does not matter: the
        // handle's Exited completes at once and the start fails below.
        long startTime = ProcessInfo.StartTime(pid) ?? 0;
        var handle = new WorkerHandle(name, vmDir, pid, startTime, process, cgroup, Log);
        Log($"worker for VM '{name}' started: pid {pid}");
        try
        {
            // The worker runs outside its limits between spawn and this line: a few ms of runtime start-up, before
            // its VM exists. Joining before exec would need a fork hook .NET does not offer.
            try { cgroup?.AddProcess(pid); }
            catch (Exception e) when (e is CgroupException or IOException or UnauthorizedAccessException)
            {
                throw new WorkerStartException($"VM '{name}': cannot put the worker in its cgroup {cgroup!.Path}: {e.Message}", inner: e);
            }
            await WaitUntilAnswering(handle, logPath, logOffset, ct).ConfigureAwait(false);
            // A jailed worker's VMM is its grandchild (under unshare), started after the worker joined its cgroup or
            // not: it is put there too (a process joins one cgroup at a time; moving it again is harmless).
            if (JailWorkers && cgroup != null)
                foreach (int d in ProcessInfo.Descendants(pid))
                    try { cgroup.AddProcess(d); }
                    catch (Exception e) when (e is CgroupException or IOException or UnauthorizedAccessException)
                    {
                        throw new WorkerStartException($"VM '{name}': cannot put the jailed VMM (pid {d}) in its cgroup {cgroup.Path}: {e.Message}", inner: e);
                    }
            return handle;
        }
        catch
        {
            // Whatever failed, no half-started worker is left behind: kill it and let its monitor reap it and remove
            // its cgroup.
            handle.Kill();
            try { await handle.Exited.WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false); }
            catch (TimeoutException) { Log($"worker for VM '{name}' (pid {pid}) did not end 10 s after SIGKILL"); }
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Polls the socket (its file, then GET /v1/vm) until the worker answers, exits, or time runs out.</summary>
    private async Task WaitUntilAnswering(WorkerHandle handle, string logPath, long logOffset, CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        string name = handle.VmName;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            if (handle.Exited.IsCompleted)
            {
                var exit = await handle.Exited.ConfigureAwait(false);
                var (last, tail) = LogTail(logPath, logOffset);
                string how = exit.ExitCode is { } code ? WorkerHandle.DescribeStatus(code) : exit.Kind;
                // The worker's own one-line error is its last log line; its exit record says less (or nothing).
                string why = last.Length > 0 ? last : exit.Detail;
                throw new WorkerStartException($"VM '{name}': the worker exited before its API answered ({how}): {why}", tail);
            }
            if (deadline.Elapsed > StartTimeout)
            {
                var (last, tail) = LogTail(logPath, logOffset);
                throw new WorkerStartException(
                    $"VM '{name}': the worker did not answer on {handle.SocketPath} within {StartTimeout.TotalSeconds:0} s (killed)" +
                    (last.Length > 0 ? $"; its last log line: {last}" : ""), tail);
            }
            if (File.Exists(handle.SocketPath) && await Answers(handle.Client, TimeSpan.FromSeconds(5), ct).ConfigureAwait(false))
                return;
            // Start-up takes the .NET runtime's start and the VM's build (tens to hundreds of ms): a short poll is
            // cheap and answers soon after the socket is up.
            await Task.WhenAny(handle.Exited, Task.Delay(25, ct)).ConfigureAwait(false);
        }
    }

    private static async Task<bool> Answers(WorkerClient client, TimeSpan timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        try
        {
            await client.GetVmAsync(cts.Token).ConfigureAwait(false);
            return true;
        }
        catch (WorkerApiException) { return false; }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { return false; }
    }

    /// <summary>
    /// Takes over a worker a previous daemon started: it must still run (PID with the same start time, so a reused PID
    /// is not mistaken for it) and answer GET /v1/vm on VMDIR/worker.sock. Null otherwise (the worker is gone, or
    /// something else runs under that PID, or it does not answer: then it is left alone, and logged).
    /// </summary>
    public WorkerHandle? TryAdopt(string vmName, string vmDir, int pid, long processStartTime) =>
        TryAdoptAsync(vmName, vmDir, pid, processStartTime).GetAwaiter().GetResult();

    /// <inheritdoc cref="TryAdopt"/>
    public async Task<WorkerHandle?> TryAdoptAsync(string vmName, string vmDir, int pid, long processStartTime, CancellationToken ct = default)
    {
        vmDir = Path.GetFullPath(vmDir);
        if (!ProcessInfo.IsAlive(pid, processStartTime)) return null;
        using (var probe = new WorkerClient(SocketPathOf(vmDir)))
        {
            if (!await Answers(probe, TimeSpan.FromSeconds(5), ct).ConfigureAwait(false))
            {
                Log($"worker for VM '{vmName}' (pid {pid}) runs but does not answer on {SocketPathOf(vmDir)}: not adopted");
                return null;
            }
        }
        IVmCgroup? cgroup = null;
        try { cgroup = _cgroups.Open(vmName); }
        catch (Exception e) when (e is CgroupException or IOException or UnauthorizedAccessException)
        {
            Log($"worker for VM '{vmName}': cannot open its cgroup: {e.Message}");
        }
        var handle = new WorkerHandle(vmName, vmDir, pid, processStartTime, null, cgroup, Log);
        Log($"worker for VM '{vmName}' adopted: pid {pid}");
        return handle;
    }

    /// <summary>One line in worker.log saying what runs from here on; returns where this run's output starts.</summary>
    private static long AppendLogHeader(string logPath, IReadOnlyList<string> args)
    {
        using var f = new FileStream(logPath, FileMode.Append, FileAccess.Write, FileShare.ReadWrite);
        byte[] line = Encoding.UTF8.GetBytes($"--- {DateTimeOffset.UtcNow:yyyy-MM-ddTHH:mm:ssZ} dirigentd: starting worker: run {string.Join(' ', args.SkipWhile(a => a != "run").Skip(1))}\n");
        f.Write(line);
        return f.Position;
    }

    /// <summary>This run's last non-empty log line (the worker's one-line error) and its last lines.</summary>
    private static (string Last, string Tail) LogTail(string logPath, long offset)
    {
        string text;
        try
        {
            using var f = new FileStream(logPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            // Only this run's output, and at most its last 64 KiB.
            long from = Math.Max(offset, f.Length - 65536);
            f.Position = Math.Min(from, f.Length);
            using var r = new StreamReader(f, Encoding.UTF8);
            text = r.ReadToEnd();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return ("", ""); }
        var lines = text.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Trim().Length > 0).ToArray();
        string last = lines.Length > 0 ? lines[^1].Trim() : "";
        return (last, string.Join('\n', lines.TakeLast(LogTailLines)));
    }

    private void Log(string line)
    {
        lock (_logLock)
        {
            try { _log.WriteLine($"dirigentd: {line}"); }
            catch (ObjectDisposedException) { }
        }
    }
}
