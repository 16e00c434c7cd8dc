using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>
/// Actions beyond start/stop through the real daemon and workers (shutdown with and without force, reboot, reset),
/// a graceful daemon stop (SIGTERM) that leaves workers running, autostart, and resource limits.
/// </summary>
public sealed class DaemonActionTests
{
    private static string State(JsonObject vm) => vm["state"]!.GetValue<string>();

    [Fact]
    public async Task ShutdownRebootAndReset()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("acts");
        await d.ActAsync("acts", "start");
        await d.ConsoleUntilAsync("acts", ApiTestVm.ReadyLine);

        // The tiny guest ignores the ACPI power button: without force the operation fails and the VM keeps running.
        var op = await d.PostAsync("/api/v1/vms/acts/shutdown", new { timeout_s = 1 }, HttpStatusCode.Accepted);
        var failed = await d.WaitOperationAsync(op);
        Assert.Equal("failed", failed["status"]!.GetValue<string>());
        Assert.Contains("did not power off", failed["error"]!.GetValue<string>());
        Assert.Equal("running", State(await d.GetAsync("/api/v1/vms/acts")));
        Assert.Equal(HttpStatusCode.BadRequest, (await d.SendAsync(HttpMethod.Post, "/api/v1/vms/acts/shutdown", new { timeout = 1 })).Status);

        int pid = (await d.GetAsync("/api/v1/vms/acts"))["pid"]!.GetValue<int>();
        await d.ActAsync("acts", "reset");
        Assert.Equal(pid, (await d.GetAsync("/api/v1/vms/acts"))["pid"]!.GetValue<int>());
        await d.ActAsync("acts", "reboot");
        var rebooted = await d.GetAsync("/api/v1/vms/acts");
        Assert.Equal("running", State(rebooted));
        Assert.NotEqual(pid, rebooted["pid"]!.GetValue<int>());
        await d.ConsoleUntilAsync("acts", ApiTestVm.ReadyLine);

        var forced = await d.ActAsync("acts", "shutdown", new { timeout_s = 1, force = true });
        Assert.Equal("stopped", forced["result"]!["state"]!.GetValue<string>());
        // Empty-object bodies are fine for actions without arguments; fields are not.
        Assert.Equal(HttpStatusCode.BadRequest, (await d.SendAsync(HttpMethod.Post, "/api/v1/vms/acts/start", new { now = true })).Status);
        await d.ActAsync("acts", "start", new { });
        await d.ActAsync("acts", "stop");
    }

    [Fact]
    public async Task SigtermLeavesWorkersRunningAndAutostartRunsAtStart()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("runner");
        await d.CreateTinyAsync("auto", new { autostart = true });
        await d.ActAsync("runner", "start");
        int pid = (await d.GetAsync("/api/v1/vms/runner"))["pid"]!.GetValue<int>();

        using (var kill = Process.Start("kill", ["-TERM", d.DaemonPid.ToString()])) await kill.WaitForExitAsync();
        await d.WaitDaemonExitAsync().WaitAsync(DaemonProcess.Hang);
        Assert.False(File.Exists(d.SocketPath));
        using (var w = Process.GetProcessById(pid)) Assert.False(w.HasExited);

        await d.StartDaemonAsync();
        Assert.Equal(pid, (await d.GetAsync("/api/v1/vms/runner"))["pid"]!.GetValue<int>());
        var ops = (await d.GetAsync("/api/v1/operations"))["operations"]!.AsArray();
        var auto = ops.Single(o => o!["description"]!.GetValue<string>() == "autostart auto")!.AsObject();
        Assert.Equal("succeeded", (await d.WaitOperationAsync(auto))["status"]!.GetValue<string>());
        Assert.Equal("running", State(await d.GetAsync("/api/v1/vms/auto")));
        await d.ConsoleUntilAsync("auto", ApiTestVm.ReadyLine);
    }

    [Fact]
    public async Task LimitsApplyThroughCgroupsOrFailClearly()
    {
        await using var d = await DaemonProcess.StartAsync();
        // A name of its own: cgroups are per host, and other tests may run VMs meanwhile.
        string name = "lim-" + Guid.NewGuid().ToString("N")[..8];
        await d.CreateTinyAsync(name, new { limits = new { cpu = 0.5, memory_mib = 512 } });
        var op = await d.PostAsync($"/api/v1/vms/{name}/start", null, HttpStatusCode.Accepted);
        var done = await d.WaitOperationAsync(op);
        if (d.Stderr.Contains("cgroups: none", StringComparison.Ordinal))
        {
            Assert.Equal("failed", done["status"]!.GetValue<string>());
            Assert.Contains("cgroups are unavailable", done["error"]!.GetValue<string>());
            return;
        }
        Assert.True(done["status"]!.GetValue<string>() == "succeeded", done.ToJsonString() + d.WorkerLog(name));
        var metrics = await d.Http.GetStringAsync("/metrics");
        Assert.Contains($"dirigent_vm_cpu_seconds_total{{vm=\"{name}\"}}", metrics);
        // Limits of a running VM change at once; its spec does not.
        var (status, body, _) = await d.SendAsync(HttpMethod.Patch, $"/api/v1/vms/{name}", new { limits = new { cpu = 0.25 } });
        Assert.True(status == HttpStatusCode.OK, body?.ToJsonString());
        Assert.Equal(0.25, body!["limits"]!["cpu"]!.GetValue<double>());
        Assert.Equal(HttpStatusCode.Conflict, (await d.SendAsync(HttpMethod.Patch, $"/api/v1/vms/{name}", new { spec = new { vcpus = 2 } })).Status);
        await d.ActAsync(name, "stop");
    }
}
