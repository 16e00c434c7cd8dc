using System.Net;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// Three daemons (n1, n2, n3: own home, own API port) on one real etcd, running the tiny idle guest on the software
/// CPU: placement by the rules, workers started on the VM's host whichever daemon is asked, and no VM ever placed
/// or run twice while leaders change under concurrent creates.
/// </summary>
public sealed class ClusterPlacementTests
{
    [SkippableFact]
    public async Task SixVmsAreSpreadByTheRulesAndRunOnTheirHosts()
    {
        EtcdServer.SkipIfMissing();
        await using var rig = await ClusterRig.StartAsync();
        var (n1, n2, n3) = (rig.Hosts[0], rig.Hosts[1], rig.Hosts[2]);

        // Through different daemons: any of them takes a create.
        await n1.CreateTinyVmAsync("db-1", group: "db");
        await n2.CreateTinyVmAsync("db-2", group: "db");
        await n3.CreateTinyVmAsync("db-3", group: "db");
        await n1.CreateTinyVmAsync("web-1");
        await n2.CreateTinyVmAsync("web-2");
        await n1.CreateTinyVmAsync("batch", pin: "n3");
        await rig.WaitAsync(async () => (await rig.VmsAsync()).All(v => v["host"] != null), "all six VMs placed");

        var vms = (await rig.VmsAsync(n3)).ToDictionary(v => v.Str("name"), v => v.Str("host"));
        Assert.Equal(3, new[] { "db-1", "db-2", "db-3" }.Select(n => vms[n]).Distinct().Count()); // anti-affinity
        Assert.Equal("n3", vms["batch"]); // the pin
        // Equal hosts, equal VMs: the fewest vCPUs per core wins, so each host gets two.
        Assert.All(vms.Values.GroupBy(h => h), g => Assert.Equal(2, g.Count()));

        // Started through n1 (forwarded to each VM's host): every worker runs on its VM's host, exactly once.
        await Task.WhenAll(vms.Keys.Select(name => n1.ActAsync(name, "start")));
        foreach (var (name, host) in vms)
            Assert.Equal([host], rig.WorkersOf(name).Select(w => w.Host));
        Assert.All(await rig.VmsAsync(n2), v => Assert.Equal("running", v.Str("state")));
        // The console, from the daemon of the host that runs it.
        await rig[vms["web-2"]].ConsoleUntilAsync("web-2", ApiTestVm.ReadyLine);

        var hosts = (await n2.GetAsync("/api/v1/hosts"))["hosts"]!.AsArray().Select(h => h!.AsObject()).ToList();
        Assert.Equal(["n1", "n2", "n3"], hosts.Select(h => h.Str("name")));
        Assert.All(hosts, h =>
        {
            Assert.Equal("up", h.Str("state"));
            Assert.Equal(2, h["vms"]!.GetValue<int>());
            Assert.Equal(2, h["vms_running"]!.GetValue<int>());
            // Two tiny VMs reserve 2 × (16 + 64) MiB there.
            Assert.Equal(h["memory_mib"]!.GetValue<long>() - 160, h["free_memory_mib"]!.GetValue<long>());
        });
        Assert.Single(hosts, h => h["leader"]!.GetValue<bool>());

        // The CLI's views, as JSON.
        var (exit, output, err) = ClusterRig.Cli(n3, "host", "list", "--output", "json");
        Assert.True(exit == 0, err);
        Assert.Equal(3, JsonNode.Parse(output)!.AsArray().Count);
        (exit, output, err) = ClusterRig.Cli(n1, "cluster", "status", "--output", "json");
        Assert.True(exit == 0, err);
        var status = JsonNode.Parse(output)!.AsObject();
        Assert.Equal(("cluster", "n1", 3, 6), (status.Str("mode"), status.Str("host"), status["hosts_up"]!.GetValue<int>(), status["vms_running"]!.GetValue<int>()));

        // A pin to a host that does not exist waits (unplaced), and says why in the leader's log.
        await n1.CreateTinyVmAsync("nowhere", pin: "n9");
        var leader = rig[(await rig.LeaderAsync())!];
        await rig.WaitAsync(() => Task.FromResult(leader.Stderr.Contains("VM 'nowhere' waits: its pinned host 'n9' is not up", StringComparison.Ordinal)), "the pin refused");
        Assert.Null((await n1.GetAsync("/api/v1/vms/nowhere"))["host"]);
        Assert.Equal(HttpStatusCode.BadRequest, await n1.StatusAsync(HttpMethod.Post, "/api/v1/vms",
            new { name = "bad", placement = new { host = "N 1" } }));
    }

    [SkippableFact]
    public async Task TwentyConcurrentCreatesWithForcedLeaderChangesAreEachPlacedAndRunOnce()
    {
        EtcdServer.SkipIfMissing();
        const int seed = 1616;
        var rng = new Random(seed);
        await using var rig = await ClusterRig.StartAsync();
        var names = Enumerable.Range(0, 20).Select(i => $"c{i:D2}").ToList();
        var via = names.ToDictionary(n => n, _ => rig.Hosts[rng.Next(3)]);

        // Leader changes, forced: whoever leads resigns (and sits out one election), again and again, while the
        // creates come in; each round waits until another host leads.
        using var stop = new CancellationTokenSource();
        var leaders = new List<string>();
        var churn = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                string? now = await rig.LeaderAsync();
                if (now == null) { await Task.Delay(20); continue; }
                lock (leaders) if (leaders.Count == 0 || leaders[^1] != now) leaders.Add(now);
                await rig[now].PostAsync("/api/v1/cluster/resign", null, HttpStatusCode.OK);
                await rig.WaitAsync(async () => await rig.LeaderAsync() is { } next && next != now || stop.IsCancellationRequested, "a new leader");
            }
        });
        await Task.WhenAll(names.Select(n => via[n].CreateTinyVmAsync(n)));
        await rig.WaitAsync(async () => (await rig.VmsAsync()).Count(v => v["host"] != null) == names.Count, "all 20 placed");
        await rig.WaitAsync(() => Task.FromResult(Volatile.Read(ref leaders).Count >= 3), "three leaders in turn");
        stop.Cancel();
        await churn;

        // etcd's history of every VM record: a VM goes from no host to a host exactly once and never from one host
        // to another (a second scheduler would have had to win a CAS on a stale revision for that).
        var history = await rig.HostHistoryAsync();
        foreach (string n in names)
            Assert.True(history[n].Count == 1, $"VM {n}: hosts over time {string.Join(" -> ", history[n])} (seed {seed}); leaders: {string.Join(",", leaders)}\n{rig.Logs()}");
        var placed = (await rig.VmsAsync(rig.Hosts[2])).ToDictionary(v => v.Str("name"), v => v.Str("host"));
        Assert.All(placed.Values.GroupBy(h => h), g => Assert.InRange(g.Count(), 5, 8)); // spread by load (two schedulers overlapping for a moment may skew it a little)

        // Six of them (20 workers at once are minutes of CPU on a small machine) started concurrently through random
        // daemons: each runs exactly once, on its host.
        var some = names.OrderBy(_ => rng.Next()).Take(6).ToList();
        await Task.WhenAll(some.Select(n => rig.Hosts[rng.Next(3)].ActAsync(n, "start")));
        foreach (string n in some)
            Assert.Equal([placed[n]], rig.WorkersOf(n).Select(w => w.Host));
    }
}
