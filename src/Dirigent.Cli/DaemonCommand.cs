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
        var jailWorkers = new Option<bool>("--jail-workers") { Description = "Run every VM's worker jailed (dirigent run --jail: namespaces, chroot, user nobody, seccomp; needs root)" };
        var cmd = new Command("daemon", "Run dirigentd: the management daemon and its REST API on $DIRIGENT_HOME/dirigent.sock") { home, listen, logRequests, jailWorkers };
        cmd.SetAction(r =>
        {
            var opts = new DaemonOptions
            {
                Home = r.GetValue(home) ?? DaemonPaths.DefaultHome(),
                Listen = r.GetValue(listen) ?? [],
                LogRequests = r.GetValue(logRequests),
                JailWorkers = r.GetValue(jailWorkers),
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
