using System.CommandLine;
using System.Text.Json.Nodes;
using static Dirigent.Cli.Client.ClientAction;

namespace Dirigent.Cli.Client;

/// <summary>`dirigent cluster status` and `dirigent host list`: the cluster as any of its daemons sees it.</summary>
public static class ClusterCommands
{
    public static readonly IReadOnlyList<Column> HostColumns =
    [
        new("NAME", o => Output.Text(o["name"]) + (o["leader"]?.GetValue<bool>() == true ? " *" : "")),
        new("STATE", o => Output.Text(o["state"])),
        new("ADDRESS", o => Output.Text(o["address"])),
        new("CPUS", o => $"{Output.Text(o["free_cpus"])}/{Output.Text(o["cpus"])}"),
        new("FREE-MEMORY", o => $"{Output.Mib(o["free_memory_mib"])}/{Output.Mib(o["memory_mib"])}"),
        new("VMS", o => $"{Output.Text(o["vms_running"])}/{Output.Text(o["vms"])}"),
    ];

    public static Command CreateCluster()
    {
        var conn = new ConnectionOptions();
        var cluster = new Command("cluster", "The cluster the daemon belongs to (daemon --cluster)");
        conn.AddTo(cluster);
        var output = Output.CreateOption();
        var status = new Command("status", "Mode, this host, the leader, hosts up, VMs placed") { output };
        Set(status, "cluster status", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            var answer = await client.GetAsync("/api/v1/cluster", ct);
            Output.WriteObject(Console.Out, r.GetValue(output), answer);
            return ClientExit.Ok;
        });
        cluster.Subcommands.Add(status);
        return cluster;
    }

    public static Command CreateHost()
    {
        var conn = new ConnectionOptions();
        var host = new Command("host", "The cluster's hosts");
        conn.AddTo(host);
        var output = Output.CreateOption();
        var list = new Command("list", "Hosts: state, free CPUs and memory (what the scheduler counts), VMs running/placed; * marks the leader") { output };
        list.Aliases.Add("ls");
        Set(list, "host list", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            var answer = await client.GetAsync("/api/v1/hosts", ct);
            Output.WriteList(Console.Out, r.GetValue(output), Output.Items(answer, "hosts"), HostColumns);
            return ClientExit.Ok;
        });
        host.Subcommands.Add(list);
        return host;
    }
}
