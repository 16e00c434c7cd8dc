using Dirigent.Daemon.Workers;

namespace Dirigent.Tests.Daemon.Workers;

/// <summary>The supervisor's parsing of what the kernel and the worker leave behind: /proc/PID/stat and exit.json.</summary>
public sealed class WorkerRecordTests
{
    [Fact]
    public void StartTimeIsField22EvenWhenTheCommandNameHasSpacesAndParentheses()
    {
        // Fields 3.. after the last ')': state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt, majflt,
        // cmajflt, utime, stime, cutime, cstime, priority, nice, num_threads, itrealvalue, starttime (22), vsize...
        const string rest = " S 1 100 100 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 12 0 987654 123456789 4000";
        Assert.Equal(987654, ProcessInfo.ParseStartTime("4242 (dirigent)" + rest));
        Assert.Equal(987654, ProcessInfo.ParseStartTime("4242 (a) b (c d)" + rest));
        Assert.Null(ProcessInfo.ParseStartTime("4242 (dirigent)" + rest.Replace(" S ", " Z "))); // zombie: dead
        Assert.Null(ProcessInfo.ParseStartTime("4242 (dirigent) S 1 2"));
        Assert.Null(ProcessInfo.ParseStartTime("garbage"));
    }

    [Fact]
    public void OwnProcessIsAliveWithItsStartTime()
    {
        int pid = Environment.ProcessId;
        long? t = ProcessInfo.StartTime(pid);
        Assert.NotNull(t);
        Assert.True(ProcessInfo.IsAlive(pid, t.Value));
        Assert.False(ProcessInfo.IsAlive(pid, t.Value + 1));
        Assert.False(ProcessInfo.Signal(pid, t.Value + 1, 0)); // the start time guards the signal
        Assert.Null(ProcessInfo.StartTime(-1));
    }

    [Fact]
    public void ExitRecordIsParsedAndABadOneIsACrash()
    {
        var e = WorkerHandle.ParseExitJson(
            """{"state":"crashed","kind":"triple_fault","detail":"triple fault\nat 0x10","exit_code":3,"rip":"0x10"}""");
        Assert.Equal(new WorkerExit("crashed", "triple_fault", "triple fault at 0x10", 3), e);
        e = WorkerHandle.ParseExitJson("""{"state":"stopped","kind":"power_off","detail":"guest powered off"}""");
        Assert.Equal(new WorkerExit("stopped", "power_off", "guest powered off", null), e);
        foreach (string bad in new[] { "{", "[]", """{"kind":"x"}""", """{"state":"sleeping","kind":"x"}""" })
        {
            e = WorkerHandle.ParseExitJson(bad);
            Assert.Equal("crashed", e.State);
            Assert.Equal("vmm_error", e.Kind);
            Assert.StartsWith("the worker's exit.json is unreadable: ", e.Detail);
        }
    }

    [Fact]
    public void ExitFileIsReadFromTheVmDirectory()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-workers-").FullName;
        try
        {
            Assert.Null(WorkerSupervisor.ReadExitFile(dir));
            File.WriteAllText(Path.Combine(dir, "exit.json"), """{"state":"stopped","kind":"reset","detail":"guest reset","exit_code":0}""");
            Assert.Equal(new WorkerExit("stopped", "reset", "guest reset", 0), WorkerSupervisor.ReadExitFile(dir));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void WorkerGetsTheVmsOptionsThenTheDaemonsOwn()
    {
        var s = new WorkerSupervisor(WorkerCommand.DotnetDll("/opt/dirigent/dirigent.dll"), new FakeCgroupManager(), TextWriter.Null);
        var args = s.WorkerArguments(new WorkerLaunch("web", "/var/lib/dirigent/vms/web", ["--memory", "256M"], null));
        Assert.Equal([
            "/opt/dirigent/dirigent.dll", "run", "--memory", "256M",
            "--serial", "none",
            "--console-log", "/var/lib/dirigent/vms/web/console.log",
            "--api-socket", "/var/lib/dirigent/vms/web/worker.sock",
            "--exit-file", "/var/lib/dirigent/vms/web/exit.json",
            "--detach",
        ], args);
    }

    [Fact]
    public async Task RunArgsMayNotSetTheDaemonsOwnOptions()
    {
        var s = new WorkerSupervisor("/usr/bin/dirigent", new FakeCgroupManager(), TextWriter.Null);
        var e = await Assert.ThrowsAsync<ArgumentException>(() =>
            s.StartAsync(new WorkerLaunch("web", "/nonexistent/web", ["--api-socket", "/tmp/x.sock"], null)));
        Assert.Contains("--api-socket", e.Message);
    }
}
