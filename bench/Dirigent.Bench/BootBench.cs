using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// The default guest on Dirigent and on QEMU TCG (same kernel, initramfs and script) in one run: guest uptime when
/// /init starts, wall time to power-off, in-guest `dd | sha256sum` of 16 MiB, a 20000-iteration busybox shell loop,
/// and host CPU used while the booted guest sleeps for 10 s.
/// </summary>
public static partial class BootBench
{
    internal const string Script = """
        echo MARK-INIT $(cut -d' ' -f1 /proc/uptime)
        a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=1M count=16 2>/dev/null | sha256sum >/dev/null; b=$(cut -d' ' -f1 /proc/uptime)
        echo MARK-SHA $a $b
        a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; b=$(cut -d' ' -f1 /proc/uptime)
        echo MARK-LOOP $a $b
        echo MARK-IDLE-BEGIN; sleep 10; echo MARK-IDLE-END
        poweroff -f
        """;

    public sealed record Result(double InitUptime, double WallToPowerOff, double Sha, double Loop, double IdleCpuPercent, double WallToInit = double.NaN);

    public static int Run(string? qemu, bool jitOff = true)
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(Script)}";
        Console.WriteLine($"guest: {img.KernelVersion}, 512 MiB, 1 vCPU");
        // The interpreter alone (DIRIGENT_JIT=0: the --jit off column), then the default with the compiled tier.
        string? saved = Environment.GetEnvironmentVariable("DIRIGENT_JIT");
        Environment.SetEnvironmentVariable("DIRIGENT_JIT", "0");
        // --no-jit-off skips that run (for quick experiments with the compiled tier).
        var off = jitOff ? RunDirigent(img, append) : new Result(double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        Environment.SetEnvironmentVariable("DIRIGENT_JIT", saved);
        var d = RunDirigent(img, append);
        Result? q = qemu != null ? RunQemu(qemu, img, append) : null;
        Console.WriteLine($"{"metric",-34} {"jit off",10} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
        Row("guest uptime at /init (s)", off.InitUptime, d.InitUptime, q?.InitUptime);
        Row("wall time to /init (s)", off.WallToInit, d.WallToInit, q?.WallToInit);
        Row("wall time to power-off (s)", off.WallToPowerOff, d.WallToPowerOff, q?.WallToPowerOff);
        Row("dd 16 MiB | sha256sum (s)", off.Sha, d.Sha, q?.Sha);
        Row("shell loop, 20000 iterations (s)", off.Loop, d.Loop, q?.Loop);
        Row("host CPU while guest idles (%)", off.IdleCpuPercent, d.IdleCpuPercent, q?.IdleCpuPercent);
        return 0;
    }

    private static void Row(string name, double off, double a, double? b) =>
        Console.WriteLine($"{name,-34} {off,10:F2} {a,10:F2} {(b.HasValue ? b.Value.ToString("F2") : "-"),10} {(b is > 0 ? (a / b.Value).ToString("F2") + "x" : "-"),14}");

    private sealed class Watch : OutputSink
    {
        private readonly StringBuilder _sb = new();
        private readonly Func<TimeSpan> _cpu;
        public TimeSpan? IdleBegin, IdleEnd;
        // Wall time from the VM's start (Dirigent: VmLauncher.Run called; QEMU: process started) to the MARK-INIT line.
        // Guest uptimes do not start at the same point of the boot: Linux's clock starts at tsc_early_init in
        // setup_arch under Dirigent (the TSC's frequency is in CPUID leaf 0x15), but only at its TSC calibration,
        // later in start_kernel, under QEMU TCG.
        private readonly Stopwatch _sw;
        public double? InitWall;
        public DateTime? IdleBeginWall, IdleEndWall;
        public Watch(Func<TimeSpan> cpu, Stopwatch sw) { _cpu = cpu; _sw = sw; }
        public string Text { get { lock (_sb) return _sb.ToString(); } }
        public void Feed(byte[] buffer, int offset, int count)
        {
            lock (_sb)
            {
                _sb.Append(Encoding.ASCII.GetString(buffer, offset, count));
                string s = _sb.ToString();
                if (InitWall == null && MarkInit().IsMatch(s)) InitWall = _sw.Elapsed.TotalSeconds;
                if (IdleBegin == null && s.Contains("MARK-IDLE-BEGIN")) { IdleBegin = _cpu(); IdleBeginWall = DateTime.UtcNow; }
                if (IdleEnd == null && s.Contains("MARK-IDLE-END")) { IdleEnd = _cpu(); IdleEndWall = DateTime.UtcNow; }
            }
        }
        public override void Write(byte[] buffer, int offset, int count) => Feed(buffer, offset, count);

        public double IdlePercent => IdleBegin.HasValue && IdleEnd.HasValue
            ? (IdleEnd.Value - IdleBegin.Value).TotalSeconds / (IdleEndWall!.Value - IdleBeginWall!.Value).TotalSeconds * 100 : double.NaN;
    }

    private static Result Parse(string text, double wall, double idle)
    {
        double Num(string s) => double.Parse(s, CultureInfo.InvariantCulture);
        var init = MarkInit().Match(text);
        var sha = MarkSha().Match(text);
        var loop = MarkLoop().Match(text);
        if (!init.Success || !sha.Success || !loop.Success) throw new InvalidOperationException($"markers missing in guest output:\n{text[^Math.Min(2000, text.Length)..]}");
        return new Result(Num(init.Groups[1].Value), wall, Num(sha.Groups[2].Value) - Num(sha.Groups[1].Value),
            Num(loop.Groups[2].Value) - Num(loop.Groups[1].Value), idle);
    }

    [GeneratedRegex(@"MARK-INIT ([0-9.]+)")] private static partial Regex MarkInit();
    [GeneratedRegex(@"MARK-SHA ([0-9.]+) ([0-9.]+)")] private static partial Regex MarkSha();
    [GeneratedRegex(@"MARK-LOOP ([0-9.]+) ([0-9.]+)")] private static partial Regex MarkLoop();

    private static Result RunDirigent(GuestImage img, string append) => RunDirigent(img, append, null);

    /// <summary>One run of the script on Dirigent; <paramref name="opts"/> adds run options (the introspection bench's --trace).</summary>
    internal static Result RunDirigent(GuestImage img, string append, RunOptions? opts)
    {
        var self = Process.GetCurrentProcess();
        var cfg = new VmSpec { Kernel = img.Kernel, Initrds = [img.Initramfs], Append = append, MemoryBytes = 512UL << 20 };
        var sw = Stopwatch.StartNew();
        var w = new Watch(() => { self.Refresh(); return self.TotalProcessorTime; }, sw);
        int rc = VmLauncher.Run(cfg, Console.Error, new MemoryStream(), w, useTerminal: false, opts: opts);
        double wall = sw.Elapsed.TotalSeconds;
        if (rc != 0) throw new InvalidOperationException($"dirigent exited {rc}");
        return Parse(w.Text, wall, w.IdlePercent) with { WallToInit = w.InitWall ?? double.NaN };
    }

    private static Result RunQemu(string qemu, GuestImage img, string append)
    {
        var psi = new ProcessStartInfo(qemu) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in new[] { "-M", "pc", "-accel", "tcg", "-m", "512", "-nodefaults", "-nographic", "-serial", "stdio",
                     "-kernel", img.Kernel, "-initrd", img.Initramfs, "-append", append })
            psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        TimeSpan Cpu() { try { p.Refresh(); return p.TotalProcessorTime; } catch (InvalidOperationException) { return TimeSpan.Zero; } }
        var w = new Watch(Cpu, sw);
        var buf = new byte[4096];
        var so = p.StandardOutput.BaseStream;
        int n;
        while ((n = so.Read(buf, 0, buf.Length)) > 0) w.Feed(buf, 0, n);
        p.WaitForExit();
        double wall = sw.Elapsed.TotalSeconds;
        return Parse(w.Text, wall, w.IdlePercent) with { WallToInit = w.InitWall ?? double.NaN };
    }
}
