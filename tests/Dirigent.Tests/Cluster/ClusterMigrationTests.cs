using System.Net;
using Dirigent.Tests.Api;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// Live migration between two hosts of a cluster (the tiny guest on the software CPU, kernel file on storage both
/// hosts see): asked through either daemon, the VM ends up running on the target with one worker, the record's host
/// and pid move only then, and the source's daemon records nothing (no crash, no restart).
/// </summary>
public sealed class ClusterMigrationTests
{
    [SkippableFact]
    public async Task ARunningVmMovesToAnotherHostAndKeepsRunning()
    {
        EtcdServer.SkipIfMissing();
        await using var rig = await ClusterRig.StartAsync(hosts: 2);
        var (n1, n2) = (rig.Hosts[0], rig.Hosts[1]);
        await n1.CreateTinyVmAsync("mover", pin: null, restart: "always");
        await n1.ActAsync("mover", "start");
        var before = await n1.GetAsync("/api/v1/vms/mover");
        string src = before.Str("host"), dst = src == "n1" ? "n2" : "n1";
        await rig[src].ConsoleUntilAsync("mover", ApiTestVm.ReadyLine);

        // Refused at once: the host it is on, a host that is not up.
        Assert.Equal(HttpStatusCode.Conflict, await n2.StatusAsync(HttpMethod.Post, "/api/v1/vms/mover/migrate", new { host = src }));
        Assert.Equal(HttpStatusCode.Conflict, await n2.StatusAsync(HttpMethod.Post, "/api/v1/vms/mover/migrate", new { host = "n7" }));

        // Asked through the target's daemon: forwarded to the source, which drives it.
        var done = await rig[dst].ActAsync("mover", "migrate", new { host = dst });
        Assert.Equal(dst, done["result"]!.AsObject().Str("host"));
        var after = await n1.GetAsync("/api/v1/vms/mover");
        Assert.Equal(("running", dst), (after.Str("state"), after.Str("host")));
        Assert.Equal([(dst, after["pid"]!.GetValue<int>())], rig.WorkersOf("mover"));
        Assert.Contains($"VM 'mover' migrated in from host '{src}'", rig[dst].Stderr);
        Assert.Contains("handed the VM to another host", rig[src].Stderr);

        // The VM answers on its new host: pause and resume through the source's daemon (forwarded to the target).
        await rig[src].ActAsync("mover", "pause");
        Assert.Equal("paused", (await rig[dst].GetAsync("/api/v1/vms/mover")).Str("state"));
        await rig[src].ActAsync("mover", "resume");
        Assert.Equal("running", (await rig[dst].GetAsync("/api/v1/vms/mover")).Str("state"));
        Assert.Equal([dst], rig.WorkersOf("mover").Select(w => w.Host));
    }
}
