using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// The default guest on Dirigent and on QEMU TCG (same kernel, initramfs and script) in one run: guest uptime when
/// /init starts, wall time to power-off, in-guest `dd | sha256sum` of 16 MiB, a 20000-iteration busybox shell loop,
/// 100 processes started one after another (fork + exec of busybox's /bin/true: kernel code that runs too few times
/// to get hot in the compiled tier early), the same shell loop again once its code is warm (the first run includes
/// compiling its ~750 blocks, which TCG translates far more cheaply; README "compiled tier"), and host CPU used
/// while the booted guest sleeps for 10 s.
/// </summary>
public static partial class BootBench
{
    internal const string Script = """
        echo MARK-INIT $(cut -d' ' -f1 /proc/uptime)
        a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=1M count=16 2>/dev/null | sha256sum >/dev/null; b=$(cut -d' ' -f1 /proc/uptime)
        echo MARK-SHA $a $b
        a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; b=$(cut -d' ' -f1 /proc/uptime)
        echo MARK-LOOP $a $b
        a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done; b=$(cut -d' ' -f1 /proc/uptime)
        echo MARK-EXEC $a $b
        a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; b=$(cut -d' ' -f1 /proc/uptime)
        echo MARK-WARMLOOP $a $b
        echo MARK-IDLE-BEGIN; sleep 10; echo MARK-IDLE-END
        poweroff -f
        """;

    public sealed record Result(double InitUptime, double WallToPowerOff, double Sha, double Loop, double IdleCpuPercent, double WallToInit = double.NaN)
    {
        // Dirigent only (NaN for QEMU): the block compiler's figures for the whole run, and the .NET JIT's time in the
        // whole process (the blocks' methods and Dirigent's own code, tiered up while it runs).
        public double JitCompileSeconds { get; init; } = double.NaN;
        public double JitPeakIlKiB { get; init; } = double.NaN;
        public double JitBlocks { get; init; } = double.NaN;
        public double DotnetJitSeconds { get; init; } = double.NaN;
        /// <summary>100 fork + exec of /bin/true in the guest's shell, one after another (s).</summary>
        public double Exec { get; init; } = double.NaN;
        /// <summary>The shell loop run again after the others (its code compiled by then on Dirigent) (s).</summary>
        public double WarmLoop { get; init; } = double.NaN;
        /// <summary>
        /// The kernel's TSC clock from registering the tsc-early clocksource to "Run /init" (printk's times, the
        /// sched_clock realignment added back, see <see cref="ClockAtInit"/>); NaN when a line is missing.
        /// </summary>
        public double KernelToInit { get; init; } = double.NaN;
        /// <summary>
        /// The kernel's TSC clock at "Run /init": seconds since tsc_early_init (in setup_arch, on both VMMs). Printk's
        /// times are sched_clock's, but when Linux marks sched_clock stable it shifts them to agree with
        /// CLOCK_MONOTONIC, which stood still wherever no tick ran; "sched_clock: Marking stable (...)->(raw, offset)"
        /// prints the shift, and it is added back here. The guest's uptime carries that loss, so this is the row that
        /// times the same stretch of boot on both.
        /// </summary>
        public double ClockAtInit { get; init; } = double.NaN;
        /// <summary>sched_clock's realignment to CLOCK_MONOTONIC (s; negative: the guest's clocks lost that much), 0 if none printed.</summary>
        public double ClockShift { get; init; } = double.NaN;
    }

