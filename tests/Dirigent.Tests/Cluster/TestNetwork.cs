using System.Diagnostics;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// Network namespaces a cluster test makes for itself: a hub namespace with a bridge (etcd listens on the bridge,
/// 169.254.16.100), and one namespace per host whose eth0 is a veth to that bridge (169.254.16.N/16), so each daemon
/// and its workers live on a network of their own and talk to etcd and to each other only over the veths. Link-local
/// addresses inside namespaces nobody else sees. Needs root and `ip netns`; tests skip with the reason otherwise.
/// Disposing deletes the namespaces (and with them the veths and the bridge).
/// </summary>
internal sealed class TestNetwork : IDisposable
{
    public const string HubAddress = "169.254.16.100";
    public static string HostAddress(int host) => $"169.254.16.{host}";

    public string Hub { get; }
    public List<string> Hosts { get; } = [];
    private readonly List<string> _made = [];

    private TestNetwork(string tag) => Hub = $"{tag}-hub";

    /// <summary>Skips the test unless this process may make network namespaces (root and a working `ip netns`).</summary>
    public static void SkipUnlessAvailable()
    {
        Skip.IfNot(Environment.IsPrivilegedProcess, "network namespaces need root (ip netns add)");
        string probe = $"dgprobe-{Environment.ProcessId}-{Random.Shared.Next(100000)}";
        var (rc, err) = Ip("netns", "add", probe);
        if (rc == 0) Ip("netns", "del", probe);
        Skip.If(rc != 0, $"`ip netns add` fails here: {err.Trim()}");
    }

    public static TestNetwork Create(int hosts)
    {
        var n = new TestNetwork($"dg{Environment.ProcessId}x{Random.Shared.Next(10000)}");
        try
        {
            n.Add(n.Hub);
            Must("-n", n.Hub, "link", "add", "br0", "type", "bridge");
            Must("-n", n.Hub, "addr", "add", HubAddress + "/16", "dev", "br0");
            Must("-n", n.Hub, "link", "set", "br0", "up");
            Must("-n", n.Hub, "link", "set", "lo", "up");
            for (int i = 1; i <= hosts; i++)
            {
                string ns = $"{n.Hub[..^4]}-n{i}";
                n.Add(ns);
                n.Hosts.Add(ns);
                Must("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", $"v{i}", "netns", n.Hub);
                Must("-n", n.Hub, "link", "set", $"v{i}", "master", "br0");
                Must("-n", n.Hub, "link", "set", $"v{i}", "up");
                Must("-n", ns, "addr", "add", HostAddress(i) + "/16", "dev", "eth0");
                Must("-n", ns, "link", "set", "eth0", "up");
                Must("-n", ns, "link", "set", "lo", "up");
            }
        }
        catch
        {
            n.Dispose();
            throw;
        }
        return n;
    }

    /// <summary>The command prefix that runs a program in host <paramref name="host"/>'s namespace (1-based).</summary>
    public string[] Exec(int host) => ["ip", "netns", "exec", Hosts[host - 1]];

    /// <summary>The network namespace a process is in (the /proc/PID/ns/net link), or null when it is gone.</summary>
    public static string? NamespaceOf(int pid)
    {
        try { return new FileInfo($"/proc/{pid}/ns/net").LinkTarget; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    private void Add(string ns)
    {
        Must("netns", "add", ns);
        _made.Add(ns);
    }

    private static void Must(params string[] args)
    {
        var (rc, err) = Ip(args);
        if (rc != 0) throw new InvalidOperationException($"ip {string.Join(' ', args)}: {err.Trim()}");
    }

    private static (int Rc, string Err) Ip(params string[] args)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            string err = p.StandardError.ReadToEnd();
            p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, err);
        }
        catch (System.ComponentModel.Win32Exception e) { return (-1, e.Message); }
    }

    public void Dispose()
    {
        foreach (var ns in Enumerable.Reverse(_made)) Ip("netns", "del", ns);
        _made.Clear();
    }
}
