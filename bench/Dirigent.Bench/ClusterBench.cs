using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Dirigent.Cli;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// The cluster (issue #16) on this machine: a real etcd (Debian's etcd-server) on loopback ports and three real daemons
/// (n1..n3, each its own home and API port). Figures: create-and-place latency (POST /vms on a host to the record
/// naming the host the leader chose; N creates, one at a time, through the three daemons in turn) and failover time
/// (SIGKILL of the daemon and worker of the host running a restart=always default guest, to its record running on
/// another host, and to its first console byte there; the lease TTL is most of it), then the live migration of that
/// guest to the third host (POST migrate to the operation's end) and its downtime (the source worker's pause to the
/// target's report that its vCPUs run). Everything started is killed.
/// Usage: dotnet run -c Release --project bench/Dirigent.Bench -- cluster [--creates N] [--lease-ttl S] [--dirigent PATH]
/// </summary>
public static class ClusterBench
{
    private const string Etcd = "/usr/bin/etcd";

    public static int Run(string[] args)
    {
        if (!File.Exists(Etcd))
        {
            Console.WriteLine($"{Etcd} is missing: apt-get install etcd-server");
            return 2;
        }
        int creates = DaemonBench.IntOption(args, "--creates") ?? 30;
        int ttl = DaemonBench.IntOption(args, "--lease-ttl") ?? 5;
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string[] dirigent = DaemonBench.DirigentCommand(args);
        string root = Directory.CreateTempSubdirectory("dirigent-bench-cluster-").FullName;
        Console.WriteLine($"3 daemons on one etcd, this host: {Environment.ProcessorCount} cores; lease TTL {ttl} s; guest {img.KernelVersion}");
        var etcdProc = (Process?)null;
        try
        {
            int client = FreePort(), peer = FreePort();
            etcdProc = Process.Start(new ProcessStartInfo(Etcd, [
                "--name", "b", "--data-dir", Path.Combine(root, "etcd"), "--listen-client-urls", $"http://127.0.0.1:{client}",
                "--advertise-client-urls", $"http://127.0.0.1:{client}", "--listen-peer-urls", $"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}", "--initial-cluster", $"b=http://127.0.0.1:{peer}", "--log-level", "error",
            ]) { RedirectStandardError = true, RedirectStandardOutput = true })!;
            etcdProc.BeginErrorReadLine();
            etcdProc.BeginOutputReadLine();
            RunAsync(dirigent, root, $"etcd://127.0.0.1:{client}", creates, ttl).GetAwaiter().GetResult();
            return 0;
        }
        catch (Exception e) when (e is InvalidOperationException or HttpRequestException or IOException or TimeoutException)
        {
            Console.WriteLine($"cluster bench: {e.Message}");
            return 1;
        }
        finally
        {
            for (int pass = 0; pass < 5; pass++)
            {
                List<int> left = HostProcesses.WithArgument(root);
                if (left.Count == 0) break;
                left.ForEach(HostProcesses.Kill);
                Thread.Sleep(200);
            }
            DaemonBench.TryDelete(root);
        }
    }

