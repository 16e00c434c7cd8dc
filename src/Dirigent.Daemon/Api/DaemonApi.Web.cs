using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Auth;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Api;

/// <summary>
/// What the web console (issue #13) needs besides the REST API it drives: its page and files, the login that turns a
/// token into a session cookie, and the recent metrics its graphs draw.
/// </summary>
internal sealed partial class DaemonApi
{
    private void MapWeb(WebApplication app, TokenRights R)
    {
        var pub = new PublicEndpoint();
        // The page and its files need no token: they hold nothing secret, and the login form is among them.
        // As a Delegate (not a RequestDelegate), so that the route is described in the OpenAPI document like the others.
        app.MapMethods("/", ["GET"], (Delegate)((HttpContext c) => assets.Serve(c, "index.html"))).WithMetadata(pub).WithTags("web");
        app.MapMethods("/ui/{file}", ["GET"], (HttpContext c, string file) => assets.Serve(c, file)).WithMetadata(pub).WithTags("web");

        Route(app, "POST", Base + "/session", R, Login).WithMetadata(pub);
        Route(app, "GET", Base + "/session", R, WhoAmI);
        Route(app, "DELETE", Base + "/session", R, Logout).WithMetadata(pub);

        Route(app, "GET", Base + "/vms/{name}/metrics", R, async (HttpContext c, string name) =>
        {
            await vms.Store.RequireAsync(name, c.RequestAborted);
            await Write(c, 200, HistoryJson(name, history.History(name)));
        });
        Route(app, "GET", Base + "/vms/{name}/metrics/stream", R, MetricsStream);
    }

    private static bool IsUnixSocket(HttpContext c) => c.Features.Get<IHttpConnectionFeature>()?.LocalIpAddress == null;

    /// <summary>POST /session {"token"}: on TCP, a session cookie for the token (HttpOnly, SameSite=Strict).</summary>
    private async Task Login(HttpContext c)
    {
        if (IsUnixSocket(c)) throw Bad("the Unix socket needs no login: its file mode is the access control");
        if (!RequestPipeline.SameOrigin(c, required: false))
            throw new Dirigent.Api.ApiRequestException(StatusCodes.Status403Forbidden, "a login from another origin is refused");
        using var doc = ParseObject(await ReadBodyAsync(c))!;
        var f = Fields(doc.RootElement, "", "token");
        if (!f.TryGetValue("token", out var t)) throw Bad("missing field 'token'");
        string token = String(t, "token").Trim();
        var s = await sessions.LoginAsync(token, c.RequestAborted);
        if (s is not { } ok)
            throw new Dirigent.Api.ApiRequestException(StatusCodes.Status401Unauthorized,
                "field 'token': the token is unknown, revoked or malformed (create one with `dirigent token create NAME`)");
        // No Expires: the cookie ends with the browser session; the server ends it after SessionStore.Lifetime anyway.
        c.Response.Headers.Append("Set-Cookie", $"{SessionStore.CookieName}={ok.Id}; Path=/; HttpOnly; SameSite=Strict{(c.Request.IsHttps ? "; Secure" : "")}");
        var body = SessionJson(ok.Token, "tcp", login: true);
        body["expires_at"] = ok.Expires;
        await Write(c, StatusCodes.Status201Created, body);
    }

    /// <summary>GET /session: how this client is authenticated (the page decides whether to show the login form).</summary>
    private Task WhoAmI(HttpContext c)
    {
        if (RequestPipeline.CallerOf(c) is { } who) return Write(c, 200, SessionJson(who.Token, "tcp", who.ViaCookie));
        return Write(c, 200, new JsonObject
        {
            ["transport"] = "unix",
            ["login"] = false,
            ["token"] = null,
            ["rights"] = new JsonArray("read", "operate", "admin"),
        });
    }

    private static JsonObject SessionJson(TokenInfo t, string transport, bool login) => new()
    {
        ["transport"] = transport,
        ["login"] = login,
        ["token"] = t.Name,
        ["rights"] = new JsonArray(t.Rights.Expand().ToNames().Select(n => (JsonNode)n).ToArray()),
    };

    /// <summary>DELETE /session: ends the cookie's session (also one that already ended) and clears the cookie.</summary>
    private async Task Logout(HttpContext c)
    {
        if (!RequestPipeline.SameOrigin(c, required: false))
            throw new Dirigent.Api.ApiRequestException(StatusCodes.Status403Forbidden, "a logout from another origin is refused");
        await sessions.LogoutAsync(c.Request.Cookies[SessionStore.CookieName], c.RequestAborted);
        c.Response.Headers.Append("Set-Cookie", $"{SessionStore.CookieName}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
        c.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    private static JsonObject HistoryJson(string name, List<MetricsSample> samples) => new()
    {
        ["vm"] = name,
        ["interval_s"] = MetricsHistory.Interval.TotalSeconds,
        ["capacity"] = MetricsHistory.Capacity,
        ["samples"] = new JsonArray(samples.Select(s => (JsonNode)s.ToJson()).ToArray()),
    };

    /// <summary>
    /// GET /vms/{name}/metrics/stream: Server-Sent Events, first "history" (what GET /metrics gives), then a "sample"
    /// for each new point, until the VM is deleted or the client goes. A reconnecting EventSource gets the history again.
    /// </summary>
    private async Task MetricsStream(HttpContext c, string name)
    {
        await vms.Store.RequireAsync(name, c.RequestAborted);
        var (past, next, sub) = history.Subscribe(name);
        using var _ = sub;
        c.Response.StatusCode = 200;
        c.Response.ContentType = "text/event-stream";
        c.Response.Headers.CacheControl = "no-cache";
        await Send(c, "history", HistoryJson(name, past));
        try
        {
            await foreach (var s in next.ReadAllAsync(c.RequestAborted))
                await Send(c, "sample", s.ToJson());
        }
        catch (OperationCanceledException) when (c.RequestAborted.IsCancellationRequested) { }
    }

    private static async Task Send(HttpContext c, string type, JsonObject data)
    {
        var sb = new StringBuilder();
        sb.Append("event: ").Append(type).Append('\n').Append("data: ").Append(data.ToJsonString(Options)).Append("\n\n");
        await c.Response.WriteAsync(sb.ToString(), c.RequestAborted);
        await c.Response.Body.FlushAsync(c.RequestAborted);
    }
}
