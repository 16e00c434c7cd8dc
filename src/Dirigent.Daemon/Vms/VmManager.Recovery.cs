using Dirigent.Daemon.Workers;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// Daemon start: workers that outlived the previous daemon are re-adopted (pid + process start time from the record),
/// VMs whose worker is gone get the exit it left (exit.json) or "worker vanished", then restart policies and
/// autostart run.
/// </summary>
internal sealed partial class VmManager
{
    public async Task RecoverAsync(CancellationToken ct)
    {
        var started = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (rec, _) in await _store.ListAsync(ct))
        {
            if (!S.HasWorker(rec.State) || !Owns(rec)) continue;
            WorkerHandle? h = null;
            if (rec.Pid is int pid && rec.PidStartTime is long st)
            {
                try { h = await _supervisor.TryAdoptAsync(rec.Name, _paths.VmDir(rec.Name), pid, st, ct); }
                catch (Exception e) { _log.WriteLine($"daemon: VM '{rec.Name}': cannot adopt worker {pid}: {e.Message}"); }
            }
            if (h != null)
            {
                // A transition that was under way when the daemon died is over: the worker runs (or is paused).
                string state = rec.State is S.Paused ? S.Paused : S.Running;
                await TransitionAsync(rec.Name, r => r.State = state, ct);
                Track(rec.Name, h);
                _log.WriteLine($"daemon: VM '{rec.Name}': re-adopted worker {h.Pid}");
                continue;
            }
            var exit = WorkerSupervisor.ReadExitFile(_paths.VmDir(rec.Name))
                       ?? (rec.State == S.Stopping
                           ? new WorkerExit(S.Stopped, "stopped_by_request", "the worker ended while the daemon was down", null)
                           : new WorkerExit(S.Crashed, "worker_vanished", "worker vanished while the daemon was down", null));
            await RecordExitAsync(rec.Name, null, exit);
            if (_inFlight.TryGetValue(rec.Name, out int n) && n > 0) started.Add(rec.Name);
        }
        foreach (var (rec, _) in await _store.ListAsync(ct))
            if (rec.Autostart && Owns(rec) && S.IsDown(rec.State) && !started.Contains(rec.Name) && !InFlight(rec.Name))
                SubmitStart(rec.Name, $"autostart {rec.Name}");
    }
}
