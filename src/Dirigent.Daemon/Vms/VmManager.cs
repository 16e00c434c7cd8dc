using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Disks;
using Dirigent.Daemon.Host;
using Dirigent.Daemon.Limits;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Workers;
using Dirigent.Inventory;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// The VMs: records in the inventory, one worker process per running VM, and the state machine between them
/// (stopped → starting → running ⇄ paused; shutting_down; stopping; crashed). Everything that takes time runs as an
/// operation queued on "vms/NAME", so actions on one VM happen in order and different VMs proceed in parallel.
/// A worker's exit is recorded by <see cref="OnWorkerExitedAsync"/> (the only place a live VM becomes stopped or
/// crashed), which also applies the restart policy.
/// </summary>
internal sealed partial class VmManager
{
    private readonly VmStore _store;
    private readonly DiskManager _disks;
    private readonly OperationManager _ops;
    private readonly EventHub _events;
    private readonly WorkerSupervisor _supervisor;
    private readonly ICgroupManager _cgroups;
    private readonly DaemonPaths _paths;
    private readonly TextWriter _log;
    private readonly ConcurrentDictionary<string, VmRuntime> _live = new(StringComparer.Ordinal);
    // Operations submitted and not yet finished, per VM: while any is queued, a request's state check at submit time
    // would look at a state that is about to change, so only the operation itself checks then.
    private readonly ConcurrentDictionary<string, int> _inFlight = new(StringComparer.Ordinal);
    // Restart-policy restarts per VM (recent times): a guest that crashes at once is not restarted forever.
    private readonly ConcurrentDictionary<string, Queue<DateTimeOffset>> _restarts = new(StringComparer.Ordinal);

    public const int MaxRestartsPerMinute = 5;

    public VmManager(VmStore store, DiskManager disks, OperationManager ops, EventHub events, WorkerSupervisor supervisor,
        ICgroupManager cgroups, DaemonPaths paths, TextWriter log)
    {
        _store = store;
        _disks = disks;
        _ops = ops;
        _events = events;
        _supervisor = supervisor;
        _cgroups = cgroups;
        _paths = paths;
        _log = log;
    }

    public VmStore Store => _store;

    /// <summary>The live workers (for metrics and the console).</summary>
    public IReadOnlyDictionary<string, VmRuntime> Live => _live;

    public static string Target(string name) => VmStore.Key(name);

    // ---- records ----

    public async Task<JsonObject> CreateAsync(JsonElement body, CancellationToken ct)
    {
        var rec = VmRequestParser.ParseCreate(body, out string? image);
        await CheckDisksExist(rec.Spec, ct);
        rec.CreatedAt = DateTimeOffset.UtcNow;
        if (await _store.GetAsync(rec.Name, ct) != null) throw Conflict($"a VM named '{rec.Name}' already exists");
        string? rootDisk = image != null ? await CloneImageAsync(rec, image, ct) : null;
        try
        {
            Directory.CreateDirectory(_paths.VmDir(rec.Name));
            long rev = await _store.CreateAsync(rec, ct) ?? throw Conflict($"a VM named '{rec.Name}' already exists");
            _events.Publish(new VmStateChanged(rec.Name, null, rec.State));
            return rec.ToApi(rev);
        }
        catch when (rootDisk != null)
        {
            try { await _disks.DeleteAsync(rootDisk, CancellationToken.None); } catch (Dirigent.Api.ApiRequestException) { }
            throw;
        }
    }

    /// <summary>
    /// "image": NAME makes the VM's first disk a linked clone of the system image HOME/images/NAME.qcow2 (or .raw):
    /// a qcow2 overlay disk "VM-root" owned by the VM (removed with it by purge), so the image itself stays untouched
    /// and clones cost only what each guest writes.
    /// </summary>
    private async Task<string> CloneImageAsync(VmRecord rec, string image, CancellationToken ct)
    {
        string? path = new[] { "qcow2", "raw" }.Select(ext => Path.Combine(_paths.ImagesDir, $"{image}.{ext}")).FirstOrDefault(File.Exists)
            ?? throw Bad($"field 'image': no image '{image}' in {_paths.ImagesDir} (build it with `dirigent image build {image} --out {Path.Combine(_paths.ImagesDir, image + ".qcow2")}`)");
        long size;
        string format;
        try
        {
            using var img = Dirigent.Storage.DiskImage.Open(path, null, readOnly: true);
            (size, format) = (img.Size, img is Dirigent.Storage.Qcow2Disk ? "qcow2" : "raw");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or Dirigent.Storage.BlockDeviceException)
        {
            throw Bad($"field 'image': image '{image}' cannot be opened: {e.Message}");
        }
        string diskName = $"{rec.Name[..Math.Min(rec.Name.Length, 58)]}-root";
        await _disks.CreateAsync(diskName, "qcow2", size, backingName: null, path, format, owner: rec.Name, ct);
        rec.Spec.Disks.Insert(0, new VmDiskModel { Disk = diskName, Format = "auto" });
        return diskName;
    }

