using System.Net;
using System.Text.Json.Nodes;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>One real daemon (with a TCP listener) shared by the tests that need no running VM.</summary>
public sealed class DaemonApiFixture : IAsyncLifetime
{
    internal DaemonProcess Daemon { get; private set; } = null!;

    public async Task InitializeAsync() => Daemon = await DaemonProcess.StartAsync(tcp: true);

    public async Task DisposeAsync() => await Daemon.DisposeAsync();
}

/// <summary>
/// The daemon's REST API over its Unix socket and TCP, without running VMs: validation and problem details, tokens,
/// records (ETag/If-Match), disks. Every error must be application/problem+json with the status and a useful detail.
/// </summary>
public sealed class DaemonApiTests(DaemonApiFixture fixture) : IClassFixture<DaemonApiFixture>
{
    private DaemonProcess D => fixture.Daemon;

    private async Task<string> Problem(HttpMethod method, string path, HttpStatusCode expected, object? body = null, string? raw = null,
        HttpClient? client = null, string? token = null)
    {
        var (status, json, resp) = await D.SendAsync(method, path, body, raw, client, token);
        Assert.True(status == expected, $"{method} {path}: expected {(int)expected}, got {(int)status} {json?.ToJsonString()}");
        Assert.Equal("application/problem+json", resp.Content.Headers.ContentType?.MediaType);
        Assert.Equal((int)expected, json!["status"]!.GetValue<int>());
        return json["detail"]!.GetValue<string>();
    }