    private static async Task RunAsync(string[] dirigent, string root, string etcdUrl, int creates, int ttl)
    {
        var homes = new List<string>();
        var daemons = new List<Process>();
        var clients = new List<DaemonClient>();
        for (int i = 1; i <= 3; i++)
        {
            string home = Path.Combine(root, $"n{i}");
            Directory.CreateDirectory(home);
            homes.Add(home);
            daemons.Add(DaemonBench.StartDaemon(dirigent, home, "--cluster", etcdUrl, "--host-name", $"n{i}",
                "--advertise", $"127.0.0.1:{FreePort()}", "--lease-ttl", ttl.ToString(CultureInfo.InvariantCulture)));
            clients.Add(new DaemonClient(Path.Combine(home, "dirigent.sock"), 4));
            await DaemonBench.WaitReady(daemons[^1], Path.Combine(home, "dirigent.sock"), clients[^1]);
        }
        while ((await clients[0].ExpectAsync(200, HttpMethod.Get, "api/v1/cluster"))?["hosts_up"]?.GetValue<int>() != 3) await Task.Delay(20);

        // Create-and-place: the record names a host (the leader's CAS) — looked for every 2 ms on the creating daemon.
        var place = new List<double>();
        for (int i = 0; i < creates; i++)
        {
            var c = clients[i % 3];
            long t0 = Stopwatch.GetTimestamp();
            await c.ExpectAsync(201, HttpMethod.Post, "api/v1/vms",
                new JsonObject { ["name"] = $"p{i}", ["spec"] = new JsonObject { ["memory_mib"] = 96 } });
            while ((await c.ExpectAsync(200, HttpMethod.Get, $"api/v1/vms/p{i}"))?["host"] == null)
            {
                if (Stopwatch.GetElapsedTime(t0) > TimeSpan.FromSeconds(60)) throw new TimeoutException($"p{i} not placed in 60 s");
                await Task.Delay(2);
            }
            place.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        }
        place.Sort();
        Console.WriteLine($"create-and-place, {creates} VMs one at a time: p50 {Pct(place, 50):F1} ms, p90 {Pct(place, 90):F1} ms, max {place[^1]:F1} ms");

        // Failover: a default guest with restart=always; its host dies (daemon and worker SIGKILLed).
        await clients[0].ExpectAsync(201, HttpMethod.Post, "api/v1/vms",
            new JsonObject { ["name"] = "fo", ["spec"] = new JsonObject { ["memory_mib"] = 96 }, ["restart"] = "always" });
        var op = await clients[0].ExpectAsync(202, HttpMethod.Post, "api/v1/vms/fo/start");
        var done = await clients[0].ExpectAsync(200, HttpMethod.Get, $"api/v1/operations/{op?["id"]}/wait?timeout=60");
        if (done?["status"]?.GetValue<string>() != "succeeded") throw new InvalidOperationException($"start fo: {done?["error"]}");
        var rec = await clients[0].ExpectAsync(200, HttpMethod.Get, "api/v1/vms/fo");
        string host = rec!["host"]!.GetValue<string>();
        int victim = int.Parse(host[1..], CultureInfo.InvariantCulture) - 1;
        int survivor = (victim + 1) % 3;
        int worker = rec["pid"]!.GetValue<int>();
        long kill = Stopwatch.GetTimestamp();
        HostProcesses.Kill(daemons[victim].Id);
        HostProcesses.Kill(worker);
        double detected = double.NaN, running = double.NaN, firstByte = double.NaN;
        string? newHost = null;
        while (Stopwatch.GetElapsedTime(kill) < TimeSpan.FromSeconds(120))
        {
            var now = await clients[survivor].ExpectAsync(200, HttpMethod.Get, "api/v1/vms/fo");
            // The leader has seen the lease expire and taken the VM off the dead host.
            if (double.IsNaN(detected) && now?["host"]?.GetValue<string>() != host) detected = Stopwatch.GetElapsedTime(kill).TotalSeconds;
            if (double.IsNaN(running) && now?["state"]?.GetValue<string>() == "running" && now["host"]?.GetValue<string>() is { } h && h != host)
            {
                running = Stopwatch.GetElapsedTime(kill).TotalSeconds;
                newHost = h;
            }
            if (newHost != null)
            {
                var log = await clients[int.Parse(newHost[1..], CultureInfo.InvariantCulture) - 1].GetBytesAsync("api/v1/vms/fo/console/log");
                // The console log is appended across runs: the old host's log is in the old home, so any byte here is new.
                if (log.Length > 0) { firstByte = Stopwatch.GetElapsedTime(kill).TotalSeconds; break; }
            }
            await Task.Delay(10);
        }
        Console.WriteLine($"failover (host {host} SIGKILLed, lease TTL {ttl} s): taken off it after {detected:F2} s, running on {newHost ?? "-"} after {running:F2} s, first console byte there after {firstByte:F2} s");
        // Inter-host live migration of the running default guest (now on newHost) to the other surviving host.
        if (newHost != null && !double.IsNaN(firstByte))
        {
            int from = int.Parse(newHost[1..], CultureInfo.InvariantCulture) - 1;
            int to = Enumerable.Range(0, 3).First(i => i != from && i != victim);
            long m0 = Stopwatch.GetTimestamp();
            var mop = await clients[from].ExpectAsync(202, HttpMethod.Post, "api/v1/vms/fo/migrate", new JsonObject { ["host"] = $"n{to + 1}" });
            var mdone = await clients[from].ExpectAsync(200, HttpMethod.Get, $"api/v1/operations/{mop?["id"]}/wait?timeout=120");
            double migrate = Stopwatch.GetElapsedTime(m0).TotalSeconds;
            Console.WriteLine($"migration n{from + 1} -> n{to + 1} of the running default guest (96 MiB): {mdone?["status"]} in {migrate:F2} s " +
                              "(POST to the record on the target; includes starting the target's worker)");
            // The source worker's figures (VMM migration code): downtime from its pause to the target's report that
            // its vCPUs run; ack = to the target's OK (state restored, not yet running).
            if (mdone?["result"]?["migration"] is JsonObject fig)
                Console.WriteLine($"migration downtime: {fig["downtime_ms"]} ms (pause to {fig["downtime_end"]}; to the target's OK {fig["ack_ms"]} ms, " +
                                  $"target's OK to running {fig["target_resume_ms"]?.ToString() ?? "-"} ms), worker total {fig["total_ms"]} ms, " +
                                  $"{fig["rounds"]} rounds, {fig["pages"]} pages, {(fig["bytes"]?.GetValue<long>() ?? 0) / 1048576.0:F1} MiB");
            else Console.WriteLine($"migration downtime: not reported ({mdone?["error"]})");
        }
        foreach (var c in clients) c.Dispose();
    }

    private static double Pct(List<double> sorted, int p) => sorted[Math.Min(sorted.Count - 1, sorted.Count * p / 100)];

    private static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }
}