    private async Task CheckDisksExist(VmSpecModel spec, CancellationToken ct)
    {
        for (int i = 0; i < spec.Disks.Count; i++)
            if (spec.Disks[i].Disk is { } d && await _disks.GetAsync(d, ct) == null)
                throw Bad($"field 'spec.disks[{i}].disk': no disk named '{d}' (create it with POST /api/v1/disks)");
    }

    /// <summary>PATCH: a down VM takes any change; a live one only limits, restart and autostart (limits applied at once).</summary>
    public async Task<JsonObject> PatchAsync(string name, JsonElement body, long? ifMatch, CancellationToken ct)
    {
        var patch = VmRequestParser.ParsePatch(body);
        VmSpecModel? checkDisks = null;
        var (old, now, rev) = await _store.UpdateAsync(name, r =>
        {
            if (patch.Spec != null)
            {
                if (!VmStates.IsDown(r.State))
                    throw Conflict($"VM '{name}' is {r.State}: its spec can change only while it is stopped (limits, restart and autostart can change now)");
                if (patch.Spec.Value.ValueKind != JsonValueKind.Null) VmRequestParser.ApplySpec(patch.Spec.Value, r.Spec);
                checkDisks = r.Spec;
            }
            if (patch.Limits is { } l)
            {
                if (l.ValueKind == JsonValueKind.Null) r.Limits = new VmLimitsModel();
                else VmRequestParser.ApplyLimits(l, r.Limits);
            }
            if (patch.Restart != null) r.Restart = patch.Restart;
            if (patch.Autostart != null) r.Autostart = patch.Autostart.Value;
        }, ifMatch, ct);
        if (checkDisks != null) await CheckDisksExist(checkDisks, ct);
        if (patch.Limits != null && _live.TryGetValue(name, out var rt)) ApplyLiveLimits(name, rt, now.Limits);
        return now.ToApi(rev);
    }

    private void ApplyLiveLimits(string name, VmRuntime rt, VmLimitsModel limits)
    {
        try
        {
            if (rt.Cgroup != null) rt.Cgroup.Update(limits.ToResourceLimits());
            else if (limits.Any)
            {
                // Started without limits: give the running worker a group now.
                var g = _cgroups.Create(name, limits.ToResourceLimits());
                g.AddProcess(rt.Handle.Pid);
                rt.Cgroup = g;
            }
        }
        catch (CgroupException e)
        {
            throw Conflict($"limits saved but not applied to the running VM: {e.Message}");
        }
    }

    /// <summary>DELETE: stopped or crashed VMs only; purge also removes the disks the VM owns (its clones' overlays).</summary>
    public async Task DeleteAsync(string name, bool purge, CancellationToken ct)
    {
        var (rec, rev) = await _store.RequireAsync(name, ct);
        if (!VmStates.IsDown(rec.State) || _live.ContainsKey(name))
            throw Conflict($"VM '{name}' is {rec.State}: stop it before deleting it");
        if (InFlight(name)) throw Conflict($"VM '{name}' has operations in progress: wait for them first");
        if (!await _store.DeleteAsync(name, rev, ct)) throw Conflict($"VM '{name}' changed meanwhile: try again");
        _events.Publish(new VmStateChanged(name, rec.State, "deleted"));
        if (purge)
            foreach (var d in (await _disks.ListAsync(ct)).Where(d => d.Owner == name))
            {
                try { await _disks.DeleteAsync(d.Name, ct); }
                catch (Dirigent.Api.ApiRequestException e) { _log.WriteLine($"daemon: purge of VM '{name}': disk '{d.Name}' kept: {e.Message}"); }
            }
        try { Directory.Delete(_paths.VmDir(name), recursive: true); }
        catch (DirectoryNotFoundException) { }
        catch (IOException e) { _log.WriteLine($"daemon: VM '{name}' deleted, its directory stays: {e.Message}"); }
    }

