using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Cli;
using Dirigent.Cli.Client;
using Dirigent.Images;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Cli;

/// <summary>
/// `dirigent vm trace|dump|ps` through a real daemon and its workers (README "Introspection"): the daemon proxies
/// /api/v1/vms/NAME/{trace,memory-dump,processes} to the VM's worker API socket.
/// </summary>
public sealed class CliIntrospectionTests(CliDaemon d) : IClassFixture<CliDaemon>
{
    private static readonly TimeSpan Hang = TimeSpan.FromMinutes(5);

    [Fact]
    public void DumpWritesGuestRamWhereTheClientIsAndPsNeedsASystemMap()
    {
        d.Ok("vm", "create", "dumpy", "--kernel", d.Kernel, "--memory", "16M", "--accel", "emu");
        string dir = Dirigent.Tests.Cli.Cli.TempDir("dgdump-");
        try
        {
            string raw = Path.Combine(dir, "g.raw"), elf = Path.Combine(dir, "g.elf");
            // Not running: 409, status 4, one line.
            var stopped = d.Run("vm", "dump", "dumpy", raw);
            Assert.True(stopped.Exit == ClientExit.Conflict, stopped.ToString());
            Assert.Single(stopped.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            d.Ok("vm", "start", "dumpy");
            Assert.Equal("", d.Ok("vm", "dump", "dumpy", raw).Out);
            byte[] mem = File.ReadAllBytes(raw);
            Assert.Equal(16L << 20, mem.Length);
            // The guest's image sits at 1 MiB, its Multiboot header first: the dump is its RAM, at physical addresses.
            Assert.Equal(0x1BADB002u, BitConverter.ToUInt32(mem, 0x10_0000));
            d.Ok("vm", "dump", "dumpy", elf, "--format", "elf");
            byte[] e = File.ReadAllBytes(elf);
            Assert.Equal("\u007fELF"u8.ToArray(), e[..4]);
            Assert.Equal((ushort)4, BitConverter.ToUInt16(e, 16)); // ET_CORE
            // The daemon removed its temporary copy from the VM's directory.
            Assert.Empty(Directory.GetFiles(Path.Combine(d.Home, "vms", "dumpy"), ".memory-dump-*", SearchOption.AllDirectories));
            var bad = d.Run("vm", "dump", "dumpy", raw, "--format", "zip");
            Assert.True(bad.Exit == ClientExit.BadCommandLine, bad.ToString());

            // The tiny guest has no kernel: the worker's 400 (no System.map) comes through as one line, status 2.
            var ps = d.Run("vm", "ps", "dumpy");
            Assert.True(ps.Exit == ClientExit.BadCommandLine, ps.ToString());
            Assert.Contains("System.map", ps.Err);
            Assert.Equal("running", (string?)JsonNode.Parse(d.Ok("vm", "show", "dumpy", "--output", "json").Out)!["state"]);
            var none = d.Run("vm", "trace", "nosuch");
            Assert.True(none.Exit == ClientExit.NotFound, none.ToString());
            d.Ok("vm", "stop", "dumpy");
            var notRunning = d.Run("vm", "trace", "dumpy");
            Assert.True(notRunning.Exit == ClientExit.Conflict, notRunning.ToString());
            d.Ok("vm", "delete", "dumpy");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    [Trait("Category", "Boot")]
    public async Task TraceStreamsTheDefaultGuestsSystemCallsToStdout()
    {
        // The guest cannot know when the trace attaches, so it repeats the command.
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument("echo box > /etc/hostname; while true; do cat /etc/hostname; sleep 1; done")}";
        d.Ok("vm", "create", "tracy", "--memory", "256M", "--accel", "emu", "--append", append);
        d.Ok("vm", "start", "tracy");
        using (var trace = new CliChild(d.Home, "vm", "trace", "tracy"))
        {
            string line = await trace.WaitForLine(l => l.Contains("\"openat\"") && l.Contains("\"/etc/hostname\""), timeout: Hang);
            var ev = JsonNode.Parse(line)!;
            Assert.True((long)ev["ret"]! >= 0, line);
            Assert.Equal(0, (int)ev["vcpu"]!);
            // Every line is one JSON object.
            foreach (string l in trace.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries)) Assert.IsType<JsonObject>(JsonNode.Parse(l));
            Assert.Equal(0, await trace.TerminateAsync()); // Ctrl-C / SIGTERM: status 0
        }
        Assert.Equal("running", (string?)JsonNode.Parse(d.Ok("vm", "show", "tracy", "--output", "json").Out)!["state"]);
        d.Ok("vm", "stop", "tracy");
        d.Ok("vm", "delete", "tracy");
    }

    [SkippableFact]
    [Trait("Category", "Boot")]
    public async Task WithTheDefaultGuestsSystemMapCachedPsAndTraceNameProcesses()
    {
        // A daemon's VM names no System.map: its worker uses the one cached beside the default kernel (fetched here
        // once, as `run --trace` does), also inside the worker's jail.
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        Skip.If(DefaultImage.EnsureSystemMap(VmLauncher.CacheDir, img.KernelVersion, _ => { }, out string why) == null,
            $"no System.map for kernel {img.KernelVersion}: {why}");
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument("while true; do cat /etc/hostname; sleep 1; done")}";
        d.Ok("vm", "create", "psy", "--memory", "256M", "--accel", "emu", "--append", append);
        d.Ok("vm", "start", "psy");
        using (var trace = new CliChild(d.Home, "vm", "trace", "psy", "--process", "cat"))
        {
            string line = await trace.WaitForLine(l => l.Contains("\"openat\"") && l.Contains("\"/etc/hostname\""), timeout: Hang);
            var ev = JsonNode.Parse(line)!;
            Assert.Equal("cat", (string?)ev["comm"]);
            Assert.True((int)ev["pid"]! > 1, line);
            Assert.Equal(0, await trace.TerminateAsync());
        }
        var ps = JsonNode.Parse(d.Ok("vm", "ps", "psy", "--output", "json").Out)!;
        var procs = (ps as JsonArray ?? ps["processes"]!.AsArray()).Select(p => ((string?)p!["comm"], (int)p["pid"]!)).ToList();
        Assert.Contains(("kthreadd", 2), procs);
        d.Ok("vm", "stop", "psy");
        d.Ok("vm", "delete", "psy");
    }
}
