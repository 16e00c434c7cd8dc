using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dirigent.Inventory;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// A real etcd (Debian's etcd-server, /usr/bin/etcd) for one test: client and peer URLs on free loopback ports, its
/// own data directory, killed and removed on dispose. Tests call <see cref="SkipIfMissing"/> first so that a machine
/// without the package reports them skipped with the reason.
/// </summary>
internal sealed class EtcdServer : IAsyncDisposable
{
    public const string Binary = "/usr/bin/etcd";
    public static readonly TimeSpan Hang = TimeSpan.FromSeconds(120);

    public string DataDir { get; }
    public int ClientPort { get; }
    public int PeerPort { get; }
    /// <summary>The address etcd listens on: loopback, or a link-local address inside <see cref="NetNs"/>.</summary>
    public string Address { get; }
    /// <summary>The network namespace etcd runs in (started through `ip netns exec`), or null for this one.</summary>
    public string? NetNs { get; }
    public string Endpoint => $"{Address}:{ClientPort}";
    public string Url => $"etcd://{Endpoint}";

    private Process? _proc;
    private readonly StringBuilder _log = new();

    public static void SkipIfMissing() => Skip.IfNot(File.Exists(Binary), $"{Binary} is missing (apt-get install etcd-server)");

    private EtcdServer(string? netns, string address)
    {
        DataDir = Directory.CreateTempSubdirectory("dgetcd-").FullName;
        NetNs = netns;
        Address = address;
        ClientPort = FreePort();
        PeerPort = FreePort();
    }

    public string Log { get { lock (_log) return _log.ToString(); } }

    /// <param name="netns">Run etcd in this network namespace, listening on <paramref name="address"/> there.</param>
    public static async Task<EtcdServer> StartAsync(string? netns = null, string address = "127.0.0.1")
    {
        var s = new EtcdServer(netns, address);
        try { await s.StartProcessAsync(); }
        catch { await s.DisposeAsync(); throw; }
        return s;
    }

    /// <summary>Starts (or restarts, on the same ports and data) the etcd process and waits until it answers.</summary>
    public async Task StartProcessAsync()
    {
        string client = $"http://{Address}:{ClientPort}", peer = $"http://{Address}:{PeerPort}";
        var psi = new ProcessStartInfo(NetNs == null ? Binary : "ip") { RedirectStandardError = true, RedirectStandardOutput = true };
        if (NetNs != null) foreach (var a in new[] { "netns", "exec", NetNs, Binary }) psi.ArgumentList.Add(a);
        foreach (var a in new[]
                 {
                     "--name", "t", "--data-dir", DataDir, "--listen-client-urls", client, "--advertise-client-urls", client,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", $"t={peer}",
                     // In another namespace this process cannot reach it: its "ready" line (info level) says when it serves.
                     "--log-level", NetNs == null ? "warn" : "info",
                 })
            psi.ArgumentList.Add(a);
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var p = new Process { StartInfo = psi };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data == null) return;
            lock (_log) _log.AppendLine(e.Data);
            if (e.Data.Contains("ready to serve client requests", StringComparison.Ordinal)) ready.TrySetResult();
        };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        p.Start();
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        _proc = p;
        if (NetNs != null)
        {
            var exited = p.WaitForExitAsync();
            if (await Task.WhenAny(ready.Task, exited).WaitAsync(Hang) == exited)
                throw new InvalidOperationException($"etcd exited ({p.ExitCode}):\n{Log}");
            return;
        }
        // Ready when a read succeeds (the member has elected itself and serves).
        await using var inv = new EtcdInventory([Endpoint], "/probe/") { CallTimeout = TimeSpan.FromSeconds(2) };
        var deadline = DateTime.UtcNow + Hang;
        while (true)
        {
            if (p.HasExited) throw new InvalidOperationException($"etcd exited ({p.ExitCode}):\n{Log}");
            try { await inv.GetAsync("x"); return; }
            catch (InventoryUnavailableException) when (DateTime.UtcNow < deadline) { await Task.Delay(100); }
        }
    }

    /// <summary>SIGKILL etcd (data stays), e.g. to restart it under load.</summary>
    public async Task KillAsync()
    {
        if (_proc is not { HasExited: false } p) return;
        p.Kill();
        await p.WaitForExitAsync().WaitAsync(Hang);
    }

    /// <summary>An inventory client on this etcd under a prefix of its own (so tests never see each other's keys).</summary>
    public EtcdInventory Client(string prefix = "/dirigent/v1/") => new([Endpoint], prefix);

    public static int FreePort()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }

    public async ValueTask DisposeAsync()
    {
        try { await KillAsync(); } catch (Exception e) when (e is InvalidOperationException or TimeoutException) { }
        _proc?.Dispose();
        try { Directory.Delete(DataDir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
