using System.Globalization;
using System.Runtime.InteropServices;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// One etcd and two daemons (n1, n2) shared by the test classes of this collection (migration, etcd restart), which
/// therefore run one after the other: starting a cluster is the slow part of these tests. The lease TTL is long
/// (30 s) so that a daemon restarted by a test, or etcd restarted under it, never makes a host look dead. Every test
/// first waits until both hosts are up with a leader, and makes VMs of its own (names nobody else uses).
/// </summary>
[CollectionDefinition(nameof(ClusterPair))]
public sealed class ClusterPair : ICollectionFixture<ClusterPairFixture>;

public sealed class ClusterPairFixture : IAsyncLifetime
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private ClusterRig? _rig;

    /// <summary>The rig, started on first use (so that a machine without etcd skips instead of failing the fixture).</summary>
    internal async Task<ClusterRig> RigAsync()
    {
        EtcdServer.SkipIfMissing();
        await _gate.WaitAsync();
        try { _rig ??= await ClusterRig.StartAsync(hosts: 2, leaseTtl: 30); }
        finally { _gate.Release(); }
        await _rig.WaitAsync(async () => (await _rig.Hosts[0].GetAsync("/api/v1/cluster"))["hosts_up"]!.GetValue<int>() == 2
                                         && await _rig.LeaderAsync() != null, "both hosts up with a leader");
        return _rig;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_rig != null) await _rig.DisposeAsync();
        _gate.Dispose();
    }
}

/// <summary>Processes and sockets as the kernel shows them, for tests that interrupt a migration at a chosen point.</summary>
internal static class ProcFs
{
    public const int SigKill = 9, SigCont = 18, SigStop = 19;

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    public static void Signal(int pid, int sig)
    {
        if (kill(pid, sig) != 0) throw new InvalidOperationException($"kill({pid}, {sig}) failed: errno {Marshal.GetLastPInvokeError()}");
    }

    public static string? CommandLine(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' '); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>TCP states of /proc/net/tcp: 01 established, 0A listen.</summary>
    public const string Established = "01", Listen = "0A";

    /// <summary>Whether an IPv4 TCP socket in <paramref name="state"/> has <paramref name="port"/> as its local or remote port.</summary>
    public static bool TcpSocket(int port, string state)
    {
        string hex = port.ToString("X4", CultureInfo.InvariantCulture);
        foreach (string line in File.ReadLines("/proc/net/tcp").Skip(1))
        {
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length > 3 && f[3] == state && (f[1].EndsWith(":" + hex, StringComparison.Ordinal) || f[2].EndsWith(":" + hex, StringComparison.Ordinal)))
                return true;
        }
        return false;
    }
}
