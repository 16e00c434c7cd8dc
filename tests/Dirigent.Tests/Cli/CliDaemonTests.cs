using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Cli.Client;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Cli;

/// <summary>
/// The real CLI against a real daemon with real workers (the tiny idle guest on the software CPU): the VM lifecycle,
/// listings in json/yaml/table, the console, disks, tokens over TCP, and the documented exit statuses.
/// </summary>
public sealed class CliDaemonTests(CliDaemon d) : IClassFixture<CliDaemon>
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(240);

    private void CreateTiny(string name) =>
        d.Ok("vm", "create", name, "--kernel", d.Kernel, "--memory", "16M", "--accel", "emu");

    private JsonObject Show(string name) => JsonNode.Parse(d.Ok("vm", "show", name, "--output", "json").Out)!.AsObject();

    [Fact]
    public void VmLifecycleThroughTheCli()
    {
        CreateTiny("life");
        var list = JsonNode.Parse(d.Ok("vm", "list", "--output", "json").Out)!.AsArray();
        var rec = list.Single(v => (string?)v!["name"] == "life")!;
        Assert.Equal("stopped", (string?)rec["state"]);
        Assert.Equal(16, (int)rec["spec"]!["memory_mib"]!);
        Assert.Equal(d.Kernel, (string?)rec["spec"]!["kernel"]);

        Assert.Contains("- name: life\n", d.Ok("vm", "list", "--output", "yaml").Out);
        Assert.Matches(@"(?m)^life +stopped +1 +16 MiB", d.Ok("vm", "list").Out);
        Assert.Matches(@"(?m)^state +stopped$", d.Ok("vm", "show", "life").Out);
        Assert.Contains("state: stopped\n", d.Ok("vm", "show", "life", "-o", "yaml").Out);

        var start = d.Ok("vm", "start", "life");
        Assert.Equal("", start.Out);
        var running = Show("life");
        Assert.Equal("running", (string?)running["state"]);
        Assert.NotNull(running["pid"]);
        Assert.Contains("life", d.Ok("vm", "list", "--state", "running").Out);
        Assert.DoesNotContain("life", d.Ok("vm", "list", "--state", "stopped").Out);

        // Wrong state known at submit time: 409, status 4, one line naming the state.
        var again = d.Run("vm", "start", "life");
        Assert.True(again.Exit == ClientExit.Conflict, again.ToString());
        Assert.Single(again.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        var busy = d.Run("vm", "delete", "life");
        Assert.True(busy.Exit == ClientExit.Conflict, busy.ToString());

        d.Ok("vm", "stop", "life");
        Assert.Equal("stopped", (string?)Show("life")["state"]);
        var paused = d.Run("vm", "pause", "life");
        Assert.True(paused.Exit == ClientExit.Conflict, paused.ToString());

        d.Ok("vm", "delete", "life");
        var gone = d.Run("vm", "show", "life");
        Assert.True(gone.Exit == ClientExit.NotFound, gone.ToString());
        Assert.Equal("dirigent vm show: no VM named 'life'", gone.Err.Trim());
    }

    [Fact]
    public void UnknownVmsAreStatus3AndDuplicatesStatus4()
    {
        foreach (var args in new[] { new[] { "vm", "show", "ghost" }, ["vm", "start", "ghost"], ["vm", "delete", "ghost"], ["vm", "log", "ghost"], ["vm", "console", "ghost"] })
        {
            var r = d.Run(args);
            Assert.True(r.Exit == ClientExit.NotFound, $"{string.Join(' ', args)}: {r}");
        }
        CreateTiny("dupe");
        var dup = d.Run("vm", "create", "dupe");
        Assert.True(dup.Exit == ClientExit.Conflict, dup.ToString());
        Assert.Contains("already exists", dup.Err);
        // A name the daemon refuses: its 400 is a bad command line.
        var bad = d.Run("vm", "create", "Bad_Name");
        Assert.True(bad.Exit == ClientExit.BadCommandLine, bad.ToString());
        d.Ok("vm", "delete", "dupe");
    }

    [Fact]
    public async Task SetChangesTheRecordAndNoWaitPrintsTheOperation()
    {
        CreateTiny("setme");
        d.Ok("vm", "set", "setme", "--memory", "32M", "--restart", "on-failure", "--cpu-weight", "50");
        var rec = Show("setme");
        Assert.Equal(32, (int)rec["spec"]!["memory_mib"]!);
        Assert.Equal(d.Kernel, (string?)rec["spec"]!["kernel"]); // merge: the rest stays
        Assert.Equal("on-failure", (string?)rec["restart"]);
        Assert.Equal(50, (int)rec["limits"]!["cpu_weight"]!);

        string id = d.Ok("vm", "start", "setme", "--no-wait").Out.Trim();
        Assert.Matches("^[A-Za-z0-9_-]{22}$", id);
        using (var client = DaemonClient.ForSocket(Path.Combine(d.Home, "dirigent.sock"), null))
        {
            var op = await client.WaitAsync(new JsonObject { ["id"] = id, ["status"] = "pending" }, TextWriter.Null, CancellationToken.None).WaitAsync(Hang);
            Assert.Equal("succeeded", (string?)op["status"]);
        }
        // A running VM's spec is fixed: 409.
        var spec = d.Run("vm", "set", "setme", "--memory", "64M");
        Assert.True(spec.Exit == ClientExit.Conflict, spec.ToString());
        d.Ok("vm", "stop", "setme");
        d.Ok("vm", "delete", "setme");
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    [Fact]
    public async Task ConsoleWithoutATerminalPassesOutputUntilDetached()
    {
        CreateTiny("cons");
        d.Ok("vm", "start", "cons");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "dirigent.dll"), "vm", "console", "cons" }) psi.ArgumentList.Add(a);
        psi.Environment["DIRIGENT_HOME"] = d.Home;
        using var p = Process.Start(psi)!;
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = new StringBuilder();
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data == null) return;
            lock (output) output.AppendLine(e.Data);
            if (e.Data.Contains(ApiTestVm.ReadyLine, StringComparison.Ordinal)) seen.TrySetResult();
        };
        p.BeginOutputReadLine();
        var err = p.StandardError.ReadToEndAsync();
        try
        {
            // The replay of the ring brings the guest's line even though it was printed before we attached.
            await seen.Task.WaitAsync(Hang);
            // EOF on stdin ends input only: the console stays attached.
            p.StandardInput.Close();
            Assert.False(p.HasExited);
            // SIGTERM detaches: status 0, and the VM keeps running.
            Assert.Equal(0, kill(p.Id, 15));
            await p.WaitForExitAsync().WaitAsync(Hang);
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {await err}");
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
        Assert.Equal("running", (string?)Show("cons")["state"]);

        var log = d.Ok("vm", "log", "cons");
        Assert.Contains(ApiTestVm.ReadyLine, log.Out);
        d.Ok("vm", "stop", "cons");
        var notRunning = d.Run("vm", "console", "cons");
        Assert.True(notRunning.Exit == ClientExit.Conflict, notRunning.ToString());
        d.Ok("vm", "delete", "cons");
    }

    [SkippableFact]
    public async Task ConsoleOnATerminalDetachesWithCtrlAD()
    {
        Skip.IfNot(CliChild.HasScript, "util-linux script (a pseudo-terminal for the CLI) is not installed");
        CreateTiny("tty");
        d.Ok("vm", "start", "tty");
        using (var console = new CliChild(d.Home, pty: true, "vm", "console", "tty"))
        {
            await console.WaitForLine(l => l.Contains("attached to tty's console", StringComparison.Ordinal));
            await console.WaitForLine(l => l.Contains(ApiTestVm.ReadyLine, StringComparison.Ordinal));
            console.Type([0x01, (byte)'d']);
            await console.WaitForLine(l => l.Contains("detached from tty (it keeps running)", StringComparison.Ordinal));
            await console.Process.WaitForExitAsync().WaitAsync(Hang);
            Assert.True(console.Process.ExitCode == 0, $"exit {console.Process.ExitCode}: {console.Out}");
        }
        Assert.Equal("running", (string?)Show("tty")["state"]);
        d.Ok("vm", "stop", "tty");
        d.Ok("vm", "delete", "tty");
    }

    [Fact]
    public void DisksAreAddedListedAndRemoved()
    {
        d.Ok("disk", "add", "cli-d1", "--size", "1M");
        d.Ok("disk", "add", "cli-d2", "--backing", "cli-d1");
        var disks = JsonNode.Parse(d.Ok("disk", "list", "-o", "json").Out)!.AsArray();
        var d1 = disks.Single(x => (string?)x!["name"] == "cli-d1")!;
        Assert.Equal(1L << 20, (long)d1["size_bytes"]!);
        Assert.Matches(@"(?m)^cli-d2 +qcow2 +1 MiB +cli-d1", d.Ok("disk", "list").Out);
        var used = d.Run("disk", "rm", "cli-d1");
        Assert.True(used.Exit == ClientExit.Conflict, used.ToString()); // the backing of cli-d2
        d.Ok("disk", "rm", "cli-d2");
        d.Ok("disk", "rm", "cli-d1");
        var gone = d.Run("disk", "rm", "cli-d1");
        Assert.True(gone.Exit == ClientExit.NotFound, gone.ToString());
    }

    [Fact]
    public void TcpNeedsAGoodTokenWithTheRight()
    {
        var none = Cli.Run(d.Home, "vm", "list", "--host", d.TcpBase);
        Assert.True(none.Exit == ClientExit.Auth, none.ToString());
        var bad = Cli.Run(d.Home, "vm", "list", "--host", d.TcpBase, "--token", "drg_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        Assert.True(bad.Exit == ClientExit.Auth, bad.ToString());

        // With the daemon up, token create goes through its API (over the socket: no token needed there).
        var created = d.Ok("token", "create", "cli-reader", "--rights", "read");
        Assert.DoesNotContain("directly", created.Err);
        string secret = created.Out.Trim();
        var listed = Cli.RunWithToken(d.Home, secret, "vm", "list", "--host", d.TcpBase, "-o", "json");
        Assert.True(listed.Exit == 0, listed.ToString());
        var denied = Cli.RunWithToken(d.Home, secret, "vm", "create", "cli-tcp", "--host", d.TcpBase);
        Assert.True(denied.Exit == ClientExit.Auth, denied.ToString());
        Assert.Contains("cli-reader", d.Ok("token", "list").Out);
        d.Ok("token", "rm", "cli-reader");
        var revoked = Cli.RunWithToken(d.Home, secret, "vm", "list", "--host", d.TcpBase);
        Assert.True(revoked.Exit == ClientExit.Auth, revoked.ToString());
    }
}