    [Fact]
    public async Task BadRequestsGetProblemDetailsNamingTheField()
    {
        Assert.Contains("not valid JSON", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, raw: "{\"name\":"));
        Assert.Contains("'spec.memroy_mib'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest,
            new { name = "typo", spec = new { memroy_mib = 64 } }));
        Assert.Contains("'bogus'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, new { name = "x", bogus = 1 }));
        Assert.Contains("'spec.disks[0].sizee'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest,
            new { name = "x", spec = new { disks = new[] { new { path = "/tmp/x.img", sizee = 1 } } } }));
        Assert.Contains("'spec.vcpus'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest,
            new { name = "x", spec = new { vcpus = "two" } }));
        Assert.Contains("invalid name", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, new { name = "Bad_Name" }));
        Assert.Contains("absolute path", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest,
            new { name = "x", spec = new { kernel = "relative/bzImage" } }));
        Assert.Contains("missing field 'name'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, new { }));
        Assert.Contains("'restart'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, new { name = "x", restart = "sometimes" }));
        // Nothing of it was created.
        var list = await D.GetAsync("/api/v1/vms");
        Assert.DoesNotContain(list["vms"]!.AsArray(), v => v!["name"]!.GetValue<string>() is "x" or "typo");
    }

    [Fact]
    public async Task DuplicateWrongStateMissingAndOversizeAreProblems()
    {
        await D.CreateTinyAsync("dup");
        Assert.Contains("already exists", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.Conflict, new { name = "dup" }));
        // Wrong state known at submit time: 409 at once, no operation.
        Assert.Contains("stopped", await Problem(HttpMethod.Post, "/api/v1/vms/dup/pause", HttpStatusCode.Conflict));
        Assert.Contains("stopped", await Problem(HttpMethod.Post, "/api/v1/vms/dup/stop", HttpStatusCode.Conflict));
        Assert.Contains("no VM named 'ghost'", await Problem(HttpMethod.Get, "/api/v1/vms/ghost", HttpStatusCode.NotFound));
        Assert.Contains("no VM named 'ghost'", await Problem(HttpMethod.Post, "/api/v1/vms/ghost/start", HttpStatusCode.NotFound));
        Assert.Contains("no such endpoint", await Problem(HttpMethod.Get, "/api/v1/nothing-here", HttpStatusCode.NotFound));
        // A name no VM can have is just absent (never a server error from the inventory's key rules).
        await Problem(HttpMethod.Get, "/api/v1/vms/Bad%20Name%01", HttpStatusCode.NotFound);
        await Problem(HttpMethod.Get, "/api/v1/disks/..%2Fetc", HttpStatusCode.NotFound);
        Assert.Contains("state must be", await Problem(HttpMethod.Get, "/api/v1/vms?state=bogus", HttpStatusCode.BadRequest));
        Assert.Contains("no operation", await Problem(HttpMethod.Get, "/api/v1/operations/nope", HttpStatusCode.NotFound));
        var (_, _, resp) = await D.SendAsync(HttpMethod.Put, "/api/v1/vms");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, resp.StatusCode);
        Assert.Contains("GET", resp.Content.Headers.Allow);
        string big = "{\"name\":\"big\",\"pad\":\"" + new string('a', 70 * 1024) + "\"}";
        Assert.Contains("64 KiB", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.RequestEntityTooLarge, raw: big));
        await D.SendAsync(HttpMethod.Delete, "/api/v1/vms/dup");
    }

    [Fact]
    public async Task PatchHonoursIfMatchAndDeleteRemovesTheRecord()
    {
        var rec = await D.CreateTinyAsync("patchy");
        long rev = rec["revision"]!.GetValue<long>();
        var (_, _, get) = await D.SendAsync(HttpMethod.Get, "/api/v1/vms/patchy");
        Assert.Equal($"\"{rev}\"", get.Headers.ETag?.Tag);

        using (var req = new HttpRequestMessage(HttpMethod.Patch, "/api/v1/vms/patchy"))
        {
            req.Content = new StringContent("{\"spec\":{\"memory_mib\":32},\"restart\":\"on-failure\"}");
            req.Headers.TryAddWithoutValidation("If-Match", $"\"{rev}\"");
            var resp = await D.Http.SendAsync(req);
            Assert.Equal(HttpStatusCode.OK, resp.StatusCode);
            var body = JsonNode.Parse(await resp.Content.ReadAsStringAsync())!;
            Assert.Equal(32, body["spec"]!["memory_mib"]!.GetValue<int>());
            Assert.Equal("on-failure", body["restart"]!.GetValue<string>());
            // Merge semantics: the kernel given at create time is still there.
            Assert.Equal(D.Kernel, body["spec"]!["kernel"]!.GetValue<string>());
        }
        using (var req = new HttpRequestMessage(HttpMethod.Patch, "/api/v1/vms/patchy"))
        {
            req.Content = new StringContent("{\"autostart\":true}");
            req.Headers.TryAddWithoutValidation("If-Match", $"\"{rev}\""); // stale now
            var resp = await D.Http.SendAsync(req);
            Assert.Equal(HttpStatusCode.PreconditionFailed, resp.StatusCode);
        }
        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/vms/patchy")).Status);
        await Problem(HttpMethod.Get, "/api/v1/vms/patchy", HttpStatusCode.NotFound);
    }

    [Fact]
    public async Task TokensGuardTheTcpListener()
    {
        Assert.NotNull(D.TcpBase);
        using var tcp = new HttpClient { BaseAddress = new Uri(D.TcpBase!) };
        // No token: 401 with a bare Bearer challenge; a wrong one: invalid_token.
        var (_, _, none) = await D.SendAsync(HttpMethod.Get, "/api/v1/vms", client: tcp);
        Assert.Equal(HttpStatusCode.Unauthorized, none.StatusCode);
        Assert.Equal("Bearer", none.Headers.WwwAuthenticate.Single().Scheme);
        Assert.Contains("Bearer TOKEN", await Problem(HttpMethod.Get, "/api/v1/vms", HttpStatusCode.Unauthorized, client: tcp));
        await Problem(HttpMethod.Get, "/api/v1/vms", HttpStatusCode.Unauthorized, client: tcp,
            token: "drg_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");

        // Tokens are made over the socket (no token needed there: the file mode is the authentication).
        var ro = await D.PostAsync("/api/v1/tokens", new { name = "reader", rights = new[] { "read" } }, HttpStatusCode.Created);
        string reader = ro["secret"]!.GetValue<string>();
        var ad = await D.PostAsync("/api/v1/tokens", new { name = "boss", rights = new[] { "admin" } }, HttpStatusCode.Created);
        string admin = ad["secret"]!.GetValue<string>();

        Assert.Equal(HttpStatusCode.OK, (await D.SendAsync(HttpMethod.Get, "/api/v1/vms", client: tcp, token: reader)).Status);
        Assert.Contains("'admin'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.Forbidden, new { name = "tcpvm" }, client: tcp, token: reader));
        Assert.Contains("'operate'", await Problem(HttpMethod.Post, "/api/v1/vms/tcpvm/start", HttpStatusCode.Forbidden, client: tcp, token: reader));
        Assert.Equal(HttpStatusCode.Created, (await D.SendAsync(HttpMethod.Post, "/api/v1/vms", new { name = "tcpvm" }, client: tcp, token: admin)).Status);
        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/vms/tcpvm", client: tcp, token: admin)).Status);

        // A revoked token stops working at once; the secret is never listed.
        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/tokens/reader")).Status);
        await Problem(HttpMethod.Get, "/api/v1/vms", HttpStatusCode.Unauthorized, client: tcp, token: reader);
        var list = await D.GetAsync("/api/v1/tokens");
        Assert.DoesNotContain("secret", list.ToJsonString());
        Assert.Contains("boss", list.ToJsonString());
    }

    [Fact]
    public async Task DisksAreCreatedListedAndProtectedWhileUsed()
    {
        var disk = await D.PostAsync("/api/v1/disks", new { name = "data", format = "qcow2", size = "64M" }, HttpStatusCode.Created);
        Assert.Equal(64L << 20, disk["size_bytes"]!.GetValue<long>());
        Assert.True(File.Exists(disk["path"]!.GetValue<string>()));
        await D.PostAsync("/api/v1/disks", new { name = "over", backing = "data" }, HttpStatusCode.Created);
        Assert.Contains("already exists", await Problem(HttpMethod.Post, "/api/v1/disks", HttpStatusCode.Conflict, new { name = "data", size = 512 }));
        Assert.Contains("'size'", await Problem(HttpMethod.Post, "/api/v1/disks", HttpStatusCode.BadRequest, new { name = "odd", size = "12Q" }));
        await D.PostAsync("/api/v1/vms", new { name = "diskuser", spec = new { disks = new[] { new { disk = "over" } } } }, HttpStatusCode.Created);
        Assert.Contains("diskuser", await Problem(HttpMethod.Delete, "/api/v1/disks/over", HttpStatusCode.Conflict));
        Assert.Contains("backing", await Problem(HttpMethod.Delete, "/api/v1/disks/data", HttpStatusCode.Conflict));
        Assert.Contains("no disk named", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest,
            new { name = "nodisk", spec = new { disks = new[] { new { disk = "missing" } } } }));

        // A clone of the stopped VM gets its own overlay of each disk; purge removes it with the clone.
        var op = await D.PostAsync("/api/v1/vms/diskuser/clone", new { name = "diskclone" }, HttpStatusCode.Accepted);
        var done = await D.WaitOperationAsync(op);
        Assert.Equal("succeeded", done["status"]!.GetValue<string>());
        var clone = await D.GetAsync("/api/v1/vms/diskclone");
        string cloneDisk = clone["spec"]!["disks"]![0]!["disk"]!.GetValue<string>();
        var cd = await D.GetAsync($"/api/v1/disks/{cloneDisk}");
        Assert.Equal("over", cd["backing"]!.GetValue<string>());
        Assert.Equal("diskclone", cd["owner"]!.GetValue<string>());
        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/vms/diskclone?purge=true")).Status);
        await Problem(HttpMethod.Get, $"/api/v1/disks/{cloneDisk}", HttpStatusCode.NotFound);

        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/vms/diskuser")).Status);
        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/disks/over")).Status);
        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/disks/data")).Status);
        Assert.False(File.Exists(disk["path"]!.GetValue<string>()));
    }

    [Fact]
    public async Task VmFromAnImageBootsALinkedCloneItOwns()
    {
        // A stand-in system image (what `image build debian --out HOME/images/debian.qcow2` makes).
        string image = Path.Combine(D.Home, "images", "sysimg.qcow2");
        Directory.CreateDirectory(Path.GetDirectoryName(image)!);
        Dirigent.Storage.DiskImage.Create(image, "qcow2", 64L << 20);
        var vm = await D.PostAsync("/api/v1/vms", new { name = "fromimg", image = "sysimg", spec = new { disks = new[] { new { path = image } } } }, HttpStatusCode.Created);
        var disks = vm["spec"]!["disks"]!.AsArray();
        Assert.Equal("fromimg-root", disks[0]!["disk"]!.GetValue<string>()); // the clone is the first (boot) disk
        Assert.Equal(image, disks[1]!["path"]!.GetValue<string>());
        var root = await D.GetAsync("/api/v1/disks/fromimg-root");
        Assert.Equal("fromimg", root["owner"]!.GetValue<string>());
        Assert.Equal(64L << 20, root["size_bytes"]!.GetValue<long>());
        using (var overlay = Dirigent.Storage.Qcow2Disk.Open(root["path"]!.GetValue<string>(), readOnly: true))
            Assert.Equal(image, overlay.BackingFileName);

        Assert.Contains("no image 'nosuch'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, new { name = "noimg", image = "nosuch" }));
        Assert.Contains("'image'", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.BadRequest, new { name = "noimg", image = "../etc" }));
        Assert.Contains("already exists", await Problem(HttpMethod.Post, "/api/v1/vms", HttpStatusCode.Conflict, new { name = "fromimg", image = "sysimg" }));

        Assert.Equal(HttpStatusCode.NoContent, (await D.SendAsync(HttpMethod.Delete, "/api/v1/vms/fromimg?purge=true")).Status);
        await Problem(HttpMethod.Get, "/api/v1/disks/fromimg-root", HttpStatusCode.NotFound);
        Assert.True(File.Exists(image), "the image itself stays");
    }

    [Fact]
    public async Task MetricsCountRequests()
    {
        await D.GetAsync("/api/v1/vms");
        var resp = await D.Http.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.OK, resp.StatusCode);
        string text = await resp.Content.ReadAsStringAsync();
        Assert.Contains("dirigent_http_requests_total{method=\"GET\",route=\"/api/v1/vms\",status=\"200\"}", text);
        Assert.Contains("dirigent_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/vms\",le=\"+Inf\"}", text);
    }
}
