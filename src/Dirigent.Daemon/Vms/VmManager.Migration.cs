using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Workers;
using Dirigent.Inventory;
using Microsoft.AspNetCore.Http;
using static Dirigent.Daemon.Api.ApiJson;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// Live migration between hosts (cluster mode), on the VMM's TCP migration: the source's daemon asks the target's
/// daemon for an incoming worker (`dirigent run --incoming tcp:ADDR:PORT`), tells its own worker to migrate there,
/// and the target's daemon takes the record (host, pid) by compare-and-set once its worker answers, i.e. once the VM
/// runs there. A failed migration leaves the VM running on the source (the VMM's guarantee) and the record unchanged.
/// Disks must be on storage both hosts see (README, "Cluster").
/// </summary>
internal sealed partial class VmManager
{
    /// <summary>The cluster node (for calls to other hosts); null on a one-host daemon.</summary>
    public Cluster.ClusterNode? Cluster { get; set; }

    private static readonly TimeSpan ConnectRetry = TimeSpan.FromSeconds(30);

    /// <summary>How long a migrated-out worker may take to end by itself (it flushes and closes its disks first).</summary>
    private static readonly TimeSpan SourceExitWait = TimeSpan.FromSeconds(30);

    /// <summary>The figures of each VM's last outgoing migration from this host (for /metrics).</summary>
    public System.Collections.Concurrent.ConcurrentDictionary<string, JsonObject> LastMigrations { get; } = new(StringComparer.Ordinal);

    /// <summary>
    /// POST /vms/{name}/migrate {"host":"NAME"} on the VM's host (the source). What can be known before anything
    /// moves is answered at once as a problem: the target is this host or not up (409), its daemon does not answer
    /// (502) or refuses the VM (409, with its reason); a failure later fails the operation, with the VM running here.
    /// </summary>
    public async Task<Operation> MigrateAsync(string name, JsonElement body, CancellationToken ct)
    {
        var node = Cluster ?? throw Conflict("live migration between hosts needs cluster mode (daemon --cluster)");
        var f = Fields(body, "", "host");
        string target = f.TryGetValue("host", out var h) ? String(h, "host") : throw Bad("missing field 'host'");
        if (target == node.HostName) throw Conflict($"VM '{name}' already runs on host '{target}'");
        await PrecheckAsync(name, "migrate", ct, S.Running);
        var up = await node.UpHostAsync(target, ct) ?? throw Conflict($"host '{target}' is not up");
        try { await node.PostPeerAsync(up, $"/api/v1/vms/{name}/incoming", new JsonObject { ["source"] = node.HostName, ["check"] = true }, ct); }
        catch (Cluster.PeerRequestException e)
        {
            throw new Dirigent.Api.ApiRequestException(e.Status == null ? StatusCodes.Status502BadGateway : StatusCodes.Status409Conflict,
                $"cannot migrate VM '{name}' to host '{target}': {e.Message}; the VM runs on here");
        }
        return Submit(name, $"migrate {name} to {target}", async (ctx, c) =>
        {
            await RequireStateAsync(name, "migrate", c, S.Running);
            if (!_live.TryGetValue(name, out var rt)) throw new InvalidOperationException($"VM '{name}' has no worker here");
            var host = await node.UpHostAsync(target, c) ?? throw new InvalidOperationException($"host '{target}' is not up");
            var answer = await node.PostPeerAsync(host, $"/api/v1/vms/{name}/incoming", new JsonObject { ["source"] = node.HostName }, c);
            string uri = answer?["uri"]?.GetValue<string>() ?? throw new InvalidOperationException($"host '{target}' gave no migration address");
            ctx.Report($"host '{target}' waits at {uri}");
            _migratingAway[name] = target;
            bool moved = false;
            try
            {
                // The target's worker listens a moment after its daemon answered: a refused connection is retried
                // (each failed try leaves the VM running here).
                var deadline = DateTime.UtcNow + ConnectRetry;
                JsonObject stats;
                while (true)
                {
                    try { stats = await rt.Handle.Client.MigrateAsync(uri, c); break; }
                    // Only a refused connection (not "the target refused the VM", which is final).
                    catch (WorkerApiException e) when (DateTime.UtcNow < deadline && !rt.Handle.Exited.IsCompleted &&
                                                       e.Message.Contains("connection refused", StringComparison.OrdinalIgnoreCase))
                    {
                        await Task.Delay(200, c);
                    }
                    catch (WorkerApiException e)
                    {
                        throw new InvalidOperationException($"migration of VM '{name}' to host '{target}' failed: {e.Message}");
                    }
                }
                moved = true;
                stats["from"] = node.HostName;
                stats["to"] = target;
                LastMigrations[name] = stats;
                if (stats["downtime_ms"] is JsonValue dt)
                    _log.WriteLine($"daemon: VM '{name}' migrated to host '{target}': downtime {dt} ms ({stats["downtime_end"]}), total {stats["total_ms"]} ms");
                ctx.Report($"the VM runs on host '{target}'; waiting for its daemon to take the record");
                await WaitRecordHostAsync(node.Inventory, name, target, c);
                // The source's worker ends by itself once the VM is out; the operation ends when it has, so that a
                // finished migration leaves one process for the VM (a worker that lingers is killed: its VM is gone).
                ctx.Report("waiting for the worker here to end");
                if (await Task.WhenAny(rt.Processed.Task, Task.Delay(SourceExitWait, c)) != rt.Processed.Task)
                {
                    _log.WriteLine($"daemon: VM '{name}': the migrated-out worker {rt.Handle.Pid} did not end within {SourceExitWait.TotalSeconds} s: killing it");
                    rt.Handle.Kill();
                    await rt.Processed.Task.WaitAsync(c);
                }
                _live.TryRemove(new KeyValuePair<string, VmRuntime>(name, rt));
                try { rt.Cgroup?.Dispose(); } catch (Exception e) when (e is IOException or UnauthorizedAccessException or Limits.CgroupException) { }
            }
            catch (Exception) when (!moved)
            {
                _migratingAway.TryRemove(name, out _);
                throw;
            }
            var result = (JsonObject)await CurrentAsync(name, c);
            result["migration"] = LastMigrations[name].DeepClone();
            return result;
        });
    }

