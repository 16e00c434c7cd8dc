using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// A cluster on this machine: one real etcd and N real daemons (`dirigent daemon --cluster`), each with its own
/// DIRIGENT_HOME (--home), its own API port (--advertise on a free loopback port) and host name n1..nN. Disposing kills
/// every daemon and worker and etcd, and removes their directories.
/// </summary>
internal sealed class ClusterRig : IAsyncDisposable
{
    public static readonly TimeSpan Hang = DaemonProcess.Hang;

    public EtcdServer Etcd { get; }
    public List<DaemonProcess> Hosts { get; } = [];
    public int LeaseTtl { get; }

    /// <summary>The namespaces of a rig whose hosts each have their own network, or null (all on loopback here).</summary>
    public TestNetwork? Network { get; }

    private ClusterRig(EtcdServer etcd, int leaseTtl, TestNetwork? network)
    {
        Etcd = etcd;
        LeaseTtl = leaseTtl;
        Network = network;
    }

    /// <param name="network">
    /// Give each host a network namespace of its own from this (its daemon and workers run there, etcd in the hub):
    /// the rig then owns and deletes it. The test talks to the daemons over their Unix sockets, which namespaces do
    /// not separate; etcd itself is out of this process's reach then.
    /// </param>
    public static async Task<ClusterRig> StartAsync(int hosts = 3, int leaseTtl = 10, TestNetwork? network = null)
    {
        EtcdServer etcd;
        try { etcd = network == null ? await EtcdServer.StartAsync() : await EtcdServer.StartAsync(network.Hub, TestNetwork.HubAddress); }
        catch
        {
            network?.Dispose();
            throw;
        }
        var rig = new ClusterRig(etcd, leaseTtl, network);
        try
        {
            // One at a time: on a 2-core machine three daemons starting at once only slow each other down.
            for (int i = 1; i <= hosts; i++)
                rig.Hosts.Add(await DaemonProcess.StartAsync(extraArgs:
                [
                    "--cluster", rig.Etcd.Url, "--host-name", $"n{i}",
                    "--advertise", network == null ? $"127.0.0.1:{EtcdServer.FreePort()}" : $"{TestNetwork.HostAddress(i)}:8006",
                    "--lease-ttl", leaseTtl.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ], launcher: network?.Exec(i)));
            await rig.WaitAsync(async () => (await rig.Hosts[0].GetAsync("/api/v1/cluster"))["hosts_up"]!.GetValue<int>() == hosts
                                             && (await rig.LeaderAsync()) != null, "all hosts up and a leader");
        }
        catch
        {
            await rig.DisposeAsync();
            throw;
        }
        return rig;
    }

    public DaemonProcess this[string host] => Hosts[int.Parse(host[1..], System.Globalization.CultureInfo.InvariantCulture) - 1];

    public async Task<string?> LeaderAsync(DaemonProcess? via = null)
        => (await (via ?? Hosts[0]).GetAsync("/api/v1/cluster"))["leader"]?.GetValue<string>();

    /// <summary>
    /// Polls <paramref name="condition"/> until it holds. A hang guard, not a timing assertion: the cluster's own
    /// reactions are event-driven (watches), the test merely looks until it sees the outcome.
    /// </summary>
    public async Task WaitAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + Hang;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"still not {what} after {Hang}\n{Logs()}");
            await Task.Delay(50);
        }
    }

    public async Task<List<JsonObject>> VmsAsync(DaemonProcess? via = null)
        => (await (via ?? Hosts[0]).GetAsync("/api/v1/vms"))["vms"]!.AsArray().Select(v => v!.AsObject()).ToList();

    /// <summary>Worker processes of VM <paramref name="vm"/> on every host: (host, pid).</summary>
    public List<(string Host, int Pid)> WorkersOf(string vm)
    {
        var found = new List<(string, int)>();
        foreach (var (d, i) in Hosts.Select((d, i) => (d, i)))
            foreach (int pid in d.ProcessesOfHome())
            {
                string cmd;
                try { cmd = File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' '); }
                catch (IOException) { continue; }
                if (cmd.Contains($"--api-socket {d.Home}/vms/{vm}/worker.sock", StringComparison.Ordinal) && !cmd.StartsWith("/bin/sh", StringComparison.Ordinal))
                    found.Add(($"n{i + 1}", pid));
            }
        return found;
    }

    /// <summary>Runs the CLI (`dirigent ARGS --home HOME` of a host) and returns status and stdout.</summary>
    public static (int Exit, string Out, string Err) Cli(DaemonProcess via, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--home");
        psi.ArgumentList.Add(via.Home);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit((int)Hang.TotalMilliseconds)) p.Kill();
        return (p.ExitCode, output, err.Result);
    }

    /// <summary>
    /// From etcd's revision history: for each VM, the sequence of hosts its record named (a change of host only;
    /// "-" for none after having one).
    /// </summary>
    public async Task<Dictionary<string, List<string>>> HostHistoryAsync()
    {
        await using var inv = Etcd.Client();
        long head = (await inv.ListAsync("vms/")).Revision;
        var last = new Dictionary<string, string?>();
        var seq = new Dictionary<string, List<string>>();
        using var cts = new CancellationTokenSource(Hang);
        await foreach (var ev in inv.Watch("vms/", 0, cts.Token))
        {
            string name = ev.Key["vms/".Length..];
            string? host = ev.Value == null ? null : JsonNode.Parse(ev.Value)!["host"]?.GetValue<string>();
            if (!seq.ContainsKey(name)) seq[name] = [];
            if (host != last.GetValueOrDefault(name) && (host != null || last.GetValueOrDefault(name) != null))
                seq[name].Add(host ?? "-");
            last[name] = host;
            if (ev.Revision >= head) break;
        }
        return seq;
    }

    public string Logs() => string.Join("\n", Hosts.Select((d, i) => $"--- n{i + 1} ---\n{d.Stderr}"));

    public async ValueTask DisposeAsync()
    {
        foreach (var d in Hosts) await d.DisposeAsync();
        await Etcd.DisposeAsync();
        Network?.Dispose();
    }
}

internal static class ClusterJson
{
    public static string Str(this JsonObject o, string field) => o[field]?.GetValue<string>() ?? "";

    public static async Task<JsonObject> CreateTinyVmAsync(this DaemonProcess d, string name, string? pin = null, string? group = null, string? restart = null)
    {
        var extra = new Dictionary<string, object?>();
        if (pin != null || group != null) extra["placement"] = new { host = pin, anti_affinity = group };
        if (restart != null) extra["restart"] = restart;
        return await d.CreateTinyAsync(name, extra.Count > 0 ? extra : null);
    }

    public static async Task<HttpStatusCode> StatusAsync(this DaemonProcess d, HttpMethod m, string path, object? body = null)
        => (await d.SendAsync(m, path, body)).Status;
}