    /// <summary>
    /// <paramref name="runs"/> rounds, each a Dirigent boot in a fresh process (`boot-one`: what `dirigent run` pays,
    /// .NET start-up and the JIT of Dirigent's own code included, not warmed by an earlier VM in the same process)
    /// followed by QEMU; the table gives each metric's median, its range and the ratio of the medians. The jit-off
    /// column is one run, first.
    /// </summary>
    public static int Run(string? qemu, bool jitOff = true, int runs = 1)
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(Script)}";
        Console.WriteLine($"guest: {img.KernelVersion}, 512 MiB, 1 vCPU; {runs} run(s) each, Dirigent in a fresh process per run");
        // The interpreter alone (DIRIGENT_JIT=0 DIRIGENT_NATIVE=0: the --jit off column); --no-jit-off skips it.
        var nan = new Result(double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        var off = jitOff ? RunDirigentProcess(jit: false) : nan;
        var ds = new List<Result>();
        var qs = new List<Result>();
        for (int k = 0; k < runs; k++)
        {
            ds.Add(RunDirigentProcess(jit: true));
            if (qemu != null) qs.Add(RunQemu(qemu, img, append));
            if (runs > 1)
                Console.WriteLine($"run {k + 1}: /init {ds[^1].InitUptime:F2} s" + (qemu != null ? $" (qemu {qs[^1].InitUptime:F2})" : "") +
                                  $", loop {ds[^1].Loop:F2} s" + (qemu != null ? $" (qemu {qs[^1].Loop:F2})" : ""));
        }
        string range = runs > 1 ? $" {"dirigent range",15} {"qemu range",13}" : "";
        Console.WriteLine($"{"metric",-34} {"jit off",10} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}{range}");
        void Row(string name, Func<Result, double> f)
        {
            double a = Median(ds.Select(f)), b = qs.Count > 0 ? Median(qs.Select(f)) : double.NaN;
            string N(double v) => double.IsNaN(v) ? "-" : v.ToString(v >= 1000 && v == Math.Floor(v) ? "F0" : "F2", CultureInfo.InvariantCulture);
            string line = $"{name,-34} {N(f(off)),10} {N(a),10} {N(b),10} " +
                          $"{(b > 0 ? (a / b).ToString("F2", CultureInfo.InvariantCulture) + "x" : "-"),14}";
            if (runs > 1)
                line += $" {$"{N(ds.Min(f))}-{N(ds.Max(f))}",15} {(qs.Count > 0 && !double.IsNaN(b) ? $"{N(qs.Min(f))}-{N(qs.Max(f))}" : "-"),13}";
            Console.WriteLine(line);
        }
        Row("guest uptime at /init (s)", r => r.InitUptime);
        Row("wall time to /init (s)", r => r.WallToInit);
        Row("kernel TSC clock at Run /init (s)", r => r.ClockAtInit);
        Row("guest clocks' lag at /init (s)", r => -r.ClockShift);
        Row("kernel, tsc-early to Run /init (s)", r => r.KernelToInit);
        Row("wall time to power-off (s)", r => r.WallToPowerOff);
        Row("dd 16 MiB | sha256sum (s)", r => r.Sha);
        Row("shell loop, 20000 iterations (s)", r => r.Loop);
        Row("100 x fork + exec /bin/true (s)", r => r.Exec);
        Row("shell loop again, warm (s)", r => r.WarmLoop);
        Row("host CPU while guest idles (%)", r => r.IdleCpuPercent);
        Row("blocks compiled", r => r.JitBlocks);
        Row("block compile time, whole run (s)", r => r.JitCompileSeconds);
        Row("compiled code, peak (KiB of IL)", r => r.JitPeakIlKiB);
        Row(".NET JIT time, whole process (s)", r => r.DotnetJitSeconds);
        return 0;
    }

    private static double Median(IEnumerable<double> values)
    {
        var v = values.OrderBy(x => x).ToArray();
        return v.Length == 0 ? double.NaN : v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    private const string ResultTag = "BOOT-RESULT";

    /// <summary>`bench boot-one`: one Dirigent run of the script in this process, its result as one line on stdout.</summary>
    public static int RunOne()
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        var r = RunDirigent(img, $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(Script)}");
        var jit = Dirigent.Accel.Emu.Jit.JitCompiler.LastTotals;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{ResultTag} {r.InitUptime:R} {r.WallToPowerOff:R} {r.Sha:R} {r.Loop:R} {r.IdleCpuPercent:R} {r.WallToInit:R} " +
            $"{(jit?.Blocks ?? 0)} {(jit?.CompileTime.TotalSeconds ?? 0):R} {(jit?.PeakIlBytes ?? 0) / 1024.0:R} {System.Runtime.JitInfo.GetCompilationTime().TotalSeconds:R} {r.Exec:R} {r.KernelToInit:R} {r.WarmLoop:R} {r.ClockAtInit:R} {r.ClockShift:R}"));
        return 0;
    }

    /// <summary>Runs `boot-one` in a child process (this bench's own executable) and reads its result line.</summary>
    private static Result RunDirigentProcess(bool jit)
    {
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(BootBench).Assembly.Location);
        psi.ArgumentList.Add("boot-one");
        if (!jit)
        {
            // The interpreter alone: neither the compiled tier nor the native first tier.
            psi.Environment["DIRIGENT_JIT"] = "0";
            psi.Environment["DIRIGENT_NATIVE"] = "0";
        }
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string? line = output.Split('\n').FirstOrDefault(l => l.StartsWith(ResultTag + " ", StringComparison.Ordinal));
        if (p.ExitCode != 0 || line == null) throw new InvalidOperationException($"boot-one exited {p.ExitCode}:\n{output}");
        double[] f = line[(ResultTag.Length + 1)..].Trim().Split(' ').Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray();
        return new Result(f[0], f[1], f[2], f[3], f[4], f[5])
            { JitBlocks = f[6], JitCompileSeconds = f[7], JitPeakIlKiB = f[8], DotnetJitSeconds = f[9], Exec = f[10], KernelToInit = f[11], WarmLoop = f[12], ClockAtInit = f[13], ClockShift = f[14] };
    }

    private sealed class Watch : OutputSink
    {
        private readonly ConsoleLines _lines;
        private readonly Func<TimeSpan> _cpu;
        public TimeSpan? IdleBegin, IdleEnd;
        // Wall time from the VM's start (Dirigent: VmLauncher.Run called; QEMU: process started) to the MARK-INIT line.
        // (Linux's clock starts at tsc_early_init in setup_arch on both: QEMU's TSC is calibrated there against the
        // PIT, Dirigent's frequency is in CPUID leaf 0x15. The uptimes still differ from the TSC clock by the time the
        // guest's CLOCK_MONOTONIC lost where no tick ran: Result.ClockAtInit.)
        private readonly Stopwatch _sw;
        public double? InitWall;
        public DateTime? IdleBeginWall, IdleEndWall;
        public Watch(Func<TimeSpan> cpu, Stopwatch sw)
        {
            _cpu = cpu;
            _sw = sw;
            _lines = new ConsoleLines(OnLine);
        }
        public string Text { get { lock (_lines) return _lines.Text; } }
        public void Feed(byte[] buffer, int offset, int count)
        {
            lock (_lines) _lines.Add(buffer.AsSpan(offset, count));
        }
        // Marks are taken when their line is complete (under _lines' lock).
        private void OnLine(string line)
        {
            if (InitWall == null && MarkInit().IsMatch(line)) InitWall = _sw.Elapsed.TotalSeconds;
            if (IdleBegin == null && line.Contains("MARK-IDLE-BEGIN", StringComparison.Ordinal)) { IdleBegin = _cpu(); IdleBeginWall = DateTime.UtcNow; }
            if (IdleEnd == null && line.Contains("MARK-IDLE-END", StringComparison.Ordinal)) { IdleEnd = _cpu(); IdleEndWall = DateTime.UtcNow; }
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
        var exec = MarkExec().Match(text);
        var warm = MarkWarmLoop().Match(text);
        if (!init.Success || !sha.Success || !loop.Success || !exec.Success || !warm.Success) throw new InvalidOperationException($"markers missing in guest output:\n{text[^Math.Min(2000, text.Length)..]}");
        var tscEarly = KernelTscEarly().Match(text);
        var runInit = KernelRunInit().Match(text);
        // Printk times after the "Marking stable" line carry sched_clock's shift to CLOCK_MONOTONIC (ns): add it back.
        var stable = SchedClockStable().Match(text);
        double shift = stable.Success ? Num(stable.Groups[1].Value) / 1e9 : 0;
        double atInit = runInit.Success ? Num(runInit.Groups[1].Value) - (stable.Success && stable.Index < runInit.Index ? shift : 0) : double.NaN;
        double kernel = tscEarly.Success && runInit.Success ? atInit - Num(tscEarly.Groups[1].Value) : double.NaN;
        return new Result(Num(init.Groups[1].Value), wall, Num(sha.Groups[2].Value) - Num(sha.Groups[1].Value),
            Num(loop.Groups[2].Value) - Num(loop.Groups[1].Value), idle) { Exec = Num(exec.Groups[2].Value) - Num(exec.Groups[1].Value), KernelToInit = kernel,
                ClockAtInit = atInit, ClockShift = shift,
                WarmLoop = Num(warm.Groups[2].Value) - Num(warm.Groups[1].Value) };
    }

    [GeneratedRegex(@"MARK-INIT ([0-9.]+)")] private static partial Regex MarkInit();
    [GeneratedRegex(@"MARK-SHA ([0-9.]+) ([0-9.]+)")] private static partial Regex MarkSha();
    [GeneratedRegex(@"MARK-LOOP ([0-9.]+) ([0-9.]+)")] private static partial Regex MarkLoop();
    [GeneratedRegex(@"MARK-EXEC ([0-9.]+) ([0-9.]+)")] private static partial Regex MarkExec();
    [GeneratedRegex(@"MARK-WARMLOOP ([0-9.]+) ([0-9.]+)")] private static partial Regex MarkWarmLoop();
    [GeneratedRegex(@"\[ *([0-9.]+)\] clocksource: tsc-early:")] private static partial Regex KernelTscEarly();
    [GeneratedRegex(@"\[ *([0-9.]+)\] Run /init as init process")] private static partial Regex KernelRunInit();
    [GeneratedRegex(@"sched_clock: Marking stable \(-?[0-9]+, -?[0-9]+\)->\(-?[0-9]+, (-?[0-9]+)\)")] private static partial Regex SchedClockStable();

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
