using System.CommandLine;
using Dirigent.Daemon.Host;
using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>`dirigent daemon`: dirigentd, the management daemon (REST API, inventory, one worker process per VM).</summary>
internal static class DaemonCommand
{
    public static Command Create()
    {
        var home = new Option<string?>("--home") { Description = "State directory (default: $DIRIGENT_HOME, /var/lib/dirigent as root, else ~/.local/share/dirigent)" };
        var listen = new Option<string[]>("--listen") { Description = "Also serve TCP on HOST:PORT, e.g. 127.0.0.1:8006 (bearer tokens required; repeatable)", AllowMultipleArgumentsPerToken = false };
        var logRequests = new Option<bool>("--log-requests") { Description = "Log every API request on stderr" };
        var jailWorkers = new Option<bool>("--jail-workers") { Description = "Require jailed workers: fail to start where the host cannot make jails (jailed is already the default where it can)" };
        var noJailWorkers = new Option<bool>("--no-jail-workers") { Description = "Run the VMs' workers without a jail (by default they run under dirigent run --jail where the host allows: root, util-linux, libseccomp)" };
        var cluster = new Option<string?>("--cluster") { Description = "Join a cluster whose inventory is etcd: etcd://HOST:PORT[,HOST:PORT...]" };
        var hostName = new Option<string?>("--host-name") { Description = "This host's name in the cluster (a-z, 0-9, '-'; default: the machine's host name)" };
        var advertise = new Option<string?>("--advertise") { Description = "ADDR:PORT where the other hosts reach this daemon's TCP API (it listens there too)" };
        var leaseTtl = new Option<int>("--lease-ttl") { Description = "Seconds after its last lease renewal that a silent host is taken for dead (default 10)", DefaultValueFactory = _ => 10 };
        var cmd = new Command("daemon", "Run dirigentd: the management daemon and its REST API on $DIRIGENT_HOME/dirigent.sock")
            { home, listen, logRequests, jailWorkers, noJailWorkers, cluster, hostName, advertise, leaseTtl };
        cmd.SetAction(r =>
        {
            if (r.GetValue(jailWorkers) && r.GetValue(noJailWorkers))
            {
                Console.Error.WriteLine("dirigent daemon: --jail-workers and --no-jail-workers exclude each other");
                return ExitCodes.BadInput;
            }
            Dirigent.Daemon.Cluster.ClusterOptions? co = null;
            if (r.GetValue(cluster) is { } url)
            {
                var eps = Dirigent.Inventory.EtcdInventory.ParseUrl(url, out string? why);
                string name = r.GetValue(hostName) ?? Environment.MachineName.ToLowerInvariant();
                string? adv = r.GetValue(advertise);
                int ttl = r.GetValue(leaseTtl);
                string? bad = eps == null ? $"--cluster: {why}"
                    : name.Length == 0 || name[0] == '-' || !name.All(c => c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-') ? $"--host-name '{name}': use a-z, 0-9 and '-' (at most 58 characters)"
                    : name.Length > 58 ? $"--host-name '{name}': at most 58 characters"
                    : adv == null ? "--cluster needs --advertise ADDR:PORT (where the other hosts reach this daemon)"
                    : ttl is < 2 or > 600 ? $"--lease-ttl {ttl}: must be 2..600 seconds" : null;
                if (bad != null)
                {
                    Console.Error.WriteLine($"dirigent daemon: {bad}");
                    return ExitCodes.BadInput;
                }
                co = new Dirigent.Daemon.Cluster.ClusterOptions { Endpoints = eps!, HostName = name, Advertise = adv!, LeaseTtl = TimeSpan.FromSeconds(ttl) };
            }
            else if (r.GetValue(hostName) != null || r.GetValue(advertise) != null)
            {
                Console.Error.WriteLine("dirigent daemon: --host-name and --advertise only go with --cluster etcd://HOST:PORT");
                return ExitCodes.BadInput;
            }
            // Workers are jailed by default where the host can make jails; where it cannot, they run as before and
            // the daemon says why once (an explicit --jail-workers makes that an error instead).
            string? problem = r.GetValue(noJailWorkers) ? null : Jail.JailLauncher.HostProblem();
            if (problem != null && r.GetValue(jailWorkers))
            {
                Console.Error.WriteLine($"dirigent daemon: --jail-workers: {problem}");
                return ExitCodes.VmmFailure;
            }
            var opts = new DaemonOptions
            {
                Home = r.GetValue(home) ?? DaemonPaths.DefaultHome(),
                Listen = r.GetValue(listen) ?? [],
                LogRequests = r.GetValue(logRequests),
                JailWorkers = !r.GetValue(noJailWorkers) && problem == null,
                UnjailedReason = problem,
                Cluster = co,
            };
            try
            {
                var host = DaemonHost.StartAsync(opts, Console.Error).GetAwaiter().GetResult();
                host.RunUntilSignalAsync().GetAwaiter().GetResult();
                return ExitCodes.Ok;
            }
            catch (DaemonStartException e)
            {
                Console.Error.WriteLine($"dirigent daemon: {e.Message}");
                return ExitCodes.BadInput;
            }
        });
        return cmd;
    }
}
