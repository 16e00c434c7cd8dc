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

/// <summary>
/// What wraps every request: metrics and the request log (outermost), errors turned into RFC 9457 problems (also the
/// empty 404/405/401 answers routing and auth would give), and bearer authentication on TCP listeners. The Unix socket
/// needs no token: its file mode (0660) is the authentication.
/// </summary>
internal static class RequestPipeline
{
    public static void Use(WebApplication app, TokenStore tokens, RequestMetrics metrics, TextWriter log, bool logRequests)
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
            if (IsTcp(ctx))
            {
                var auth = await tokens.AuthenticateAsync(ctx.Request.Headers.Authorization.ToString(), ctx.RequestAborted);
                if (auth.Status != AuthStatus.Authenticated)
                {
                    ctx.Response.Headers.WWWAuthenticate = auth.Status == AuthStatus.Missing ? "Bearer" : "Bearer error=\"invalid_token\"";
                    await ApiProblem.Write(ctx, StatusCodes.Status401Unauthorized, auth.Status == AuthStatus.Missing
                        ? "this listener needs Authorization: Bearer TOKEN (create one with `dirigent token create NAME`)"
                        : "the bearer token is unknown, revoked or malformed");
                    return;
                }
                var need = ctx.GetEndpoint()?.Metadata.GetMetadata<RequiredRight>()?.Right ?? TokenRights.Read;
                if (TokenStore.Authorize(auth.Identity!, need) != AuthzResult.Allowed)
                {
                    await ApiProblem.Write(ctx, StatusCodes.Status403Forbidden,
                        $"token '{auth.Identity!.Name}' lacks the '{need.ToNames()[0]}' right needed for {ctx.Request.Method} {ctx.Request.Path}");
                    return;
                }
            }
            await next(ctx);
        });
    }

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
        _ => (StatusCodes.Status500InternalServerError, $"{e.GetType().Name}: {e.Message}"),
    };
}

internal static class DaemonLimits
{
    /// <summary>The largest request body accepted: bodies are small JSON objects.</summary>
    public const int MaxRequestBody = 64 * 1024;
}
