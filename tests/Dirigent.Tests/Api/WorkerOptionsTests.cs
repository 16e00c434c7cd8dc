using System.Text;
using System.Text.Json;
using Dirigent.Cli;
using Dirigent.Tests.Lifecycle;
using Dirigent.Vmm;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Api;

/// <summary>
/// `dirigent run`'s worker options, run in-process through <see cref="VmLauncher.Run"/> as the CLI does:
/// --console-log, --exit-file (every way a run ends), and both with --restore and --api-socket.
/// </summary>
public sealed class WorkerOptionsTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);
    private readonly string _dir = Directory.CreateTempSubdirectory("dirigent-worker-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string P(string name) => Path.Combine(_dir, name);

    private static int Run(VmSpec spec, RunOptions opts, StringWriter? err = null, CancellationToken cancel = default) =>
        VmLauncher.Run(spec, err ?? new StringWriter(), new MemoryStream(), new MemoryStream(), useTerminal: false,
            cancel: cancel, opts: opts);

    private static JsonElement ReadExit(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        return doc.RootElement.Clone();
    }

    [Fact]
    public void ConsoleLogHasAllOutputAndTheExitFileSaysHowTheVmEnded()
    {
        string kernel = TinyGuest.WriteKernel(_dir, ticks: 4, spin: 2000);
        var opts = new RunOptions { ConsoleLog = P("console.log"), ExitFile = P("exit.json") };
        int rc = Run(TinyGuest.Spec(kernel), opts);
        Assert.Equal("ABCD=", File.ReadAllText(P("console.log")));
        var exit = ReadExit(P("exit.json"));
        Assert.Equal("stopped", exit.GetProperty("state").GetString());
        Assert.Equal("debug_exit", exit.GetProperty("kind").GetString());
        int value = exit.GetProperty("debug_exit_value").GetInt32();
        Assert.Equal((value << 1) | 1, rc);
        Assert.Equal(rc, exit.GetProperty("exit_code").GetInt32());
        Assert.Equal($"debug-exit {value}", exit.GetProperty("detail").GetString());
        Assert.False(exit.TryGetProperty("rip", out _));
        Assert.Empty(Directory.GetFiles(_dir, "exit.json.tmp*"));

        // A second run appends to the log (a restarted or restored worker keeps the history) and replaces the exit file.
        Assert.Equal(rc, Run(TinyGuest.Spec(kernel), opts));
        Assert.Equal("ABCD=ABCD=", File.ReadAllText(P("console.log")));
    }

    [Fact]
    public void ACrashedGuestIsCrashedWithItsKindAndRip()
    {
        // An empty IDT and a division by zero: #DE -> #GP -> #DF -> triple fault.
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000, load = 0x10_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(load); a.dd(load); a.dd(0u); a.dd(0u); a.dd(load + 32);
        TinyGuest.EmitWriteCom1(a, "dying\n");
        a.push(0); a.push(0);
        a.lidt(__[esp + 2]);
        a.xor(ecx, ecx);
        a.div(ecx);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), load);
        File.WriteAllBytes(P("tf.bin"), ms.ToArray());

        int rc = Run(TinyGuest.Spec(P("tf.bin")), new RunOptions { ConsoleLog = P("c.log"), ExitFile = P("exit.json") });
        Assert.Equal(ExitCodes.GuestDied, rc);
        Assert.Equal("dying\n", File.ReadAllText(P("c.log")));
        var exit = ReadExit(P("exit.json"));
        Assert.Equal("crashed", exit.GetProperty("state").GetString());
        Assert.Equal("triple_fault", exit.GetProperty("kind").GetString());
        Assert.Equal(ExitCodes.GuestDied, exit.GetProperty("exit_code").GetInt32());
        Assert.StartsWith("0x", exit.GetProperty("rip").GetString());
        Assert.StartsWith("triple fault", exit.GetProperty("detail").GetString());
    }

    [Fact]
    public void AVmThatCannotStartLeavesAStartFailedExitFile()
    {
        File.WriteAllBytes(P("bad.bin"), new byte[4096]);
        var err = new StringWriter();
        int rc = Run(new VmSpec { Kernel = P("bad.bin"), Serial = "none" }, new RunOptions { ExitFile = P("exit.json") }, err);
        Assert.Equal(ExitCodes.BadInput, rc);
        var exit = ReadExit(P("exit.json"));
        Assert.Equal("crashed", exit.GetProperty("state").GetString());
        Assert.Equal("start_failed", exit.GetProperty("kind").GetString());
        Assert.Equal(ExitCodes.BadInput, exit.GetProperty("exit_code").GetInt32());
        Assert.Equal(err.ToString().Trim(), "dirigent run: " + exit.GetProperty("detail").GetString());

        // An unwritable console log is the same kind of mistake, reported the same way.
        string kernel = TinyGuest.WriteKernel(_dir, ticks: 1, spin: 10);
        rc = Run(TinyGuest.Spec(kernel), new RunOptions { ConsoleLog = P("no/such/dir/c.log"), ExitFile = P("exit.json") });
        Assert.Equal(ExitCodes.BadInput, rc);
        Assert.Contains("--console-log", ReadExit(P("exit.json")).GetProperty("detail").GetString());
    }

    [Fact]
    public async Task ASignalStopsTheWorkerWithKindSignalAndTheLogKeepsTheOutput()
    {
        // The API test guest prints its ready line and then sleeps in HLT; the test sees the line through the API
        // socket (as the daemon would), then "signals" the worker the way RunCommand's handler does.
        File.WriteAllBytes(P("g.bin"), ApiTestVm.BuildGuest());
        var opts = new RunOptions { ConsoleLog = P("c.log"), ExitFile = P("exit.json"), ApiSocket = P("w.sock") };
        using var cts = new CancellationTokenSource();
        var err = new StringWriter();
        var run = Task.Factory.StartNew(() => Run(TinyGuest.Spec(P("g.bin")), opts, err, cts.Token), TaskCreationOptions.LongRunning);
        await ApiTestVm.Until(async () =>
        {
            if (run.IsCompleted) Assert.Fail($"the worker ended early: {err}");
            if (!File.Exists(P("w.sock"))) return "";
            using var http = ApiTestVm.CreateClient(P("w.sock"));
            return await http.GetStringAsync("/v1/vm/console");
        }, s => s.Contains(ApiTestVm.ReadyLine), "the ready line");
        opts.Signal = new StopSignal("SIGTERM", 15);
        await cts.CancelAsync();
        Assert.True(run.WaitDone(Timeout));
        Assert.Equal(128 + 15, await run);
        Assert.Equal(ApiTestVm.ReadyLine + "\r\n", File.ReadAllText(P("c.log")));
        var exit = ReadExit(P("exit.json"));
        Assert.Equal("stopped", exit.GetProperty("state").GetString());
        Assert.Equal("signal", exit.GetProperty("kind").GetString());
        Assert.Equal("stopped by SIGTERM", exit.GetProperty("detail").GetString());
        Assert.Equal(143, exit.GetProperty("exit_code").GetInt32());
        Assert.False(File.Exists(P("w.sock"))); // the API socket is gone before the exit file appears
    }

    [Fact]
    public void ARestoredRunAppendsToTheLogAndWritesTheExitFile()
    {
        string kernel = TinyGuest.WriteKernel(_dir, ticks: 6, spin: 20_000);
        string before = Lifecycle.SnapshotTests.SaveMidRun(kernel, P("snap"), "B");
        File.WriteAllText(P("c.log"), before, Encoding.Latin1);
        int rc = Run(new VmSpec { Serial = "none" }, new RunOptions { RestoreDir = P("snap"), ConsoleLog = P("c.log"), ExitFile = P("exit.json") });
        Assert.Equal("ABCDEF=", File.ReadAllText(P("c.log")));
        var exit = ReadExit(P("exit.json"));
        Assert.Equal("debug_exit", exit.GetProperty("kind").GetString());
        Assert.Equal(rc, exit.GetProperty("exit_code").GetInt32());
    }
}
