using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Net;
using Xunit.Abstractions;

namespace Dirigent.Tests.Jail;

/// <summary>
/// `dirigent run --jail` as a child process (the CLI built beside the tests), on the software CPU: the default guest
/// boots in the jail, reads and writes a raw virtio disk and fetches a file over --net user, while the test looks at
/// the jailed VMM from outside (/proc/PID: namespaces, root, uid, no_new_privs, seccomp) and through its API socket.
/// Needs root and util-linux (namespaces, mounts, switching users) and libseccomp.
/// </summary>
[Trait("Category", "Boot")]
public class JailTests(ITestOutputHelper log)
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);
    private const int Nobody = 65534;

    internal static void SkipUnlessJailCanRun()
    {
        Skip.IfNot(Environment.UserName == "root", "--jail needs root (namespaces, mounts, switching to the jail user)");
        foreach (string t in (string[])["/usr/bin/unshare", "/usr/bin/setpriv", "/usr/bin/mount"])
            Skip.IfNot(File.Exists(t), $"{t} (util-linux) is not installed");
        Skip.IfNot(File.Exists("/usr/sbin/chroot") || File.Exists("/usr/bin/chroot"), "chroot (coreutils) is not installed");
        Skip.IfNot(System.Runtime.InteropServices.NativeLibrary.TryLoad("libseccomp.so.2", out _), "libseccomp2 is not installed");
    }

    /// <summary>A jailed run with its output collected; the guest's console is on its stdio.</summary>
    internal sealed class JailedRun : IDisposable
    {
        private readonly StringBuilder _output = new();
        private readonly object _gate = new();
        public Process Process { get; }

        public JailedRun(IEnumerable<string> args, IDictionary<string, string>? env = null)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
            psi.ArgumentList.Add("run");
            foreach (string a in args) psi.ArgumentList.Add(a);
            foreach (var kv in env ?? new Dictionary<string, string>()) psi.Environment[kv.Key] = kv.Value;
            Process = Process.Start(psi)!;
            Process.OutputDataReceived += (_, e) => Add(e.Data);
            Process.ErrorDataReceived += (_, e) => Add(e.Data);
            Process.BeginOutputReadLine();
            Process.BeginErrorReadLine();
        }

        private void Add(string? line)
        {
            if (line == null) return;
            lock (_gate) { _output.AppendLine(line); Monitor.PulseAll(_gate); }
        }

        public string Output { get { lock (_gate) return _output.ToString(); } }

        /// <summary>Waits (hang guard: <paramref name="timeout"/>) until the output contains <paramref name="text"/> or the run ends.</summary>
        public bool WaitFor(string text, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            lock (_gate)
            {
                while (!_output.ToString().Contains(text) && !Process.HasExited && DateTime.UtcNow < deadline)
                    Monitor.Wait(_gate, TimeSpan.FromSeconds(1));
                return _output.ToString().Contains(text);
            }
        }

        /// <summary>
        /// The jailed VMM: below ours are unshare (its arguments hold the VMM's command line, --in-jail included) and
        /// then the VMM, PID 1 of its own PID namespace (NSpid has two numbers).
        /// </summary>
        public int VmmPid()
        {
            foreach (int pid in global::Dirigent.Daemon.Workers.ProcessInfo.Descendants(Process.Id))
            {
                try
                {
                    if (File.ReadAllText($"/proc/{pid}/cmdline").Split('\0').Contains("--in-jail") &&
                        Status(pid, "NSpid").Length == 2)
                        return pid;
                }
                catch (IOException) { }
            }
            throw new Xunit.Sdk.XunitException($"no jailed VMM below pid {Process.Id}\n{GuestRunner.Tail(Output)}");
        }

        public void Dispose()
        {
            if (!Process.HasExited) Process.Kill(entireProcessTree: true);
            Process.Dispose();
        }
    }

    /// <summary>A /proc/PID/status field's values (Uid: real, effective, saved, fs; NSpid: outermost first).</summary>
    private static string[] Status(int pid, string field) =>
        File.ReadAllLines($"/proc/{pid}/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal))[(field.Length + 1)..]
            .Split(['\t', ' '], StringSplitOptions.RemoveEmptyEntries);

    private static string Ns(string proc, string ns) => new FileInfo($"/proc/{proc}/ns/{ns}").LinkTarget!;

    /// <summary>GET PATH on the VM's API socket (HTTP/1.0 by hand: a test of the socket, not of an HTTP client).</summary>
    private static string ApiGet(string socket, string path)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Connect(new UnixDomainSocketEndPoint(socket));
        s.Send(Encoding.ASCII.GetBytes($"GET {path} HTTP/1.0\r\nHost: vm\r\n\r\n"));
        using var ns = new NetworkStream(s);
        using var r = new StreamReader(ns);
        return r.ReadToEnd();
    }

    [SkippableFact]
    public void JailedGuestDoesDiskAndNetworkIoWhileTheVmmIsConfined()
    {
        SkipUnlessJailCanRun();
        string? missing = TestSlirp.Probe();
        Skip.If(missing != null, missing);
        const int Seed = 1515;
        string token = $"jail-{new Random(Seed).Next():x8}";
        string dir = Directory.CreateTempSubdirectory("dirigent-jail-test-").FullName;
        if (OperatingSystem.IsLinux()) File.SetUnixFileMode(dir, (UnixFileMode)0b111_101_101);
        string disk = Path.Combine(dir, "disk.img"), api = Path.Combine(dir, "api.sock"), exit = Path.Combine(dir, "exit.json");
        var image = new byte[4 << 20];
        Encoding.ASCII.GetBytes($"HOST-{token}").CopyTo(image, 0);
        File.WriteAllBytes(disk, image);
        // The jail never changes ownership of what it is given: a writable disk must be the jail user's already.
        Dirigent.Tests.Jail.Chown.To(disk, Nobody, Nobody);
        var http = new TcpListener(IPAddress.Loopback, 0);
        http.Start();
        int port = ((IPEndPoint)http.LocalEndpoint).Port;
        var server = new Thread(() =>
        {
            try
            {
                using var c = http.AcceptSocket();
                var buf = new byte[4096];
                var req = new StringBuilder();
                while (!req.ToString().Contains("\r\n\r\n") && c.Receive(buf) is var n && n > 0) req.Append(Encoding.ASCII.GetString(buf, 0, n));
                c.Send(Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Length: {token.Length + 4}\r\nConnection: close\r\n\r\nNET-{token}"));
                c.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException) { }
        }) { IsBackground = true };
        server.Start();
        string script = $"""
            echo DISK-READ-$(dd if=/dev/vda bs=1 count={5 + token.Length} 2>/dev/null)
            echo GUEST-{token} | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null || exit 3
            printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router\nexit 0\n' >/tmp/dhcp.sh
            chmod +x /tmp/dhcp.sh; ip link set eth0 up; udhcpc -q -n -f -i eth0 -s /tmp/dhcp.sh >/dev/null || exit 4
            echo FETCHED-$(wget -q -O - http://{UserNetConfig.Gateway}:{port}/)
            echo JAIL-READY
            read line
            echo GUEST-GOT-$line

            """;
        var sw = Stopwatch.StartNew();
        using var run = new JailedRun(["--jail", "--accel", "emu", "-m", "256", "--firmware", "none", "--disk", disk + ",format=raw",
            "--net", "user", "--api-socket", api, "--exit-file", exit,
            "--kernel", s_image.Value.Kernel, "--initrd", s_image.Value.Initramfs,
            "--append", $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}"]);
        try
        {
            Assert.True(run.WaitFor("JAIL-READY", BootTimeout), $"seed {Seed}; the jailed guest did not get ready\n{GuestRunner.Tail(run.Output)}");
            string o = run.Output;
            Assert.Contains($"DISK-READ-HOST-{token}", o);
            Assert.Contains($"FETCHED-NET-{token}", o);

            int vmm = run.VmmPid();
            // Who it is: not root, no capabilities, no_new_privs, a seccomp filter (mode 2).
            Assert.All(Status(vmm, "Uid"), u => Assert.Equal(Nobody.ToString(), u));
            Assert.Equal("0000000000000000", Status(vmm, "CapEff")[0]);
            Assert.Equal("1", Status(vmm, "NoNewPrivs")[0]);
            Assert.Equal("2", Status(vmm, "Seccomp")[0]);
            // Where it is: namespaces of its own (the network one is the host's: --net user's sockets are the host's).
            foreach (string ns in (string[])["mnt", "pid", "ipc", "uts"])
                Assert.NotEqual(Ns("self", ns), Ns(vmm.ToString(), ns));
            Assert.Equal(Ns("self", "net"), Ns(vmm.ToString(), "net"));
            Assert.Equal("1", Status(vmm, "NSpid")[^1]); // PID 1 of its PID namespace
            // What it sees: a root of its own, with its disk but none of the host's files.
            string root = new FileInfo($"/proc/{vmm}/root").LinkTarget!;
            Assert.NotEqual("/", root);
            Assert.True(File.Exists($"/proc/{vmm}/root{disk}"), "the disk is inside the jail");
            Assert.False(File.Exists($"/proc/{vmm}/root/etc/shadow"), "/etc/shadow is visible in the jail");
            Assert.False(Directory.Exists($"/proc/{vmm}/root/etc"), "/etc is visible in the jail");
            // The kernel keeps its host path, but its directory (the image cache) shows only what was bound in: the
            // kernel, the initramfs, and the kernel's System.map when one was fetched (introspection tests fetch it).
            string kernelDir = Path.GetDirectoryName(s_image.Value.Kernel)!;
            var bound = new List<string> { s_image.Value.Initramfs, s_image.Value.Kernel };
            if (DefaultImage.CachedSystemMap(s_image.Value.Kernel) is { } map) bound.Add(map);
            Assert.Equal(bound.Select(Path.GetFileName).Order(),
                Directory.GetFileSystemEntries($"/proc/{vmm}/root{kernelDir}").Select(Path.GetFileName).Order());
            Assert.False(File.Exists($"/proc/{vmm}/root/usr/bin/sh"), "host programs are visible in the jail");
            // Its /proc shows its own PID namespace only: our test process is not in it.
            Assert.False(Directory.Exists($"/proc/{vmm}/root/proc/{Environment.ProcessId}") && Environment.ProcessId != 1);

            // The API answers on the path it was given (a link into the jail's run directory).
            string reply = ApiGet(api, "/v1/vm");
            Assert.Contains("\"state\":\"running\"", reply);

            run.Process.StandardInput.WriteLine("stop");
            run.Process.StandardInput.Flush();
            Assert.True(run.Process.WaitForExit(BootTimeout), $"the jailed VM did not end\n{GuestRunner.Tail(run.Output)}");
            run.Process.WaitForExit();
            o = run.Output;
            Assert.True(run.Process.ExitCode == 0, $"seed {Seed}; exit status {run.Process.ExitCode}\n{GuestRunner.Tail(o)}");
            Assert.Contains($"GUEST-GOT-stop", o);
            Assert.Contains($"{InitScript.ExitStatusPrefix}0", o);
            Assert.Contains("\"kind\":\"power_off\"", File.ReadAllText(exit));
            var written = new byte[5 + 1 + token.Length];
            using (var f = File.OpenRead(disk)) { f.Position = 512; f.ReadExactly(written); }
            Assert.Equal($"GUEST-{token}", Encoding.ASCII.GetString(written)[..(6 + token.Length)]);
            Assert.False(File.Exists(api), "the API socket link outlived the run");
            Assert.False(Directory.Exists(root), "the jail directory outlived the run");
            log.WriteLine($"seed {Seed}; jailed boot, disk and network I/O, stop: {sw.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            http.Stop();
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Without NICs the VMM gets a network namespace of its own too (only a loopback, down).</summary>
    [SkippableFact]
    public void WithoutNicsTheVmmHasItsOwnNetworkNamespace()
    {
        SkipUnlessJailCanRun();
        using var run = new JailedRun(["--jail", "--accel", "emu", "-m", "128", "--kernel", s_image.Value.Kernel, "--initrd", s_image.Value.Initramfs,
            "--append", $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument("echo JAIL-READY; read line; echo GUEST-GOT-$line\n")}"]);
        Assert.True(run.WaitFor("JAIL-READY", BootTimeout), $"the jailed guest did not get ready\n{GuestRunner.Tail(run.Output)}");
        int vmm = run.VmmPid();
        foreach (string ns in (string[])["mnt", "pid", "ipc", "uts", "net"])
            Assert.NotEqual(Ns("self", ns), Ns(vmm.ToString(), ns));
        run.Process.StandardInput.WriteLine("stop");
        run.Process.StandardInput.Flush();
        Assert.True(run.Process.WaitForExit(BootTimeout), $"the jailed VM did not end\n{GuestRunner.Tail(run.Output)}");
        run.Process.WaitForExit();
        Assert.True(run.Process.ExitCode == 0, $"exit status {run.Process.ExitCode}\n{GuestRunner.Tail(run.Output)}");
        Assert.Contains("GUEST-GOT-stop", run.Output);
    }

    /// <summary>
    /// A syscall outside the allow-list kills the VMM (SIGSYS) before the guest runs; the launcher says which call
    /// (from the kernel's audit record when it can read it), exits 6 and writes the exit record.
    /// </summary>
    [SkippableFact]
    public void ADeniedSyscallKillsTheVmmWithOneLineNamingIt()
    {
        SkipUnlessJailCanRun();
        string dir = Directory.CreateTempSubdirectory("dirigent-jail-deny-").FullName;
        try
        {
            string exit = Path.Combine(dir, "exit.json");
            using var run = new JailedRun(["--jail", "--accel", "emu", "-m", "128", "--serial", "none", "--exit-file", exit,
                "--kernel", s_image.Value.Kernel, "--initrd", s_image.Value.Initramfs],
                new Dictionary<string, string> { ["DIRIGENT_TEST_SECCOMP_DENY"] = "1" });
            Assert.True(run.Process.WaitForExit(BootTimeout), $"the run did not end\n{run.Output}");
            run.Process.WaitForExit();
            Assert.Equal(ExitCodes.VmmFailure, run.Process.ExitCode);
            string line = run.Output.Trim().Split('\n').Last().Trim();
            Assert.StartsWith("dirigent run: the jailed VMM was killed by seccomp (SIGSYS): ", line);
            // personality(2) is the call the test hook makes; its number shows when the kernel log is readable.
            Assert.Matches("(personality \\(135\\)|a system call \\(its number is in the kernel's audit log)", line);
            string record = File.ReadAllText(exit);
            Assert.Contains("\"kind\":\"seccomp\"", record);
            Assert.Contains("\"exit_code\":6", record);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData(new[] { "--jail-bind", "/tmp" }, "dirigent run: --jail-bind is for --jail")]
    [InlineData(new[] { "--jail", "--jail-user", "0" }, "dirigent run: --jail-user must be UID[:GID], numeric and not 0 (root), got '0'")]
    [InlineData(new[] { "--jail-user", "1000" }, "dirigent run: --jail-user is for --jail")]
    [InlineData(new[] { "--jail", "--net", "tap=tap0,netns=other" }, "dirigent run: --jail cannot attach a TAP in another network namespace (netns=): the jailed VMM may not enter namespaces")]
    public void UnsupportedJailOptionsAreOneLineAndStatus2(string[] args, string expected)
    {
        using var run = new JailedRun(args);
        Assert.True(run.Process.WaitForExit(TimeSpan.FromMinutes(1)), run.Output);
        run.Process.WaitForExit();
        Assert.Equal(ExitCodes.BadInput, run.Process.ExitCode);
        Assert.Equal(expected, run.Output.Trim());
    }
}

/// <summary>libslirp present? (the Vmm's probe is internal).</summary>
internal static class TestSlirp
{
    public static string? Probe() =>
        System.Runtime.InteropServices.NativeLibrary.TryLoad("libslirp.so.0", out _) ? null : "libslirp0 is not installed";
}

internal static partial class Chown
{
    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int chown(string path, int uid, int gid);

    public static void To(string path, int uid, int gid) => Assert.Equal(0, chown(path, uid, gid));
}