    // ---- state transitions and worker exits ----

    /// <summary>Updates the record and publishes vm-state-changed when the state changed.</summary>
    private async Task<(VmRecord Old, VmRecord New, long Revision)> TransitionAsync(string name, Action<VmRecord> mutate,
        CancellationToken ct = default)
    {
        var r = await _store.UpdateAsync(name, mutate, ct: ct);
        if (r.Old.State != r.New.State) _events.Publish(new VmStateChanged(name, r.Old.State, r.New.State));
        return r;
    }

    /// <summary>Starts watching a live worker: its exit is recorded once, whoever caused it.</summary>
    private VmRuntime Track(string name, WorkerHandle h)
    {
        var rt = new VmRuntime(h);
        _live[name] = rt;
        _ = Task.Run(async () =>
        {
            WorkerExit exit;
            try { exit = await h.Exited.ConfigureAwait(false); }
            catch (OperationCanceledException)
            {
                // The handle was released (the daemon is stopping): the worker runs on, nothing to record.
                rt.Processed.TrySetResult();
                return;
            }
            catch (Exception e) { exit = new WorkerExit(VmStates.Crashed, "vmm_error", $"lost the worker: {e.Message}", null); }
            try { await OnWorkerExitedAsync(name, rt, exit); }
            catch (Exception e) { _log.WriteLine($"daemon: VM '{name}': recording the worker's exit failed: {e.Message}"); }
            finally { rt.Processed.TrySetResult(); }
        });
        return rt;
    }

    private async Task OnWorkerExitedAsync(string name, VmRuntime rt, WorkerExit exit)
    {
        // Counted as exiting before the worker leaves _live, until its exit is recorded (which may wait for the
        // store): reconciliation never sees a record whose worker is neither live nor being recorded.
        _exiting.AddOrUpdate(name, 1, (_, n) => n + 1);
        try
        {
            _live.TryRemove(new KeyValuePair<string, VmRuntime>(name, rt));
            // Cluster: a worker that handed its VM to another host ends "migrated"; the record is the target's to write.
            bool migratedAway = _migratingAway.TryRemove(name, out _) && exit.Kind.Contains("migrat", StringComparison.OrdinalIgnoreCase);
            try { rt.Cgroup?.Dispose(); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or CgroupException) { _log.WriteLine($"daemon: VM '{name}': cgroup not removed: {e.Message}"); }
            if (migratedAway)
            {
                _log.WriteLine($"daemon: VM '{name}': worker {rt.Handle.Pid} handed the VM to another host");
                return;
            }
            await RecordExitAsync(name, rt.Handle.Pid, exit);
        }
        finally { _exiting.AddOrUpdate(name, 0, (_, n) => n - 1); }
    }