/// <summary>The CLI's event stream and snapshot/clone verbs against the real daemon (its own daemon, so no other test's events).</summary>
public sealed class CliDaemonEventTests(CliDaemon d) : IClassFixture<CliDaemon>
{
    [Fact]
    public async Task EventsFollowAVmAsJsonLines()
    {
        d.Ok("vm", "create", "ev", "--kernel", d.Kernel, "--memory", "16M", "--accel", "emu");
        using var events = new CliChild(d.Home, "events", "--vm", "ev", "--output", "json");
        await events.WaitForLine(l => l.StartsWith("dirigent: following events", StringComparison.Ordinal), stderr: true);
        d.Ok("vm", "start", "ev");
        string line = await events.WaitForLine(l => l.Contains("\"vm-state-changed\"") && l.Contains("\"new_state\":\"running\""));
        var ev = JsonNode.Parse(line)!;
        Assert.True((long)ev["id"]! > 0);
        Assert.Equal("ev", (string?)ev["data"]!["vm"]);
        // Operations on the VM come too (the filter keeps those whose target is the VM).
        Assert.Contains("\"operation-", events.Out);
        Assert.Equal(0, await events.TerminateAsync());

        using var text = new CliChild(d.Home, "events");
        await text.WaitForLine(l => l.StartsWith("dirigent: following events", StringComparison.Ordinal), stderr: true);
        d.Ok("vm", "stop", "ev");
        await text.WaitForLine(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\d+ vm-state-changed vm=ev old_state=\w+ new_state=stopped"));
        Assert.Equal(0, await text.TerminateAsync());
        d.Ok("vm", "delete", "ev");
    }

    [Fact]
    public void SnapshotRestoreAndCloneThroughTheCli()
    {
        d.Ok("vm", "create", "snappy", "--kernel", d.Kernel, "--memory", "16M", "--accel", "emu");
        d.Ok("vm", "start", "snappy");
        d.Ok("vm", "snapshot", "snappy", "s1");
        var snaps = JsonNode.Parse(d.Ok("vm", "snapshots", "snappy", "-o", "json").Out)!.AsArray();
        Assert.Equal("s1", (string?)Assert.Single(snaps)!["name"]);
        Assert.Matches(@"(?m)^s1 ", d.Ok("vm", "snapshots", "snappy").Out);
        var dup = d.Run("vm", "snapshot", "snappy", "s1");
        Assert.True(dup.Exit == ClientExit.Conflict, dup.ToString());
        d.Ok("vm", "restore", "snappy", "s1");
        Assert.Equal("running", (string?)JsonNode.Parse(d.Ok("vm", "show", "snappy", "-o", "json").Out)!["state"]);
        var missing = d.Run("vm", "restore", "snappy", "nope");
        Assert.True(missing.Exit == ClientExit.NotFound, missing.ToString());

        d.Ok("vm", "stop", "snappy");
        d.Ok("vm", "clone", "snappy", "snappy2");
        var clone = JsonNode.Parse(d.Ok("vm", "show", "snappy2", "-o", "json").Out)!;
        Assert.Equal("stopped", (string?)clone["state"]);
        Assert.Equal(d.Kernel, (string?)clone["spec"]!["kernel"]);
        d.Ok("vm", "delete", "snappy2", "--purge");
        d.Ok("vm", "delete", "snappy");
    }
}
