using System.Diagnostics;
using System.Globalization;
using System.Net.Http;
using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Cli;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// VMs per host (issue #11): a real `dirigent daemon` with a temporary home starts idle default guests (96 MiB, see
/// <see cref="DefaultMemoryMib"/>) one after the other until N run, then measures RSS per VM (the workers' plus a 1/N share of the daemon's),
/// the host CPU all of them use while idle (daemon + workers, /proc utime+stime over 10 s, as % of one core; the
/// issue's target is under 50 % for 50 VMs), the time from POST start to the first console byte, and the API latency
/// (p50/p99) of GET /vms and POST pause/resume with 100 concurrent clients. The same N guests under QEMU TCG
/// (one process each) give the memory, idle-CPU and first-byte comparison. Everything started is killed at the end.
/// Usage: dotnet run -c Release --project bench/Dirigent.Bench -- daemon [--vms N] [--memory-mib M] [--quick] [--no-qemu] [--dirigent PATH]
/// </summary>
public static class DaemonBench
{
    /// <summary>/init prints this when it has started the console shell: the guest is booted and goes idle.</summary>
    private const string BootedMarker = "shell on the console";

    /// <summary>The kernel's first console line: the one event both VMMs' consoles show (QEMU's first bytes are SeaBIOS's).</summary>
    private const string KernelMarker = "Linux version";

    /// <summary>
    /// Guest RAM. The issue asks for 64 MiB, but the default guest's stock Debian kernel cannot boot in it on any VMM:
    /// its bzImage header asks for init_size 51.5 MiB at the 16 MiB physical load address (LOAD_PHYSICAL_ADDR, the
    /// decompressor's floor), so below ~70 MiB it triple-faults in the decompressor on Dirigent and resets in a loop
    /// on QEMU. 96 MiB is the default here; --memory-mib sets it (both VMMs get the same).
    /// </summary>
    private const int DefaultMemoryMib = 96;
    private const int Clients = 100;
    private static readonly TimeSpan IdleWindow = TimeSpan.FromSeconds(10);
    // Lets the last guest's boot tail (udev-less /init, JIT tiering in the worker) finish before the idle window.
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan BootGuard = TimeSpan.FromSeconds(180);
    private const double Mib = 1024 * 1024;

    private sealed class Figures
    {
        public int Running;
        public readonly List<double> FirstByte = [], KernelLine = [], Booted = [];
        public double RssPerVm = double.NaN, WorkerRss = double.NaN, DaemonRss = double.NaN, IdleCpu = double.NaN, DaemonIdleCpu = double.NaN;
    }

    public static int Run(string? qemu, string[] args)
    {
        bool quick = args.Contains("--quick");
        int n = IntOption(args, "--vms") ?? (quick ? 5 : 50);
        int memoryMib = IntOption(args, "--memory-mib") ?? DefaultMemoryMib;
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string[] dirigent = DirigentCommand(args);
        Console.WriteLine($"guest: {img.KernelVersion}, {memoryMib} MiB, idle at the console shell; {n} VMs; host: {Environment.ProcessorCount} cores; " +
                          $"dirigent: {string.Join(' ', dirigent)}");

        var d = new Figures();
        var api = new List<(string Name, List<double> Ms, Dictionary<int, int> Statuses, double Seconds)>();
        string home = Directory.CreateTempSubdirectory("dirigent-bench-daemon-").FullName;
        try
        {
            RunDirigent(dirigent, home, n, memoryMib, d, api).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is InvalidOperationException or HttpRequestException or IOException or TimeoutException)
        {
            Console.WriteLine($"dirigent daemon: {e.Message}");
            string log = Path.Combine(home, "daemon.log");
            if (File.Exists(log))
                Console.WriteLine($"daemon.log tail:\n{Tail(File.ReadAllText(log))}");
        }
        finally
        {
            // The workers run in their own sessions and outlive the daemon by design: kill each by its id, found by
            // the unique temporary home on its command line, then the daemon.
            // A few passes: a daemon killed in the middle of a restart may have just spawned one more.
            for (int pass = 0; pass < 5; pass++)
            {
                List<int> left = HostProcesses.WithArgument(home);
                if (left.Count == 0)
                    break;
                left.ForEach(HostProcesses.Kill);
                Thread.Sleep(200);
            }
            TryDelete(home);
        }

        var q = new Figures();
        if (qemu == null)
            Console.WriteLine("qemu-system-x86_64 not found (or --no-qemu): no QEMU comparison");
        else
            RunQemu(qemu, img, n, memoryMib, q);
        Print(n, d, q, qemu != null, api);
        return d.Running == n ? 0 : 1;
    }

