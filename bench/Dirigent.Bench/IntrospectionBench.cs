using Dirigent.Cli;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// The cost of the system-call trace: the boot bench's script (boot, dd | sha256sum of 16 MiB, a 20000-iteration
/// shell loop, 10 s idle) on the software CPU with the compiled tier, without and with `--trace syscalls` (all
/// processes, into a file), and the trace's size per second of guest time.
/// </summary>
public static class IntrospectionBench
{
    public static int Run()
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(BootBench.Script)}";
        Console.WriteLine($"guest: {img.KernelVersion}, 512 MiB, 1 vCPU, compiled tier on");
        var plain = BootBench.RunDirigent(img, append, null);
        string trace = Path.Combine(Path.GetTempPath(), $"dirigent-bench-trace-{Environment.ProcessId}.jsonl");
        try
        {
            var traced = BootBench.RunDirigent(img, append, new RunOptions { Trace = new TraceOption(null, trace) });
            long bytes = new FileInfo(trace).Length;
            long lines = File.ReadLines(trace).LongCount();
            Console.WriteLine($"{"metric",-34} {"no hooks",10} {"trace on",10} {"ratio",8}");
            Row("guest uptime at /init (s)", plain.InitUptime, traced.InitUptime);
            Row("wall time to power-off (s)", plain.WallToPowerOff, traced.WallToPowerOff);
            Row("dd 16 MiB | sha256sum (s)", plain.Sha, traced.Sha);
            Row("shell loop, 20000 iterations (s)", plain.Loop, traced.Loop);
            Row("100 x fork + exec /bin/true (s)", plain.Exec, traced.Exec);
            Row("host CPU while guest idles (%)", plain.IdleCpuPercent, traced.IdleCpuPercent);
            // The guest runs about as long as the wall time minus the VMM's start (VM time is not reported by the
            // script's markers; the wall time to power-off is the bound used here).
            Console.WriteLine($"trace: {lines} events, {bytes / 1024.0:F0} KiB, {bytes / 1024.0 / traced.WallToPowerOff:F1} KiB per second of run");
        }
        finally { File.Delete(trace); }
        return 0;
    }

    private static void Row(string name, double a, double b) =>
        Console.WriteLine($"{name,-34} {a,10:F2} {b,10:F2} {(a > 0 ? (b / a).ToString("F2") + "x" : "-"),8}");
}
