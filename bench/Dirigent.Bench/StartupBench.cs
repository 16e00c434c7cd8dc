using System.Diagnostics;
using System.Globalization;
using Dirigent.Accel.Kvm;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Bench;

/// <summary>
/// VMM start-up: the time from spawning the VMM process to the guest's first instruction, and the VMM process's
/// peak resident memory, for `dirigent run --accel emu`, `--accel kvm` and QEMU TCG, with the same tiny Multiboot
/// guest (64 MiB RAM). The guest's first instructions write one byte to COM1, so "first instruction" is measured
/// from outside, with nothing added to the VMM: the time until that byte arrives on the process's stdout (the
/// serial console), a few instructions and one pipe write after the first one. The guest then idles in HLT; 300 ms
/// later VmHWM is read from /proc/PID/status and the process is killed.
/// QEMU boots SeaBIOS and its Multiboot option ROM before the guest, which is part of what its users wait for too.
/// On a host with hardware virtualization it also times the default Linux guest under KVM to /init.
/// </summary>
public static class StartupBench
{
    private const int Runs = 5;
    private const uint LoadAddr = 0x10_0000;
    private const byte Marker = (byte)'!';

    public static int Run(string? qemu)
    {
        string root = FindRepoRoot();
        string cli = EnsureCli(root);
        string kernel = Path.Combine(Path.GetTempPath(), $"dirigent-startup-{Environment.ProcessId}.bin");
        File.WriteAllBytes(kernel, BuildGuest());
        try
        {
            Console.WriteLine($"tiny Multiboot guest (first instructions: out 0x3F8, then sti; hlt), 64 MiB, {Runs} runs each, median (min)");
            var rows = new List<(string Name, Sample Median, Sample Min)>();
            void Measure(string name, Func<ProcessStartInfo> psi)
            {
                var samples = Enumerable.Range(0, Runs).Select(_ => Once(psi())).ToList();
                var byTime = samples.OrderBy(s => s.FirstByteMs).ToList();
                var byMem = samples.OrderBy(s => s.PeakRssKiB).ToList();
                rows.Add((name, new Sample(byTime[Runs / 2].FirstByteMs, byMem[Runs / 2].PeakRssKiB, ""), new Sample(byTime[0].FirstByteMs, byMem[0].PeakRssKiB, "")));
                if (samples[0].Stderr.Length > 0) Console.WriteLine($"  {name} stderr: {samples[0].Stderr.Trim().Replace("\n", " | ")}");
            }
            Measure("dirigent --accel emu", () => Dirigent(cli, kernel, "emu"));
            if (KvmAccelerator.Probe(out string why)) Measure("dirigent --accel kvm", () => Dirigent(cli, kernel, "kvm"));
            else Console.WriteLine($"dirigent --accel kvm: not measured: {why}");
            if (qemu != null) Measure("qemu-system-x86_64 -accel tcg", () => Qemu(qemu, kernel));

            Console.WriteLine($"{"VMM",-32} {"to first instruction (ms)",26} {"peak RSS, VmHWM (MiB)",24}");
            foreach (var (name, med, min) in rows)
                Console.WriteLine($"{name,-32} {$"{med.FirstByteMs:F1} ({min.FirstByteMs:F1})",26} {$"{med.PeakRssKiB / 1024.0:F1} ({min.PeakRssKiB / 1024.0:F1})",24}");
            var q = rows.FirstOrDefault(r => r.Name.StartsWith("qemu", StringComparison.Ordinal));
            if (q.Name != null)
                foreach (var (name, med, _) in rows.Where(r => r.Name != q.Name))
                    Console.WriteLine($"{name} / qemu tcg: start-up {med.FirstByteMs / q.Median.FirstByteMs:F2}x, peak RSS {(double)med.PeakRssKiB / q.Median.PeakRssKiB:F2}x");
            Console.WriteLine($"for scale: `dirigent --version` (.NET runtime start, CLI parsing, exit; no VM): {VersionMs(cli):F1} ms median");
            Console.WriteLine("anchor (Firecracker, hardware KVM): boot to /init <= 125 ms, VMM overhead <= 5 MiB");
        }
        finally { File.Delete(kernel); }

        if (KvmAccelerator.HasHardwareVirtualization(out string hw)) BootToInit(cli, hw);
        else Console.WriteLine($"boot to /init of the default guest under kvm: cannot be measured here: {hw}");
        return 0;
    }

    private readonly record struct Sample(double FirstByteMs, long PeakRssKiB, string Stderr);

