using System.Diagnostics;
using System.Text.Json;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;

namespace Dirigent.Bench;

/// <summary>
/// Record and replay of the default guest: a boot, dd 4 MiB | sha256sum, a 5000-iteration shell loop, 2 s asleep and
/// a power-off, run plainly (compiled tier on, and the interpreter alone, which is what recording uses), recorded, and
/// replayed. Prints wall and CPU times, the recording's overhead, replay speed in MIPS and the log's size per second of
/// guest time.
/// </summary>
public static class RecordBench
{
    private const string Script = """
        dd if=/dev/zero bs=1M count=4 2>/dev/null | sha256sum >/dev/null
        i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done
        sleep 2
        poweroff -f
        """;

    public static int Run()
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(Script)}";
        Console.WriteLine($"guest: {img.KernelVersion}, 256 MiB, 1 vCPU; boot, dd 4 MiB | sha256sum, 5000-iteration shell loop, sleep 2, power-off");
        VmSpec Spec() => new() { Kernel = img.Kernel, Initrds = [img.Initramfs], Append = append, MemoryBytes = 256UL << 20, Accel = AccelKind.Emu };
        string dir = Path.Combine(Path.GetTempPath(), $"dirigent-bench-rec-{Environment.ProcessId}");
        try
        {
            var plain = Timed(Spec(), null);
            string? saved = Environment.GetEnvironmentVariable("DIRIGENT_JIT"), savedNative = Environment.GetEnvironmentVariable("DIRIGENT_NATIVE");
            Environment.SetEnvironmentVariable("DIRIGENT_JIT", "0");
            Environment.SetEnvironmentVariable("DIRIGENT_NATIVE", "0");
            var interp = Timed(Spec(), null);
            Environment.SetEnvironmentVariable("DIRIGENT_JIT", saved);
            Environment.SetEnvironmentVariable("DIRIGENT_NATIVE", savedNative);
            var record = Timed(Spec(), new RunOptions { RecordDir = dir });
            var m = JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(Path.Combine(dir, RecordingManifest.FileName)),
                new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase })!;
            var replay = Timed(new VmSpec(), new RunOptions { ReplayDir = dir });
            double vmSeconds = m.VmTimeNs / 1e9;
            Console.WriteLine($"{"run",-42} {"wall s",8} {"vs plain",9} {"CPU s",8} {"vs plain",9}");
            void Line(string name, (double Wall, double Cpu) t) =>
                Console.WriteLine($"{name,-42} {t.Wall,8:F2} {t.Wall / plain.Wall,8:F2}x {t.Cpu,8:F2} {t.Cpu / plain.Cpu,8:F2}x");
            Line("plain (compiled tier on)", plain);
            Line("plain, interpreter only (DIRIGENT_JIT=0 DIRIGENT_NATIVE=0)", interp);
            Line("--record", record);
            Line("--replay", replay);
            Console.WriteLine($"recording: {m.Instructions:N0} instructions in {vmSeconds:F2} s of guest time (instruction time); " +
                $"recorded at {m.Instructions / record.Wall / 1e6:F1} MIPS wall ({m.Instructions / record.Cpu / 1e6:F1} per CPU second), " +
                $"replayed at {m.Instructions / replay.Wall / 1e6:F1} MIPS wall ({m.Instructions / replay.Cpu / 1e6:F1} per CPU second; replay skips idle time)");
            Console.WriteLine($"log: {m.Events:N0} events, {m.LogBytes:N0} bytes = {m.LogBytes / vmSeconds / 1024:F1} KiB per second of guest time ({(double)m.LogBytes / m.Events:F1} bytes per event)");
        }
        finally { try { Directory.Delete(dir, recursive: true); } catch (IOException) { } }
        return 0;
    }

    /// <summary>Wall seconds and this process's CPU seconds (the latter is steadier on a loaded host).</summary>
    private static (double Wall, double Cpu) Timed(VmSpec spec, RunOptions? opts)
    {
        var self = Process.GetCurrentProcess();
        var cpu0 = self.TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        var err = new StringWriter();
        int rc = VmLauncher.Run(spec, err, new MemoryStream(), Stream.Null, useTerminal: false, opts: opts);
        if (rc != 0) throw new InvalidOperationException($"dirigent exited {rc}: {err}");
        self.Refresh();
        return (sw.Elapsed.TotalSeconds, (self.TotalProcessorTime - cpu0).TotalSeconds);
    }
}
