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
    public string Endpoint => $"127.0.0.1:{ClientPort}";
    public string Url => $"etcd://{Endpoint}";

    private Process? _proc;
    private readonly StringBuilder _log = new();

    public static void SkipIfMissing() => Skip.IfNot(File.Exists(Binary), $"{Binary} is missing (apt-get install etcd-server)");

    private EtcdServer()
    {
        DataDir = Directory.CreateTempSubdirectory("dgetcd-").FullName;
        ClientPort = FreePort();
        PeerPort = FreePort();
    }

    public string Log { get { lock (_log) return _log.ToString(); } }

    public static async Task<EtcdServer> StartAsync()
    {
        var s = new EtcdServer();
        try { await s.StartProcessAsync(); }
        catch { await s.DisposeAsync(); throw; }
        return s;
    }

    /// <summary>Starts (or restarts, on the same ports and data) the etcd process and waits until it answers.</summary>
    public async Task StartProcessAsync()
    {
        string client = $"http://127.0.0.1:{ClientPort}", peer = $"http://127.0.0.1:{PeerPort}";
        var psi = new ProcessStartInfo(Binary) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[]
                 {
                     "--name", "t", "--data-dir", DataDir, "--listen-client-urls", client, "--advertise-client-urls", client,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", $"t={peer}",
                     "--log-level", "warn",
                 })
            psi.ArgumentList.Add(a);
        var p = new Process { StartInfo = psi };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        p.Start();
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        _proc = p;
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
