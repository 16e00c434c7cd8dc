using Dirigent.Tests.Infrastructure;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Api;
using Dirigent.Vmm;
using Dirigent.Vmm.Sandbox;
using Dirigent.Vmm.Snapshots;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// PUT /v1/vm/revert (README "Sandbox"): a running sandbox VM put back to its start snapshot in one call, memory,
/// vCPUs, devices, VM time and the disks' overlays.
/// </summary>
public class SandboxRevertTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(10), Wait = TimeSpan.FromMinutes(8);

    /// <summary>Polls a condition (the guest runs on its own time) until it holds or <see cref="Wait"/> passes.</summary>
    private static async Task Until(Func<bool> done, string what, Func<string> context)
    {
        var end = DateTime.UtcNow + Wait;
        while (!done())
        {
            if (DateTime.UtcNow > end) throw new TimeoutException($"{what} did not happen; output tail:\n{GuestRunnerTail(context())}");
            await Task.Delay(100);
        }
    }

    private static string GuestRunnerTail(string s) => Dirigent.Tests.Boot.GuestRunner.Tail(s);

    private static int Count(string s, string what) => Regex.Matches(s, Regex.Escape(what)).Count;

    private static async Task<JsonElement> GetVm(HttpClient http)
    {
        using var r = await http.GetAsync("/v1/vm");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.Clone();
    }

    private static async Task Put(HttpClient http, string path)
    {
        using var r = await http.PutAsync(path, null);
        Assert.True(r.StatusCode == HttpStatusCode.NoContent, $"PUT {path}: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
    }

    [SkippableFact]
    [Trait("Category", "Boot")]
    public async Task RevertPutsARunningSandboxBackToItsStartDiskMemoryAndTime()
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        string dir = Directory.CreateTempSubdirectory("dirigent-sbrevert-").FullName;
        try
        {
            string disk = Path.Combine(dir, "blank.img"), box = Path.Combine(dir, "box"), sock = Path.Combine(dir, "api.sock");
            using (var f = File.Create(disk)) f.SetLength(16 << 20);
            // Each boot says what it finds on the disk and in RAM (tmpfs), then marks both and waits.
            string script = "echo \"DISK:[$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | tr -dc A-Z)]\"; " +
                            "if [ -e /tmp/mark ]; then echo MEM:MARKED; else echo MEM:CLEAN; fi; " +
                            "echo x > /tmp/mark; printf SANDBOXED | dd of=/dev/vda bs=512 seek=2048 conv=notrunc 2>/dev/null; sync; " +
                            "echo WROTE-MARKER; sleep 100000";
            var spec = DefaultGuestSpec.For(img, script);
            spec.Disks.Add(VmSpec.ParseDisk($"{disk},format=raw"));
            // A card (the guest leaves it down) only for the sinkhole's log, which marks the revert.
            bool slirp = Dirigent.Vmm.Net.SlirpNative.Probe() == null;
            if (slirp) spec.Nics.Add(NicConfig.Parse("user", 0));
            var r = new Dirigent.Tests.Boot.GuestRunner();
            var run = Task.Run(() => r.Run(spec, Guard, new RunOptions { Sandbox = box, ApiSocket = sock }));
            await Until(() => Count(r.Output, "WROTE-MARKER") >= 1 || run.IsCompleted, "the first boot's marker", () => r.Output + r.Errors);
            Assert.False(run.IsCompleted, $"the VM ended early: {r.Errors}");
            string first = r.Output;
            Assert.Contains("DISK:[]", first);
            Assert.Contains("MEM:CLEAN", first);

            using var http = ApiTestVm.CreateClient(sock);
            await Put(http, "/v1/vm/pause");
            double before = (await GetVm(http)).GetProperty("uptime_s").GetDouble();
            string overlay = Path.Combine(box, "disk0.qcow2"), startCopy = Path.Combine(box, VmSandbox.StartDir, "disk0.qcow2");
            // The overlay holds the guest's write now (what the revert must undo).
            Assert.NotEqual(SnapshotFiles.HashFile(startCopy), SnapshotFiles.HashFile(overlay));

            await Put(http, "/v1/vm/revert");
            var vm = await GetVm(http);
            Assert.Equal("paused", vm.GetProperty("state").GetString()); // a paused VM stays paused
            double after = vm.GetProperty("uptime_s").GetDouble();
            // VM time is the start snapshot's (a reset would have gone on counting from `before`).
            var state = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(box, VmSandbox.StartDir, SnapshotFiles.StateFile)))!;
            double start = (long)state["components"]!["clock"]!["state"]!["nowNs"]! / 1e9;
            Assert.True(after < before && Math.Abs(after - start) < 0.002, $"VM time after the revert {after} s, before it {before} s, at the start {start} s");
            Assert.Equal(SnapshotFiles.HashFile(startCopy), SnapshotFiles.HashFile(overlay));

            if (slirp)
            {
                var log = File.ReadAllLines(Path.Combine(box, VmSandbox.NetworkLogFile));
                Assert.Contains(log, l => l.Contains("\"event\":\"revert\""));
            }
            await Put(http, "/v1/vm/resume");
            await Until(() => Count(r.Output, "WROTE-MARKER") >= 2 || run.IsCompleted, "the second boot's marker", () => r.Output + r.Errors);
            string second = r.Output[first.Length..];
            // Booted again from the start: the kernel's banner, a disk without the write and RAM without the mark.
            Assert.Contains("Linux version", second);
            Assert.Contains("DISK:[]", second);
            Assert.Contains("MEM:CLEAN", second);
            Assert.DoesNotContain("MEM:MARKED", second);
            Assert.DoesNotContain("DISK:[SANDBOXED]", second);

            await Put(http, "/v1/vm/stop");
            int rc = await run;
            Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}");
            Assert.Contains("sandbox report", r.Errors);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public async Task RevertInPlaceRestoresVmTimeAndABadSnapshotChangesNothing()
    {
        await using var t = await ApiTestVm.StartAsync();
        var vm = t.Vm;
        string snap = Path.Combine(t.Dir, "snap");
        vm.Pause();
        var at = vm.Uptime;
        vm.SaveSnapshot(snap);
        vm.Resume();
        await Until(() => vm.Uptime > at, "VM time going on", () => "");
        vm.Pause();
        vm.RevertInPlace(snap);
        Assert.Equal(VmState.Paused, vm.State);
        Assert.Equal(at, vm.Uptime); // the clock is the snapshot's
        vm.Resume();

        // A snapshot with no memory file is refused before anything is touched: the VM runs on.
        File.Delete(Path.Combine(snap, SnapshotFiles.MemoryFile));
        var e = Assert.Throws<VmException>(() => vm.RevertInPlace(snap));
        Assert.Contains("memory file", e.Message);
        Assert.Equal(VmState.Running, vm.State);
        Assert.Throws<VmException>(() => vm.RevertInPlace(Path.Combine(t.Dir, "none")));
        Assert.Equal(VmState.Running, vm.State);
        Assert.Null(vm.ExitReason);
    }

    [Fact]
    public async Task RevertOfAVmThatIsNotASandboxIs409()
    {
        await using var t = await ApiTestVm.StartAsync();
        using var r = await t.Put("/v1/vm/revert");
        Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        Assert.Equal("application/problem+json", r.Content.Headers.ContentType?.MediaType);
        var p = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
        Assert.Contains("not a sandbox", p.GetProperty("detail").GetString());
        using var bad = await t.Put("/v1/vm/revert", "{\"x\":1}");
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
    }
}
