using System.Collections.Concurrent;
using System.Net;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// etcd killed (SIGKILL) and started again on the same data and ports while both daemons are attached and creates
/// and starts are in flight: during the outage requests fail at once with 503 problem+json (the test starts etcd
/// again only after they have answered, so a request that hung would fail it); afterwards the daemons work again
/// (their watches resume: placement, forwarding), every VM was placed exactly once (etcd's revision history), VMs that
/// ran before run on with the same worker, and every VM has a worker exactly when its record says it runs.
/// </summary>
[Collection(nameof(ClusterPair))]
public sealed class ClusterEtcdRestartTests(ClusterPairFixture pair, Xunit.Abstractions.ITestOutputHelper output)
{
    private const string Prefix = "er-";

    [SkippableFact]
    public async Task EtcdRestartedUnderLoadLosesAndDuplicatesNothing()
    {
        var rig = await pair.RigAsync();
        var (n1, n2) = (rig.Hosts[0], rig.Hosts[1]);

        // Running before the outage, one per host (restart=always: a VM taken for lost would get a new worker).
        var steady = new Dictionary<string, int>();
        foreach (var (name, pin) in new[] { ($"{Prefix}steady-1", "n1"), ($"{Prefix}steady-2", "n2") })
        {
            await n1.CreateTinyVmAsync(name, pin: pin, restart: "always");
            await n2.ActAsync(name, "start");
            steady[name] = (await n1.GetAsync($"/api/v1/vms/{name}"))["pid"]!.GetValue<int>();
        }

        // Load: each daemon creates VMs and starts them (not waiting for the start), one after the other, until told
        // to stop; what it was answered is kept.
        using var stop = new CancellationTokenSource();
        var answers = new ConcurrentQueue<string>();
        int created = 0;
        async Task LoadAsync(DaemonProcess d, string tag)
        {
            for (int i = 0; !stop.IsCancellationRequested; i++)
            {
                string name = $"{Prefix}{tag}-{i}";
                var (st, _, _) = await d.SendAsync(HttpMethod.Post, "/api/v1/vms",
                    new { name, spec = new { kernel = n1.Kernel, memory_mib = 16, accel = "emu" } });
                answers.Enqueue($"create {name}: {(int)st}");
                if (st == HttpStatusCode.Created)
                {
                    Interlocked.Increment(ref created);
                    var (st2, _, _) = await d.SendAsync(HttpMethod.Post, $"/api/v1/vms/{name}/start");
                    answers.Enqueue($"start {name}: {(int)st2}");
                }
                else await Task.Delay(100);
            }
        }
        var load = new[] { Task.Run(() => LoadAsync(n1, "a")), Task.Run(() => LoadAsync(n2, "b")) };
        await rig.WaitAsync(() => Task.FromResult(Volatile.Read(ref created) >= 3), "a few VMs created under load");

        await rig.Etcd.KillAsync();
        // The outage: each daemon answers at once, 503 with a problem body, for reads and for writes.
        foreach (var d in rig.Hosts)
        {
            foreach (var (method, path, body) in new (HttpMethod, string, object?)[]
                     {
                         (HttpMethod.Get, "/api/v1/vms", null),
                         (HttpMethod.Post, "/api/v1/vms", new { name = $"{Prefix}in-outage", spec = new { kernel = n1.Kernel, memory_mib = 16, accel = "emu" } }),
                     })
            {
                var (st, json, resp) = await d.SendAsync(method, path, body);
                Assert.True(st == HttpStatusCode.ServiceUnavailable, $"{method} {path} during the outage: {(int)st} {json?.ToJsonString()}");
                Assert.Equal("application/problem+json", resp.Content.Headers.ContentType?.MediaType);
                Assert.Contains("cluster store is unavailable", json!["detail"]!.GetValue<string>());
            }
        }
        await rig.WaitAsync(() => Task.FromResult(answers.Any(a => a.EndsWith(": 503", StringComparison.Ordinal))), "the load answered 503 too");

        await rig.Etcd.StartProcessAsync();
        await stop.CancelAsync();
        await Task.WhenAll(load);
        string Story() => $"answers:\n{string.Join("\n", answers)}\n{rig.Logs()}";

        // The daemons are back: both hosts up with a leader; new VMs through either daemon are placed (the leader's
        // watch) and started on their hosts (forwarded).
        await rig.WaitAsync(async () =>
        {
            foreach (var d in rig.Hosts)
            {
                // Until a daemon's connection to etcd is back it answers 503: that is what is waited out here.
                var (st, json, _) = await d.SendAsync(HttpMethod.Get, "/api/v1/cluster");
                if (st != HttpStatusCode.OK || json!["hosts_up"]!.GetValue<int>() != 2 || json["leader"] == null) return false;
            }
            return true;
        }, "both daemons back, both hosts up with a leader");
        foreach (var (name, via, pin) in new[] { ($"{Prefix}after-1", n2, "n1"), ($"{Prefix}after-2", n1, "n2") })
        {
            await via.CreateTinyVmAsync(name, pin: pin);
            await via.ActAsync(name, "start");
            Assert.Equal(("running", pin), ((await via.GetAsync($"/api/v1/vms/{name}")).Str("state"), (await via.GetAsync($"/api/v1/vms/{name}")).Str("host")));
        }

        // Everything settles: every VM of this test placed, none half-started.
        // (A write whose answer the outage cut off may have landed: "starting" with no worker must not stay.)
        List<System.Text.Json.Nodes.JsonObject> mine = [];
        static bool Settled(System.Text.Json.Nodes.JsonObject v) => v["host"] != null && v.Str("state") is "running" or "stopped" or "crashed";
        try
        {
            await rig.WaitAsync(async () =>
            {
                mine = (await rig.VmsAsync()).Where(v => v.Str("name").StartsWith(Prefix, StringComparison.Ordinal)).ToList();
                return mine.All(Settled);
            }, "every VM placed and settled");
        }
        catch (TimeoutException e)
        {
            string stuck = string.Join(", ", mine.Where(v => !Settled(v)).Select(v => $"{v.Str("name")} {v.Str("state")} on {v["host"]?.ToString() ?? "no host"}"));
            throw new TimeoutException($"not settled: {stuck}\n{Story()}", e);
        }
        Assert.DoesNotContain(mine, v => v.Str("name") == $"{Prefix}in-outage");

        output.WriteLine($"{mine.Count} VMs: {string.Join(", ", mine.Select(v => $"{v.Str("name")} {v.Str("state")} on {v.Str("host")}"))}");
        output.WriteLine(string.Join("\n", answers));
        var history = await rig.HostHistoryAsync();
        foreach (var v in mine)
        {
            string name = v.Str("name");
            Assert.True(history[name].Count == 1, $"VM {name} was placed {history[name].Count} times: {string.Join(" -> ", history[name])}\n{Story()}");
            var workers = rig.WorkersOf(name);
            if (v.Str("state") == "running")
                Assert.True(workers.Count == 1 && workers[0] == (v.Str("host"), v["pid"]!.GetValue<int>()),
                    $"VM {name} runs on {v.Str("host")} as {v["pid"]}, workers: {string.Join(", ", workers)}\n{Story()}");
            else Assert.True(workers.Count == 0, $"VM {name} is {v.Str("state")} but has workers {string.Join(", ", workers)}\n{Story()}");
        }
        foreach (var (name, pid) in steady)
        {
            var v = mine.Single(m => m.Str("name") == name);
            Assert.True((v.Str("state"), v["pid"]?.GetValue<int>()) == ("running", pid), $"{name}: {v.ToJsonString()}, pid {pid} before\n{Story()}");
        }

        // Leave the shared hosts as they were.
        foreach (var v in mine)
        {
            if (v.Str("state") == "running") await n1.ActAsync(v.Str("name"), "stop");
            var (st, json, _) = await n1.SendAsync(HttpMethod.Delete, $"/api/v1/vms/{v.Str("name")}");
            Assert.True(st is HttpStatusCode.NoContent or HttpStatusCode.OK, $"DELETE {v.Str("name")}: {(int)st} {json?.ToJsonString()}");
        }
    }
}
