using Dirigent.Daemon.Vms;
using Dirigent.Inventory;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Cluster;

/// <summary>
/// The leader's work: place every unplaced VM (<see cref="Placement"/>) and handle the VMs of hosts that died. Driven
/// by a watch on the whole cluster prefix (VM records and host keys), never by polling. Every change is a
/// compare-and-set on the VM record's revision as read, so a second scheduler (an old leader that has not noticed yet)
/// can never place a VM twice: the later write finds the revision changed and re-reads.
/// </summary>
internal sealed class Scheduler(IInventory inv, VmStore store, TextWriter log)
{
    private readonly Dictionary<string, string> _lastWhy = new(StringComparer.Ordinal);

    public async Task RunAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            long rev = await PassAsync(ct);
            // Wait for the next change to a VM or a host, then pass again (batching whatever else arrived meanwhile).
            await foreach (var ev in inv.Watch("", rev, ct))
                if (ev.Key.StartsWith(VmStore.Prefix, StringComparison.Ordinal) || ev.Key.StartsWith(ClusterNode.HostsPrefix, StringComparison.Ordinal))
                    break;
        }
    }

    /// <summary>One pass over all VMs; returns the revision its reads saw (watch from there).</summary>
    public async Task<long> PassAsync(CancellationToken ct)
    {
        var hostsList = await inv.ListAsync(ClusterNode.HostsPrefix, ct);
        var vmList = await inv.ListAsync(VmStore.Prefix, ct);
        long rev = Math.Max(hostsList.Revision, vmList.Revision);
        var up = hostsList.Entries.Select(e => ClusterNode.Decode(e.Value)).OrderBy(h => h.Name, StringComparer.Ordinal).ToList();
        var upNames = up.Select(h => h.Name).ToHashSet(StringComparer.Ordinal);
        var vms = vmList.Entries.Select(e => (Rec: VmStore.DecodeRecord(e.Value), e.Revision)).ToList();
        var placed = vms.Where(v => v.Rec.Host != null).Select(v => v.Rec).ToList();

        // VMs of dead hosts first, so their restarts are placed in this same pass.
        foreach (var (rec, r) in vms)
        {
            if (rec.Host == null || upNames.Contains(rec.Host)) continue;
            var next = rec.Clone();
            string dead = rec.Host;
            bool restart = S.HasWorker(rec.State) && !rec.StopRequested &&
                           (rec.Restart == "always" || rec.Restart == "on-failure");
            next.Host = null;
            if (S.HasWorker(rec.State) || rec.Want != null)
            {
                next.State = restart || rec.Want != null ? S.Crashed : S.Lost;
                next.Exit = new VmExitInfo { Kind = "host_lost", Detail = $"host '{dead}' stopped renewing its lease", At = DateTimeOffset.UtcNow };
                next.Want = restart || rec.Want != null ? S.Running : null;
                next.ClearWorker();
            }
            var w = await store.PutRecordAsync(next, r, ct);
            if (!w.Succeeded) continue;
            log.WriteLine($"daemon: scheduler: host '{dead}' is down: VM '{rec.Name}' {(next.Want != null ? "will be restarted elsewhere" : next.State == S.Lost ? "is lost (restart=no)" : "is unplaced")}");
            placed.RemoveAll(p => p.Name == rec.Name);
            int i = vms.FindIndex(v => v.Rec.Name == rec.Name);
            vms[i] = (next, w.Revision);
        }

        foreach (var (rec, r) in vms.OrderBy(v => v.Rec.CreatedAt).ThenBy(v => v.Rec.Name, StringComparer.Ordinal))
        {
            if (rec.Host != null) continue;
            string? host = Placement.Choose(rec, up, placed, out string? why);
            if (host == null)
            {
                if (_lastWhy.GetValueOrDefault(rec.Name) != why) log.WriteLine($"daemon: scheduler: VM '{rec.Name}' waits: {why}");
                _lastWhy[rec.Name] = why!;
                continue;
            }
            _lastWhy.Remove(rec.Name);
            var next = rec.Clone();
            next.Host = host;
            var w = await store.PutRecordAsync(next, r, ct);
            if (!w.Succeeded) continue; // changed meanwhile: the watch brings it back
            placed.Add(next);
            log.WriteLine($"daemon: scheduler: VM '{rec.Name}' placed on host '{host}'");
        }
        return rev;
    }
}
