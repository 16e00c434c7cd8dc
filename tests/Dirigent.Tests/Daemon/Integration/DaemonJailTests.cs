using System.Globalization;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;
using Dirigent.Tests.Jail;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>
/// The daemon jails its workers by default where the host can (root, util-linux, libseccomp): each VM's VMM runs as
/// `dirigent run --jail` under user nobody with a seccomp filter, and snapshots are saved from inside the jail and
/// restored into a new one. --no-jail-workers runs them as before.
/// </summary>
public sealed class DaemonJailTests
{
    private const int Nobody = 65534;

    [SkippableFact]
    public async Task WorkersAreJailedByDefaultAndSnapshotsRestoreInTheJail()
    {
        JailTests.SkipUnlessJailCanRun();
        await using var d = await DaemonProcess.StartAsync();
        Assert.Contains("workers: jailed", d.Stderr);
        await d.CreateTinyAsync("jailed");
        await d.ActAsync("jailed", "start");
        await d.ConsoleUntilAsync("jailed", ApiTestVm.ReadyLine);
        int worker = (await d.GetAsync("/api/v1/vms/jailed"))["pid"]!.GetValue<int>();
        var status = JailedVmmStatus(worker);
        Assert.Equal("2", status["Seccomp"]);
        Assert.Equal("1", status["NoNewPrivs"]);
        Assert.StartsWith($"{Nobody}\t", status["Uid"]);

        // The jailed worker writes the snapshot into the VM's snapshots directory (bound into its jail).
        var snap = await d.ActAsync("jailed", "snapshots", new { name = "s1" });
        Assert.Equal("s1", snap["result"]!["name"]!.GetValue<string>());
        string snapDir = Path.Combine(d.Home, "vms", "jailed", "snapshots", "s1");
        Assert.True(File.Exists(Path.Combine(snapDir, "state.json")), $"no snapshot in {snapDir}: {d.WorkerLog("jailed")}");

        // Restoring starts a new jailed worker that resumes it.
        var op = await d.PostAsync("/api/v1/vms/jailed/snapshots/s1/restore", null, System.Net.HttpStatusCode.Accepted);
        var done = await d.WaitOperationAsync(op);
        Assert.True(done["status"]!.GetValue<string>() == "succeeded", done.ToJsonString() + d.WorkerLog("jailed"));
        var vm = await d.GetAsync("/api/v1/vms/jailed");
        Assert.Equal("running", vm["state"]!.GetValue<string>());
        int restored = vm["pid"]!.GetValue<int>();
        Assert.NotEqual(worker, restored);
        Assert.Equal("2", JailedVmmStatus(restored)["Seccomp"]);
        // The restored guest is the snapshot's: it runs on (a paused-forever or failed restore would not stay running).
        Assert.Equal("running", (await d.GetAsync("/api/v1/vms/jailed"))["state"]!.GetValue<string>());
        await d.ActAsync("jailed", "stop");
    }

    [SkippableFact]
    public async Task NoJailWorkersRunsThemUnjailed()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "workers are Linux processes");
        await using var d = await DaemonProcess.StartAsync(extraArgs: ["--no-jail-workers"]);
        Assert.Contains("workers: not jailed", d.Stderr);
        await d.CreateTinyAsync("free");
        await d.ActAsync("free", "start");
        await d.ConsoleUntilAsync("free", ApiTestVm.ReadyLine);
        int worker = (await d.GetAsync("/api/v1/vms/free"))["pid"]!.GetValue<int>();
        // The worker is the VMM itself, no seccomp filter, and no jailed process below it.
        Assert.Equal("0", Status(worker)!["Seccomp"]);
        Assert.DoesNotContain(Descendants(worker), p => Status(p) is { } s && s.GetValueOrDefault("Seccomp") == "2");
        await d.ActAsync("free", "stop");
    }

    /// <summary>/proc/PID/status of the worker's jailed VMM (a descendant with a seccomp filter), waiting for it.</summary>
    private static Dictionary<string, string> JailedVmmStatus(int worker)
    {
        Dictionary<string, string>? found = null;
        bool ok = SpinWait.SpinUntil(() =>
        {
            foreach (int p in Descendants(worker))
                if (Status(p) is { } s && s.GetValueOrDefault("Seccomp") == "2") { found = s; return true; }
            return false;
        }, TimeSpan.FromSeconds(60));
        Assert.True(ok, $"no process under worker {worker} has a seccomp filter (Seccomp: 2)");
        return found!;
    }

    private static Dictionary<string, string>? Status(int pid)
    {
        try
        {
            return File.ReadAllLines($"/proc/{pid}/status").Select(l => l.Split(':', 2)).Where(p => p.Length == 2)
                .ToDictionary(p => p[0], p => p[1].Trim());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    private static List<int> Descendants(int root)
    {
        var children = new Dictionary<int, List<int>>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid)) continue;
            string stat;
            try { stat = File.ReadAllText($"{dir}/stat"); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            var f = stat[(stat.LastIndexOf(')') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length > 1 && int.TryParse(f[1], out int ppid)) (children.TryGetValue(ppid, out var l) ? l : children[ppid] = []).Add(pid);
        }
        var all = new List<int>();
        var todo = new Stack<int>([root]);
        while (todo.Count > 0)
            foreach (int c in children.GetValueOrDefault(todo.Pop()) ?? [])
            {
                all.Add(c);
                todo.Push(c);
            }
        return all;
    }
}
