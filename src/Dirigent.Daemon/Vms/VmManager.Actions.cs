using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Workers;
using static Dirigent.Daemon.Api.ApiJson;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Vms;

/// <summary>VM actions: each is an operation on "vms/NAME" whose result is the VM record as it ended.</summary>
internal sealed partial class VmManager
{
    /// <summary>How long a worker gets to exit after a stop request before it is killed.</summary>
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(30);

    public async Task<Operation> StartAsync(string name, CancellationToken ct)
    {
        await PrecheckAsync(name, "start", ct, S.Stopped, S.Crashed, S.Lost);
        return SubmitStart(name, $"start {name}");
    }

    private Operation SubmitStart(string name, string description)
        => Submit(name, description, async (_, ct) => await StartWorkAsync(name, null, ct));

    private async Task<JsonNode?> StartWorkAsync(string name, string? restoreDir, CancellationToken ct)
    {
        var rec = await RequireStateAsync(name, "start", ct, S.Stopped, S.Crashed, S.Lost);
        List<string> args = restoreDir != null
            ? ["--restore", restoreDir]
            : await WorkerArgs.BuildAsync(rec.Spec, rec.Name, _disks, ct);
        var limits = rec.Limits.Any ? rec.Limits.ToResourceLimits() : null;
        if (limits != null && _cgroups.UnavailableReason is { } why)
            throw new InvalidOperationException($"VM '{name}' has limits but cgroups are unavailable: {why}");
        await TransitionAsync(name, r => { r.State = S.Starting; r.Exit = null; r.StopRequested = false; r.Want = null; }, ct);
        // A stale exit file from the previous run must not be taken for this worker's.
        try { File.Delete(_paths.ExitFile(name)); } catch (IOException) { }
        Directory.CreateDirectory(_paths.VmDir(name));
        WorkerHandle h;
        try
        {
            h = await _supervisor.StartAsync(new WorkerLaunch(name, _paths.VmDir(name), args, limits), ct);
        }
        catch (Exception e)
        {
            string why2 = e is OperationCanceledException ? "start cancelled" : e.Message;
            await TransitionAsync(name, r =>
            {
                r.State = S.Stopped;
                r.Exit = new VmExitInfo { Kind = "start_failed", Detail = Dirigent.Api.ApiProblem.OneLine(why2), At = DateTimeOffset.UtcNow };
            }, CancellationToken.None);
            throw;
        }
        // Record the pid before watching the worker: its exit handler only acts on a record that names it. The
        // worker runs already: a cluster store that is out (etcd restarting) is waited for, else the record would stay
        // 'starting' with an untracked worker; one that stays out kills the worker, so nothing runs unrecorded.
        VmRecord now;
        long rev;
        for (var deadline = DateTime.UtcNow + StoreOutageWait; ; await Task.Delay(500, CancellationToken.None))
        {
            try
            {
                (_, now, rev) = await TransitionAsync(name, r =>
                {
                    if (r.State == S.Starting) r.State = S.Running;
                    r.StartedAt = DateTimeOffset.UtcNow;
                    r.Pid = h.Pid;
                    r.PidStartTime = h.ProcessStartTime;
                }, CancellationToken.None);
                break;
            }
            catch (Dirigent.Inventory.InventoryUnavailableException) when (DateTime.UtcNow < deadline) { }
            catch (Exception)
            {
                _log.WriteLine($"daemon: VM '{name}': its start could not be recorded: killing worker {h.Pid}");
                h.Kill();
                throw;
            }
        }
        Track(name, h);
        return now.ToApi(rev);
    }

    /// <summary>How long a started worker waits for an unreachable cluster store to record it (see StartWorkAsync).</summary>
    private static readonly TimeSpan StoreOutageWait = TimeSpan.FromMinutes(2);

    public async Task<Operation> StopAsync(string name, CancellationToken ct)
    {
        await PrecheckAsync(name, "stop", ct, S.Running, S.Paused, S.ShuttingDown, S.Starting, S.Stopping);
        return Submit(name, $"stop {name}", async (_, c) =>
        {
            await StopWorkAsync(name, c);
            return await CurrentAsync(name, c);
        });
    }

