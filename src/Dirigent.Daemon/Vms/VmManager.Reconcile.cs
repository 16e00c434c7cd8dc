using System.Collections.Concurrent;
using Dirigent.Inventory;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// Store outages (cluster mode: etcd unreachable). A write whose answer was lost may have landed all the same — etcd
/// commits, then dies before it answers — so an operation that failed on the store can leave the record in the state
/// it was writing: "starting" with no worker, "stopping" of a worker that was never told to stop. Nothing else would
/// ever move such a record on. So when an operation fails on the store, the VM is reconciled once the store answers
/// again and no operation on it is in flight: the record is put right from what this daemon knows, its live workers.
/// A worker's exit seen while the store is out is retried until it is recorded (<see cref="RecordExitAsync"/>).
/// </summary>
internal sealed partial class VmManager
{
    /// <summary>How often a pending reconciliation looks again (store still out, or an operation still in flight).</summary>
    private static readonly TimeSpan ReconcileRetry = TimeSpan.FromMilliseconds(500);

    private readonly ConcurrentDictionary<string, byte> _reconciling = new(StringComparer.Ordinal);
    // VMs whose worker's exit is being recorded: their record is about to change, reconciliation leaves them alone.
    private readonly ConcurrentDictionary<string, int> _exiting = new(StringComparer.Ordinal);
    // Cancelled at daemon shutdown: ends the retries of reconciliations and exit records.
    private readonly CancellationTokenSource _stopping = new();

    private bool Exiting(string name) => _exiting.TryGetValue(name, out int n) && n > 0;

    /// <summary>Whether <paramref name="e"/> says the store could not be reached (the write may or may not have landed).</summary>
    internal static bool IsStoreOutage(Exception e)
        => e is InventoryUnavailableException || e is Grpc.Core.RpcException || e.InnerException is InventoryUnavailableException;

    /// <summary>Reconciles VM <paramref name="name"/> as soon as the store answers and nothing is in flight on it.</summary>
    private void ReconcileLater(string name)
    {
        if (!_reconciling.TryAdd(name, 0)) return;
        _ = Task.Run(async () =>
        {
            var ct = _stopping.Token;
            try
            {
                while (true)
                {
                    await Task.Delay(ReconcileRetry, ct);
                    // An operation in flight writes the record itself; look again once it has finished.
                    if (InFlight(name) || Exiting(name)) continue;
                    try
                    {
                        await ReconcileAsync(name, ct);
                        return;
                    }
                    catch (Exception e) when (IsStoreOutage(e)) { }
                }
            }
            catch (OperationCanceledException) { }
            catch (Exception e) { _log.WriteLine($"daemon: VM '{name}': reconciling its record failed: {Dirigent.Api.ApiProblem.OneLine(e.Message)}"); }
            finally { _reconciling.TryRemove(name, out _); }
        });
    }

    /// <summary>
    /// Puts a record left in a transitional state right: a start that did not get its worker recorded ends
    /// "stopped" (start_failed); a stop or shutdown whose worker still runs here ends "running" again (the request
    /// can be repeated); one whose worker is gone ends "stopped".
    /// </summary>
    private async Task ReconcileAsync(string name, CancellationToken ct)
    {
        string? what = null;
        (VmRecord Old, VmRecord New, long Revision) r;
        try
        {
            r = await _store.UpdateAsync(name, rec =>
            {
                what = null;
                if (!Owns(rec) || InFlight(name) || Exiting(name)) throw new NothingToReconcile();
                bool live = _live.TryGetValue(name, out var rt);
                string was = rec.State;
                switch (rec.State)
                {
                    case S.Starting when live:
                        rec.State = S.Running;
                        rec.Pid = rt!.Handle.Pid;
                        rec.PidStartTime = rt.Handle.ProcessStartTime;
                        rec.StartedAt ??= DateTimeOffset.UtcNow;
                        what = $"it runs as worker {rt.Handle.Pid}";
                        break;
                    case S.Starting:
                        rec.State = S.Stopped;
                        rec.Exit = new VmExitInfo
                        {
                            Kind = "start_failed",
                            Detail = "the start was cut short: the cluster store became unreachable",
                            At = DateTimeOffset.UtcNow,
                        };
                        rec.ClearWorker();
                        what = "its start was cut short by the store outage: stopped";
                        break;
                    case S.Stopping or S.ShuttingDown when live:
                        rec.State = S.Running;
                        rec.StopRequested = false;
                        what = $"its {(was == S.Stopping ? "stop" : "shutdown")} was cut short by the store outage: worker {rt!.Handle.Pid} runs on";
                        break;
                    case S.Stopping or S.ShuttingDown:
                        rec.State = S.Stopped;
                        rec.Exit ??= new VmExitInfo { Kind = "stopped_by_request", Detail = "the worker ended during a store outage", At = DateTimeOffset.UtcNow };
                        rec.ClearWorker();
                        what = "its worker ended during the store outage: stopped";
                        break;
                    default:
                        throw new NothingToReconcile();
                }
            }, ct: ct);
        }
        catch (NothingToReconcile) { return; }
        catch (Dirigent.Api.ApiRequestException) { return; } // deleted meanwhile
        _log.WriteLine($"daemon: VM '{name}' was {r.Old.State} after a store outage: {what}");
        if (r.Old.State != r.New.State) _events.Publish(new Operations.VmStateChanged(name, r.Old.State, r.New.State));
    }

    private sealed class NothingToReconcile : Exception;
}
