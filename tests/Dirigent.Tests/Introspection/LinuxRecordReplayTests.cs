using Dirigent.Tests.Infrastructure;
using System.Text.Json;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Machine.Introspection.RecordReplay;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// Record and replay of the default guest (Debian's cloud kernel + busybox initramfs) on the software CPU: a boot,
/// a line typed on the console (host input, reaching the guest through UART reads and interrupts), a small workload
/// and a power-off. Three replays print the same console output, end with the same memory and instruction count, and
/// a system-call trace attached to a replay shows the same calls as the one attached to the recording. With a
/// virtio disk and the entropy device, the replays need neither the image nor the host's entropy.
/// </summary>
[Trait("Category", "Boot")]
public class LinuxRecordReplayTests
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(5);

    [Fact]
    public void BootWithConsoleInputReplaysIdenticallyThreeTimesWithTheSameTrace()
    {
        var img = s_image.Value;
        string dir = Path.Combine(Path.GetTempPath(), $"dirigent-rr-linux-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            const string script = "echo READY-FOR-INPUT; read line; echo \"GOT:$line\"; cat /proc/uptime; ls /; poweroff -f";
            var spec = DefaultGuestSpec.For(img, script, 128UL << 20);
            string rec = Path.Combine(dir, "rec");
            string recTrace = Path.Combine(dir, "rec.jsonl");
            var r = new GuestRunner().When("READY-FOR-INPUT", "typed on the host\n");
            int rc = r.Run(spec, Guard, new RunOptions { RecordDir = rec, Trace = TraceOption.Parse($"syscalls,output={recTrace}") });
            Assert.True(rc == 0, $"recording: exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
            Assert.Contains("GOT:typed on the host", r.Output);
            var m = JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(Path.Combine(rec, RecordingManifest.FileName)),
                new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase })!;
            Assert.Equal("power-off", m.End);
            var recCalls = Calls(recTrace);
            Assert.Contains(recCalls, c => c.Contains("\"name\":\"execve\"", StringComparison.Ordinal));

            for (int k = 0; k < 3; k++)
            {
                string repTrace = Path.Combine(dir, $"rep{k}.jsonl");
                var p = new GuestRunner();
                int prc = p.Run(new VmSpec(), Guard, new RunOptions { ReplayDir = rec, Trace = k == 0 ? TraceOption.Parse($"syscalls,output={repTrace}") : null });
                Assert.True(prc == 0, $"replay {k}: exit status {prc}; errors: {p.Errors}\n{GuestRunner.Tail(p.Output)}");
                // Nothing was typed this time: the line comes from the log.
                Assert.Equal(r.Output, p.Output);
                Assert.Contains($"replay matches the recording: {m.Instructions} instructions", p.Errors);
                if (k == 0) Assert.Equal(recCalls, Calls(repTrace));
            }
        }
        finally { try { Directory.Delete(dir, recursive: true); } catch (IOException) { } }
    }

    [Fact]
    public void BootWithVirtioDiskAndRngReplaysFromTheLogWithoutTheDisk()
    {
        var img = s_image.Value;
        string dir = Path.Combine(Path.GetTempPath(), $"dirigent-rr-linux-dma-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            // A raw disk of known bytes (fixed seed), read whole by the guest; 16 bytes of the entropy device's. The
            // disk is limited to 512 KiB/s of VM time, less than the guest reads: the limiter's timer resumes the
            // queue between instructions, so device writes happen there too.
            const int seed = 1717;
            var bytes = new byte[1 << 20];
            new Random(seed).NextBytes(bytes);
            string disk = Path.Combine(dir, "disk.raw");
            File.WriteAllBytes(disk, bytes);
            string sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes));
            const string script = "echo DISK=$(dd if=/dev/vda bs=64k 2>/dev/null | sha256sum); " +
                "echo RNG=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' '); poweroff -f";
            var spec = DefaultGuestSpec.For(img, script, 128UL << 20);
            spec.Disks = [new DiskConfig(disk, DiskFormat.Raw, ReadOnly: true, BytesPerSecond: 512 << 10)];
            spec.Rng = true;
            string rec = Path.Combine(dir, "rec");
            var r = new GuestRunner();
            int rc = r.Run(spec, Guard, new RunOptions { RecordDir = rec });
            Assert.True(rc == 0, $"recording (seed {seed}): exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
            Assert.Contains($"DISK={sha}", r.Output);
            var rng = System.Text.RegularExpressions.Regex.Match(r.Output, "RNG=([0-9a-f]{32})");
            Assert.True(rng.Success, GuestRunner.Tail(r.Output));
            var m = JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(Path.Combine(rec, RecordingManifest.FileName)),
                new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase })!;
            Assert.Equal(("power-off", 2, true), (m.End, m.Version, m.Rng));
            var d = Assert.Single(m.Disks);
            Assert.Equal((Path.GetFullPath(disk), "raw", (long)bytes.Length, true), (d.Path, d.Format, d.Size, d.ReadOnly));
            // Everything the guest read from the disk is in the log.
            Assert.True(m.DmaBytes > bytes.Length, $"{m.DmaBytes} bytes of DMA logged for a {bytes.Length}-byte disk");
            var kinds = new Dictionary<EventKind, int>();
            using (var reader = new EventLogReader(File.OpenRead(Path.Combine(rec, RecordingManifest.LogFileName))))
                while (reader.TryRead(out var e)) kinds[e.Kind] = kinds.GetValueOrDefault(e.Kind) + 1;
            Assert.True(kinds.GetValueOrDefault(EventKind.DmaWrite) > 0 && kinds.GetValueOrDefault(EventKind.DmaWriteBetween) > 0,
                string.Join(", ", kinds.Select(k => $"{k.Key}: {k.Value}")));

            // The image changed, then gone: the replays take the disk's and the device's bytes from the log.
            new Random(seed + 1).NextBytes(bytes);
            File.WriteAllBytes(disk, bytes);
            for (int k = 0; k < 3; k++)
            {
                if (k == 1) File.Delete(disk);
                var p = new GuestRunner();
                int prc = p.Run(new VmSpec(), Guard, new RunOptions { ReplayDir = rec });
                Assert.True(prc == 0, $"replay {k} (seed {seed}): exit status {prc}; errors: {p.Errors}\n{GuestRunner.Tail(p.Output)}");
                Assert.Equal(r.Output, p.Output);
                Assert.Contains($"replay matches the recording: {m.Instructions} instructions, memory SHA-256 {m.MemorySha256[..16]}", p.Errors);
            }
        }
        finally { try { Directory.Delete(dir, recursive: true); } catch (IOException) { } }
    }

    /// <summary>
    /// `--net user`: the guest gets a lease by DHCP and fetches 256 KiB from an HTTP server this test runs on the
    /// host's loopback (10.0.2.2 to the guest). The server is gone for the replay, which opens no network: the
    /// frames the card received come from the log, between the instructions where the recording took them in.
    /// </summary>
    [SkippableFact]
    public void NetworkDownloadReplaysWithoutTheNetwork()
    {
        string? missing = Dirigent.Vmm.Net.SlirpNative.Probe();
        Skip.If(missing != null, missing);
        var img = s_image.Value;
        string dir = Path.Combine(Path.GetTempPath(), $"dirigent-rr-linux-net-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        const int Size = 256 << 10, Seed = 1818;
        var data = new byte[Size];
        new Random(Seed).NextBytes(data);
        string sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(data));
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        Exception? serverError = null;
        var server = new Thread(() =>
        {
            try
            {
                using var c = listener.AcceptSocket();
                var buf = new byte[4096];
                var req = new System.Text.StringBuilder();
                while (!req.ToString().Contains("\r\n\r\n"))
                {
                    int n = c.Receive(buf);
                    if (n == 0) break;
                    req.Append(System.Text.Encoding.ASCII.GetString(buf, 0, n));
                }
                c.Send(System.Text.Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Length: {Size}\r\nConnection: close\r\n\r\n"));
                c.Send(data);
                c.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            }
            catch (Exception e) { serverError = e; }
        }) { IsBackground = true };
        server.Start();
        try
        {
            string script = """
                printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router && echo "LEASE ip=$ip"\nexit 0\n' >/tmp/dhcp.sh
                chmod +x /tmp/dhcp.sh
                ip link set eth0 up
                udhcpc -q -n -f -i eth0 -s /tmp/dhcp.sh || exit 3

                """ + $"echo NET=$(wget -q -O - http://10.0.2.2:{port}/blob | sha256sum)\npoweroff -f\n";
            var spec = DefaultGuestSpec.For(img, script, 128UL << 20);
            spec.Nics = [NicConfig.Parse("user", 0)];
            string rec = Path.Combine(dir, "rec");
            var r = new GuestRunner();
            int rc = r.Run(spec, Guard, new RunOptions { RecordDir = rec });
            Assert.True(rc == 0, $"recording (seed {Seed}): exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
            Assert.Contains("LEASE ip=10.0.2.15", r.Output);
            Assert.Contains($"NET={sha}", r.Output);
            Assert.True(server.Join(TimeSpan.FromSeconds(30)), "the HTTP server did not finish");
            Assert.Null(serverError);
            listener.Stop();
            var m = JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(Path.Combine(rec, RecordingManifest.FileName)),
                new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase })!;
            Assert.Equal("user", Assert.Single(m.Nics).Backend);
            // The received frames were written between instructions; the download is all in them.
            long between = 0;
            using (var reader = new EventLogReader(File.OpenRead(Path.Combine(rec, RecordingManifest.LogFileName))))
                while (reader.TryRead(out var e))
                    if (e.Kind == EventKind.DmaWriteBetween) between += e.Data!.Length;
            Assert.True(between > Size, $"{between} bytes written between instructions for a {Size}-byte download");

            var p = new GuestRunner();
            int prc = p.Run(new VmSpec(), Guard, new RunOptions { ReplayDir = rec });
            Assert.True(prc == 0, $"replay (seed {Seed}): exit status {prc}; errors: {p.Errors}\n{GuestRunner.Tail(p.Output)}");
            Assert.Equal(r.Output, p.Output);
            Assert.Contains($"replay matches the recording: {m.Instructions} instructions", p.Errors);
        }
        finally
        {
            listener.Stop();
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>The trace's lines, VM time included: under instruction time it is the same in a replay.</summary>
    private static List<string> Calls(string path) => File.ReadAllLines(path).Where(l => l.Length > 0).ToList();
}