    private static async Task RunDirigent(string[] dirigent, string home, int n, int memoryMib, Figures f,
        List<(string, List<double>, Dictionary<int, int>, double)> api)
    {
        Process daemon = StartDaemon(dirigent, home);
        string socket = Path.Combine(home, "dirigent.sock");
        using var client = new DaemonClient(socket, Clients);
        await WaitReady(daemon, socket, client);

        var workers = new List<int>();
        for (int i = 1; i <= n; i++)
        {
            string name = $"b{i}";
            await client.ExpectAsync(201, HttpMethod.Post, "api/v1/vms",
                new JsonObject { ["name"] = name, ["spec"] = new JsonObject { ["memory_mib"] = memoryMib } });
            long start = Stopwatch.GetTimestamp();
            JsonNode? op = await client.ExpectAsync(202, HttpMethod.Post, $"api/v1/vms/{name}/start");
            Task<JsonNode?> done = client.ExpectAsync(200, HttpMethod.Get, $"api/v1/operations/{op?["id"]}/wait?timeout=60");
            var (firstByte, kernelLine, booted) = await WaitConsole(client, name, start, done);
            JsonNode? result = await done;
            if (result?["status"]?.GetValue<string>() != "succeeded")
                throw new InvalidOperationException($"start {name}: {result?["status"]} {result?["error"]}");
            f.FirstByte.Add(firstByte);
            f.KernelLine.Add(kernelLine);
            f.Booted.Add(booted);
            JsonNode? vm = await client.ExpectAsync(200, HttpMethod.Get, $"api/v1/vms/{name}");
            workers.Add(vm?["pid"]?.GetValue<int>() ?? throw new InvalidOperationException($"{name} is running without a pid"));
            f.Running = i;
            Console.Error.Write($"\rdirigent: {i}/{n} running, last: first byte {firstByte:F2} s, shell {booted:F2} s   ");
        }
        Console.Error.WriteLine();

        Thread.Sleep(Settle);
        long workerRss = workers.Sum(HostProcesses.Rss), daemonRss = HostProcesses.Rss(daemon.Id);
        f.WorkerRss = workerRss / (double)n / Mib;
        f.DaemonRss = daemonRss / Mib;
        f.RssPerVm = (workerRss + daemonRss) / (double)n / Mib;
        double daemonCpu0 = HostProcesses.CpuSeconds(daemon.Id);
        long idleStart = Stopwatch.GetTimestamp();
        f.IdleCpu = HostProcesses.CpuPercent([daemon.Id, .. workers], IdleWindow);
        f.DaemonIdleCpu = (HostProcesses.CpuSeconds(daemon.Id) - daemonCpu0) / Stopwatch.GetElapsedTime(idleStart).TotalSeconds * 100;

        int rounds = n >= 50 ? 50 : 20;
        api.Add(await Latency("GET /vms", rounds, _ => (HttpMethod.Get, "api/v1/vms"), client));
        // Each client toggles one VM (client c → VM c mod N): with fewer VMs than clients several share one, and a
        // pause that arrives while the VM is already paused answers 409 at once; both kinds are counted.
        api.Add(await Latency("POST pause|resume", rounds,
            r => (HttpMethod.Post, $"api/v1/vms/b{r.Client % n + 1}/{(r.Round % 2 == 0 ? "pause" : "resume")}"), client));
    }

