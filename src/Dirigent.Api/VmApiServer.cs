using System.Net;
using System.Net.Sockets;
using Dirigent.Vmm;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dirigent.Api;

/// <summary>
/// The per-VM API socket (as Firecracker's and Cloud Hypervisor's): HTTP/1.1 and JSON on a Unix domain socket only
/// its owner can connect to (mode 0600), driving one <see cref="Vm"/>. Requests are served concurrently; the VM
/// serializes lifecycle requests itself. Every error is an RFC 9457 problem+json with one line of detail, and no
/// request, however bad, stops the VM. Dispose to stop serving: the socket file is removed.
/// </summary>
public sealed partial class VmApiServer : IAsyncDisposable
{
    /// <summary>The largest request body accepted: bodies are small JSON objects.</summary>
    public const int MaxRequestBody = 64 * 1024;

    private readonly WebApplication _app;
    private readonly Vm _vm;
    private readonly TextWriter _log;
    private readonly bool _logRequests;
    private int _disposed;
    /// <summary>Cancelled when the server stops: ends the long-lived console WebSockets (Kestrel would wait for them).</summary>
    private readonly CancellationTokenSource _stopping = new();
    /// <summary>Open console WebSockets, each with a task that completes when its handler is done.</summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<ConsoleViewer, Task> _viewers = new();

    /// <summary>The path of the socket file the server listens on.</summary>
    public string SocketPath { get; }

    private VmApiServer(WebApplication app, Vm vm, string socketPath, TextWriter log, bool logRequests)
    {
        _app = app;
        _vm = vm;
        SocketPath = socketPath;
        _log = log;
        _logRequests = logRequests;
    }

    /// <summary>
    /// Starts serving <paramref name="vm"/> on a Unix socket at <paramref name="socketPath"/>. A stale socket file
    /// there (its server is gone) is replaced; a live one, or a path that exists and is not a socket, is an
    /// <see cref="ApiSocketException"/> with one line. Errors answered with a 5xx go to <paramref name="log"/> as
    /// one line each; with <paramref name="logRequests"/> every request does.
    /// </summary>
    public static async Task<VmApiServer> StartAsync(Vm vm, string socketPath, TextWriter log,
        CancellationToken ct = default, bool logRequests = false)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(log);
        UnixSocketPath.Prepare(socketPath);

        // The empty builder reads no configuration (no appsettings.json, no ASPNETCORE_* variables that could add
        // endpoints) and has no logging providers: nothing of ASP.NET's reaches stdout or stderr.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(VmApiServer).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        builder.Services.AddRoutingCore();
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
        builder.WebHost.UseKestrelCore();
        builder.WebHost.ConfigureKestrel(o =>
        {
            o.AddServerHeader = false;
            o.Limits.MaxRequestBodySize = MaxRequestBody;
            o.ListenUnixSocket(socketPath, l => l.Protocols = HttpProtocols.Http1);
        });
        // Bind (and chmod 0600) ourselves; Kestrel calls listen(2) afterwards.
        builder.WebHost.UseSockets(o => o.CreateBoundListenSocket = ep =>
            ep is UnixDomainSocketEndPoint ? UnixSocketPath.Bind(socketPath) : SocketTransportOptions.CreateDefaultBoundListenSocket(ep));

