using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Dirigent.Cli;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// TCP throughput through user-mode networking: Dirigent's `--net user` (libslirp) against QEMU TCG's
/// `-netdev user` (libslirp too) with virtio-net-pci, same kernel and initramfs, in one run. No root and no TAP:
/// this program listens on two ephemeral ports of 127.0.0.1, and the guest (after DHCP) connects to them as
/// 10.0.2.2, first sending <c>MiB</c> MiB (busybox dd | nc: guest → host), then receiving as much (nc &gt;
/// /dev/null: host → guest). The host side times each from the first byte to the last (to the guest's close for
/// host → guest).
/// </summary>
public static class NetUserBench
{
    public static int Run(string? qemu, bool skipDirigent, bool quick)
    {
        int mib = quick ? 16 : 64;
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        Console.WriteLine($"guest: {img.KernelVersion}, 256 MiB, 1 vCPU, virtio-net on user networking (libslirp); {mib} MiB each way over TCP to 127.0.0.1 (10.0.2.2 in the guest)");
        (double up, double down)? d = null, q = null;
        if (!skipDirigent)
            d = Measure(mib, append => IoBench.RunProcess(DirigentCli.Path, ["run", "--kernel", img.Kernel, "--initrd", img.Initramfs,
                "--append", append, "-m", "256", "--accel", "emu", "--net", "user"]));
        if (qemu != null)
            q = Measure(mib, append => IoBench.RunProcess(qemu, ["-M", "pc", "-accel", "tcg", "-m", "256", "-nodefaults", "-nographic",
                "-serial", "stdio", "-kernel", img.Kernel, "-initrd", img.Initramfs, "-append", append,
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]));
        Console.WriteLine($"{"metric",-34} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
        IoBench.Row("guest -> host TCP (MiB/s)", d?.up, q?.up);
        IoBench.Row("host -> guest TCP (MiB/s)", d?.down, q?.down);
        Console.WriteLine("(higher is better; ratio > 1 means Dirigent is faster)");
        return 0;
    }

    private static (double up, double down) Measure(int mib, Func<string, string> runVm)
    {
        var upListener = new TcpListener(IPAddress.Loopback, 0);
        var downListener = new TcpListener(IPAddress.Loopback, 0);
        upListener.Start();
        downListener.Start();
        try
        {
            int upPort = ((IPEndPoint)upListener.LocalEndpoint).Port, downPort = ((IPEndPoint)downListener.LocalEndpoint).Port;
            long bytes = (long)mib << 20;
            double up = 0, down = 0;
            Exception? error = null;
            var host = new Thread(() =>
            {
                try
                {
                    using (var s = upListener.AcceptSocket())
                    {
                        var buf = new byte[1 << 16];
                        long total = 0;
                        Stopwatch? sw = null;
                        int n;
                        while ((n = s.Receive(buf)) > 0) { sw ??= Stopwatch.StartNew(); total += n; }
                        if (total != bytes) throw new InvalidOperationException($"the guest sent {total} bytes, not {bytes}");
                        up = mib / sw!.Elapsed.TotalSeconds;
                    }
                    using (var s = downListener.AcceptSocket())
                    {
                        var data = new byte[1 << 16];
                        var sw = Stopwatch.StartNew();
                        for (long sent = 0; sent < bytes; sent += data.Length) s.Send(data);
                        s.Shutdown(SocketShutdown.Send);
                        while (s.Receive(data) > 0) { }   // the guest's nc closes once it has read everything
                        down = mib / sw.Elapsed.TotalSeconds;
                    }
                }
                catch (Exception e) { error = e; }
            }) { IsBackground = true };
            host.Start();
            string script = $"""
                printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router\nexit 0\n' >/tmp/dhcp.sh
                chmod +x /tmp/dhcp.sh
                ip link set eth0 up
                udhcpc -q -n -f -i eth0 -s /tmp/dhcp.sh >/dev/null || echo FAIL-DHCP
                dd if=/dev/zero bs=1M count={mib} 2>/dev/null | nc 10.0.2.2 {upPort} || echo FAIL-UP
                nc 10.0.2.2 {downPort} </dev/null >/dev/null || echo FAIL-DOWN
                echo MARK-NETDONE
                poweroff -f
                """;
            string output = runVm($"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}");
            if (output.Contains("FAIL-", StringComparison.Ordinal) || !output.Contains("MARK-NETDONE", StringComparison.Ordinal))
                throw new InvalidOperationException($"guest network commands failed:\n{output[^Math.Min(3000, output.Length)..]}");
            if (!host.Join(TimeSpan.FromSeconds(30))) throw new InvalidOperationException("the host side did not finish");
            if (error != null) throw new InvalidOperationException($"host side: {error.Message}");
            return (up, down);
        }
        finally
        {
            upListener.Stop();
            downListener.Stop();
        }
    }
}