    /// <summary>Stops the worker (the VMM's orderly stop, then SIGKILL after a grace period) and waits for its exit.</summary>
    private async Task StopWorkAsync(string name, CancellationToken ct)
    {
        var rec = await RequireStateAsync(name, "stop", ct, S.Running, S.Paused, S.ShuttingDown, S.Starting, S.Stopping);
        if (!_live.TryGetValue(name, out var rt))
        {
            // The record says live but no worker is known: there is nothing left to stop.
            await TransitionAsync(name, r => { r.State = S.Stopped; r.ClearWorker(); r.StopRequested = true; }, ct);
            return;
        }
        await TransitionAsync(name, r => { r.State = S.Stopping; r.StopRequested = true; }, ct);
        try { await rt.Handle.Client.PutAsync("stop", ct); }
        catch (Exception e) when (e is not OperationCanceledException) { _log.WriteLine($"daemon: VM '{name}': stop request: {e.Message}"); }
        if (await WaitProcessedAsync(rt, StopGrace, ct)) return;
        _log.WriteLine($"daemon: VM '{name}': worker {rt.Handle.Pid} did not exit within {StopGrace.TotalSeconds} s: killing it");
        rt.Handle.Kill();
        if (!await WaitProcessedAsync(rt, StopGrace, ct))
            throw new InvalidOperationException(rt.Handle.Exited.IsCompleted
                // The exit is known but not yet written (RecordExitAsync waits for a cluster store that is out).
                ? $"worker {rt.Handle.Pid} of VM '{name}' exited, but the store is unreachable: its record follows when the store is back"
                : $"worker {rt.Handle.Pid} of VM '{name}' did not exit even after SIGKILL");
    }

    private static async Task<bool> WaitProcessedAsync(VmRuntime rt, TimeSpan timeout, CancellationToken ct)
    {
        try { await rt.Processed.Task.WaitAsync(timeout, ct); return true; }
        catch (TimeoutException) { return false; }
    }

    /// <summary>shutdown {"timeout_s":60,"force":false}: ACPI power button, then (force) a stop after the timeout.</summary>
    public async Task<Operation> ShutdownAsync(string name, JsonElement? body, CancellationToken ct)
    {
        int timeout = 60;
        bool force = false;
        if (body is { } b)
        {
            var f = Fields(b, "", "timeout_s", "force");
            if (f.TryGetValue("timeout_s", out var t)) timeout = (int)Long(t, "timeout_s", 1, 3600);
            if (f.TryGetValue("force", out var fo)) force = Bool(fo, "force");
        }
        await PrecheckAsync(name, "shut down", ct, S.Running);
        return Submit(name, $"shutdown {name}", async (ctx, c) =>
        {
            await RequireStateAsync(name, "shut down", c, S.Running);
            if (!_live.TryGetValue(name, out var rt)) throw new InvalidOperationException($"VM '{name}' has no worker");
            await TransitionAsync(name, r => { r.State = S.ShuttingDown; r.StopRequested = true; }, c);
            await rt.Handle.Client.PutAsync("power-button", c);
            ctx.Report($"power button pressed; waiting up to {timeout} s for the guest to power off");
            if (await WaitProcessedAsync(rt, TimeSpan.FromSeconds(timeout), c)) return await CurrentAsync(name, c);
            if (force)
            {
                ctx.Report("the guest did not power off in time: stopping it");
                await StopWorkAsync(name, c);
                return await CurrentAsync(name, c);
            }
            await TransitionAsync(name, r => { if (r.State == S.ShuttingDown) { r.State = S.Running; r.StopRequested = false; } }, CancellationToken.None);
            throw new InvalidOperationException($"the guest did not power off within {timeout} s (send force=true to stop it then)");
        });
    }

    /// <summary>reboot: a fresh worker (stop, then start with the current spec).</summary>
    public async Task<Operation> RebootAsync(string name, CancellationToken ct)
    {
        await PrecheckAsync(name, "reboot", ct, S.Running, S.Paused);
        return Submit(name, $"reboot {name}", async (_, c) =>
        {
            await StopWorkAsync(name, c);
            return await StartWorkAsync(name, null, c);
        });
    }

    /// <summary>reset, pause, resume: one request to the worker and the state that follows.</summary>
    public async Task<Operation> SimpleActionAsync(string name, string action, CancellationToken ct)
    {
        var (allowed, after) = action switch
        {
            "reset" => (new[] { S.Running, S.Paused }, (string?)null),
            "pause" => (new[] { S.Running }, S.Paused),
            "resume" => (new[] { S.Paused }, S.Running),
            _ => throw new ArgumentOutOfRangeException(nameof(action)),
        };
        await PrecheckAsync(name, action, ct, allowed);
        return Submit(name, $"{action} {name}", async (_, c) =>
        {
            await RequireStateAsync(name, action, c, allowed);
            if (!_live.TryGetValue(name, out var rt)) throw new InvalidOperationException($"VM '{name}' has no worker");
            await rt.Handle.Client.PutAsync(action, c);
            if (after != null) await TransitionAsync(name, r => { if (Array.IndexOf(allowed, r.State) >= 0) r.State = after; }, c);
            return await CurrentAsync(name, c);
        });
    }
}
