using System.Net;
using System.Net.WebSockets;
using System.Text;
using Dirigent.Daemon.Limits;
using Dirigent.Daemon.Workers;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Daemon.Workers;

/// <summary>
/// The daemon's worker supervisor with real worker processes (`dirigent run` from the CLI built beside the tests,
/// the tiny API guest on the software CPU): start, drive, kill, adopt from a second supervisor (a restarted daemon),
/// and start failures. Waits are on the worker's own signals (its API, its exit); timeouts are hang guards.
/// </summary>
public sealed class WorkerSupervisorTests
{
    private static Task<T> Until<T>(Func<Task<T>> probe, Func<T, bool> done, string what) => ApiTestVm.Until(probe, done, what);

    private static Task<string?> State(WorkerHandle h) => h.Client.GetVmAsync().ContinueWith(t => (string?)t.Result["state"]);

    private static async Task WaitRunningWithReadyLine(WorkerHandle h)
    {
        await Until(() => State(h), s => s == "running", "the VM to run");
        await Until(async () => Encoding.ASCII.GetString(await h.Client.GetConsoleAsync()), s => s.Contains(ApiTestVm.ReadyLine),
            "the guest's ready line");
    }

    [Fact]
    public async Task StartedWorkerRunsItsVmAndStopsAsStopped()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("web");
        Assert.True(h.IsChild);
        Assert.Equal(Path.Combine(f.VmDir("web"), "worker.sock"), h.SocketPath);
        Assert.Equal(ProcessInfo.StartTime(h.Pid), h.ProcessStartTime);
        Assert.Null(h.Cgroup); // no limits, no cgroup
        await WaitRunningWithReadyLine(h);
        // The worker persists its console for the daemon (GET /vms/NAME/console/log) and logs to worker.log.
        await Until(() => Task.FromResult(File.Exists(Path.Combine(f.VmDir("web"), "console.log"))
            ? File.ReadAllText(Path.Combine(f.VmDir("web"), "console.log")) : ""), s => s.Contains(ApiTestVm.ReadyLine), "console.log");
        Assert.False(h.Exited.IsCompleted);

