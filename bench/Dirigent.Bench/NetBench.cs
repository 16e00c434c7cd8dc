using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// Host↔guest TCP throughput over virtio-net and a TAP, on Dirigent and on QEMU TCG (`-device virtio-net-pci`) in
/// one run. Everything lives in a network namespace this bench creates (TAP with 169.254.77.1/24, the guest takes
/// .2) and deletes; the host end is this program re-run inside the namespace (`netpeer`), so no traffic leaves it.
/// The guest sends 64 MiB (busybox dd | nc) to the peer, then receives 64 MiB from it (nc -l); the peer times both
/// from the first byte to the last.
/// </summary>
public static class NetBench
{
    private const string HostIp = "169.254.77.1", GuestIp = "169.254.77.2", Tap = "dbtap0";
    private const int UpPort = 5001, DownPort = 5002, Mib = 64;

    private static readonly string Script = $"""
        ip addr add {GuestIp}/24 dev eth0 && ip link set eth0 up || echo FAIL-IFUP
        sleep 1
        dd if=/dev/zero bs=1M count={Mib} 2>/dev/null | nc {HostIp} {UpPort} || echo FAIL-UP
        nc -l -p {DownPort} > /dev/null || echo FAIL-DOWN
        echo MARK-NETDONE
        poweroff -f
        """;

    public static int Run(string? qemu, bool skipDirigent)
    {
        if (Environment.UserName != "root" && !File.Exists("/run/netns"))
            Console.WriteLine("note: creating a network namespace and a TAP needs root (CAP_NET_ADMIN)");
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(Script)}";
        Console.WriteLine($"guest: {img.KernelVersion}, 512 MiB, 1 vCPU, virtio-net on TAP {Tap} in a private namespace; {Mib} MiB each way");
        (double up, double down)? d = null, q = null;
        if (!skipDirigent)
            d = WithNamespace(ns => RunPeered(ns, DirigentCli.Path, ["run", "--kernel", img.Kernel, "--initrd", img.Initramfs,
                "--append", append, "-m", "512", "--accel", "emu", "--net", $"tap={Tap}"]));
        if (qemu != null)
            q = WithNamespace(ns => RunPeered(ns, qemu, ["-M", "pc", "-accel", "tcg", "-m", "512", "-nodefaults", "-nographic",
                "-serial", "stdio", "-kernel", img.Kernel, "-initrd", img.Initramfs, "-append", append,
                "-netdev", $"tap,id=n0,ifname={Tap},script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0"]));
        Console.WriteLine($"{"metric",-34} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
        IoBench.Row("guest -> host TCP (MiB/s)", d?.up, q?.up);
        IoBench.Row("host -> guest TCP (MiB/s)", d?.down, q?.down);
        Console.WriteLine("(higher is better; ratio > 1 means Dirigent is faster)");
        return 0;
    }

    private static T WithNamespace<T>(Func<string, T> body)
    {
        string ns = $"dbench-{Environment.ProcessId}";
        Ip("netns", "add", ns);
        try
        {
            Ip("-n", ns, "link", "set", "lo", "up");
            Ip("-n", ns, "tuntap", "add", "dev", Tap, "mode", "tap");
            Ip("-n", ns, "addr", "add", $"{HostIp}/24", "dev", Tap);
            Ip("-n", ns, "link", "set", Tap, "up");
            return body(ns);
        }
        finally
        {
            Ip("netns", "del", ns);
        }
    }

    private static void Ip(params string[] args)
    {
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"ip {string.Join(' ', args)}: {err.Trim()}");
    }

    /// <summary>Starts the peer in the namespace, then the VMM there; returns the peer's two figures.</summary>
    private static (double up, double down) RunPeered(string ns, string exe, IReadOnlyList<string> args)
    {
        var peerArgs = new List<string> { "netns", "exec", ns };
        peerArgs.AddRange(SelfCommand());
        peerArgs.Add("netpeer");
        var peerPsi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardOutput = true };
        foreach (var a in peerArgs) peerPsi.ArgumentList.Add(a);
        using var peer = Process.Start(peerPsi)!;
        var peerOut = peer.StandardOutput.ReadToEndAsync();
        var vmArgs = new List<string> { "netns", "exec", ns, exe };
        vmArgs.AddRange(args);
        string guest;
        try
        {
            guest = IoBench.RunProcess("ip", vmArgs);
        }
        finally
        {
            if (!peer.WaitForExit(10_000)) peer.Kill();
        }
        if (guest.Contains("FAIL-", StringComparison.Ordinal) || !guest.Contains("MARK-NETDONE", StringComparison.Ordinal))
            throw new InvalidOperationException($"guest network commands failed:\n{guest[^Math.Min(3000, guest.Length)..]}");
        var parts = peerOut.Result.Trim().Split(' ');
        if (parts.Length != 2) throw new InvalidOperationException($"netpeer gave '{peerOut.Result.Trim()}'");
        return (double.Parse(parts[0], CultureInfo.InvariantCulture), double.Parse(parts[1], CultureInfo.InvariantCulture));
    }

    private static IEnumerable<string> SelfCommand()
    {
        string proc = Environment.ProcessPath!;
        if (Path.GetFileNameWithoutExtension(proc) == "dotnet") return [proc, typeof(NetBench).Assembly.Location];
        return [proc];
    }

    /// <summary>
    /// The host end, run inside the namespace: receive <see cref="Mib"/> MiB on <see cref="UpPort"/>, then connect to
    /// the guest's listener and send as much; prints both rates (MiB/s) on one line.
    /// </summary>
    public static int Peer()
    {
        var listener = new TcpListener(IPAddress.Parse(HostIp), UpPort);
        listener.Start();
        var deadline = DateTime.UtcNow.AddMinutes(5);
        var acceptTask = listener.AcceptSocketAsync();
        if (!acceptTask.Wait(TimeSpan.FromMinutes(5))) { Console.Error.WriteLine("netpeer: no connection from the guest"); return 1; }
        double up;
        using (var s = acceptTask.Result)
        {
            var buf = new byte[1 << 16];
            long total = 0, want = (long)Mib << 20;
            Stopwatch? sw = null;
            while (total < want)
            {
                int n = s.Receive(buf);
                if (n == 0) break;
                sw ??= Stopwatch.StartNew();
                total += n;
            }
            up = total / 1048576.0 / Math.Max(sw?.Elapsed.TotalSeconds ?? 1, 1e-6);
            if (total < want) { Console.Error.WriteLine($"netpeer: guest sent only {total} bytes"); return 1; }
        }
        listener.Stop();

        Socket? c = null;
        while (c == null)
        {
            if (DateTime.UtcNow > deadline) { Console.Error.WriteLine("netpeer: guest listener never came up"); return 1; }
            var t = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try { t.Connect(IPAddress.Parse(GuestIp), DownPort); c = t; }
            catch (SocketException) { t.Dispose(); Thread.Sleep(200); }
        }
        double down;
        using (c)
        {
            var data = new byte[1 << 16];
            var sw = Stopwatch.StartNew();
            for (long sent = 0; sent < (long)Mib << 20; sent += data.Length) c.Send(data);
            c.Shutdown(SocketShutdown.Send);
            while (c.Receive(data) > 0) { }   // the guest's nc closes after it has read everything
            down = Mib / sw.Elapsed.TotalSeconds;
        }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{up:F2} {down:F2}"));
        return 0;
    }
}
