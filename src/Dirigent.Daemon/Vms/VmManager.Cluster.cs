using Dirigent.Daemon.Workers;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// Cluster mode: this daemon runs only the VMs whose record names its host. The cluster node feeds every VM record it
/// sees (<see cref="OnClusterRecordAsync"/>); workers of VMs that are not this host's are killed (fencing).
/// </summary>
internal sealed partial class VmManager
{
    /// <summary>This daemon's host name in a cluster; null on a one-host daemon (which owns every VM).</summary>
    public string? HostName { get; set; }

    // VMs whose worker is being migrated to another host: the record moving away then is expected, not a fence.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> _migratingAway = new(StringComparer.Ordinal);

    /// <summary>Whether this daemon runs <paramref name="rec"/>.</summary>
    public bool Owns(VmRecord rec) => HostName == null || rec.Host == HostName;

    /// <summary>A VM record as the cluster watch delivers it: start what is wanted here, fence what went elsewhere.</summary>
    public async Task OnClusterRecordAsync(VmRecord rec, string me)
    {
        if (rec.Host == me)
        {
            Directory.CreateDirectory(_paths.VmDir(rec.Name));
            // Given to this host to run (a restart after its old host died): start it once.
            if (rec.Want == S.Running && S.IsDown(rec.State) && !InFlight(rec.Name) && !_live.ContainsKey(rec.Name))
                SubmitStart(rec.Name, $"start {rec.Name} on host {me} ({rec.Exit?.Kind ?? "wanted running"})");
            return;
        }
        if (_live.TryGetValue(rec.Name, out var rt) && !_migratingAway.ContainsKey(rec.Name))
        {
            _log.WriteLine($"daemon: fencing: VM '{rec.Name}' now belongs to {(rec.Host == null ? "no host" : $"host '{rec.Host}'")}: killing worker {rt.Handle.Pid}");
            _live.TryRemove(new KeyValuePair<string, VmRuntime>(rec.Name, rt));
            rt.Handle.Kill();
        }
        await Task.CompletedTask;
    }

    public Task OnClusterRecordDeletedAsync(string name, string me)
    {
        if (_live.TryGetValue(name, out var rt))
        {
            _log.WriteLine($"daemon: fencing: VM '{name}' was deleted: killing worker {rt.Handle.Pid}");
            _live.TryRemove(new KeyValuePair<string, VmRuntime>(name, rt));
            rt.Handle.Kill();
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// Worker processes of this daemon's home found in /proc (by the API socket path in their command line), whatever
    /// the inventory says: what fencing looks at when the daemon comes back.
    /// </summary>
    public List<(string Name, int Pid)> LocalWorkerProcesses()
    {
        var found = new List<(string, int)>();
        string vmsDir = _paths.VmsDir + "/";
        foreach (string d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid) || pid == Environment.ProcessId) continue;
            string[] args;
            try { args = File.ReadAllText(Path.Combine(d, "cmdline")).Split('\0'); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            int i = Array.IndexOf(args, "--api-socket");
            if (i < 0 || i + 1 >= args.Length) continue;
            string sock = args[i + 1];
            if (!sock.StartsWith(vmsDir, StringComparison.Ordinal) || Path.GetFileName(sock) != WorkerSupervisor.SocketFileName) continue;
            string name = Path.GetFileName(Path.GetDirectoryName(sock)!);
            found.Add((name, pid));
        }
        return found;
    }

    /// <summary>SIGKILL a worker this host no longer owns, and wait until it is gone (the process, not its record).</summary>
    public async Task KillStaleWorkerAsync(string name, int pid)
    {
        if (ProcessInfo.StartTime(pid) is not long st) return;
        if (_live.TryGetValue(name, out var rt) && rt.Handle.Pid == pid) _live.TryRemove(new KeyValuePair<string, VmRuntime>(name, rt));
        ProcessInfo.Signal(pid, st, ProcessInfo.SIGKILL);
        for (int i = 0; i < 500 && ProcessInfo.IsAlive(pid, st); i++) await Task.Delay(10);
    }
}
