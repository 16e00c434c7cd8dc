using System.Diagnostics;
using Dirigent.Vmm.Net;

namespace Dirigent.Tests.Net;

/// <summary>
/// A network namespace of the test's own (`ip netns add dtest-RANDOM`), holding a persistent TAP with address
/// 169.254.N.1/24 (link-local, random N) and up; the guest side is 169.254.N.2. All test traffic stays inside it:
/// the TAP never exists in the root namespace, and deleting the namespace on Dispose deletes the TAP with it.
/// Needs root and iproute2; without them the constructor throws, saying so.
/// </summary>
public sealed class NetNamespace : IDisposable
{
    public string Name { get; }
    public string TapName { get; }
    public int Subnet { get; }
    public string HostAddress => $"169.254.{Subnet}.1";
    public string GuestAddress => $"169.254.{Subnet}.2";
    public byte[] HostIp => [169, 254, (byte)Subnet, 1];
    public byte[] GuestIp => [169, 254, (byte)Subnet, 2];

    private bool _disposed;

    public NetNamespace(bool withTap = true)
    {
        Name = "dtest-" + Convert.ToHexStringLower(BitConverter.GetBytes(Random.Shared.Next()));
        TapName = "dtap" + Random.Shared.Next(0, 1 << 20).ToString("x");
        Subnet = Random.Shared.Next(1, 255);
        Ip("netns", "add", Name);
        try
        {
            // IPv6 off: router solicitations and MLD reports would only be noise on the TAP.
            Ip("netns", "exec", Name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1");
            Ip("-n", Name, "link", "set", "lo", "up");
            if (withTap)
            {
                Ip("-n", Name, "tuntap", "add", "dev", TapName, "mode", "tap");
                Ip("-n", Name, "addr", "add", HostAddress + "/24", "dev", TapName);
                Ip("-n", Name, "link", "set", TapName, "up");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Runs <paramref name="f"/> on a thread inside the namespace (sockets it creates live there).</summary>
    public T Run<T>(Func<T> f) => NetworkNamespace.RunIn(Name, f);

    /// <summary>`ip -n NAME ARGS...`; returns stdout, throws with stderr on failure.</summary>
    public string IpIn(params string[] args) => Ip(["-n", Name, .. args]);

    /// <summary>Whether a link of that name exists in the namespace.</summary>
    public bool HasLink(string name) => TryIp(out _, "-n", Name, "link", "show", "dev", name) == 0;

    /// <summary>
    /// Waits until the kernel reports the link operationally up. A TAP's carrier comes on when a process attaches,
    /// but the kernel activates its transmit queue a little later (link watch, deferred work): a reply sent before
    /// that is dropped, so tests that expect answers wait for it first.
    /// </summary>
    public void WaitUntilUp(string link, TimeSpan timeout)
    {
        var end = DateTime.UtcNow + timeout;
        while (!IpIn("-o", "link", "show", "dev", link).Contains("state UP", StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > end) throw new TimeoutException($"{link} in {Name} did not come up within {timeout}");
            Thread.Sleep(20);
        }
    }

    public static bool NamespaceExists(string name) => File.Exists(Path.Combine("/run/netns", name));

    public static string Ip(params string[] args)
    {
        int rc = TryIp(out string output, args);
        if (rc != 0) throw new InvalidOperationException($"`ip {string.Join(' ', args)}` failed ({rc}): {output.Trim()}");
        return output;
    }

    private static int TryIp(out string output, params string[] args)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"network tests need `ip` (apt-get install iproute2) and root: {e.Message}");
        }
        using (p)
        {
            var err = p.StandardError.ReadToEndAsync();
            string o = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            output = o + err.Result;
            return p.ExitCode;
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        TryIp(out _, "netns", "del", Name);
    }
}
