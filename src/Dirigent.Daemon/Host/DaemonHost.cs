using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Dirigent.Api;
using Dirigent.Daemon.Api;
using Dirigent.Daemon.Auth;
using Dirigent.Daemon.Disks;
using Dirigent.Daemon.Limits;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Vms;
using Dirigent.Daemon.Workers;
using Dirigent.Inventory;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dirigent.Daemon.Host;

/// <summary>What `dirigent daemon` was asked for.</summary>
public sealed class DaemonOptions
{
    public string Home { get; init; } = DaemonPaths.DefaultHome();
    /// <summary>TCP listeners (HOST:PORT); every request on them needs a bearer token.</summary>
    public IReadOnlyList<string> Listen { get; init; } = [];
    public bool LogRequests { get; init; }
    /// <summary>The worker command (default: this very dirigent binary).</summary>
    public WorkerCommand? WorkerCommand { get; init; }
    /// <summary>Every worker runs under `dirigent run --jail` (see README, "Jail"): the CLI's default where the host
    /// can make jails (root, util-linux, libseccomp); off with --no-jail-workers.</summary>
    public bool JailWorkers { get; init; }
    /// <summary>Why workers run unjailed although not asked to (the host cannot make jails): logged once at start.</summary>
    public string? UnjailedReason { get; init; }
    /// <summary>--cluster etcd://...: the inventory is etcd and this daemon is one host of a cluster (null: one host, SQLite).</summary>
    public Dirigent.Daemon.Cluster.ClusterOptions? Cluster { get; init; }
}

/// <summary>A bad option or an unusable state directory: one line for the user.</summary>
public sealed class DaemonStartException(string message) : Exception(message);

