using System.Text.Json.Nodes;
using Dirigent.Daemon.Auth;
using Dirigent.Daemon.Cluster;
using Dirigent.Daemon.Vms;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Api;

/// <summary>The cluster's view: GET /cluster, GET /hosts, POST /cluster/resign.</summary>
internal sealed partial class DaemonApi
{
    private void MapCluster(WebApplication app, TokenRights R, TokenRights A)
    {
        Route(app, "GET", Base + "/cluster", R, ClusterStatus);
        Route(app, "GET", Base + "/hosts", R, ListHosts);
        Route(app, "POST", Base + "/vms/{name}/migrate", TokenRights.Operate, async (HttpContext c, string name) =>
        {
            using var doc = ParseObject(await ReadBodyAsync(c))!;
            await Accepted(c, vms.MigrateAsync(name, doc.RootElement, c.RequestAborted));
        });
        Route(app, "POST", Base + "/vms/{name}/incoming", A, async (HttpContext c, string name) =>
        {
            using var doc = ParseObject(await ReadBodyAsync(c))!;
            await Write(c, 200, await vms.PrepareIncomingAsync(name, doc.RootElement, c.RequestAborted));
        });
        Route(app, "POST", Base + "/cluster/resign", A, async (HttpContext c) =>
        {
            await NoBody(c);
            var node = RequireCluster();
            bool resigned = await node.ResignAsync(c.RequestAborted);
            await Write(c, 200, new JsonObject { ["host"] = node.HostName, ["resigned"] = resigned });
        });
    }

    private ClusterNode RequireCluster() => cluster ?? throw Conflict("this daemon is not in a cluster (start it with --cluster etcd://HOST:PORT --host-name NAME --advertise ADDR:PORT)");

    private async Task ClusterStatus(HttpContext c)
    {
        if (cluster == null)
        {
            await Write(c, 200, new JsonObject { ["mode"] = "single", ["host"] = null });
            return;
        }
        var members = await cluster.MembersAsync(c.RequestAborted);
        var records = await vms.Store.ListAsync(c.RequestAborted);
        var leader = await cluster.Inventory.GetAsync(ClusterNode.LeaderKey, c.RequestAborted);
        await Write(c, 200, new JsonObject
        {
            ["mode"] = "cluster",
            ["host"] = cluster.HostName,
            ["leader"] = leader == null ? null : System.Text.Encoding.UTF8.GetString(leader.Value),
            ["etcd"] = new JsonArray(cluster.Endpoints.Select(e => (JsonNode)e).ToArray()),
            ["lease_ttl_s"] = cluster.LeaseTtl.TotalSeconds,
            ["hosts"] = members.Count,
            ["hosts_up"] = members.Count(m => m.Up),
            ["vms"] = records.Count,
            ["vms_running"] = records.Count(r => r.Record.State == VmStates.Running),
            ["vms_unplaced"] = records.Count(r => r.Record.Host == null),
        });
    }

    private async Task ListHosts(HttpContext c)
    {
        var node = RequireCluster();
        var members = await node.MembersAsync(c.RequestAborted);
        var records = (await vms.Store.ListAsync(c.RequestAborted)).Select(r => r.Record).ToList();
        var loads = Placement.Loads(records);
        var leader = await node.Inventory.GetAsync(ClusterNode.LeaderKey, c.RequestAborted);
        string? leaderName = leader == null ? null : System.Text.Encoding.UTF8.GetString(leader.Value);
        var list = new JsonArray();
        foreach (var (h, up) in members.OrderBy(m => m.Host.Name, StringComparer.Ordinal))
        {
            var l = loads.GetValueOrDefault(h.Name, new Placement.Load(0, 0, 0));
            list.Add(new JsonObject
            {
                ["name"] = h.Name,
                ["state"] = up ? "up" : "down",
                ["leader"] = h.Name == leaderName,
                ["address"] = h.Address,
                ["cpus"] = h.Cpus,
                ["memory_mib"] = h.MemoryMib,
                // What the scheduler counts: RAM minus the reservations of the VMs placed there (guest RAM + overhead).
                ["free_memory_mib"] = h.MemoryMib - l.MemoryMib,
                ["available_memory_mib"] = h.FreeMemoryMib,
                ["vcpus"] = l.Vcpus,
                ["free_cpus"] = Math.Max(0, h.Cpus - l.Vcpus),
                ["vms"] = l.Vms,
                ["vms_running"] = records.Count(r => r.Host == h.Name && r.State == VmStates.Running),
                ["updated_at"] = h.UpdatedAt,
            });
        }
        await Write(c, 200, new JsonObject { ["hosts"] = list });
    }
}
