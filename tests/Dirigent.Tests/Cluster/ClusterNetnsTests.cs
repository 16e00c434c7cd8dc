using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// Two hosts that each have a network of their own (a network namespace per daemon, with a veth to a bridge in a hub
/// namespace where etcd runs; link-local 169.254.16.0/16): they join over the veths, requests are forwarded from one
/// daemon to the other over them, each VM's worker runs in its host's namespace, and a live migration streams the
/// guest from one namespace to the other. Skipped with the reason without root or `ip netns`.
/// </summary>
public sealed class ClusterNetnsTests
{
    [SkippableFact]
    public async Task HostsOnTheirOwnNetworksJoinForwardAndMigrateOverTheirVeths()
    {
        EtcdServer.SkipIfMissing();
        TestNetwork.SkipUnlessAvailable();
        await using var rig = await ClusterRig.StartAsync(hosts: 2, network: TestNetwork.Create(2));
        var (n1, n2) = (rig.Hosts[0], rig.Hosts[1]);

        // Each daemon in a namespace of its own, not this process's; the hosts advertise their veth addresses.
        var ns = rig.Hosts.Select(h => TestNetwork.NamespaceOf(h.DaemonPid)).ToList();
        Assert.Equal(2, ns.Distinct().Count());
        Assert.DoesNotContain(TestNetwork.NamespaceOf(Environment.ProcessId), ns);
        var hosts = (await n2.GetAsync("/api/v1/hosts"))["hosts"]!.AsArray().Select(h => h!.AsObject()).ToList();
        Assert.Equal([$"{TestNetwork.HostAddress(1)}:8006", $"{TestNetwork.HostAddress(2)}:8006"], hosts.Select(h => h.Str("address")));

        // A VM pinned to n1, created and started through n2 (forwarded over the veths); its worker is in n1's namespace.
        await n2.CreateTinyVmAsync("roamer", pin: "n1");
        await n2.ActAsync("roamer", "start");
        var w = Assert.Single(rig.WorkersOf("roamer"));
        Assert.Equal(("n1", ns[0]), (w.Host, TestNetwork.NamespaceOf(w.Pid)));

        // Migrated to n2: the target's worker waited on n2's veth address, and runs in n2's namespace.
        var done = await n2.ActAsync("roamer", "migrate", new { host = "n2" });
        Assert.Equal("n2", done["result"]!.AsObject().Str("host"));
        var w2 = Assert.Single(rig.WorkersOf("roamer"));
        Assert.Equal(("n2", ns[1]), (w2.Host, TestNetwork.NamespaceOf(w2.Pid)));
        Assert.Contains($"waiting for an incoming migration at tcp:{TestNetwork.HostAddress(2)}:", n2.WorkerLog("roamer"));
        Assert.Equal(("running", "n2"), ((await n1.GetAsync("/api/v1/vms/roamer")).Str("state"), (await n1.GetAsync("/api/v1/vms/roamer")).Str("host")));
    }
}