        var app = builder.Build();
        var server = new VmApiServer(app, vm, socketPath, TextWriter.Synchronized(log), logRequests);
        server.MapEndpoints(app);
        try
        {
            await app.StartAsync(ct);
        }
        catch (Exception e)
        {
            await app.DisposeAsync();
            UnixSocketPath.Remove(socketPath);
            if (e is OperationCanceledException) throw;
            var inner = e;
            while (inner is not ApiSocketException && inner.InnerException != null) inner = inner.InnerException;
            throw inner as ApiSocketException ?? new ApiSocketException($"API socket '{socketPath}': {ApiProblem.OneLine(e.Message)}");
        }
        return server;
    }

    /// <summary>Stops serving (requests in flight get a few seconds to finish) and removes the socket file.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await DrainViewersOfEndedVm();
        await _stopping.CancelAsync();
        // Let the console viewers send their "shutting down" close before Kestrel stops: stopping it may abort their
        // connections first (seen under load: the client saw the socket drop without a close frame).
        if (!_viewers.IsEmpty)
        {
            try { await Task.WhenAll(_viewers.Values).WaitAsync(CloseGrace * 2); }
            catch (TimeoutException) { } // a viewer that does not answer its close is cut off by the stop below
        }
        try { await _app.StopAsync(); }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { }
        await _app.DisposeAsync();
        UnixSocketPath.Remove(SocketPath);
        _stopping.Dispose();
    }

    private void MapEndpoints(WebApplication app)
    {
        // Upgrades GET /v1/vm/console/ws; pings keep idle consoles alive through proxies (the daemon's, a browser's).
        app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromSeconds(30) });
        // Each path takes any method, so a wrong one gets a 405 problem with an Allow header (routing's own 405 has
        // an empty body).
        app.Map("/v1/vm", c => Serve(c, HttpMethods.Get, GetVm));
        app.Map("/v1/vm/console", c => Serve(c, HttpMethods.Get, GetConsole));
        app.Map("/v1/vm/console/ws", c => Serve(c, HttpMethods.Get, ConsoleWebSocket));
        app.Map("/v1/vm/metrics", c => Serve(c, HttpMethods.Get, GetMetrics));
        app.Map("/v1/vm/vcpus", c => Serve(c, HttpMethods.Get, GetVcpus));
        app.Map("/v1/vm/pause", c => Serve(c, HttpMethods.Put, x => Lifecycle(x, _vm.Pause)));
        app.Map("/v1/vm/resume", c => Serve(c, HttpMethods.Put, x => Lifecycle(x, _vm.Resume)));
        app.Map("/v1/vm/power-button", c => Serve(c, HttpMethods.Put, x => Lifecycle(x, _vm.PowerButton)));
        app.Map("/v1/vm/reset", c => Serve(c, HttpMethods.Put, x => Lifecycle(x, _vm.Reset)));
        app.Map("/v1/vm/stop", c => Serve(c, HttpMethods.Put, x => Lifecycle(x, _vm.Stop)));
        app.Map("/v1/vm/snapshot", c => Serve(c, HttpMethods.Put, PutSnapshot));
        app.Map("/v1/vm/migrate", c => Serve(c, HttpMethods.Put, PutMigrate));
        app.Map("/v1/vm/revert", c => Serve(c, HttpMethods.Put, PutRevert));
        app.Map("/v1/vm/trace", c => Serve(c, HttpMethods.Put, PutTrace));
        app.Map("/v1/vm/trace/stream", c => Serve(c, HttpMethods.Get, GetTraceStream));
        app.Map("/v1/vm/memory-dump", c => Serve(c, HttpMethods.Put, PutMemoryDump));
        app.Map("/v1/vm/processes", c => Serve(c, HttpMethods.Get, GetProcesses));
        // Any other path, any method; "{*path}" rather than the default pattern, which skips paths with a dot.
        app.MapFallback("{*path}", c => Serve(c, null, x =>
            throw new ApiRequestException(StatusCodes.Status404NotFound, $"no such endpoint: {x.Request.Path}")));
    }

    /// <summary>Checks the method, runs the handler and turns whatever it throws into a problem; never throws.</summary>
    private async Task Serve(HttpContext ctx, string? method, Func<HttpContext, Task> handler)
    {
        int status;
        string? error = null;
        try
        {
            if (method != null && !HttpMethods.Equals(ctx.Request.Method, method))
            {
                ctx.Response.Headers.Allow = method;
                throw new ApiRequestException(StatusCodes.Status405MethodNotAllowed,
                    $"{ctx.Request.Path} takes {method}, not {ctx.Request.Method}");
            }
            await handler(ctx);
            status = ctx.Response.StatusCode;
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            return; // the client went away: nobody to answer
        }
        catch (Exception e)
        {
            (status, error) = Classify(e);
            if (!ctx.Response.HasStarted)
            {
                try { await ApiProblem.Write(ctx, status, error); }
                catch (Exception) when (ctx.RequestAborted.IsCancellationRequested) { }
            }
            else ctx.Abort();
        }
        if (status >= 500 || _logRequests)
            _log.WriteLine($"api: {ctx.Request.Method} {ctx.Request.Path}: {status}{(error != null ? $" {ApiProblem.OneLine(error)}" : "")}");
    }

    /// <summary>The status and one-line detail for what a handler threw.</summary>
    internal static (int Status, string Detail) Classify(Exception e) => e switch
    {
        ApiRequestException r => (r.Status, r.Message),
        // Kestrel's: a body over the limit (413), a truncated or malformed request.
        Microsoft.AspNetCore.Http.BadHttpRequestException b => (b.StatusCode, b.Message),
        VmStateException s => (StatusCodes.Status409Conflict, s.Message),
        ObjectDisposedException => (StatusCodes.Status409Conflict, "the VM has been shut down"),
        // A VmException that is the client's mistake (a snapshot directory that already holds one...) is a 400.
        VmException { BadInput: true } v => (StatusCodes.Status400BadRequest, v.Message),
        VmException v => (StatusCodes.Status500InternalServerError, v.Message),
        NotImplementedException n => (StatusCodes.Status500InternalServerError, $"not implemented yet: {n.Message}"),
        _ => (StatusCodes.Status500InternalServerError, $"{e.GetType().Name}: {e.Message}"),
    };
}
