using Dirigent.Accel.Emu.Jit;
using System.Diagnostics;
using Dirigent.Accel.Emu;
using Dirigent.Accel.Emu.Core;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Loaders;

namespace Dirigent.Bench;

/// <summary>
/// CPU benchmark: each bare-metal workload on Dirigent's software CPU and on qemu-system-x86_64 (TCG) in the same
/// run, printing guest MIPS and the ratio. QEMU's time has its start-up (measured with an empty workload)
/// subtracted; its instruction count is Dirigent's, since both run the same bytes.
/// Usage: dotnet run -c Release --project bench/Dirigent.Bench -- [cpu|boot|introspection|record|firmware|debian-boot [--image PATH --key KEY]|jit-compile FILE [--passes N] [--per-block OUT] [--bundle K]|smp|startup|io|net|net-user|lifecycle|daemon] [--quick] [--no-qemu] [--no-dirigent (io, net, net-user)] [--from64] [--no-jit-off (boot)] [--runs N (boot)] [--no-busy (lifecycle)] [--vms N] [--memory-mib M] [--dirigent PATH] (daemon)
/// </summary>
public static class Program
{
    /// <summary>An integer option's value (<paramref name="fallback"/> when absent); null, with one line on stderr, when it is not a number from min to max.</summary>
    private static int? IntOption(string[] args, string name, int fallback, int min, int max, string bench)
    {
        int i = Array.IndexOf(args, name);
        if (i < 0) return fallback;
        if (i + 1 < args.Length && int.TryParse(args[i + 1], out int v) && v >= min && v <= max) return v;
        Console.Error.WriteLine($"bench {bench}: {name} takes a number from {min} to {max}");
        return null;
    }

    public static int Main(string[] args)
    {
        // The benchmarks run VMs in this process: the same runtime settings as `dirigent run` (RuntimeKnobs).
        Dirigent.Cli.RuntimeKnobs.ExecWithVmmSettings();
        try { return Dispatch(args); }
        catch (InvalidOperationException e)
        {
            // A bench that cannot go on (no repository, a VM that did not finish, markers missing): its reason in one
            // line, not a stack trace.
            Console.Error.WriteLine($"bench: {e.Message}");
            return 1;
        }
    }

    private static int Dispatch(string[] args)
    {
        bool quick = args.Contains("--quick");
        bool noQemu = args.Contains("--no-qemu");
        bool from64 = args.Contains("--from64");
        string? qemu = noQemu ? null : FindQemu();
        if (!noQemu && qemu == null)
            Console.WriteLine("qemu-system-x86_64 not found: install it (apt-get install qemu-system-x86) or pass --no-qemu");
        if (args.Contains("jit-compile"))
        {
            int at = Array.IndexOf(args, "jit-compile");
            int bi = Array.IndexOf(args, "--per-block");
            if (at + 1 >= args.Length || !File.Exists(args[at + 1]))
            {
                Console.Error.WriteLine("bench jit-compile: FILE must be a block dump written with DIRIGENT_JIT_DUMP=FILE");
                return 2;
            }
            if (IntOption(args, "--passes", 3, 1, 100, "jit-compile") is not int passes) return 2;
            if (IntOption(args, "--bundle", 1, 1, 64, "jit-compile") is not int bundle) return 2;
            return JitCompileBench.Run(args[at + 1], passes, bi >= 0 && bi + 1 < args.Length ? args[bi + 1] : null, bundle);
        }
        if (args.Contains("introspection")) return IntrospectionBench.Run();
        if (args.Contains("record")) return RecordBench.Run();
        if (args.Contains("boot-one")) return BootBench.RunOne();
        if (args.Contains("boot"))
        {
            if (IntOption(args, "--runs", 1, 1, 50, "boot") is not int runs) return 2;
            return BootBench.Run(qemu, jitOff: !args.Contains("--no-jit-off"), runs);
        }
        if (args.Contains("firmware")) return FirmwareBench.Run(qemu);
        if (args.Contains("debian-boot")) return OperatingSystem.IsLinux() ? DebianBootBench.Run(qemu, args) : 2;
        if (args.Contains("cluster")) return ClusterBench.Run(args);
        if (args.Contains("daemon")) return DaemonBench.Run(qemu, args);
        if (args.Contains("smp")) return SmpBench.Run(qemu, quick);
        if (args.Contains("lifecycle")) return LifecycleBench.Run(qemu, quick, busy: !args.Contains("--no-busy"));
        if (args.Contains("startup")) return StartupBench.Run(qemu);
        if (args.Contains("netpeer")) return NetBench.Peer();
        if (args.Contains("net-user")) return NetUserBench.Run(qemu, skipDirigent: args.Contains("--no-dirigent"), quick);
        if (args.Contains("net")) return NetBench.Run(qemu, skipDirigent: args.Contains("--no-dirigent"));
        if (args.Contains("io")) return IoBench.Run(qemu, skipDirigent: args.Contains("--no-dirigent"));
        long scale = quick ? 1 : 10;
        var workloads = new (string name, long iters)[]
        {
            ("intloop", 25_000_000 * scale),
            ("memcpy", 100 * scale),
            ("hash", 200 * scale), // long enough that QEMU's time is well above its start-up noise
        };
        double qemuBase = 0;
        if (qemu != null)
        {
            var g0 = CpuGuests.Build("null", 0);
            qemuBase = Enumerable.Range(0, 3).Select(_ => RunQemu(qemu, g0)).Min();
            Console.WriteLine($"QEMU TCG start-up + exit (empty workload): {qemuBase:F3} s (subtracted below)");
        }
        // Each workload on the interpreter alone (--jit off: neither the native tier nor the compiled one), with the
        // native first tier only, and with both (on, the default).
        Console.WriteLine($"{"workload",-10} {"instructions",14} {"jit off MIPS",13} {"native MIPS",12} {"jit on s",9} {"MIPS",8} {"qemu s",9} {"MIPS",8} {"dirigent/qemu MIPS",19}");
        foreach (var (name, iters) in workloads)
        {
            var g = CpuGuests.Build(name, iters);
            var (instrOff, secsOff, _) = RunDirigent(g, from64, JitMode.Off, native: 0);
            var (instrNat, secsNat, _) = RunDirigent(g, from64, JitMode.Off, native: null);
            var (instr, secs, jit) = RunDirigent(g, from64, JitMode.On, native: null);
            double mipsOff = instrOff / secsOff / 1e6, mipsNat = instrNat / secsNat / 1e6, mips = instr / secs / 1e6;
            string q = "", qm = "", ratio = "";
            if (qemu != null)
            {
                double qs = Math.Max(1e-3, RunQemu(qemu, g) - qemuBase);
                double qmips = instr / qs / 1e6;
                q = qs.ToString("F3"); qm = qmips.ToString("F0"); ratio = (mips / qmips).ToString("F2") + "x";
            }
            Console.WriteLine($"{name,-10} {instr,14:N0} {mipsOff,13:F0} {mipsNat,12:F0} {secs,9:F3} {mips,8:F0} {q,9} {qm,8} {ratio,19}   {g.Description}");
            Console.WriteLine($"{"",-10} jit: {jit}");
        }
        return 0;
    }

