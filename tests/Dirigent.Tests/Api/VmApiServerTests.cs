using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Dirigent.Api;
using Dirigent.Vmm;

namespace Dirigent.Tests.Api;

/// <summary>The per-VM API socket against a real running VM: every endpoint, every error class, and the socket file.</summary>
public class VmApiServerTests
{
    [Fact]
    public async Task GetVmDescribesTheRunningVm()
    {
        await using var t = await ApiTestVm.StartAsync();
        var vm = await t.GetVm();
        Assert.Equal("running", vm.GetProperty("state").GetString());
        Assert.Equal("emu", vm.GetProperty("accel").GetString());
        Assert.Equal(1, vm.GetProperty("vcpus").GetInt32());
        Assert.Equal(16, vm.GetProperty("memory_mib").GetInt32());
        Assert.Equal(0, vm.GetProperty("reboots").GetInt32());
        Assert.False(vm.TryGetProperty("exit", out _));
        await t.AssertUptimeAdvancesPast(vm.GetProperty("uptime_s").GetDouble());
    }

    [Fact]
    public async Task VcpusAreListedWithoutPausingTheVm()
    {
        // Two vCPUs; the guest never starts the AP, so vCPU 1 still waits for a SIPI at the reset vector.
        await using var t = await ApiTestVm.StartAsync(cpus: 2);
        async Task<JsonElement[]> Vcpus()
        {
            using var r = await t.Http.GetAsync("/v1/vm/vcpus");
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            using var doc = JsonDocument.Parse(await r.Content.ReadAsByteArrayAsync());
            return doc.RootElement.GetProperty("vcpus").EnumerateArray().Select(e => e.Clone()).ToArray();
        }
        var first = await Vcpus();
        Assert.Equal(2, first.Length);
        Assert.Equal(0, first[0].GetProperty("index").GetInt32());
        Assert.Equal(32, first[0].GetProperty("mode").GetInt32()); // the Multiboot guest runs in protected mode
        Assert.Contains(first[0].GetProperty("activity").GetString(), new[] { "running", "halted" });
        Assert.Equal("wait_for_sipi", first[1].GetProperty("activity").GetString());
        Assert.Equal("0xf000", first[1].GetProperty("cs").GetString());
        Assert.Equal("0xfff0", first[1].GetProperty("rip").GetString());
        Assert.Equal(16, first[1].GetProperty("mode").GetInt32());
        Assert.Equal(0UL, first[1].GetProperty("instructions").GetUInt64());
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
        Assert.True(first[0].GetProperty("instructions").GetUInt64() > 0);
        // After its ready line the guest waits in STI; HLT: vCPU 0 is seen asleep there, inside the guest's code.
        var halted = await ApiTestVm.Until(Vcpus, v => v[0].GetProperty("activity").GetString() == "halted", "vCPU 0 to halt");
        Assert.True(Convert.ToUInt64(halted[0].GetProperty("rip").GetString(), 16) >= 0x10_0000);
        // Paused: the same answer from the stopped vCPUs.
        (await t.Put("/v1/vm/pause")).EnsureSuccessStatusCode();
        var paused = await Vcpus();
        Assert.Equal(paused[0].GetProperty("rip").GetString(), (await Vcpus())[0].GetProperty("rip").GetString());
        Assert.Equal("wait_for_sipi", paused[1].GetProperty("activity").GetString());
    }