/// <summary>
/// dirigentd: the inventory, the operations engine, the worker supervisor and the REST API on Kestrel (Unix socket,
/// mode 0660, plus optional TCP listeners with bearer tokens). Stopping it (SIGTERM) stops serving and closes the
/// inventory but leaves the workers running: the next daemon re-adopts them.
/// </summary>
public sealed class DaemonHost : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly IInventory _inventory;
    private readonly Dirigent.Daemon.Cluster.ClusterNode? _cluster;
    private readonly OperationManager _ops;
    private readonly VmManager _vms;
    private readonly MetricsHistory _history;
    private readonly TextWriter _log;
    private int _disposed;

    public DaemonPaths Paths { get; }

    private DaemonHost(WebApplication app, IInventory inventory, OperationManager ops, VmManager vms, MetricsHistory history,
        DaemonPaths paths, TextWriter log, Dirigent.Daemon.Cluster.ClusterNode? cluster)
    {
        _cluster = cluster;
        _vms = vms;
        _history = history;
        _app = app;
        _inventory = inventory;
        _ops = ops;
        Paths = paths;
        _log = log;
    }

    public static async Task<DaemonHost> StartAsync(DaemonOptions options, TextWriter log, CancellationToken ct = default)
    {
        log = TextWriter.Synchronized(log);
        var paths = new DaemonPaths(options.Home);
        var endpoints = options.Listen.Select(ParseListen).ToList();
        if (options.Cluster is { } co)
        {
            // The other daemons reach this one at its advertised address: listen there unless --listen already does.
            var adv = ParseListen(co.Advertise);
            if (!endpoints.Any(e => e.Port == adv.Port && (e.Address.Equals(adv.Address) || e.Address.Equals(IPAddress.Any))))
                endpoints.Add(adv.Address.Equals(IPAddress.Loopback) || adv.Address.Equals(IPAddress.Any) ? adv : new IPEndPoint(IPAddress.Any, adv.Port));
        }
        try { paths.Create(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DaemonStartException($"state directory '{paths.Home}': {e.Message}");
        }
        try { UnixSocketPath.Prepare(paths.Socket); }
        catch (ApiSocketException e) { throw new DaemonStartException(e.Message); }

        IInventory inventory;
        if (options.Cluster is { } cl)
        {
            var etcd = new EtcdInventory(cl.Endpoints, cl.KeyPrefix);
            try { await etcd.GetAsync(Dirigent.Daemon.Cluster.ClusterNode.LeaderKey, ct); }
            catch (InventoryUnavailableException e)
            {
                await etcd.DisposeAsync();
                throw new DaemonStartException(e.Message);
            }
            inventory = etcd;
        }
        else inventory = SqliteInventory.Open(paths.InventoryDb);
        Dirigent.Daemon.Cluster.ClusterNode? node = null;
        var events = new EventHub();
        var ops = new OperationManager(new OperationManagerOptions(), events);
        try
        {
            var tokens = new TokenStore(inventory);
            var cgroups = CgroupManager.Detect();
            var supervisor = new WorkerSupervisor(options.WorkerCommand ?? WorkerCommand.Current(), cgroups, log) { JailWorkers = options.JailWorkers, JailKeepsHostNetwork = options.Cluster != null };
            var store = new VmStore(inventory);
            var disks = new DiskManager(inventory, paths, store);
            var vms = new VmManager(store, disks, ops, events, supervisor, cgroups, paths, log);
            var metrics = new RequestMetrics();
            var sessions = new SessionStore(inventory, tokens);
            var history = new MetricsHistory(vms, events);
            if (options.Cluster is { } cluster)
            {
                vms.HostName = cluster.HostName;
                node = new Dirigent.Daemon.Cluster.ClusterNode(inventory, cluster, tokens, log);
                vms.Cluster = node;
                // Fencing comes before anything else: workers of VMs that went to other hosts meanwhile die first.
                await node.JoinAsync(vms, ct);
            }

            var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions
            {
                ApplicationName = typeof(DaemonHost).Assembly.GetName().Name,
                ContentRootPath = AppContext.BaseDirectory,
            });
            builder.Logging.ClearProviders();
            builder.Services.AddRouting();
            builder.Services.AddSystemd(); // Type=notify readiness and SIGTERM handling under systemd; nothing elsewhere
            builder.Services.AddOpenApi("v1", o =>
            {
                o.OpenApiVersion = Microsoft.OpenApi.OpenApiSpecVersion.OpenApi3_1;
                o.AddDocumentTransformer((doc, _, _) =>
                {
                    doc.Info = new Microsoft.OpenApi.OpenApiInfo { Title = "Dirigent management API", Version = "v1" };
                    return Task.CompletedTask;
                });
            });
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
            builder.WebHost.UseKestrelCore();
            builder.WebHost.ConfigureKestrel(o =>
            {
                o.AddServerHeader = false;
                o.Limits.MaxRequestBodySize = DaemonLimits.MaxRequestBody;
                o.ListenUnixSocket(paths.Socket, l => l.Protocols = HttpProtocols.Http1);
                foreach (var ep in endpoints) o.Listen(ep, l => l.Protocols = HttpProtocols.Http1);
            });
            // Bind the Unix socket ourselves and make it 0660 before Kestrel listens: the group may use the API.
            builder.WebHost.UseSockets(o => o.CreateBoundListenSocket = ep =>
            {
                if (ep is not UnixDomainSocketEndPoint) return SocketTransportOptions.CreateDefaultBoundListenSocket(ep);
                var s = UnixSocketPath.Bind(paths.Socket);
                if (OperatingSystem.IsLinux()) File.SetUnixFileMode(paths.Socket, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
                return s;
            });

            var app = builder.Build();
            RequestPipeline.Use(app, tokens, sessions, metrics, log, options.LogRequests);
            if (node != null) new Dirigent.Daemon.Cluster.ClusterForwarder(node, store, ops).Use(app);
            new DaemonApi(vms, disks, ops, events, tokens, sessions, history, new WebAssets(), metrics, paths, node).Map(app);
            app.MapOpenApi(DaemonApi.Base + "/openapi.json").WithMetadata(new RequiredRight(TokenRights.Read));

            // Workers first (re-adopt, record the vanished, restart policies, autostart), then serve.
            await vms.RecoverAsync(ct);
            try { await app.StartAsync(ct); }
            catch (Exception e)
            {
                await app.DisposeAsync();
                UnixSocketPath.Remove(paths.Socket);
                var inner = e;
                while (inner.InnerException != null && inner is not (ApiSocketException or SocketException)) inner = inner.InnerException;
                throw new DaemonStartException($"cannot listen: {ApiProblem.OneLine(inner.Message)}");
            }
            history.Start();
            node?.Start();
            var host = new DaemonHost(app, inventory, ops, vms, history, paths, log, node);
            // The bound addresses (not the asked ones): port 0 picks a free port, and tests read it from this line.
            if (options.UnjailedReason is { } unjailed) log.WriteLine($"daemon: VM workers run without a jail: {unjailed} (--no-jail-workers says so on purpose)");
            log.WriteLine($"daemon: serving {paths.Socket}{string.Concat(host.Addresses.Where(a => a.StartsWith("http://", StringComparison.Ordinal) && !a.Contains("unix:", StringComparison.Ordinal)).Select(a => " and " + a))} (state in {paths.Home}, cgroups: {cgroups.Kind}, workers: {(options.JailWorkers ? "jailed" : "not jailed")}{(node != null ? $", cluster host '{node.HostName}' on {inventory}" : "")})");
            return host;
        }
        catch
        {
            if (node != null) await node.DisposeAsync();
            ops.Dispose();
            await inventory.DisposeAsync();
            throw;
        }
    }

    private static IPEndPoint ParseListen(string s)
    {
        int colon = s.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(s.AsSpan(colon + 1), out int port) || port is < 0 or > 65535)
            throw new DaemonStartException($"--listen '{s}': expected HOST:PORT, e.g. 127.0.0.1:8006");
        string host = s[..colon].Trim('[', ']');
        if (host is "localhost") return new IPEndPoint(IPAddress.Loopback, port);
        if (host is "*" or "0.0.0.0") return new IPEndPoint(IPAddress.Any, port);
        if (!IPAddress.TryParse(host, out var ip)) throw new DaemonStartException($"--listen '{s}': '{host}' is not an IP address");
        return new IPEndPoint(ip, port);
    }

    /// <summary>The web application's services (tests compare the mapped endpoints with the OpenAPI document).</summary>
    internal IServiceProvider Services => _app.Services;

    /// <summary>The TCP ports actually bound (port 0 in --listen picks a free one).</summary>
    public IReadOnlyList<string> Addresses =>
        _app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>()
            .Features.Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()?.Addresses.ToList() ?? [];

    /// <summary>Serves until SIGTERM/SIGINT (or systemd's stop), then shuts down without touching the workers.</summary>
    public async Task RunUntilSignalAsync()
    {
        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void On(PosixSignalContext c) { c.Cancel = true; stop.TrySetResult(); }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, On);
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, On);
        var lifetime = _app.Services.GetRequiredService<IHostApplicationLifetime>();
        using var reg = lifetime.ApplicationStopping.Register(() => stop.TrySetResult());
        await stop.Task;
        _log.WriteLine("daemon: stopping (VM workers keep running)");
        await DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        // The graphs' streams end first, so that shutting Kestrel down does not wait for them.
        await _history.DisposeAsync();
        try { await _app.StopAsync(); }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { }
        await _app.DisposeAsync();
        UnixSocketPath.Remove(Paths.Socket);
        // Let go of the workers (they keep running; the next daemon re-adopts them) before the inventory closes.
        _vms.ReleaseWorkers();
        if (_cluster != null) await _cluster.DisposeAsync();
        _ops.Dispose();
        await _inventory.DisposeAsync();
    }
}