    private sealed class ExitPort(MachineModel vm) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0xFF;
        public void Write(ushort offset, int size, uint value) => vm.RequestPowerEvent(PowerEventKind.DebugExit, (int)value);
    }

    /// <param name="native">The native first tier's threshold (0: off); null: DIRIGENT_NATIVE, on by default.</param>
    private static (ulong instructions, double seconds, string jit) RunDirigent(CpuGuests.Guest g, bool from64, JitMode mode, int? native)
    {
        using var vm = new MachineModel(256 << 20);
        using var accel = new EmuAccelerator(vm, mode, native);
        var cpu = (Cpu)accel.CreateVcpu(0);
        vm.Io.Register(0xF4, 4, new ExitPort(vm));
        vm.PowerEventRequested += _ => cpu.RequestStop();
        vm.Memory.Write(CpuGuests.LoadAddr, g.Image);
        cpu.SetState(from64 ? BootState.Long64(vm.Memory, g.Entry64, 0x8_0000) : BootState.Protected32(vm.Memory, g.Entry32));
        string? log = null;
        cpu.Log = m => log ??= m;
        var sw = Stopwatch.StartNew();
        var exit = cpu.Run();
        sw.Stop();
        if (exit.Reason != VcpuExitReason.PowerEvent)
            throw new InvalidOperationException($"{g.Name}: guest ended with {exit.Reason} {exit.Detail} {log}");
        return (cpu.InstructionsRetired, sw.Elapsed.TotalSeconds, accel.JitSummary);
    }

    private static string? FindQemu()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':'))
        {
            var p = Path.Combine(dir, "qemu-system-x86_64");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    private static double RunQemu(string qemu, CpuGuests.Guest g)
    {
        string path = Path.Combine(Path.GetTempPath(), $"dirigent-bench-{g.Name}-{Environment.ProcessId}.bin");
        File.WriteAllBytes(path, g.Image);
        var psi = new ProcessStartInfo(qemu)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "-M", "pc", "-accel", "tcg", "-nodefaults", "-nographic", "-display", "none",
                     "-serial", "none", "-monitor", "none", "-m", "256", "-kernel", path,
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04" })
            psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        sw.Stop();
        File.Delete(path);
        if (p.ExitCode != 1) throw new InvalidOperationException($"qemu exited {p.ExitCode} for {g.Name}: {err}");
        return sw.Elapsed.TotalSeconds;
    }
}