    /// <summary>
    /// <see cref="Clients"/> concurrent clients, each sending <paramref name="rounds"/> requests back to back after a
    /// common start; returns every request's latency in ms, the status counts and the wall time of the whole batch.
    /// </summary>
    private static async Task<(string, List<double>, Dictionary<int, int>, double)> Latency(string name, int rounds,
        Func<(int Client, int Round), (HttpMethod, string)> request, DaemonClient client)
    {
        var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var all = new List<double>();
        var statuses = new Dictionary<int, int>();
        var tasks = Enumerable.Range(0, Clients).Select(c => Task.Run(async () =>
        {
            var mine = new List<double>();
            var codes = new List<int>();
            await go.Task;
            for (int r = 0; r < rounds; r++)
            {
                var (method, path) = request((c, r));
                long t0 = Stopwatch.GetTimestamp();
                var (status, _) = await client.SendAsync(method, path);
                mine.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                codes.Add(status);
            }
            lock (all)
            {
                all.AddRange(mine);
                foreach (int code in codes)
                    statuses[code] = statuses.GetValueOrDefault(code) + 1;
            }
        })).ToList();
        long start = Stopwatch.GetTimestamp();
        go.SetResult();
        await Task.WhenAll(tasks);
        return (name, all, statuses, Stopwatch.GetElapsedTime(start).TotalSeconds);
    }

    /// <summary>Polls the persisted console log until its first byte, then until the guest's shell has started.</summary>
    private static async Task<(double FirstByte, double KernelLine, double Booted)> WaitConsole(DaemonClient client, string name, long start, Task<JsonNode?> op)
    {
        double firstByte = double.NaN, kernelLine = double.NaN;
        while (Stopwatch.GetElapsedTime(start) < BootGuard)
        {
            byte[] log = await client.GetBytesAsync($"api/v1/vms/{name}/console/log");
            double now = Stopwatch.GetElapsedTime(start).TotalSeconds;
            if (log.Length > 0 && double.IsNaN(firstByte))
                firstByte = now;
            string text = Encoding.ASCII.GetString(log);
            if (double.IsNaN(kernelLine) && text.Contains(KernelMarker, StringComparison.Ordinal))
                kernelLine = now;
            if (text.Contains(BootedMarker, StringComparison.Ordinal))
                return (firstByte, kernelLine, now);
            if (op.IsCompleted && (await op)?["status"]?.GetValue<string>() is "failed" or "cancelled")
                throw new InvalidOperationException($"start {name}: {(await op)?["error"]}");
            await Task.Delay(20);
        }
        throw new TimeoutException($"{name} printed no '{BootedMarker}' within {BootGuard.TotalSeconds:F0} s");
    }

    internal static Process StartDaemon(string[] dirigent, string home, params string[] extra)
    {
        // As the daemon starts its workers: output appended to a log file, never a pipe the bench would have to drain.
        var info = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        info.ArgumentList.Add("-c");
        info.ArgumentList.Add($"exec \"$0\" \"$@\" </dev/null >>'{Path.Combine(home, "daemon.log")}' 2>&1");
        foreach (string a in dirigent)
            info.ArgumentList.Add(a);
        info.ArgumentList.Add("daemon");
        info.ArgumentList.Add("--home");
        info.ArgumentList.Add(home);
        foreach (string a in extra)
            info.ArgumentList.Add(a);
        info.Environment["DIRIGENT_HOME"] = home;
        return Process.Start(info)!;
    }

    internal static async Task WaitReady(Process daemon, string socket, DaemonClient client)
    {
        long start = Stopwatch.GetTimestamp();
        while (Stopwatch.GetElapsedTime(start) < TimeSpan.FromSeconds(60))
        {
            if (daemon.HasExited)
                throw new InvalidOperationException($"the daemon exited with {daemon.ExitCode} before answering");
            if (File.Exists(socket))
            {
                try
                {
                    if ((await client.SendAsync(HttpMethod.Get, "api/v1/vms")).Status == 200)
                        return;
                }
                catch (HttpRequestException)
                {
                    // Socket file made, listener not accepting yet.
                }
            }
            await Task.Delay(50);
        }
        throw new TimeoutException("the daemon did not answer GET /api/v1/vms within 60 s");
    }