    /// <summary>
    /// Writes the exit into the record (only if it still names that worker's pid), publishes vm-exited and
    /// vm-state-changed, then applies the restart policy.
    /// </summary>
    private async Task RecordExitAsync(string name, int? pid, WorkerExit exit)
    {
        string state = exit.State == VmStates.Stopped ? VmStates.Stopped : VmStates.Crashed;
        (VmRecord Old, VmRecord New, long Revision) r;
        try
        {
            // A store that is out (etcd restarting) is waited for: the exit is known only here, and a record left
            // "running" would name a worker that is gone.
            for (bool told = false; ; await Task.Delay(ReconcileRetry, _stopping.Token))
            {
                try
                {
                    r = await _store.UpdateAsync(name, rec =>
                    {
                        if (pid != null && rec.Pid != null && rec.Pid != pid) throw new StaleExitException();
                        // Cluster: a VM given to another host meanwhile (fenced, migrated) is that host's to record.
                        if (!Owns(rec)) throw new StaleExitException();
                        rec.State = state;
                        rec.Exit = new VmExitInfo { Kind = exit.Kind, Detail = exit.Detail, ExitCode = exit.ExitCode, At = DateTimeOffset.UtcNow };
                        rec.ClearWorker();
                    }, ct: _stopping.Token);
                    break;
                }
                catch (Exception e) when (IsStoreOutage(e))
                {
                    if (!told) _log.WriteLine($"daemon: VM '{name}': its worker ended ({exit.Kind}); recording that waits for the store: {Dirigent.Api.ApiProblem.OneLine(e.Message)}");
                    told = true;
                }
            }
        }
        catch (StaleExitException) { return; }
        catch (Dirigent.Api.ApiRequestException) { return; } // deleted meanwhile
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested) { return; } // the next daemon records it
        _log.WriteLine($"daemon: VM '{name}' {state}: {exit.Kind}: {exit.Detail}");
        _events.Publish(new VmExited(name, exit.Kind, exit.Detail));
        if (r.Old.State != r.New.State) _events.Publish(new VmStateChanged(name, r.Old.State, r.New.State));
        ApplyRestartPolicy(r.New);
    }

    private sealed class StaleExitException : Exception;

    /// <summary>on-failure: restart a crashed VM; always: restart unless the API stopped it. At most 5 a minute.</summary>
    private void ApplyRestartPolicy(VmRecord rec)
    {
        bool restart = !rec.StopRequested &&
                       (rec.Restart == "always" || (rec.Restart == "on-failure" && rec.State == VmStates.Crashed));
        if (!restart) return;
        var times = _restarts.GetOrAdd(rec.Name, _ => new Queue<DateTimeOffset>());
        lock (times)
        {
            var now = DateTimeOffset.UtcNow;
            while (times.Count > 0 && now - times.Peek() > TimeSpan.FromMinutes(1)) times.Dequeue();
            if (times.Count >= MaxRestartsPerMinute)
            {
                _log.WriteLine($"daemon: VM '{rec.Name}' ended {MaxRestartsPerMinute} times within a minute: not restarting it (restart={rec.Restart})");
                return;
            }
            times.Enqueue(now);
        }
        SubmitStart(rec.Name, $"restart {rec.Name} (restart={rec.Restart})");
    }

    /// <summary>Daemon shutdown: stops watching the workers without touching them.</summary>
    public void ReleaseWorkers()
    {
        _stopping.Cancel();
        foreach (var rt in _live.Values) rt.Handle.Dispose();
    }

    // ---- operations bookkeeping ----

    private bool InFlight(string name) => _inFlight.TryGetValue(name, out int n) && n > 0;

    /// <summary>Queues work on the VM's target and counts it as in flight until it finishes.</summary>
    private Operation Submit(string name, string description, Func<OperationContext, CancellationToken, Task<JsonNode?>> work)
    {
        _inFlight.AddOrUpdate(name, 1, (_, n) => n + 1);
        try
        {
            return _ops.Submit(Target(name), description, async (ctx, ct) =>
            {
                bool outage = false;
                try { return await work(ctx, ct); }
                catch (Exception e) when (IsStoreOutage(e))
                {
                    // Its last write may have landed: the record is put right once the store is back.
                    outage = true;
                    throw;
                }
                finally
                {
                    _inFlight.AddOrUpdate(name, 0, (_, n) => n - 1);
                    if (outage) ReconcileLater(name);
                }
            });
        }
        catch
        {
            _inFlight.AddOrUpdate(name, 0, (_, n) => n - 1);
            throw;
        }
    }

    /// <summary>
    /// The submit-time state check: when nothing is queued for the VM, a state already known wrong is a 409 at once
    /// (the operation itself checks again when it runs).
    /// </summary>
    private async Task<VmRecord> PrecheckAsync(string name, string action, CancellationToken ct, params string[] allowed)
    {
        var (rec, _) = await _store.RequireAsync(name, ct);
        if (!InFlight(name) && Array.IndexOf(allowed, rec.State) < 0)
            throw Conflict($"cannot {action} VM '{name}': it is {rec.State} (needs {string.Join(" or ", allowed)})");
        return rec;
    }

    /// <summary>Inside an operation: the VM must be in one of <paramref name="allowed"/> now.</summary>
    private async Task<VmRecord> RequireStateAsync(string name, string action, CancellationToken ct, params string[] allowed)
    {
        var (rec, _) = await _store.RequireAsync(name, ct);
        if (Array.IndexOf(allowed, rec.State) < 0)
            throw new InvalidOperationException($"cannot {action} VM '{name}': it is {rec.State} (needs {string.Join(" or ", allowed)})");
        return rec;
    }

    private async Task<JsonNode> CurrentAsync(string name, CancellationToken ct)
    {
        var (rec, rev) = await _store.RequireAsync(name, ct);
        return rec.ToApi(rev);
    }
}
