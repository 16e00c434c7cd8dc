using System.Text.Json;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// Record and replay of the default guest (Debian's cloud kernel + busybox initramfs) on the software CPU: a boot,
/// a line typed on the console (host input, reaching the guest through UART reads and interrupts), a small workload
/// and a power-off. Three replays print the same console output, end with the same memory and instruction count, and
/// a system-call trace attached to a replay shows the same calls as the one attached to the recording.
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
            var spec = new VmSpec
            {
                Kernel = img.Kernel,
                Initrds = [img.Initramfs],
                Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
                MemoryBytes = 128UL << 20,
                Accel = AccelKind.Emu,
            };
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

    /// <summary>The trace's lines, VM time included: under instruction time it is the same in a replay.</summary>
    private static List<string> Calls(string path) => File.ReadAllLines(path).Where(l => l.Length > 0).ToList();
}