    [Fact]
    public async Task PauseFreezesVmTimeAndResumeRestartsIt()
    {
        await using var t = await ApiTestVm.StartAsync();
        using (var r = await t.Put("/v1/vm/pause")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        var paused = await t.GetVm();
        Assert.Equal("paused", paused.GetProperty("state").GetString());
        double frozen = paused.GetProperty("uptime_s").GetDouble();
        // Let host time pass (the check cannot pass by luck: a running clock would move on meanwhile).
        await Task.Delay(50);
        Assert.Equal(frozen, await t.Uptime());
        Assert.Equal(frozen, await t.Uptime());

        using (var r = await t.Put("/v1/vm/resume")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
        await t.AssertUptimeAdvancesPast(frozen);
    }

    [Fact]
    public async Task ResumeWhileRunningIsAConflictAndTheVmRunsOn()
    {
        await using var t = await ApiTestVm.StartAsync();
        double before = await t.Uptime();
        using var r = await t.Put("/v1/vm/resume");
        string detail = await ApiTestVm.AssertProblem(r, HttpStatusCode.Conflict);
        Assert.Equal("cannot resume a VM that is running", detail);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
        await t.AssertUptimeAdvancesPast(before);
    }

    [Fact]
    public async Task ConcurrentPausesAreSerializedByTheVm()
    {
        await using var t = await ApiTestVm.StartAsync();
        var answers = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => t.Put("/v1/vm/pause")));
        // Exactly one pause wins; the others find the VM paused already.
        Assert.Equal(1, answers.Count(a => a.StatusCode == HttpStatusCode.NoContent));
        Assert.Equal(3, answers.Count(a => a.StatusCode == HttpStatusCode.Conflict));
        foreach (var a in answers) a.Dispose();
        var gets = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => t.GetVm()));
        Assert.All(gets, g => Assert.Equal("paused", g.GetProperty("state").GetString()));
    }

    public static TheoryData<string, string?, string> BadBodies => new()
    {
        { "/v1/vm/snapshot", "{", "not valid JSON" },
        { "/v1/vm/snapshot", "{\"path\": \"/tmp/x\"} trailing", "not valid JSON" },
        { "/v1/vm/snapshot", null, "request body is missing" },
        { "/v1/vm/snapshot", "{}", "missing field 'path'" },
        { "/v1/vm/snapshot", "[\"/tmp/x\"]", "must be a JSON object" },
        { "/v1/vm/snapshot", "{\"path\": \"\"}", "path is empty" },
        { "/v1/vm/snapshot", "{\"path\": 7}", "field 'path' must be a string, not a number" },
        { "/v1/vm/snapshot", "{\"path\": \"/tmp/x\", \"force\": true}", "unknown field 'force'" },
        { "/v1/vm/snapshot", "{\"path\": \"/tmp/x\", \"path\": \"/tmp/y\"}", "given twice" },
        { "/v1/vm/snapshot", "{\"path\": \"relative/dir\"}", "not an absolute path" },
        { "/v1/vm/migrate", "{\"to\": \"ftp://host\"}", "expected unix:PATH or tcp:HOST:PORT" },
        { "/v1/vm/migrate", "{\"to\": \"tcp:host\"}", "expected tcp:HOST:PORT" },
        { "/v1/vm/migrate", "{\"to\": \"tcp:host:0\"}", "port must be 1-65535" },
        { "/v1/vm/migrate", "{\"to\": \"tcp:host:65536\"}", "port must be 1-65535" },
        { "/v1/vm/migrate", "{\"to\": \"tcp::::4444\"}", "IPv6 host in brackets" },
        { "/v1/vm/migrate", "{\"to\": \"unix:\"}", "is empty" },
        { "/v1/vm/migrate", "{\"to\": null}", "must be a string, not null" },
        { "/v1/vm/migrate", "{\"path\": \"unix:/tmp/s\"}", "unknown field 'path'" },
        { "/v1/vm/pause", "{\"now\": true}", "takes no request body" },
        { "/v1/vm/stop", "stop!", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(BadBodies))]
    public async Task BadRequestBodiesAre400AndTheVmRunsOn(string path, string? body, string expected)
    {
        await using var t = await ApiTestVm.StartAsync();
        double before = await t.Uptime();
        using var r = await t.Put(path, body);
        string detail = await ApiTestVm.AssertProblem(r, HttpStatusCode.BadRequest);
        Assert.Contains(expected, detail);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
        await t.AssertUptimeAdvancesPast(before);
    }

    [Fact]
    public async Task AnOversizedBodyIs413()
    {
        await using var t = await ApiTestVm.StartAsync();
        string big = "{\"path\": \"/" + new string('a', VmApiServer.MaxRequestBody) + "\"}";
        using var r = await t.Put("/v1/vm/snapshot", big);
        await ApiTestVm.AssertProblem(r, HttpStatusCode.RequestEntityTooLarge);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
    }

    [Fact]
    public async Task AnOversizedChunkedBodyIs413AndTheConnectionStaysUsable()
    {
        await using var t = await ApiTestVm.StartAsync();
        // No Content-Length: the server only learns the size by reading; the answer must still be a 413, heard by
        // a client that writes the whole body first, and the next request on the same client must work.
        var body = new byte[VmApiServer.MaxRequestBody * 3];
        body.AsSpan().Fill((byte)' ');
        var content = new StreamContent(new MemoryStream(body));
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        using var req = new HttpRequestMessage(HttpMethod.Put, "/v1/vm/pause") { Content = content };
        req.Headers.TransferEncodingChunked = true;
        using var r = await t.Http.SendAsync(req);
        await ApiTestVm.AssertProblem(r, HttpStatusCode.RequestEntityTooLarge);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
    }

    [Theory]
    [InlineData("GET", "/v1/nope")]
    [InlineData("GET", "/v2/vm")]
    [InlineData("PUT", "/v1/vm/pause/now")]
    [InlineData("GET", "/favicon.ico")]
    [InlineData("DELETE", "/")]
    public async Task UnknownPathsAre404(string method, string path)
    {
        await using var t = await ApiTestVm.StartAsync();
        using var r = await t.Send(new HttpMethod(method), path);
        string detail = await ApiTestVm.AssertProblem(r, HttpStatusCode.NotFound);
        Assert.Contains("no such endpoint", detail);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
    }

    [Theory]
    [InlineData("POST", "/v1/vm", "GET")]
    [InlineData("PUT", "/v1/vm", "GET")]
    [InlineData("GET", "/v1/vm/pause", "PUT")]
    [InlineData("POST", "/v1/vm/stop", "PUT")]
    [InlineData("DELETE", "/v1/vm/snapshot", "PUT")]
    [InlineData("PUT", "/v1/vm/console", "GET")]
    public async Task AWrongMethodIs405WithAllow(string method, string path, string allowed)
    {
        await using var t = await ApiTestVm.StartAsync();
        using var r = await t.Send(new HttpMethod(method), path);
        await ApiTestVm.AssertProblem(r, HttpStatusCode.MethodNotAllowed);
        Assert.Equal([allowed], r.Content.Headers.Allow);
        // Nothing happened: a GET of the stop endpoint did not stop the VM.
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
    }

    [Fact]
    public async Task PowerButtonStartsTheGuestsShutdown()
    {
        await using var t = await ApiTestVm.StartAsync();
        using (var r = await t.Put("/v1/vm/power-button")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        Assert.Equal("shutting_down", (await t.GetVm()).GetProperty("state").GetString());
        // Pressing it again while the guest shuts down is allowed.
        using (var r = await t.Put("/v1/vm/power-button", "{}")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }

    [Fact]
    public async Task StopEndsTheVmWithStoppedByRequest()
    {
        await using var t = await ApiTestVm.StartAsync();
        using (var r = await t.Put("/v1/vm/stop")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        var vm = await t.GetVm();
        Assert.Equal("stopped", vm.GetProperty("state").GetString());
        var exit = vm.GetProperty("exit");
        Assert.Equal("stopped_by_request", exit.GetProperty("kind").GetString());
        Assert.Equal("", exit.GetProperty("detail").GetString());
        Assert.Equal(VmExitKind.StoppedByRequest, (await t.Vm.Completion).Kind);
        // Stopping a stopped VM is a no-op; resuming it is a conflict that names the state.
        using (var r = await t.Put("/v1/vm/stop")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        using (var r = await t.Put("/v1/vm/resume"))
            Assert.StartsWith("cannot resume a VM that is stopped", await ApiTestVm.AssertProblem(r, HttpStatusCode.Conflict));
    }

    [Fact]
    public async Task ResetRebootsTheGuest()
    {
        await using var t = await ApiTestVm.StartAsync();
        using (var r = await t.Put("/v1/vm/reset")) Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        var vm = await t.GetVm();
        Assert.Equal("running", vm.GetProperty("state").GetString());
        Assert.Equal(1, vm.GetProperty("reboots").GetInt32());
        // The guest starts over and prints its line again.
        await t.WaitForConsole(ApiTestVm.ReadyLine, 2);
    }

    [Fact]
    public async Task ConsoleReturnsTheRecentOutputAsBytes()
    {
        await using var t = await ApiTestVm.StartAsync();
        using var r = await t.Http.GetAsync("/v1/vm/console");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("application/octet-stream", r.Content.Headers.ContentType?.MediaType);
        Assert.Equal(ApiTestVm.ReadyLine + "\r\n", Encoding.ASCII.GetString(await r.Content.ReadAsByteArrayAsync()));
    }

    [Fact]
    public async Task SnapshotIsCompleteOnDiskOrAFailureThatLeavesTheVmRunning()
    {
        await using var t = await ApiTestVm.StartAsync();
        string dir = Path.Combine(t.Dir, "snap");
        using var r = await t.Put("/v1/vm/snapshot", JsonSerializer.Serialize(new { path = dir }));
        if (r.StatusCode == HttpStatusCode.NoContent)
        {
            Assert.True(File.Exists(Path.Combine(dir, "state.json")), "204 before the snapshot was on disk");
        }
        else
        {
            // Until snapshots exist (and for any host failure): a 500 with the message, logged as one line.
            string detail = await ApiTestVm.AssertProblem(r, HttpStatusCode.InternalServerError);
            string log = t.Log.ToString();
            Assert.Single(log.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Contains($"api: PUT /v1/vm/snapshot: 500 {detail}", log);
        }
        // SaveSnapshot resumes the VM it paused.
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
        await t.AssertUptimeAdvancesPast(await t.Uptime());
    }

    [Fact]
    public async Task MigrationToNoTargetFailsAndTheVmRunsOnHere()
    {
        await using var t = await ApiTestVm.StartAsync();
        string to = "unix:" + Path.Combine(t.Dir, "nobody-listens.sock");
        using var r = await t.Put("/v1/vm/migrate", JsonSerializer.Serialize(new { to }));
        Assert.True((int)r.StatusCode >= 400, $"migration to nowhere answered {(int)r.StatusCode}");
        await ApiTestVm.AssertProblem(r, r.StatusCode);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
        await t.AssertUptimeAdvancesPast(await t.Uptime());
    }

    [Fact]
    public async Task SocketIsOwnerOnlyAndRemovedAtDispose()
    {
        var t = await ApiTestVm.StartAsync();
        try
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, ApiTestVm.ModeOf(t.SocketPath));
            Assert.Equal(UnixSocketPath.FileType.Socket, UnixSocketPath.TypeOf(t.SocketPath));
            await t.Server.DisposeAsync();
            Assert.Equal(UnixSocketPath.FileType.Missing, UnixSocketPath.TypeOf(t.SocketPath));
            // The VM does not depend on its API: it runs on.
            Assert.Equal(VmState.Running, t.Vm.State);
        }
        finally { await t.DisposeAsync(); }
    }

    [Fact]
    public async Task AStaleSocketIsReplacedAndALiveOneRefused()
    {
        await using var t = await ApiTestVm.StartAsync();
        string stale = Path.Combine(t.Dir, "stale.sock");
        // What a killed VMM leaves behind: a socket file nobody listens on. (.NET removes the file of a socket it
        // bound when closing it, so move the file away first.)
        using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            string bound = Path.Combine(t.Dir, "bound.sock");
            s.Bind(new UnixDomainSocketEndPoint(bound));
            File.Move(bound, stale);
        }
        Assert.Equal(UnixSocketPath.FileType.Socket, UnixSocketPath.TypeOf(stale));
        await using (var second = await VmApiServer.StartAsync(t.Vm, stale, TextWriter.Null))
        {
            using var c = ApiTestVm.CreateClient(stale);
            using var r = await c.GetAsync("/v1/vm");
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, ApiTestVm.ModeOf(stale));
        }
        // The first server still serves: a second one on its path is refused, and it is left alone.
        var e = await Assert.ThrowsAsync<ApiSocketException>(() => VmApiServer.StartAsync(t.Vm, t.SocketPath, TextWriter.Null));
        Assert.Contains("in use by another process", e.Message);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString());
    }

    [Fact]
    public async Task APathThatIsNotASocketIsRefusedAndLeftAlone()
    {
        await using var t = await ApiTestVm.StartAsync();
        string file = Path.Combine(t.Dir, "precious.txt");
        File.WriteAllText(file, "keep me");
        var e = await Assert.ThrowsAsync<ApiSocketException>(() => VmApiServer.StartAsync(t.Vm, file, TextWriter.Null));
        Assert.Equal($"API socket '{file}' exists and is not a socket (it is a regular file)", e.Message);
        Assert.Equal("keep me", File.ReadAllText(file));
        var d = await Assert.ThrowsAsync<ApiSocketException>(() => VmApiServer.StartAsync(t.Vm, t.Dir, TextWriter.Null));
        Assert.Contains("is not a socket (it is a directory)", d.Message);
        var m = await Assert.ThrowsAsync<ApiSocketException>(() =>
            VmApiServer.StartAsync(t.Vm, Path.Combine(t.Dir, "no-such-dir", "api.sock"), TextWriter.Null));
        Assert.Contains("does not exist", m.Message);
    }

    [Fact]
    public async Task ClientErrorsAreNotLoggedUnlessEveryRequestIs()
    {
        await using var t = await ApiTestVm.StartAsync();
        using (var r = await t.Put("/v1/vm/resume")) Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        Assert.Equal("", t.Log.ToString());

        string path = Path.Combine(t.Dir, "verbose.sock");
        var log = new StringWriter();
        await using (var verbose = await VmApiServer.StartAsync(t.Vm, path, log, logRequests: true))
        {
            using var c = ApiTestVm.CreateClient(path);
            using (var r = await c.GetAsync("/v1/vm")) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            using (var r = await c.PutAsync("/v1/vm/resume", null)) Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        }
        Assert.Equal(["api: GET /v1/vm: 200", "api: PUT /v1/vm/resume: 409 cannot resume a VM that is running"],
            log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')));
    }

    [Fact]
    public void ErrorsAreClassifiedByWhatFailed()
    {
        Assert.Equal(409, VmApiServer.Classify(new VmStateException("cannot pause a VM that is paused")).Status);
        Assert.Equal(400, VmApiServer.Classify(new VmException("snapshot directory exists", badInput: true)).Status);
        Assert.Equal((500, "disk full"), VmApiServer.Classify(new VmException("disk full", badInput: false)));
        Assert.Equal((500, "not implemented yet: snapshots"), VmApiServer.Classify(new NotImplementedException("snapshots")));
        Assert.Equal((500, "IndexOutOfRangeException: boom"), VmApiServer.Classify(new IndexOutOfRangeException("boom")));
    }

    [Theory]
    [InlineData("unix:/run/dirigent/target.sock")]
    [InlineData("tcp:10.0.0.2:4444")]
    [InlineData("tcp:host.example:1")]
    [InlineData("tcp:[::1]:65535")]
    public void ValidMigrationTargetsPass(string to) => VmApiServer.CheckMigrationTarget(to);

    [CurlFact]
    public async Task CurlCanQueryTheVm()
    {
        await using var t = await ApiTestVm.StartAsync();
        var psi = new ProcessStartInfo(CurlFactAttribute.CurlPath!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in new[] { "--silent", "--show-error", "--fail", "--max-time", "30", "--unix-socket", t.SocketPath, "http://localhost/v1/vm" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(p.ExitCode == 0, $"curl exited {p.ExitCode}: {await stderr}");
        using var doc = JsonDocument.Parse(await stdout);
        Assert.Equal("running", doc.RootElement.GetProperty("state").GetString());
        Assert.Equal(16, doc.RootElement.GetProperty("memory_mib").GetInt32());
    }
}
