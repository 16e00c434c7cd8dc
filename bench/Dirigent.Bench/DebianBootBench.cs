using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dirigent.Images.Debian;
using Dirigent.Storage;

namespace Dirigent.Bench;

/// <summary>
/// The full Debian system image (`dirigent image build debian`) booted through SeaBIOS and GRUB on Dirigent's
/// software CPU and on QEMU TCG in one run: seconds from process start to the `login:` prompt on the serial console,
/// and to the first successful SSH login through the user network's host forward
/// (`--net user,hostfwd=tcp:127.0.0.1:PORT-:22`, QEMU's `-nic user,hostfwd=...`). Each boot starts from a fresh qcow2
/// overlay of the same image, so both do the same first boot (SSH host keys are generated then). One run each: a
/// boot takes minutes. Without --image the bench builds the image first (with a throw-away SSH key; the package
/// cache of `image build` is reused).
/// Usage: bench debian-boot [--image PATH --key PRIVATE_KEY] [--no-qemu]
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public static class DebianBootBench
{
    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(20);

    public static int Run(string? qemu, string[] args)
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-bench-debian-").FullName;
        try
        {
            string? image = Arg(args, "--image"), key = Arg(args, "--key");
            if (image == null)
            {
                key = Path.Combine(dir, "key");
                if (Tool("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key) != 0) { Console.WriteLine("ssh-keygen failed (openssh-client)"); return 2; }
                image = Path.Combine(dir, "debian.qcow2");
                string cache = Environment.GetEnvironmentVariable("DIRIGENT_CACHE") is { Length: > 0 } c ? c
                    : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "dirigent");
                var sw = Stopwatch.StartNew();
                DebianImageBuilder.Build(DebianImageOptions.Parse(image, null, "4G", null, key + ".pub", "bench", cache), l => Console.Error.WriteLine(l));
                Console.WriteLine($"image built in {sw.Elapsed.TotalSeconds:F0} s: {image}");
            }
            string cli = StartupBench.EnsureCli(StartupBench.FindRepoRoot());
            Console.WriteLine($"image {image}; 1 GiB, 1 vCPU; one boot each from a fresh overlay (first boot: SSH host keys made)");
            var d = Boot("dirigent", dir, image, key, port => [cli, "run", "--disk", "{overlay}", "--memory", "1G", "--accel", "emu",
                "--net", $"user,hostfwd=tcp:127.0.0.1:{port}-:22"]);
            Sample? q = null;
            if (qemu != null)
                q = Boot("qemu", dir, image, key, port => [qemu, "-M", "pc", "-accel", "tcg", "-m", "1G", "-nographic", "-serial", "stdio",
                    "-monitor", "none", "-drive", "file={overlay},if=virtio", "-nic", $"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"]);
            Console.WriteLine($"{"metric",-36} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
            Row("process start -> login: (s)", d.Login, q?.Login);
            Row("process start -> SSH command ran (s)", d.Ssh, q?.Ssh);
            return 0;
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    private sealed record Sample(double Login, double Ssh);

    private static void Row(string name, double a, double? b) =>
        Console.WriteLine($"{name,-36} {a,10:F1} {(b.HasValue ? b.Value.ToString("F1") : "-"),10} {(b is > 0 && !double.IsNaN(a) ? (a / b.Value).ToString("F2") + "x" : "-"),14}");

    private static Sample Boot(string who, string dir, string image, string? key, Func<int, string[]> command)
    {
        string overlay = Path.Combine(dir, $"{who}.qcow2");
        DiskImage.Create(overlay, "qcow2", 4L << 30, Path.GetFullPath(image), "qcow2");
        int port = FreePort();
        string[] argv = command(port).Select(a => a.Replace("{overlay}", overlay)).ToArray();
        var psi = new ProcessStartInfo(argv[0]) { RedirectStandardOutput = true, RedirectStandardInput = true, RedirectStandardError = true };
        foreach (var a in argv[1..]) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        _ = p.StandardError.ReadToEndAsync();
        var seen = new StringBuilder();
        double login = double.NaN, ssh = double.NaN;
        try
        {
            var buf = new char[4096];
            while (sw.Elapsed < Guard)
            {
                int n = p.StandardOutput.Read(buf, 0, buf.Length);
                if (n <= 0) throw new InvalidOperationException($"{who}: the VM ended before login: ({p.ExitCode})");
                seen.Append(buf, 0, n);
                if (seen.ToString().Contains("login:", StringComparison.Ordinal)) { login = sw.Elapsed.TotalSeconds; break; }
            }
            if (double.IsNaN(login)) throw new TimeoutException($"{who}: no login: within {Guard.TotalMinutes} min");
            Console.Error.WriteLine($"{who}: login: after {login:F1} s");
            _ = Task.Run(async () => { var b = new char[4096]; while (await p.StandardOutput.ReadAsync(b) > 0) { } });
            if (key != null)
            {
                // Each try is one ssh process; sshd may still be starting (first-boot host keys), so retry until it answers.
                while (sw.Elapsed < Guard)
                {
                    if (Tool("ssh", "-q", "-i", key, "-p", port.ToString(), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "BatchMode=yes", "-o", "ConnectTimeout=60", "root@127.0.0.1", "true") == 0)
                    {
                        ssh = sw.Elapsed.TotalSeconds;
                        break;
                    }
                    Thread.Sleep(1000); // a retry interval, not synchronisation
                }
                Console.Error.WriteLine($"{who}: SSH after {ssh:F1} s");
            }
        }
        finally
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }
        return new Sample(login, ssh);
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    private static int Tool(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        p.StandardOutput.ReadToEnd();
        p.StandardError.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode;
    }

    private static string? Arg(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
