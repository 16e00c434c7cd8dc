using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Net;
using Xunit.Abstractions;

namespace Dirigent.Tests.Net;

/// <summary>
/// `--net user` (libslirp) with the default guest on the software CPU: busybox udhcpc gets 10.0.2.15 by DHCP, wget
/// fetches a file from an HTTP server this test runs on the host's loopback (the guest reaches it as 10.0.2.2),
/// and a hostfwd from the host's loopback reaches busybox httpd in the guest, with the VMM running as `nobody`.
/// All host-side traffic stays on 127.0.0.1.
/// </summary>
[Trait("Category", "Boot")]
public class UserNetGuestTests(ITestOutputHelper log)
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);

    /// <summary>
    /// Guest shell lines that bring eth0 up with DHCP: the default image has no udhcpc script, so this writes one
    /// that applies the lease (address, default route) and prints it.
    /// </summary>
    private const string Dhcp = """
        printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router && echo "LEASE ip=$ip router=$router dns=$dns"\nexit 0\n' >/tmp/dhcp.sh
        chmod +x /tmp/dhcp.sh
        ip link set eth0 up
        udhcpc -q -n -f -i eth0 -s /tmp/dhcp.sh || exit 3

        """;

    [SkippableFact]
    public void AForwardThatCannotBeBoundEndsTheRunBeforeTheGuestStarts()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        try
        {
            int port = ((IPEndPoint)taken.LocalEndpoint).Port;
            var cfg = new VmSpec
            {
                Kernel = s_image.Value.Kernel,
                Initrds = [s_image.Value.Initramfs],
                Nics = [NicConfig.Parse($"user,hostfwd=tcp:127.0.0.1:{port}-:22", 0)],
            };
            var r = new GuestRunner();
            int rc = r.Run(cfg, TimeSpan.FromMinutes(1));
            Assert.Equal(ExitCodes.VmmFailure, rc);
            Assert.Equal($"dirigent run: --net: hostfwd tcp:127.0.0.1:{port}-10.0.2.15:22: cannot listen on 127.0.0.1:{port} (tcp): Address already in use", r.Errors.Trim());
            Assert.Equal("", r.Output);
        }
        finally
        {
            taken.Stop();
        }
    }

    [SkippableFact]
    public void GuestGetsDhcpLeaseAndFetches16MiBFromTheHostLoopback()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        const int Size = 16 << 20, Seed = 1414;
        var data = new byte[Size];
        new Random(Seed).NextBytes(data);
        string sha = Convert.ToHexStringLower(SHA256.HashData(data));
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        Exception? serverError = null;
        string? request = null;
        var server = new Thread(() =>
        {
            try
            {
                using var c = listener.AcceptSocket();
                var buf = new byte[4096];
                var req = new StringBuilder();
                while (!req.ToString().Contains("\r\n\r\n"))
                {
                    int n = c.Receive(buf);
                    if (n == 0) break;
                    req.Append(Encoding.ASCII.GetString(buf, 0, n));
                }
                request = req.ToString().Split("\r\n")[0];
                c.Send(Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {Size}\r\nConnection: close\r\n\r\n"));
                c.Send(data);
                c.Shutdown(SocketShutdown.Send);
            }
            catch (Exception e) { serverError = e; }
        }) { IsBackground = true };
        server.Start();
        try
        {
            string script = Dhcp + $"wget -q -O /tmp/blob http://{UserNetConfig.Gateway}:{port}/blob || exit 4\n" +
                "echo GOT-SHA=$(sha256sum /tmp/blob)\n";
            var cfg = new VmSpec
            {
                Kernel = s_image.Value.Kernel,
                Initrds = [s_image.Value.Initramfs],
                Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
                MemoryBytes = 256UL << 20,
                Nics = [NicConfig.Parse("user", 0)],
            };
            var sw = Stopwatch.StartNew();
            var r = new GuestRunner();
            int rc = r.Run(cfg, BootTimeout);
            string o = r.Output;
            string why = $"seed {Seed}; exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}";
            Assert.True(rc == 0, why);
            Assert.Contains("LEASE ip=10.0.2.15 router=10.0.2.2 dns=10.0.2.3", o);
            Assert.Contains($"{InitScript.ExitStatusPrefix}0", o);
            Assert.True(server.Join(TimeSpan.FromSeconds(10)), why);
            Assert.Null(serverError);
            Assert.Equal("GET /blob HTTP/1.1", request);
            var m = Regex.Match(o, "GOT-SHA=([0-9a-f]{64})");
            Assert.True(m.Success, $"no checksum from the guest; {why}");
            Assert.Equal(sha, m.Groups[1].Value);
            log.WriteLine($"seed {Seed}; boot + DHCP + 16 MiB fetch: {sw.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            listener.Stop();
        }
    }

    /// <summary>
    /// The CLI as a child process under `setpriv --reuid=nobody --regid=nogroup --clear-groups` (no capabilities):
    /// a hostfwd on 127.0.0.1 reaches busybox httpd in the guest. Needs root to switch users, and setpriv.
    /// </summary>
    [SkippableFact]
    public void HostForwardReachesGuestHttpdWithTheVmmRunningAsNobody()
    {
        string? missing = SlirpNative.Probe();
        Skip.If(missing != null, missing);
        Skip.IfNot(Environment.UserName == "root", "switching to the user nobody needs root");
        Skip.IfNot(File.Exists("/usr/bin/setpriv"), "setpriv (util-linux) is not installed");
        const int Seed = 1415;
        string token = $"dirigent-{new Random(Seed).Next():x8}";
        // The kernel and initramfs where nobody can read them (the image cache is root's).
        string dir = Directory.CreateTempSubdirectory("dirigent-usernet-").FullName;
        if (OperatingSystem.IsLinux()) File.SetUnixFileMode(dir, (UnixFileMode)0b111_101_101);
        string kernel = Path.Combine(dir, "vmlinuz"), initrd = Path.Combine(dir, "initramfs");
        File.Copy(s_image.Value.Kernel, kernel);
        File.Copy(s_image.Value.Initramfs, initrd);
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        string script = Dhcp +
            $"mkdir -p /www && echo {token} >/www/index.html && httpd -p 80 -h /www && echo HTTPD-READY || exit 5\n" +
            "read line\necho GUEST-GOT-$line\n";
        var psi = new ProcessStartInfo("/usr/bin/setpriv") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in new[] { "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "dotnet",
                     Path.Combine(AppContext.BaseDirectory, "dirigent.dll"), "run", "-m", "256", "--kernel", kernel, "--initrd", initrd,
                     "--net", $"user,hostfwd=tcp:127.0.0.1:{port}-:80",
                     "--append", $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}" })
            psi.ArgumentList.Add(a);
        psi.Environment["HOME"] = dir;
        var output = new StringBuilder();
        var gate = new object();
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        try
        {
            p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (gate) { output.AppendLine(e.Data); Monitor.PulseAll(gate); } };
            p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (gate) { output.AppendLine(e.Data); Monitor.PulseAll(gate); } };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            string Out() { lock (gate) return output.ToString(); }
            bool ready;
            lock (gate)
            {
                var deadline = DateTime.UtcNow + BootTimeout;
                while (!output.ToString().Contains("HTTPD-READY") && !p.HasExited && DateTime.UtcNow < deadline)
                    Monitor.Wait(gate, TimeSpan.FromSeconds(1));
                ready = output.ToString().Contains("HTTPD-READY");
            }
            Assert.True(ready, $"seed {Seed}; the guest's httpd did not come up\n{GuestRunner.Tail(Out())}");
            var status = File.ReadAllLines($"/proc/{p.Id}/status");
            string uid = status.First(l => l.StartsWith("Uid:")), caps = status.First(l => l.StartsWith("CapEff:"));
            Assert.Equal("65534", uid.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1]);
            Assert.Equal("0000000000000000", caps.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1]);
            using (var http = new HttpClient { Timeout = TimeSpan.FromMinutes(1) })
            {
                string body = http.GetStringAsync($"http://127.0.0.1:{port}/index.html").Result;
                Assert.Equal(token + "\n", body);
            }
            p.StandardInput.WriteLine("stop");
            p.StandardInput.Flush();
            Assert.True(p.WaitForExit(BootTimeout), $"the VM did not end\n{GuestRunner.Tail(Out())}");
            p.WaitForExit();
            string o = Out();
            Assert.True(p.ExitCode == 0, $"seed {Seed}; exit status {p.ExitCode}\n{GuestRunner.Tail(o)}");
            Assert.Contains("LEASE ip=10.0.2.15", o);
            Assert.Contains("GUEST-GOT-stop", o);
            Assert.Contains($"{InitScript.ExitStatusPrefix}0", o);
            log.WriteLine($"seed {Seed}; {uid.Replace('\t', ' ')}; boot + DHCP + forwarded GET: {sw.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            Directory.Delete(dir, recursive: true);
        }
    }
}