        await h.Client.PutAsync("stop");
        var exit = await h.Exited.WaitAsync(WorkerFixture.Hang);
        Assert.Equal(WorkerExit.Stopped, exit.State);
        Assert.Equal("stopped_by_request", exit.Kind);
        Assert.Equal(0, exit.ExitCode);
        Assert.Null(ProcessInfo.StartTime(h.Pid));
        Assert.Contains("dirigentd: starting worker: run --kernel", File.ReadAllText(Path.Combine(f.VmDir("web"), "worker.log")));
    }

    [Fact]
    public async Task KilledWorkerIsCrashedWithTheSignal()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("victim");
        await Until(() => State(h), s => s == "running", "the VM to run");
        Assert.True(h.Kill());
        var exit = await h.Exited.WaitAsync(WorkerFixture.Hang);
        Assert.Equal(new WorkerExit(WorkerExit.Crashed, WorkerExit.WorkerDied, "worker process died (signal 9)", 128 + 9), exit);
        Assert.False(h.Kill()); // gone: nothing to signal
        var e = await Assert.ThrowsAsync<WorkerApiException>(() => h.Client.GetVmAsync());
        Assert.Null(e.Status);
    }

    [Fact]
    public async Task TerminatedWorkerStopsItsVmInOrder()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("polite");
        await Until(() => State(h), s => s == "running", "the VM to run");
        Assert.True(h.Terminate());
        var exit = await h.Exited.WaitAsync(WorkerFixture.Hang);
        // The worker caught SIGTERM, stopped its VM and wrote its exit record: stopped, not crashed.
        Assert.Equal(new WorkerExit(WorkerExit.Stopped, "signal", "stopped by SIGTERM", 128 + 15), exit);
    }

    [Fact]
    public async Task CancelledStartKillsTheWorker()
    {
        await using var f = new WorkerFixture();
        using var cts = new CancellationTokenSource();
        int spawned = 0;
        // Cancel right after the spawn (the supervisor adds the worker to its cgroup then), before it can answer.
        f.Cgroups.OnAddProcess = pid => { spawned = pid; cts.Cancel(); };
        await Assert.ThrowsAnyAsync<OperationCanceledException>(
            () => f.Supervisor.StartAsync(f.Launch("impatient", new ResourceLimits(null, 50, null)), cts.Token).WaitAsync(WorkerFixture.Hang));
        Assert.NotEqual(0, spawned);
        Assert.Null(ProcessInfo.StartTime(spawned)); // killed and reaped before the start gave up
        Assert.Equal(1, Assert.Single(f.Cgroups.Created).Disposals);
    }

    [Fact]
    public async Task RestartedSupervisorAdoptsTheWorkerAndSeesItsExit()
    {
        await using var f = new WorkerFixture();
        var first = await f.StartAsync("adoptee");
        await Until(() => State(first), s => s == "running", "the VM to run");
        // The first daemon goes away (its handle is dropped; the worker keeps running in its own session).
        first.Dispose();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => first.Exited);

        var second = f.NewSupervisor();
        var h = second.TryAdopt("adoptee", f.VmDir("adoptee"), first.Pid, first.ProcessStartTime);
        Assert.NotNull(h);
        f.Track(h);
        Assert.False(h.IsChild);
        Assert.Equal(first.Pid, h.Pid);
        Assert.Equal("running", await State(h));
        await WaitRunningWithReadyLine(h);

        await h.Client.PutAsync("stop");
        var exit = await h.Exited.WaitAsync(WorkerFixture.Hang);
        Assert.Equal(WorkerExit.Stopped, exit.State);
        Assert.Equal("stopped_by_request", exit.Kind);
    }

    [Fact]
    public async Task AdoptedWorkerKilledWithoutExitRecordVanished()
    {
        await using var f = new WorkerFixture();
        var first = await f.StartAsync("gone");
        first.Dispose();
        var h = f.NewSupervisor().TryAdopt("gone", f.VmDir("gone"), first.Pid, first.ProcessStartTime);
        Assert.NotNull(h);
        f.Track(h);
        Assert.True(h.Kill());
        var exit = await h.Exited.WaitAsync(WorkerFixture.Hang);
        Assert.Equal(new WorkerExit(WorkerExit.Crashed, WorkerExit.WorkerVanished, "worker process vanished", null), exit);
    }

    [Fact]
    public async Task AdoptRefusesAWrongStartTimeOrADeadPid()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("picky");
        var other = f.NewSupervisor();
        // Same PID, another start time: a reused PID, not our worker.
        Assert.Null(other.TryAdopt("picky", f.VmDir("picky"), h.Pid, h.ProcessStartTime + 1));
        // The right process but the wrong directory: no socket answers there.
        Directory.CreateDirectory(f.VmDir("elsewhere"));
        Assert.Null(other.TryAdopt("picky", f.VmDir("elsewhere"), h.Pid, h.ProcessStartTime));
        Assert.True(h.Kill());
        await h.Exited.WaitAsync(WorkerFixture.Hang);
        Assert.Null(other.TryAdopt("picky", f.VmDir("picky"), h.Pid, h.ProcessStartTime));
    }

    [Fact]
    public async Task WorkerThatCannotBootFailsTheStartWithItsOwnError()
    {
        await using var f = new WorkerFixture();
        string missing = Path.Combine(f.Dir, "no-such-kernel.bin");
        var e = await Assert.ThrowsAsync<WorkerStartException>(
            () => f.Supervisor.StartAsync(f.Launch("broken", kernel: missing)).WaitAsync(WorkerFixture.Hang));
        Assert.DoesNotContain('\n', e.Message);
        Assert.StartsWith("VM 'broken': the worker exited before its API answered (exit status 2): dirigent run:", e.Message);
        Assert.Contains(missing, e.Message);
        Assert.Contains(missing, e.LogTail);
        Assert.False(File.Exists(Path.Combine(f.VmDir("broken"), "worker.sock")));
    }

    [Fact]
    public async Task LimitsPutTheWorkerInItsCgroupWhichGoesWithIt()
    {
        await using var f = new WorkerFixture();
        var limits = new ResourceLimits(0.5, null, 64L << 20);
        var h = await f.StartAsync("limited", limits);
        var g = Assert.Single(f.Cgroups.Created);
        Assert.Same(g, h.Cgroup);
        Assert.Equal(limits, g.Limits);
        Assert.Equal([h.Pid], g.Pids);
        Assert.Equal(0, g.Disposals);

        // A restarted daemon finds the group again with the worker.
        h.Dispose();
        var adopted = f.NewSupervisor().TryAdopt("limited", f.VmDir("limited"), h.Pid, h.ProcessStartTime);
        Assert.NotNull(adopted);
        f.Track(adopted);
        Assert.Same(g, adopted.Cgroup);
        await adopted.Client.PutAsync("stop");
        await adopted.Exited.WaitAsync(WorkerFixture.Hang);
        Assert.Equal(1, g.Disposals); // removed once the worker has gone
    }

    [Fact]
    public async Task WorkerThatNeverAnswersIsKilledAfterTheStartTimeout()
    {
        await using var f = new WorkerFixture();
        // A worker waiting for an incoming migration serves no API until one comes: it never answers.
        var s = new WorkerSupervisor(WorkerFixture.CliCommand, f.Cgroups, TextWriter.Null) { StartTimeout = TimeSpan.FromSeconds(2) };
        int spawned = 0;
        f.Cgroups.OnAddProcess = pid => spawned = pid;
        var launch = new WorkerLaunch("mute", f.VmDir("mute"), ["--incoming", "unix:" + Path.Combine(f.Dir, "mig.sock"), "--accel", "emu"],
            new ResourceLimits(null, 100, null));
        var e = await Assert.ThrowsAsync<WorkerStartException>(() => s.StartAsync(launch).WaitAsync(WorkerFixture.Hang));
        Assert.StartsWith("VM 'mute': the worker did not answer on ", e.Message);
        Assert.Contains("within 2 s (killed)", e.Message);
        // (Not asserted: what the worker logged by then, which depends on how fast it started.)
        Assert.NotEqual(0, spawned);
        Assert.Null(ProcessInfo.StartTime(spawned));
    }

    [Fact]
    public async Task UnavailableLimitsFailTheStartBeforeAnyWorkerRuns()
    {
        await using var f = new WorkerFixture();
        f.Cgroups.FailWith = "cgroups need root";
        var e = await Assert.ThrowsAsync<WorkerStartException>(
            () => f.Supervisor.StartAsync(f.Launch("nolimits", new ResourceLimits(1, null, null))));
        Assert.Equal("VM 'nolimits': cannot apply its resource limits: cgroups need root", e.Message);
        Assert.IsType<CgroupException>(e.InnerException);
        Assert.False(File.Exists(Path.Combine(f.VmDir("nolimits"), "worker.log")));
    }

    [Fact]
    public async Task ClientReportsTheWorkersProblemDetail()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("api");
        var e = await Assert.ThrowsAsync<WorkerApiException>(() => h.Client.PutAsync("no-such-action"));
        Assert.Equal(HttpStatusCode.NotFound, e.Status);
        Assert.Contains("/v1/vm/no-such-action", e.Message);
        e = await Assert.ThrowsAsync<WorkerApiException>(() => h.Client.SnapshotAsync("relative/dir"));
        Assert.Equal(HttpStatusCode.BadRequest, e.Status);
        Assert.Contains("not an absolute path", e.Message);
        await h.Client.PutAsync("pause");
        Assert.Equal("paused", await State(h));
        await h.Client.PutAsync("resume");
        Assert.Equal("running", await State(h));
    }

    [Fact]
    public async Task ConsoleWebSocketReplaysTheGuestsOutput()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("console");
        await WaitRunningWithReadyLine(h);
        using var ws = await h.Client.ConnectConsoleAsync().WaitAsync(WorkerFixture.Hang);
        var got = new StringBuilder();
        var buf = new byte[4096];
        using var cts = new CancellationTokenSource(WorkerFixture.Hang);
        while (!got.ToString().Contains(ApiTestVm.ReadyLine))
        {
            var r = await ws.ReceiveAsync(buf, cts.Token);
            Assert.Equal(WebSocketMessageType.Binary, r.MessageType);
            got.Append(Encoding.ASCII.GetString(buf, 0, r.Count));
        }
        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", cts.Token);
    }

    [Fact]
    public async Task MetricsAnswerWithTheVcpus()
    {
        await using var f = new WorkerFixture();
        var h = await f.StartAsync("metrics");
        await WaitRunningWithReadyLine(h);
        var m = await h.Client.GetMetricsAsync();
        Assert.Equal("running", (string?)m["state"]);
        Assert.Single(m["vcpus"]!.AsArray());
        Assert.True((long)m["instructions_retired"]! > 0);
    }

    [Fact]
    public async Task ClientWithoutAWorkerSaysUnreachable()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-workers-").FullName;
        try
        {
            using var c = new WorkerClient(Path.Combine(dir, "worker.sock"));
            var e = await Assert.ThrowsAsync<WorkerApiException>(() => c.GetVmAsync());
            Assert.Null(e.Status);
            Assert.Contains("worker not reachable", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}
