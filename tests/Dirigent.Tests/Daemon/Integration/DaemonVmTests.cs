using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>
/// VMs through the real daemon with real worker processes (`dirigent run` on the software CPU): lifecycle, console,
/// events, crashes of one worker, many VMs at once, snapshots. Each test has its own daemon and state directory.
/// </summary>
public sealed class DaemonVmTests
{
    private static string State(JsonObject vm) => vm["state"]!.GetValue<string>();

    [Fact]
    public async Task DefaultGuestCreateStartConsoleStopDelete()
    {
        await using var d = await DaemonProcess.StartAsync();
        // No kernel: the default guest (Debian's kernel + busybox initramfs).
        var rec = await d.PostAsync("/api/v1/vms", new { name = "web", spec = new { memory_mib = 128, accel = "emu" } }, HttpStatusCode.Created);
        Assert.Equal("stopped", State(rec));
        var start = await d.ActAsync("web", "start");
        Assert.Equal("running", start["result"]!["state"]!.GetValue<string>());
        var vm = await d.GetAsync("/api/v1/vms/web");
        Assert.Equal("running", State(vm));
        Assert.True(vm["pid"]!.GetValue<int>() > 0);

        string seen = await d.ConsoleUntilAsync("web", "Linux version");
        Assert.Contains("Linux version", seen);

        Assert.Contains("running", (await d.SendAsync(HttpMethod.Delete, "/api/v1/vms/web")).Body!["detail"]!.GetValue<string>());
        var stop = await d.ActAsync("web", "stop");
        Assert.Equal("stopped", stop["result"]!["state"]!.GetValue<string>());
        Assert.Equal("stopped_by_request", stop["result"]!["exit"]!["kind"]!.GetValue<string>());

        // The console log outlives the worker.
        string log = await d.Http.GetStringAsync("/api/v1/vms/web/console/log");
        Assert.Contains("Linux version", log);
        Assert.Equal(HttpStatusCode.NoContent, (await d.SendAsync(HttpMethod.Delete, "/api/v1/vms/web")).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await d.SendAsync(HttpMethod.Get, "/api/v1/vms/web")).Status);
    }

    [Fact]
    public async Task TinyGuestLifecycleWithEventsAndConsole()
    {
        await using var d = await DaemonProcess.StartAsync();
        await using var events = await EventReader.OpenAsync(d, "?vm=tiny");
        await d.CreateTinyAsync("tiny");
        await d.ActAsync("tiny", "start");
        await d.ConsoleUntilAsync("tiny", ApiTestVm.ReadyLine);
        await events.NextAsync((t, e) => t == "vm-state-changed" && e["new_state"]!.GetValue<string>() == "running");

        await d.ActAsync("tiny", "pause");
        Assert.Equal("paused", State(await d.GetAsync("/api/v1/vms/tiny")));
        await events.NextAsync((t, e) => t == "vm-state-changed" && e["new_state"]!.GetValue<string>() == "paused");
        // Known wrong at submit time: 409 at once.
        Assert.Equal(HttpStatusCode.Conflict, (await d.SendAsync(HttpMethod.Post, "/api/v1/vms/tiny/pause")).Status);
        await d.ActAsync("tiny", "resume");
        Assert.Equal("running", State(await d.GetAsync("/api/v1/vms/tiny")));

        // Several console viewers at once, each gets the replay.
        using (var a = await d.ConsoleAsync("tiny"))
        using (var b = await d.ConsoleAsync("tiny"))
        {
            await DaemonProcess.ReadUntilAsync(a, ApiTestVm.ReadyLine);
            await DaemonProcess.ReadUntilAsync(b, ApiTestVm.ReadyLine);
        }

        var metrics = await d.Http.GetStringAsync("/metrics");
        Assert.Contains("dirigent_vm_state{vm=\"tiny\",state=\"running\"} 1", metrics);
        Assert.Contains("dirigent_vm_instructions_total{vm=\"tiny\"}", metrics);

        await d.ActAsync("tiny", "stop");
        var exited = await events.NextAsync((t, _) => t == "vm-exited");
        Assert.Equal("stopped_by_request", exited.Data["reason"]!.GetValue<string>());
        // No worker, no console (the log stays).
        Assert.Equal(HttpStatusCode.Conflict, (await d.SendAsync(HttpMethod.Get, "/api/v1/vms/tiny/console")).Status);
        Assert.Contains(ApiTestVm.ReadyLine, await d.Http.GetStringAsync("/api/v1/vms/tiny/console/log"));
    }

    [Fact]
    public async Task KilledWorkerCrashesOnlyItsVm()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("victim");
        await d.CreateTinyAsync("bystander");
        await Task.WhenAll(d.ActAsync("victim", "start"), d.ActAsync("bystander", "start"));
        await using var events = await EventReader.OpenAsync(d, "?vm=victim");
        int pid = (await d.GetAsync("/api/v1/vms/victim"))["pid"]!.GetValue<int>();
        using (var p = Process.GetProcessById(pid)) p.Kill();

        var exited = await events.NextAsync((t, _) => t == "vm-exited");
        var victim = await d.GetAsync("/api/v1/vms/victim");
        Assert.Equal("crashed", State(victim));
        Assert.Contains("signal 9", victim["exit"]!["detail"]!.GetValue<string>() + exited.Data["detail"]);
        Assert.Null(victim["pid"]);

        var by = await d.GetAsync("/api/v1/vms/bystander");
        Assert.Equal("running", State(by));
        await d.ConsoleUntilAsync("bystander", ApiTestVm.ReadyLine);
        // A crashed VM starts again.
        await d.ActAsync("victim", "start");
        await d.ConsoleUntilAsync("victim", ApiTestVm.ReadyLine);
    }

    [Fact]
    public async Task RestartPolicyOnFailureRestartsACrashedVm()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("phoenix", new { restart = "on-failure" });
        await d.ActAsync("phoenix", "start");
        int pid = (await d.GetAsync("/api/v1/vms/phoenix"))["pid"]!.GetValue<int>();
        await using var events = await EventReader.OpenAsync(d, "?vm=phoenix");
        using (var p = Process.GetProcessById(pid)) p.Kill();
        await events.NextAsync((t, e) => t == "vm-state-changed" && e["new_state"]!.GetValue<string>() == "crashed");
        await events.NextAsync((t, e) => t == "vm-state-changed" && e["new_state"]!.GetValue<string>() == "running");
        var vm = await d.GetAsync("/api/v1/vms/phoenix");
        Assert.Equal("running", State(vm));
        Assert.NotEqual(pid, vm["pid"]!.GetValue<int>());
        // Stopped through the API: not restarted.
        await d.ActAsync("phoenix", "stop");
        Assert.Equal("stopped", State(await d.GetAsync("/api/v1/vms/phoenix")));
    }

    [Fact]
    public async Task KilledDaemonRestartsAndReadoptsItsWorkers()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("keeper");
        await d.CreateTinyAsync("idle");
        await d.ActAsync("keeper", "start");
        int pid = (await d.GetAsync("/api/v1/vms/keeper"))["pid"]!.GetValue<int>();
        await d.ConsoleUntilAsync("keeper", ApiTestVm.ReadyLine);

        await d.KillDaemonAsync();
        // The worker outlives the daemon (its own session).
        using (var p = Process.GetProcessById(pid)) Assert.False(p.HasExited);
        await d.StartDaemonAsync();

        var keeper = await d.GetAsync("/api/v1/vms/keeper");
        Assert.Equal("running", State(keeper));
        Assert.Equal(pid, keeper["pid"]!.GetValue<int>());
        Assert.Equal("stopped", State(await d.GetAsync("/api/v1/vms/idle")));
        // The console is still attachable (the worker's replay), and the adopted worker can be stopped.
        await d.ConsoleUntilAsync("keeper", ApiTestVm.ReadyLine);
        await d.ActAsync("keeper", "stop");
        Assert.Equal("stopped", State(await d.GetAsync("/api/v1/vms/keeper")));
    }

    [Fact]
    public async Task WorkerGoneWhileDaemonDownIsCrashedAtRestart()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("lost");
        await d.ActAsync("lost", "start");
        int pid = (await d.GetAsync("/api/v1/vms/lost"))["pid"]!.GetValue<int>();
        await d.KillDaemonAsync();
        using (var p = Process.GetProcessById(pid))
        {
            p.Kill();
            await p.WaitForExitAsync().WaitAsync(DaemonProcess.Hang);
        }
        await d.StartDaemonAsync();
        var lost = await d.GetAsync("/api/v1/vms/lost");
        Assert.Equal("crashed", State(lost));
        Assert.Contains("vanished", lost["exit"]!["detail"]!.GetValue<string>());
    }

    [Fact]
    public async Task TwentyConcurrentCreatesAndStarts()
    {
        await using var d = await DaemonProcess.StartAsync();
        var names = Enumerable.Range(0, 20).Select(i => $"many-{i}").ToList();
        await Task.WhenAll(names.Select(async n =>
        {
            await d.CreateTinyAsync(n);
            await d.ActAsync(n, "start");
        }));
        var list = await d.GetAsync("/api/v1/vms?state=running");
        Assert.Equal(20, list["vms"]!.AsArray().Count);
        await Task.WhenAll(names.Select(n => d.ActAsync(n, "stop")));
        Assert.Empty((await d.GetAsync("/api/v1/vms?state=running"))["vms"]!.AsArray());
    }

    [Fact]
    public async Task SnapshotAndRestore()
    {
        await using var d = await DaemonProcess.StartAsync();
        await d.CreateTinyAsync("snappy");
        await d.ActAsync("snappy", "start");
        await d.ConsoleUntilAsync("snappy", ApiTestVm.ReadyLine);
        var snap = await d.ActAsync("snappy", "snapshots", new { name = "s1" });
        Assert.Equal("s1", snap["result"]!["name"]!.GetValue<string>());
        Assert.Equal(HttpStatusCode.Conflict, (await d.SendAsync(HttpMethod.Post, "/api/v1/vms/snappy/snapshots", new { name = "s1" })).Status);
        var list = await d.GetAsync("/api/v1/vms/snappy/snapshots");
        Assert.Single(list["snapshots"]!.AsArray());
        await d.GetAsync("/api/v1/vms/snappy/snapshots/s1");
        int before = (await d.GetAsync("/api/v1/vms/snappy"))["pid"]!.GetValue<int>();

        var op = await d.PostAsync("/api/v1/vms/snappy/snapshots/s1/restore", null, HttpStatusCode.Accepted);
        var done = await d.WaitOperationAsync(op);
        Assert.True(done["status"]!.GetValue<string>() == "succeeded", done.ToJsonString() + d.WorkerLog("snappy"));
        var vm = await d.GetAsync("/api/v1/vms/snappy");
        Assert.Equal("running", State(vm));
        Assert.NotEqual(before, vm["pid"]!.GetValue<int>());
        Assert.Equal("running", (await d.GetAsync("/api/v1/vms/snappy"))["state"]!.GetValue<string>());

        await d.ActAsync("snappy", "stop");
        Assert.Equal(HttpStatusCode.NoContent, (await d.SendAsync(HttpMethod.Delete, "/api/v1/vms/snappy/snapshots/s1")).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await d.SendAsync(HttpMethod.Get, "/api/v1/vms/snappy/snapshots/s1")).Status);
    }
}