    private static async Task WaitRecordHostAsync(IInventory inv, string name, string host, CancellationToken ct)
    {
        var e = await inv.GetAsync(VmStore.Key(name), ct) ?? throw new InvalidOperationException($"VM '{name}' was deleted");
        if (VmStore.DecodeRecord(e.Value).Host == host) return;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(TimeSpan.FromSeconds(60));
        try
        {
            await foreach (var ev in inv.Watch(VmStore.Key(name), e.Revision, cts.Token))
                if (ev.Key == VmStore.Key(name) && ev.Value != null && VmStore.DecodeRecord(ev.Value).Host == host) return;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
        throw new InvalidOperationException($"the VM runs on host '{host}' but its daemon has not taken the record within 60 s");
    }

    /// <summary>
    /// POST /vms/{name}/incoming {"source":"HOST"} on the target: starts a worker waiting for the migration on a free
    /// port of this host's advertised address and answers with its URI; when that worker answers (the VM runs here)
    /// the record becomes this host's, if it still names the source.
    /// </summary>
    public async Task<JsonObject> PrepareIncomingAsync(string name, JsonElement body, CancellationToken ct)
    {
        var node = Cluster ?? throw Conflict("live migration between hosts needs cluster mode (daemon --cluster)");
        var f = Fields(body, "", "source", "check");
        string source = f.TryGetValue("source", out var s) ? String(s, "source") : throw Bad("missing field 'source'");
        bool checkOnly = f.TryGetValue("check", out var chk) && Bool(chk, "check");
        var (rec, _) = await _store.RequireAsync(name, ct);
        if (rec.Host != source || rec.State != S.Running) throw Conflict($"VM '{name}' is {rec.State} on host '{rec.Host}', not running on '{source}'");
        if (_live.ContainsKey(name)) throw Conflict($"VM '{name}' already has a worker on host '{node.HostName}'");
        // The source asks first whether this host would take the VM, so that a refusal is its API answer.
        if (checkOnly) return new JsonObject { ["host"] = node.HostName, ["ready"] = true };
        string ip = node.Advertise[..node.Advertise.LastIndexOf(':')].Trim('[', ']');
        var probe = new TcpListener(IPAddress.Parse(ip), 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        string uri = $"tcp:{ip}:{port}";
        Directory.CreateDirectory(_paths.VmDir(name));
        try { File.Delete(_paths.ExitFile(name)); } catch (IOException) { }
        var limits = rec.Limits.Any ? rec.Limits.ToResourceLimits() : null;
        _ = Task.Run(async () =>
        {
            WorkerHandle h;
            try { h = await _supervisor.StartAsync(new WorkerLaunch(name, _paths.VmDir(name), ["--incoming", uri], limits), CancellationToken.None); }
            catch (Exception e)
            {
                _log.WriteLine($"daemon: VM '{name}': incoming migration from host '{source}' failed: {Dirigent.Api.ApiProblem.OneLine(e.Message)}");
                return;
            }
            try
            {
                await _store.UpdateAsync(name, r =>
                {
                    if (r.Host != source) throw new StaleExitException();
                    r.Host = node.HostName;
                    r.State = S.Running;
                    r.Pid = h.Pid;
                    r.PidStartTime = h.ProcessStartTime;
                    r.StartedAt = DateTimeOffset.UtcNow;
                });
                Track(name, h);
                _log.WriteLine($"daemon: VM '{name}' migrated in from host '{source}': worker {h.Pid}");
            }
            catch (Exception e) when (e is StaleExitException or Dirigent.Api.ApiRequestException)
            {
                _log.WriteLine($"daemon: VM '{name}' changed hands meanwhile: killing the migrated worker {h.Pid}");
                h.Kill();
            }
        });
        return new JsonObject { ["uri"] = uri };
    }
}
