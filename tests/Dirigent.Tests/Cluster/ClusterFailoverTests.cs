using System.Diagnostics;
using System.Net;
using Dirigent.Tests.Api;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// A host dies (its daemon SIGKILLed; one of its workers too, the others left running as on a host cut off from the
/// network): when its lease expires, its VMs with restart=always|on-failure run on the other hosts and the one with
/// restart=no is "lost"; when its daemon comes back it first kills the workers it no longer owns and starts nothing.
/// </summary>
public sealed class ClusterFailoverTests
{
    [SkippableFact]
    public async Task AHostsRestartVmsRunElsewhereAndItsReturningDaemonFencesItsStaleWorkers()
    {
        EtcdServer.SkipIfMissing();
        await using var rig = await ClusterRig.StartAsync(leaseTtl: 3);
        var (n1, n2, n3) = (rig.Hosts[0], rig.Hosts[1], rig.Hosts[2]);

        // Two heavy (never started) VMs pinned to n1 and n3 make n2 the least loaded host for the next three.
        foreach (string pin in new[] { "n1", "n3" })
            await n1.PostAsync("/api/v1/vms", new { name = $"heavy-{pin}", spec = new { kernel = n1.Kernel, memory_mib = 16, accel = "emu", vcpus = 8 },
                placement = new { host = pin } }, HttpStatusCode.Created);
        await rig.WaitAsync(async () => (await rig.VmsAsync()).All(v => v["host"] != null), "the heavy VMs placed");
        foreach (var (name, restart) in new[] { ("v-always", "always"), ("v-onfail", "on-failure"), ("v-no", "no") })
        {
            await n3.CreateTinyVmAsync(name, restart: restart);
            await rig.WaitAsync(async () => (await n3.GetAsync($"/api/v1/vms/{name}"))["host"] != null, $"{name} placed");
        }
        var victims = new[] { "v-always", "v-onfail", "v-no" };
        foreach (string v in victims)
        {
            Assert.Equal("n2", (await n1.GetAsync($"/api/v1/vms/{v}")).Str("host"));
            await n1.ActAsync(v, "start");
        }
        var stale = victims.ToDictionary(v => v, v => Assert.Single(rig.WorkersOf(v)).Pid);

        // n2 dies: its daemon and one worker by SIGKILL; the other two workers run on, unaware.
        await n2.KillDaemonAsync();
        using (var w = Process.GetProcessById(stale["v-always"])) { w.Kill(); await w.WaitForExitAsync(); }

        await rig.WaitAsync(async () =>
        {
            var vms = (await rig.VmsAsync(n1)).ToDictionary(v => v.Str("name"));
            return vms["v-always"].Str("state") == "running" && vms["v-onfail"].Str("state") == "running" && vms["v-no"].Str("state") == "lost";
        }, "the restart VMs running elsewhere and v-no lost");
        var after = (await rig.VmsAsync(n3)).ToDictionary(v => v.Str("name"));
        foreach (string v in new[] { "v-always", "v-onfail" })
        {
            string host = after[v].Str("host");
            Assert.NotEqual("n2", host);
            Assert.Contains((host, after[v]["pid"]!.GetValue<int>()), rig.WorkersOf(v));
        }
        // Placed anew like any unplaced VM, but not started: restart=no.
        Assert.NotEqual("n2", after["v-no"].Str("host"));
        Assert.DoesNotContain(rig.WorkersOf("v-no"), w => w.Host != "n2");
        Assert.Equal("host_lost", after["v-no"]["exit"]!.AsObject().Str("kind"));
        Assert.Equal("down", (await n1.GetAsync("/api/v1/hosts"))["hosts"]!.AsArray().Single(h => h!["name"]!.GetValue<string>() == "n2")!.AsObject().Str("state"));
        // The stale workers on n2 still run: nobody there has told them yet.
        Assert.Contains(("n2", stale["v-onfail"]), rig.WorkersOf("v-onfail"));
        Assert.Contains(("n2", stale["v-no"]), rig.WorkersOf("v-no"));

        // n2 comes back: it kills its stale workers before it serves, and starts nothing.
        await n2.StartDaemonAsync();
        Assert.Contains($"fencing: VM 'v-onfail' is on host '{after["v-onfail"].Str("host")}' now: killing its stale worker {stale["v-onfail"]}", n2.Stderr);
        Assert.Contains($"fencing: VM 'v-no' is on host '{after["v-no"].Str("host")}' now: killing its stale worker {stale["v-no"]}", n2.Stderr);
        foreach (string v in new[] { "v-always", "v-onfail" })
            Assert.Equal([after[v].Str("host")], rig.WorkersOf(v).Select(x => x.Host));
        Assert.Empty(rig.WorkersOf("v-no"));
        await rig.WaitAsync(async () => (await n1.GetAsync("/api/v1/cluster"))["hosts_up"]!.GetValue<int>() == 3, "n2 up again");
        var final = (await rig.VmsAsync(n2)).ToDictionary(v => v.Str("name"));
        Assert.Equal(after["v-onfail"].Str("host"), final["v-onfail"].Str("host"));
        Assert.Equal("lost", final["v-no"].Str("state"));
        Assert.DoesNotContain("worker for VM", n2.Stderr[n2.Stderr.IndexOf("fencing", StringComparison.Ordinal)..]);

        // A lost VM starts again when asked, on its new host.
        await n2.ActAsync("v-no", "start");
        Assert.Single(rig.WorkersOf("v-no"));
        await rig[(await n2.GetAsync("/api/v1/vms/v-no")).Str("host")].ConsoleUntilAsync("v-no", ApiTestVm.ReadyLine);
    }
}
