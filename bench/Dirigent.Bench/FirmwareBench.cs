using System.Diagnostics;
using Dirigent.Devices.Firmware;
using Dirigent.Images;
using Dirigent.Vmm;

namespace Dirigent.Bench;

/// <summary>
/// Firmware start to the first MBR instruction: SeaBIOS (Debian's bios-256k.bin) on Dirigent's software CPU and on
/// QEMU TCG (`-M pc -drive if=virtio`) in one run, on the same 1 MiB disk whose MBR writes to the isa-debug-exit port
/// as its first instructions, so the VM ends the moment the MBR runs. Dirigent is timed from Vm.Start (the reset
/// vector) to the exit; QEMU from process start to exit (its own start-up, a few tens of ms, is included), and
/// its `-S` start-up alone is measured to subtract. Median of 5 runs each. A last row compares whole cold
/// processes: `dirigent run` (runtime start-up and the emulator's first-use JIT compilation included) and QEMU.
/// </summary>
public static class FirmwareBench
{
    private const int Runs = 5;

    public static int Run(string? qemu)
    {
        if (!File.Exists(BiosConfig.DefaultBiosPath))
        {
            Console.WriteLine($"{BiosConfig.DefaultBiosPath} is missing: apt-get install seabios");
            return 2;
        }
        string dir = Directory.CreateTempSubdirectory("dirigent-bench-fw-").FullName;
        try
        {
            string disk = Path.Combine(dir, "mbr.raw");
            BiosBootDisk.WriteDebugExitMbr(disk, 0x2A);
            Console.WriteLine($"firmware: {BiosConfig.DefaultBiosPath}; disk: MBR writes the debug-exit port; 128 MiB, 1 vCPU; median of {Runs}");
            string? saved = Environment.GetEnvironmentVariable("DIRIGENT_JIT"), savedNative = Environment.GetEnvironmentVariable("DIRIGENT_NATIVE");
            Environment.SetEnvironmentVariable("DIRIGENT_JIT", "0");
            Environment.SetEnvironmentVariable("DIRIGENT_NATIVE", "0");
            var off = Median(Enumerable.Range(0, Runs).Select(_ => RunDirigent(disk)).ToList());
            Environment.SetEnvironmentVariable("DIRIGENT_JIT", saved);
            Environment.SetEnvironmentVariable("DIRIGENT_NATIVE", savedNative);
            var on = Median(Enumerable.Range(0, Runs).Select(_ => RunDirigent(disk)).ToList());
            (double Wall, double Startup)? q = null;
            if (qemu != null)
            {
                double wall = Enumerable.Range(0, Runs).Select(_ => RunQemu(qemu, disk, stopAtStart: false)).OrderBy(x => x).ElementAt(Runs / 2);
                double start = Enumerable.Range(0, Runs).Select(_ => RunQemu(qemu, disk, stopAtStart: true)).OrderBy(x => x).ElementAt(Runs / 2);
                q = (wall, start);
            }
            // Cold: a whole `dirigent run` process (the .NET runtime starts, the emulator's code is JIT-compiled as it
            // first runs) against QEMU's whole process.
            double cold = double.NaN;
            try
            {
                string cli = StartupBench.EnsureCli(StartupBench.FindRepoRoot());
                cold = Enumerable.Range(0, Runs).Select(_ => RunCli(cli, disk)).OrderBy(x => x).ElementAt(Runs / 2);
            }
            catch (InvalidOperationException e) { Console.WriteLine($"no cold CLI run: {e.Message}"); }
            Console.WriteLine($"{"metric",-46} {"jit off",10} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
            double? qNet = q is { } v ? v.Wall - v.Startup : null;
            Row("reset vector -> MBR at 0x7C00, wall (s)", off.Wall, on.Wall, qNet);
            Row("  the same, VM time (s)", off.VmTime, on.VmTime, null);
            Row("  instructions (millions)", off.Instructions / 1e6, on.Instructions / 1e6, null);
            Row("cold: process start -> exit (s)", double.NaN, cold, q?.Wall);
            if (q is { } qq) Console.WriteLine($"qemu: process start -> exit {qq.Wall:F3} s, of which start-up (-S, quit at once) {qq.Startup:F3} s");
            return 0;
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    private sealed record Result(double Wall, double VmTime, double Instructions);

    private static Result Median(List<Result> rs)
    {
        var byWall = rs.OrderBy(r => r.Wall).ToList();
        return byWall[byWall.Count / 2];
    }

    private static void Row(string name, double off, double a, double? b) =>
        Console.WriteLine($"{name,-46} {off,10:F3} {a,10:F3} {(b.HasValue ? b.Value.ToString("F3") : "-"),10} {(b is > 0 ? (a / b.Value).ToString("F2") + "x" : "-"),14}");

    private static Result RunDirigent(string disk)
    {
        var cfg = new VmSpec
        {
            Firmware = FirmwareKind.Bios, MemoryBytes = 128UL << 20, Accel = AccelKind.Emu,
            Disks = [new DiskConfig(disk, DiskFormat.Raw, ReadOnly: false)],
        };
        using var vm = Vm.Create(cfg, TextWriter.Null);
        var sw = Stopwatch.StartNew();
        vm.Start();
        if (!vm.Completion.Wait(TimeSpan.FromMinutes(5))) throw new TimeoutException("dirigent: SeaBIOS did not reach the MBR in 5 minutes");
        double wall = sw.Elapsed.TotalSeconds;
        var reason = vm.Completion.Result;
        if (reason.Kind != VmExitKind.DebugExit || reason.DebugExitValue != 0x2A)
            throw new InvalidOperationException($"dirigent: the VM ended as {reason}, not at the MBR");
        double instructions = vm.VcpuList.Sum(v => (double)v.InstructionsRetired);
        return new Result(wall, vm.Uptime.TotalSeconds, instructions);
    }

    /// <summary>Wall seconds of `dirigent run --disk DISK` from spawn to exit (through the MBR's debug-exit write).</summary>
    private static double RunCli(string cli, string disk)
    {
        var psi = new ProcessStartInfo(cli) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "run", "--disk", $"{disk},format=raw", "--memory", "128M", "--accel", "emu", "--serial", "none" })
            psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(); throw new TimeoutException("dirigent run: SeaBIOS did not reach the MBR in 5 minutes"); }
        double wall = sw.Elapsed.TotalSeconds;
        if (p.ExitCode != (0x2A << 1 | 1)) throw new InvalidOperationException($"dirigent run exited {p.ExitCode}: {e.Result.Trim()}");
        return wall;
    }

    /// <summary>Wall seconds from process start to exit; with <paramref name="stopAtStart"/> QEMU only starts (-S) and quits.</summary>
    private static double RunQemu(string qemu, string disk, bool stopAtStart)
    {
        var psi = new ProcessStartInfo(qemu) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        var args = new List<string> { "-M", "pc", "-accel", "tcg", "-m", "128", "-nodefaults", "-nographic", "-serial", "none",
            "-monitor", "stdio", "-drive", $"file={disk},if=virtio,format=raw", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04" };
        if (stopAtStart) args.Add("-S");
        foreach (var a in args) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        if (stopAtStart) p.StandardInput.WriteLine("quit");
        var drain = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(); throw new TimeoutException("qemu: SeaBIOS did not reach the MBR in 5 minutes"); }
        double wall = sw.Elapsed.TotalSeconds;
        drain.Wait();
        // isa-debug-exit: status (0x2A << 1) | 1.
        if (!stopAtStart && p.ExitCode != (0x2A << 1 | 1)) throw new InvalidOperationException($"qemu exited {p.ExitCode}, not through the MBR's debug-exit write");
        return wall;
    }
}
