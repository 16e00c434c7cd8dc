using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Web;

/// <summary>
/// What the daemon serves for the web console, over plain HTTP (no browser): the page and its files without a token,
/// the login that turns a token into a session cookie and what that cookie may do, and the metrics history behind
/// the graphs. One daemon with a TCP listener for the class.
/// </summary>
public sealed class WebConsoleApiTests : IAsyncLifetime
{
    private DaemonProcess _d = null!;
    private HttpClient _tcp = null!;

    public async Task InitializeAsync()
    {
        _d = await DaemonProcess.StartAsync(tcp: true);
        // Cookies by hand: each request says exactly which session (and Origin) it carries.
        _tcp = new HttpClient(new SocketsHttpHandler { UseCookies = false }) { BaseAddress = new Uri(_d.TcpBase!), Timeout = DaemonProcess.Hang };
    }

    public async Task DisposeAsync()
    {
        _tcp.Dispose();
        await _d.DisposeAsync();
    }

    private async Task<string> TokenAsync(string name, string right)
        => (await _d.PostAsync("/api/v1/tokens", new { name, rights = new[] { right } }, HttpStatusCode.Created))["secret"]!.GetValue<string>();

    private async Task<(HttpStatusCode Status, JsonNode? Body, HttpResponseMessage Resp)> TcpAsync(HttpMethod method, string path,
        string? json = null, string? cookie = null, string? origin = null)
    {
        using var req = new HttpRequestMessage(method, path);
        if (json != null) req.Content = new StringContent(json, Encoding.UTF8, "application/json");
        if (cookie != null) req.Headers.Add("Cookie", cookie);
        if (origin != null) req.Headers.Add("Origin", origin);
        var resp = await _tcp.SendAsync(req);
        string text = await resp.Content.ReadAsStringAsync();
        bool isJson = resp.Content.Headers.ContentType?.MediaType?.Contains("json") ?? false;
        return (resp.StatusCode, isJson && text.Length > 0 ? JsonNode.Parse(text) : null, resp);
    }

    /// <summary>Logs in with <paramref name="token"/>; returns "dirigent_session=..." for a Cookie header.</summary>
    private async Task<string> LoginAsync(string token)
    {
        var (status, body, resp) = await TcpAsync(HttpMethod.Post, "/api/v1/session", $"{{\"token\":\"{token}\"}}", origin: _d.TcpBase);
        Assert.True(status == HttpStatusCode.Created, $"login: {(int)status} {body?.ToJsonString()}");
        string setCookie = resp.Headers.GetValues("Set-Cookie").Single();
        return setCookie.Split(';')[0];
    }

    [Fact]
    public async Task PageAndFilesNeedNoTokenTheApiStillDoes()
    {
        var (status, _, resp) = await TcpAsync(HttpMethod.Get, "/");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text/html", resp.Content.Headers.ContentType?.MediaType);
        string html = await resp.Content.ReadAsStringAsync();
        Assert.Contains("<script type=\"module\" src=\"/ui/app.js\">", html);
        Assert.Contains("default-src 'self'", resp.Headers.GetValues("Content-Security-Policy").Single());
        Assert.Equal("nosniff", resp.Headers.GetValues("X-Content-Type-Options").Single());

        // Our modules and the npm packages the build embedded.
        foreach (var (file, type) in new[] { ("app.js", "text/javascript"), ("xterm.mjs", "text/javascript"), ("addon-fit.mjs", "text/javascript"),
                     ("xterm.css", "text/css"), ("app.css", "text/css"), ("xterm-LICENSE.txt", "text/plain") })
        {
            var (s, _, r) = await TcpAsync(HttpMethod.Get, "/ui/" + file);
            Assert.True(s == HttpStatusCode.OK, $"/ui/{file}: {(int)s}");
            Assert.Equal(type, r.Content.Headers.ContentType?.MediaType);
            // Revalidation answers 304 without the body.
            using var again = new HttpRequestMessage(HttpMethod.Get, "/ui/" + file);
            again.Headers.IfNoneMatch.Add(EntityTagHeaderValue.Parse(r.Headers.ETag!.ToString()));
            Assert.Equal(HttpStatusCode.NotModified, (await _tcp.SendAsync(again)).StatusCode);
        }
        var (missing, problem, mr) = await TcpAsync(HttpMethod.Get, "/ui/nope.js");
        Assert.Equal(HttpStatusCode.NotFound, missing);
        Assert.Equal("application/problem+json", mr.Content.Headers.ContentType?.MediaType);
        Assert.Contains("nope.js", problem!["detail"]!.GetValue<string>());

        Assert.Equal(HttpStatusCode.Unauthorized, (await TcpAsync(HttpMethod.Get, "/api/v1/vms")).Status);
        Assert.Equal(HttpStatusCode.Unauthorized, (await TcpAsync(HttpMethod.Get, "/api/v1/session")).Status);
        // On the Unix socket the page is there too, and nobody logs in.
        var unix = await _d.GetAsync("/api/v1/session");
        Assert.Equal("unix", unix["transport"]!.GetValue<string>());
        Assert.False(unix["login"]!.GetValue<bool>());
        Assert.Equal(HttpStatusCode.BadRequest, (await _d.SendAsync(HttpMethod.Post, "/api/v1/session", new { token = "x" })).Status);
        Assert.Contains("<title>Dirigent</title>", await _d.Http.GetStringAsync("/"));
    }