    /// <summary>
    /// N `qemu-system-x86_64 -accel tcg -m MIB` processes booting the same kernel, initramfs and command line, one after
    /// the other like the daemon's VMs: first serial byte and shell prompt from process start, then RSS and idle CPU.
    /// </summary>
    private static void RunQemu(string qemu, GuestImage img, int n, int memoryMib, Figures f)
    {
        var procs = new List<Process>();
        try
        {
            for (int i = 1; i <= n; i++)
            {
                var info = new ProcessStartInfo(qemu) { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
                foreach (string a in new[] { "-M", "pc", "-accel", "tcg", "-m", memoryMib.ToString(CultureInfo.InvariantCulture),
                             "-nodefaults", "-nographic", "-serial", "stdio", "-kernel", img.Kernel, "-initrd", img.Initramfs,
                             "-append", VmLauncher.DefaultAppend })
                    info.ArgumentList.Add(a);
                long start = Stopwatch.GetTimestamp();
                Process p = Process.Start(info)!;
                procs.Add(p);
                var (firstByte, kernelLine, booted) = ReadUntilBooted(p, start);
                f.FirstByte.Add(firstByte);
                f.KernelLine.Add(kernelLine);
                f.Booted.Add(booted);
                f.Running = i;
                Console.Error.Write($"\rqemu: {i}/{n} running, last: first byte {firstByte:F2} s, shell {booted:F2} s   ");
            }
            Console.Error.WriteLine();
            Thread.Sleep(Settle);
            f.WorkerRss = f.RssPerVm = procs.Sum(p => HostProcesses.Rss(p.Id)) / (double)n / Mib;
            f.IdleCpu = HostProcesses.CpuPercent(procs.Select(p => p.Id).ToList(), IdleWindow);
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException)
        {
            Console.WriteLine($"qemu: {e.Message}");
        }
        finally
        {
            foreach (Process p in procs)
            {
                HostProcesses.Kill(p.Id);
                p.WaitForExit(10_000);
                p.Dispose();
            }
        }
    }

    /// <summary>
    /// Reads the guest's serial output on a thread of its own (a blocking pipe read), then keeps draining it so
    /// QEMU never blocks on a full pipe while the others boot.
    /// </summary>
    private static (double FirstByte, double KernelLine, double Booted) ReadUntilBooted(Process p, long start)
    {
        var firstByte = new TaskCompletionSource<double>(TaskCreationOptions.RunContinuationsAsynchronously);
        double kernelLine = double.NaN;
        var booted = new TaskCompletionSource<double>(TaskCreationOptions.RunContinuationsAsynchronously);
        var reader = new Thread(() =>
        {
            var seen = new StringBuilder();
            var buf = new byte[4096];
            int got;
            try
            {
                while ((got = p.StandardOutput.BaseStream.Read(buf, 0, buf.Length)) > 0)
                {
                    double now = Stopwatch.GetElapsedTime(start).TotalSeconds;
                    firstByte.TrySetResult(now);
                    if (booted.Task.IsCompleted)
                        continue;
                    seen.Append(Encoding.ASCII.GetString(buf, 0, got));
                    if (double.IsNaN(kernelLine) && seen.ToString().Contains(KernelMarker, StringComparison.Ordinal))
                        kernelLine = now;
                    if (seen.ToString().Contains(BootedMarker, StringComparison.Ordinal))
                        booted.TrySetResult(now);
                }
            }
            catch (IOException)
            {
            }
            booted.TrySetException(new InvalidOperationException($"qemu exited before '{BootedMarker}':\n{Tail(seen.ToString())}"));
        }) { IsBackground = true };
        reader.Start();
        if (!booted.Task.Wait(BootGuard))
            throw new TimeoutException($"qemu printed no '{BootedMarker}' within {BootGuard.TotalSeconds:F0} s");
        // kernelLine was written by the reader before it completed `booted`, which this thread has now observed.
        return (firstByte.Task.Result, kernelLine, booted.Task.Result);
    }

    private static void Print(int n, Figures d, Figures q, bool withQemu,
        List<(string Name, List<double> Ms, Dictionary<int, int> Statuses, double Seconds)> api)
    {
        Console.WriteLine($"{"metric",-52} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
        Row("VMs running", d.Running, q.Running, withQemu, ratio: false);
        Row("start -> first console byte, median (s)", Median(d.FirstByte), Median(q.FirstByte), withQemu);
        Row("start -> first console byte, max (s)", Max(d.FirstByte), Max(q.FirstByte), withQemu);
        Row("start -> kernel's first line, median (s)", Median(d.KernelLine), Median(q.KernelLine), withQemu);
        Row("start -> console shell, median (s)", Median(d.Booted), Median(q.Booted), withQemu);
        if (d.Running == n || q.Running == n)
        {
            Row("RSS per VM incl. daemon share (MiB)", d.RssPerVm, q.RssPerVm, withQemu);
            Row("RSS per worker process (MiB)", d.WorkerRss, q.WorkerRss, withQemu);
            Row("daemon RSS (MiB)", d.DaemonRss, double.NaN, false);
            Row($"host CPU, all {n} idle, 10 s (% of one core)", d.IdleCpu, q.IdleCpu, withQemu);
            Row("host CPU per idle VM (% of one core)", d.IdleCpu / n, q.IdleCpu / n, withQemu);
            Row("  of which the daemon (% of one core)", d.DaemonIdleCpu, double.NaN, false);
            // The issue's target scales to the VMs actually run: 50 VMs under 50 % of a core = 1 % per VM.
            if (d.Running == n)
                Console.WriteLine($"target: {n} idle VMs under {n}% of one core (50 under 50%): {(d.IdleCpu < n ? "met" : "NOT met")} ({d.IdleCpu:F1}%)");
        }
        foreach (var (name, ms, statuses, seconds) in api)
        {
            var (p50, p99) = HostProcesses.Percentiles(ms);
            string codes = string.Join(", ", statuses.OrderBy(s => s.Key).Select(s => $"{s.Key}: {s.Value}"));
            Console.WriteLine($"API {name,-20} {Clients} clients: p50 {p50:F2} ms, p99 {p99:F2} ms, {ms.Count / seconds:F0} req/s ({codes})");
        }
        Console.WriteLine("first byte: dirigent from POST start (API + worker spawn + boot, seen through GET console/log polled every 20 ms); qemu from process start (its first bytes are SeaBIOS's)");
    }

    private static void Row(string name, double a, double b, bool withQemu, bool ratio = true) =>
        Console.WriteLine($"{name,-52} {Fmt(a),10} {(withQemu ? Fmt(b) : "-"),10} " +
                          $"{(ratio && withQemu && b > 0 && !double.IsNaN(a) ? (a / b).ToString("F2", CultureInfo.InvariantCulture) + "x" : "-"),14}");

    private static string Fmt(double v) => double.IsNaN(v) ? "-" : v.ToString("F2", CultureInfo.InvariantCulture);

    private static double Median(List<double> v) => v.Count == 0 ? double.NaN : HostProcesses.Median(v);

    private static double Max(List<double> v) => v.Count == 0 ? double.NaN : v.Max();

    internal static int? IntOption(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out int v) && v > 0 ? v : null;
    }

    /// <summary>
    /// The dirigent CLI to run as the daemon: --dirigent PATH, else the CLI this bench was built with (its apphost,
    /// or `dotnet dirigent.dll`), so the daemon and its workers are the same build as the bench.
    /// </summary>
    internal static string[] DirigentCommand(string[] args)
    {
        int i = Array.IndexOf(args, "--dirigent");
        if (i >= 0 && i + 1 < args.Length)
            return [Path.GetFullPath(args[i + 1])];
        string apphost = Path.Combine(AppContext.BaseDirectory, "dirigent");
        return File.Exists(apphost) ? [apphost] : ["dotnet", Path.Combine(AppContext.BaseDirectory, "dirigent.dll")];
    }

    internal static string Tail(string text) => text[^Math.Min(2000, text.Length)..];

    internal static void TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.WriteLine($"could not remove {dir}: {e.Message}");
        }
    }
}
