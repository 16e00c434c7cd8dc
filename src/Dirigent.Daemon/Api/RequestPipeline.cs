using System.Diagnostics;
using Dirigent.Api;
using Dirigent.Daemon.Auth;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;

namespace Dirigent.Daemon.Api;

/// <summary>The right a route needs from a bearer token on a TCP listener (endpoint metadata).</summary>
internal sealed record RequiredRight(TokenRights Right);

/// <summary>A route that needs no token on TCP either: the web console's page and assets, and its login.</summary>
internal sealed record PublicEndpoint;

/// <summary>Who sent a TCP request: the token, and whether it came as the web console's session cookie.</summary>
internal sealed record Caller(TokenInfo Token, bool ViaCookie);

/// <summary>
/// What wraps every request: metrics and the request log (outermost), errors turned into RFC 9457 problems (also the
/// empty 404/405/401 answers routing and auth would give), and authentication on TCP listeners: a bearer token, or
/// the web console's session cookie (a login with a token). The Unix socket needs no token: its file mode (0660) is
/// the authentication.
/// </summary>
internal static class RequestPipeline
{
    public static void Use(WebApplication app, TokenStore tokens, SessionStore sessions, RequestMetrics metrics, TextWriter log, bool logRequests)
    {
        app.Use(async (ctx, next) =>
        {
            long start = Stopwatch.GetTimestamp();
            string? error = null;
            try
            {
                await next(ctx);
                if (!ctx.Response.HasStarted && ctx.Response.StatusCode >= 400)
                {
                    // Nothing was written: routing's 404/405 or a bare status. Give it a problem body too.
                    int status = ctx.Response.StatusCode;
                    error = status switch
                    {
                        404 => $"no such endpoint: {ctx.Request.Method} {ctx.Request.Path}",
                        405 => $"{ctx.Request.Path} does not take {ctx.Request.Method} (allowed: {ctx.Response.Headers.Allow})",
                        _ => ReasonPhrases(status),
                    };
                    await ApiProblem.Write(ctx, status, error);
                }
            }
            catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
            {
                // The client went away: nobody to answer.
            }
            catch (Exception e)
            {
                (int status, error) = Classify(e);
                if (!ctx.Response.HasStarted)
                {
                    if (status == StatusCodes.Status503ServiceUnavailable) ctx.Response.Headers.RetryAfter = "1";
                    try { await ApiProblem.Write(ctx, status, error); }
                    catch (Exception) when (ctx.RequestAborted.IsCancellationRequested) { }
                }
                else ctx.Abort();
                if (status >= 500) log.WriteLine($"daemon: {ctx.Request.Method} {ctx.Request.Path}: {status} {ApiProblem.OneLine(error)} ({e.GetType().Name})");
            }
            finally
            {
                double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                string route = (ctx.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText ?? "unmatched";
                metrics.Record(ctx.Request.Method, route, ctx.Response.StatusCode, seconds);
                if (logRequests)
                    log.WriteLine($"daemon: {ctx.Request.Method} {ctx.Request.Path}{ctx.Request.QueryString}: {ctx.Response.StatusCode} ({seconds * 1000:F1} ms){(error != null ? " " + ApiProblem.OneLine(error) : "")}");
            }
        });
        app.UseRouting();
        app.UseWebSockets();
        app.Use(async (ctx, next) =>
        {
            if (IsTcp(ctx) && ctx.GetEndpoint()?.Metadata.GetMetadata<PublicEndpoint>() == null)
            {
                var who = await AuthenticateAsync(ctx, tokens, sessions);
                if (who == null) return;
                var need = ctx.GetEndpoint()?.Metadata.GetMetadata<RequiredRight>()?.Right ?? TokenRights.Read;
                if (TokenStore.Authorize(who.Token, need) != AuthzResult.Allowed)
                {
                    await ApiProblem.Write(ctx, StatusCodes.Status403Forbidden,
                        $"token '{who.Token.Name}' lacks the '{need.ToNames()[0]}' right needed for {ctx.Request.Method} {ctx.Request.Path}");
                    return;
                }
                ctx.Items[typeof(Caller)] = who;
            }
            await next(ctx);
        });
    }

    /// <summary>
    /// Who a TCP request comes from: the bearer token, else the web console's session cookie. Null when a problem
    /// (401, or 403 for a cross-origin use of the cookie) has been written.
    /// </summary>
    private static async Task<Caller?> AuthenticateAsync(HttpContext ctx, TokenStore tokens, SessionStore sessions)
    {
        string header = ctx.Request.Headers.Authorization.ToString();
        string? cookie = header.Length == 0 ? ctx.Request.Cookies[SessionStore.CookieName] : null;
        if (cookie != null)
        {
            var t = await sessions.AuthenticateAsync(cookie, ctx.RequestAborted);
            if (t == null)
            {
                ctx.Response.Headers.WWWAuthenticate = "Bearer";
                await ApiProblem.Write(ctx, StatusCodes.Status401Unauthorized,
                    "the login session has ended (expired, logged out, or its token was revoked): log in again");
                return null;
            }
            // The cookie is SameSite=Strict, but another port of the same host is the same site: a page there must
            // not act (or open the console) with it. Browsers send Origin on every such request.
            bool mustHaveOrigin = !(HttpMethods.IsGet(ctx.Request.Method) || HttpMethods.IsHead(ctx.Request.Method)) || ctx.WebSockets.IsWebSocketRequest;
            if (!SameOrigin(ctx, mustHaveOrigin))
            {
                await ApiProblem.Write(ctx, StatusCodes.Status403Forbidden,
                    $"a cross-origin request (Origin: {ctx.Request.Headers.Origin}) cannot use the web console's session cookie");
                return null;
            }
            return new Caller(t, ViaCookie: true);
        }
        var auth = await tokens.AuthenticateAsync(header, ctx.RequestAborted);
        if (auth.Status != AuthStatus.Authenticated)
        {
            ctx.Response.Headers.WWWAuthenticate = auth.Status == AuthStatus.Missing ? "Bearer" : "Bearer error=\"invalid_token\"";
            await ApiProblem.Write(ctx, StatusCodes.Status401Unauthorized, auth.Status == AuthStatus.Missing
                ? "this listener needs Authorization: Bearer TOKEN (create one with `dirigent token create NAME`), or a web console login"
                : "the bearer token is unknown, revoked or malformed");
            return null;
        }
        return new Caller(auth.Identity!, ViaCookie: false);
    }

    /// <summary>
    /// Whether the request's Origin (when it has one; <paramref name="required"/>: it must) names this very host and
    /// port. The scheme is not compared: behind a TLS proxy the page is https and the daemon sees http.
    /// </summary>
    public static bool SameOrigin(HttpContext ctx, bool required)
    {
        string origin = ctx.Request.Headers.Origin.ToString();
        if (origin.Length == 0) return !required;
        return Uri.TryCreate(origin, UriKind.Absolute, out var u)
               && string.Equals(u.Authority, ctx.Request.Host.Value, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The authenticated caller of a TCP request (absent on the Unix socket), for GET /session.</summary>
    public static Caller? CallerOf(HttpContext ctx) => ctx.Items.TryGetValue(typeof(Caller), out var c) ? c as Caller : null;

    /// <summary>A TCP connection has a local IP address; a Unix socket connection has none.</summary>
    private static bool IsTcp(HttpContext ctx) => ctx.Features.Get<IHttpConnectionFeature>()?.LocalIpAddress != null;

    private static string ReasonPhrases(int status) => Microsoft.AspNetCore.WebUtilities.ReasonPhrases.GetReasonPhrase(status);

    /// <summary>The status and one-line detail for what a handler threw.</summary>
    public static (int Status, string Detail) Classify(Exception e) => e switch
    {
        ApiRequestException r => (r.Status, r.Message),
        // Kestrel's: a body over the 64 KiB limit (413), a truncated or malformed request.
        Microsoft.AspNetCore.Http.BadHttpRequestException b => (b.StatusCode,
            b.StatusCode == 413 ? $"request body is larger than {DaemonLimits.MaxRequestBody / 1024} KiB" : b.Message),
        // The cluster store (etcd) is down or unreachable: the request may succeed again later, nothing is wrong
        // with it. One line, at once (the client fails fast instead of hanging until etcd is back).
        Dirigent.Inventory.InventoryUnavailableException u => (StatusCodes.Status503ServiceUnavailable, $"the cluster store is unavailable: {ApiProblem.OneLine(u.Message)}"),
        _ => (StatusCodes.Status500InternalServerError, $"{e.GetType().Name}: {e.Message}"),
    };
}

internal static class DaemonLimits
{
    /// <summary>The largest request body accepted: bodies are small JSON objects.</summary>
    public const int MaxRequestBody = 64 * 1024;
}