    private static ProcessStartInfo Dirigent(string cli, string kernel, string accel) =>
        Psi(cli, "run", "--kernel", kernel, "--memory", "64M", "--accel", accel, "--serial", "stdio");

    private static ProcessStartInfo Qemu(string qemu, string kernel) =>
        Psi(qemu, "-M", "pc", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic", "-display", "none",
            "-monitor", "none", "-serial", "stdio", "-kernel", kernel);

    private static ProcessStartInfo Psi(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    private static Sample Once(ProcessStartInfo psi)
    {
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {psi.FileName}");
        var stderr = p.StandardError.ReadToEndAsync();
        double firstByte = -1;
        var reader = new Thread(() =>
        {
            var s = p.StandardOutput.BaseStream;
            int b;
            while ((b = s.ReadByte()) >= 0)
                if (b == Marker && firstByte < 0) { firstByte = sw.Elapsed.TotalMilliseconds; break; }
        }) { IsBackground = true };
        reader.Start();
        if (!reader.Join(TimeSpan.FromSeconds(30)) || firstByte < 0)
        {
            try { p.Kill(); } catch (InvalidOperationException) { }
            p.WaitForExit();
            throw new InvalidOperationException($"{psi.FileName}: the guest's byte never came (exit {(p.HasExited ? p.ExitCode : -1)}): {stderr.Result}");
        }
        Thread.Sleep(300);
        long hwm = PeakRssKiB(p.Id);
        try { p.Kill(); } catch (InvalidOperationException) { }
        p.WaitForExit();
        return new Sample(firstByte, hwm, stderr.Result);
    }

    private static double VersionMs(string cli)
    {
        var times = new List<double>();
        for (int k = 0; k < Runs; k++)
        {
            var sw = Stopwatch.StartNew();
            using var p = Process.Start(Psi(cli, "--version"))!;
            p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        return times[Runs / 2];
    }

    private static long PeakRssKiB(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                return long.Parse(line[6..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        throw new InvalidOperationException($"no VmHWM in /proc/{pid}/status");
    }

    /// <summary>Multiboot (a.out kludge) at 1 MiB: writes the marker to COM1 at once, then idles in HLT forever.</summary>
    private static byte[] BuildGuest()
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        a.mov(dx, 0x3F8);
        a.mov(al, Marker);
        a.@out(dx, al);
        var idle = a.CreateLabel();
        a.Label(ref idle);
        a.sti();
        a.hlt();
        a.jmp(idle);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }

    internal static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Dirigent.slnx")) && File.Exists(Path.Combine(d.FullName, "dirigent"))) return d.FullName;
        throw new InvalidOperationException("cannot find the repository root (Dirigent.slnx) above the bench binary");
    }

    /// <summary>The `./dirigent` launcher builds the CLI into artifacts/cli when sources changed; the timed runs then
    /// spawn the built apphost directly, so no build check is timed.</summary>
    internal static string EnsureCli(string root)
    {
        var psi = Psi("bash", Path.Combine(root, "dirigent"), "--help");
        using var p = Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        string cli = Path.Combine(root, "artifacts", "cli", "dirigent");
        if (!File.Exists(cli)) throw new InvalidOperationException($"building the CLI failed: {err}");
        return cli;
    }

    /// <summary>The default guest under --accel kvm: wall time from spawning the VMM until /init prints, and the
    /// guest's own uptime at that point.</summary>
    private static void BootToInit(string cli, string hw)
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string script = "echo MARK-INIT $(cut -d' ' -f1 /proc/uptime); poweroff -f";
        var psi = Psi(cli, "run", "--kernel", img.Kernel, "--initrd", img.Initramfs, "--memory", "256M", "--accel", "kvm",
            "--append", $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}");
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string text = "";
        double atInit = -1;
        var s = p.StandardOutput;
        string? line;
        while ((line = s.ReadLine()) != null)
        {
            text += line + "\n";
            if (atInit < 0 && line.Contains("MARK-INIT", StringComparison.Ordinal)) atInit = sw.Elapsed.TotalMilliseconds;
        }
        p.WaitForExit();
        var m = System.Text.RegularExpressions.Regex.Match(text, @"MARK-INIT ([0-9.]+)");
        if (atInit < 0 || !m.Success)
        {
            Console.WriteLine($"boot to /init under kvm ({hw}): failed, exit {p.ExitCode}: {stderr.Result}");
            return;
        }
        Console.WriteLine($"boot to /init of the default guest under kvm ({hw}): {atInit:F0} ms from VMM start (guest uptime {m.Groups[1].Value} s), exit {p.ExitCode}");
    }
}