    [Fact]
    public async Task LoginGivesASessionCookieThatActsAsItsToken()
    {
        string admin = await TokenAsync("ui-admin", "admin"), reader = await TokenAsync("ui-reader", "read");

        // Bad logins: problem+json that names the field; no cookie.
        var (bad, badBody, badResp) = await TcpAsync(HttpMethod.Post, "/api/v1/session", "{\"token\":\"drg_nope\"}");
        Assert.Equal(HttpStatusCode.Unauthorized, bad);
        Assert.Contains("field 'token'", badBody!["detail"]!.GetValue<string>());
        Assert.False(badResp.Headers.Contains("Set-Cookie"));
        Assert.Equal(HttpStatusCode.BadRequest, (await TcpAsync(HttpMethod.Post, "/api/v1/session", "{\"secret\":\"x\"}")).Status);
        Assert.Equal(HttpStatusCode.BadRequest, (await TcpAsync(HttpMethod.Post, "/api/v1/session", "{nope")).Status);
        Assert.Equal(HttpStatusCode.Forbidden, (await TcpAsync(HttpMethod.Post, "/api/v1/session", $"{{\"token\":\"{admin}\"}}", origin: "http://evil.example")).Status);

        var (ok, who, resp) = await TcpAsync(HttpMethod.Post, "/api/v1/session", $"{{\"token\":\"{admin}\"}}");
        Assert.Equal(HttpStatusCode.Created, ok);
        Assert.Equal("ui-admin", who!["token"]!.GetValue<string>());
        string setCookie = resp.Headers.GetValues("Set-Cookie").Single();
        foreach (string attr in new[] { "HttpOnly", "SameSite=Strict", "Path=/" }) Assert.Contains(attr, setCookie);
        Assert.DoesNotContain(admin, setCookie);
        string cookie = setCookie.Split(';')[0];

        // The cookie is the token: reads, and (same origin) acts with its rights.
        Assert.Equal(HttpStatusCode.OK, (await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: cookie)).Status);
        var me = (await TcpAsync(HttpMethod.Get, "/api/v1/session", cookie: cookie)).Body!;
        Assert.True(me["login"]!.GetValue<bool>());
        Assert.Equal("tcp", me["transport"]!.GetValue<string>());
        string create = $"{{\"name\":\"c1\",\"spec\":{{\"kernel\":\"{_d.Kernel}\",\"memory_mib\":16,\"accel\":\"emu\"}}}}";
        Assert.Equal(HttpStatusCode.Created, (await TcpAsync(HttpMethod.Post, "/api/v1/vms", create, cookie, origin: _d.TcpBase)).Status);
        // Another origin (another port of this host is the same site, so SameSite does not stop it) or none: refused.
        var (foreign, fBody, _) = await TcpAsync(HttpMethod.Delete, "/api/v1/vms/c1", cookie: cookie, origin: "http://127.0.0.1:1");
        Assert.Equal(HttpStatusCode.Forbidden, foreign);
        Assert.Contains("cross-origin", fBody!["detail"]!.GetValue<string>());
        Assert.Equal(HttpStatusCode.Forbidden, (await TcpAsync(HttpMethod.Delete, "/api/v1/vms/c1", cookie: cookie)).Status);
        Assert.Equal(HttpStatusCode.Forbidden, (await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: cookie, origin: "http://127.0.0.1:1")).Status);
        Assert.Equal(HttpStatusCode.NoContent, (await TcpAsync(HttpMethod.Delete, "/api/v1/vms/c1", cookie: cookie, origin: _d.TcpBase)).Status);
        // Bearer tokens work as before beside it.
        Assert.Equal(HttpStatusCode.OK, (await _d.SendAsync(HttpMethod.Get, "/api/v1/vms", client: _tcp, token: admin)).Status);

        // A read-only token's session reads but may not create.
        string readCookie = await LoginAsync(reader);
        Assert.Equal(HttpStatusCode.OK, (await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: readCookie)).Status);
        Assert.Equal(HttpStatusCode.Forbidden, (await TcpAsync(HttpMethod.Post, "/api/v1/vms", create, readCookie, origin: _d.TcpBase)).Status);

        // Revoking the token ends its sessions at once; logout ends one session.
        Assert.Equal(HttpStatusCode.NoContent, (await _d.SendAsync(HttpMethod.Delete, "/api/v1/tokens/ui-reader")).Status);
        var (revoked, rBody, _) = await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: readCookie);
        Assert.Equal(HttpStatusCode.Unauthorized, revoked);
        Assert.Contains("log in again", rBody!["detail"]!.GetValue<string>());
        var (lo, _, loResp) = await TcpAsync(HttpMethod.Delete, "/api/v1/session", cookie: cookie, origin: _d.TcpBase);
        Assert.Equal(HttpStatusCode.NoContent, lo);
        Assert.Contains("Max-Age=0", loResp.Headers.GetValues("Set-Cookie").Single());
        Assert.Equal(HttpStatusCode.Unauthorized, (await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: cookie)).Status);
        // A made-up or malformed cookie is a 401, not a server error.
        Assert.Equal(HttpStatusCode.Unauthorized, (await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: "dirigent_session=" + new string('A', 43))).Status);
        Assert.Equal(HttpStatusCode.Unauthorized, (await TcpAsync(HttpMethod.Get, "/api/v1/vms", cookie: "dirigent_session=%00x")).Status);
    }

    [Fact]
    public async Task MetricsHistoryAndStreamOfARunningVm()
    {
        Assert.Equal(HttpStatusCode.NotFound, (await _d.SendAsync(HttpMethod.Get, "/api/v1/vms/none/metrics")).Status);
        await _d.CreateTinyAsync("graphs");
        var empty = await _d.GetAsync("/api/v1/vms/graphs/metrics");
        Assert.Empty(empty["samples"]!.AsArray());
        Assert.Null((await _d.GetAsync("/api/v1/vms/graphs"))["started_at"]);

        // The stream: the history first, then each new sample (the daemon samples every 2 s).
        using var resp = await _d.Http.GetAsync("/api/v1/vms/graphs/metrics/stream", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", resp.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync());
        var (type, history) = await NextEventAsync(reader);
        Assert.Equal("history", type);
        Assert.Equal(2, history["interval_s"]!.GetValue<double>());

        await _d.ActAsync("graphs", "start");
        await _d.ConsoleUntilAsync("graphs", ApiTestVm.ReadyLine);
        var started = (await _d.GetAsync("/api/v1/vms/graphs"))["started_at"]!.GetValue<DateTimeOffset>();
        Assert.True(started > DateTimeOffset.UtcNow.AddMinutes(-5), $"started_at {started}");
        // The first sample of a worker has no rates (nothing to difference); the next ones do.
        JsonObject sample;
        do
        {
            (type, sample) = await NextEventAsync(reader);
            Assert.Equal("sample", type);
        } while (sample["cpu"] == null);
        Assert.True(sample["cpu"]!.GetValue<double>() >= 0);
        Assert.True(sample["memory_bytes"]!.GetValue<long>() > 0);
        Assert.Equal(16L << 20, sample["guest_memory_bytes"]!.GetValue<long>());
        Assert.Equal(0, sample["disk_read_bps"]!.GetValue<double>());
        Assert.True(sample["instructions_per_s"]!.GetValue<double>() >= 0);
        var kept = (await _d.GetAsync("/api/v1/vms/graphs/metrics"))["samples"]!.AsArray();
        Assert.True(kept.Count >= 2, kept.ToJsonString());

        await _d.ActAsync("graphs", "stop");
        Assert.Null((await _d.GetAsync("/api/v1/vms/graphs"))["started_at"]);
        // Deleting the VM ends its stream and forgets its history.
        Assert.Equal(HttpStatusCode.NoContent, (await _d.SendAsync(HttpMethod.Delete, "/api/v1/vms/graphs")).Status);
        using var cts = new CancellationTokenSource(DaemonProcess.Hang);
        while (await reader.ReadLineAsync(cts.Token) != null) { }
        Assert.Equal(HttpStatusCode.NotFound, (await _d.SendAsync(HttpMethod.Get, "/api/v1/vms/graphs/metrics")).Status);

        // The persisted console log's tail, as the page shows it for a stopped VM.
        await _d.CreateTinyAsync("logged");
        await _d.ActAsync("logged", "start");
        await _d.ConsoleUntilAsync("logged", ApiTestVm.ReadyLine);
        await _d.ActAsync("logged", "stop");
        string whole = await _d.Http.GetStringAsync("/api/v1/vms/logged/console/log");
        Assert.Equal(whole[^10..], await _d.Http.GetStringAsync("/api/v1/vms/logged/console/log?tail=10"));
        Assert.Equal(HttpStatusCode.BadRequest, (await _d.SendAsync(HttpMethod.Get, "/api/v1/vms/logged/console/log?tail=-1")).Status);
    }

    private static async Task<(string Type, JsonObject Data)> NextEventAsync(StreamReader r)
    {
        using var cts = new CancellationTokenSource(DaemonProcess.Hang);
        string? type = null;
        while (true)
        {
            string line = await r.ReadLineAsync(cts.Token) ?? throw new InvalidOperationException("metrics stream ended");
            if (line.StartsWith("event: ", StringComparison.Ordinal)) type = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal)) return (type!, JsonNode.Parse(line[6..])!.AsObject());
        }
    }
}
