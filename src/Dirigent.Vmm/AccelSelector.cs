using System.Diagnostics;
using Dirigent.Accel.Emu;
using Dirigent.Accel.Kvm;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;

namespace Dirigent.Vmm;

/// <summary>
/// Chooses the accelerator. `auto` uses KVM only when it is present, usable and actually faster: it times the same
/// small calibration guest on KVM and on the software CPU and keeps the faster (a PVM host emulates every
/// instruction under KVM, so there the software CPU wins). The choice is remembered for the rest of the host's boot
/// (<see cref="ChoiceFile"/>), so only the first `auto` VM after a reboot, a KVM module reload or a new Dirigent build
/// pays for the calibration (~0.25 s here).
/// </summary>
public static class AccelSelector
{
    /// <summary>Iterations of the calibration loop (4 instructions each): quick even on an emulating KVM.</summary>
    public const int CalibrationIterations = 50_000;

    public static IAccelerator Create(VmSpec cfg, MachineModel vm, TextWriter err, out string? error)
    {
        error = null;
        switch (cfg.Accel)
        {
            case AccelKind.Emu:
                return new EmuAccelerator(vm);
            case AccelKind.Kvm:
                if (!KvmAccelerator.Probe(out string why))
                {
                    error = $"--accel kvm: {why}";
                    return null!;
                }
                return new KvmAccelerator(vm);
            default:
                if (!KvmAccelerator.Probe(out string reason))
                {
                    err.WriteLine($"accel: emu (kvm unavailable: {reason})");
                    return new EmuAccelerator(vm);
                }
                return ChooseAuto(ChoiceFile, HostKey(), () => TimeCalibration(v => new KvmAccelerator(v)),
                    () => TimeCalibration(v => new EmuAccelerator(v)), err) == AccelKind.Kvm
                    ? new KvmAccelerator(vm) : new EmuAccelerator(vm);
        }
    }

    /// <summary>
    /// Where `auto` remembers its choice: accel-auto in the cache directory (DIRIGENT_CACHE, else ~/.cache/dirigent;
    /// one line; delete it to calibrate again).
    /// </summary>
    public static string ChoiceFile => Path.Combine(CacheDir, "accel-auto");

    /// <summary>Dirigent's cache directory: DIRIGENT_CACHE, else ~/.cache/dirigent (also the default guest image's).</summary>
    public static string CacheDir =>
        Environment.GetEnvironmentVariable("DIRIGENT_CACHE") is { Length: > 0 } d ? d :
        Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "dirigent");

    /// <summary>
    /// What the remembered choice is valid for: this boot of the host (its boot_id), this /dev/kvm (a module reload makes
    /// a new node) and this build of both accelerators (a faster software CPU may change the answer).
    /// </summary>
    public static string HostKey()
    {
        string boot = "?";
        try { boot = File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim(); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        long kvmNode = File.Exists("/dev/kvm") ? File.GetLastWriteTimeUtc("/dev/kvm").Ticks : 0;
        return $"{boot}/{kvmNode:x}/{typeof(EmuAccelerator).Assembly.ManifestModule.ModuleVersionId:N}/{typeof(KvmAccelerator).Assembly.ManifestModule.ModuleVersionId:N}";
    }

    private const string ChoiceVersion = "dirigent-accel-auto-1";

    /// <summary>
    /// `auto` with KVM usable: the choice remembered in <paramref name="file"/> for <paramref name="key"/>, else the
    /// calibration (timeKvm, timeEmu), whose result is then remembered. Says which and why in one line on err. A
    /// missing, unreadable, foreign or malformed file only means calibrating; failing to write it is not an error.
    /// </summary>
    public static AccelKind ChooseAuto(string? file, string key, Func<double> timeKvm, Func<double> timeEmu, TextWriter err)
    {
        if (file != null && ReadChoice(file, key) is { } known)
        {
            err.WriteLine($"accel: {(known.Kind == AccelKind.Kvm ? "kvm" : "emu")} (remembered from this host boot's calibration: " +
                          $"kvm {known.KvmMs:F1} ms, software CPU {known.EmuMs:F1} ms; delete {file} to calibrate again)");
            return known.Kind;
        }
        double kvm = timeKvm(), emu = timeEmu();
        var kind = kvm < emu ? AccelKind.Kvm : AccelKind.Emu;
        if (kind == AccelKind.Kvm)
            err.WriteLine($"accel: kvm (calibration guest: kvm {kvm * 1000:F1} ms, software CPU {emu * 1000:F1} ms)");
        else
            err.WriteLine($"accel: emu (kvm is slower here: calibration guest took {kvm * 1000:F1} ms on kvm, {emu * 1000:F1} ms on the software CPU)");
        if (file != null && kvm < double.MaxValue && emu < double.MaxValue) WriteChoice(file, key, kind, kvm * 1000, emu * 1000);
        return kind;
    }

    private static (AccelKind Kind, double KvmMs, double EmuMs)? ReadChoice(string file, string key)
    {
        string text;
        try
        {
            if (new FileInfo(file).Length > 4096) return null;
            text = File.ReadAllText(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        var f = text.Trim().Split(' ');
        if (f.Length != 5 || f[0] != ChoiceVersion || f[1] != key) return null;
        AccelKind? kind = f[2] switch { "kvm" => AccelKind.Kvm, "emu" => AccelKind.Emu, _ => null };
        if (kind == null || !double.TryParse(f[3], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double k)
            || !double.TryParse(f[4], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double e2)
            || !double.IsFinite(k) || !double.IsFinite(e2))
            return null;
        return (kind.Value, k, e2);
    }

    /// <summary>Written to a temporary file and renamed, so a VM starting at the same time reads the old line or the new one.</summary>
    private static void WriteChoice(string file, string key, AccelKind kind, double kvmMs, double emuMs)
    {
        string tmp = $"{file}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            File.WriteAllText(tmp, string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"{ChoiceVersion} {key} {(kind == AccelKind.Kvm ? "kvm" : "emu")} {kvmMs:F1} {emuMs:F1}\n"));
            File.Move(tmp, file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (Exception) { }
        }
    }

    /// <summary>
    /// Runs a 64-bit integer loop (`mov ecx,N; L: add eax,ecx; dec ecx; jnz L; hlt`) and returns the wall time of
    /// the whole thing, VM creation included, since that too is part of what a user waits for. Best of two runs.
    /// </summary>
    public static double TimeCalibration(Func<MachineModel, IAccelerator> create)
    {
        byte[] code =
        [
            0xB9, unchecked((byte)CalibrationIterations), (byte)(CalibrationIterations >> 8), (byte)(CalibrationIterations >> 16), 0,
            0x01, 0xC8, // add eax, ecx
            0xFF, 0xC9, // dec ecx
            0x75, 0xFA, // jnz -6
            0xF4,       // hlt (IF=0: the run ends)
        ];
        double best = double.MaxValue;
        for (int k = 0; k < 2; k++)
        {
            var sw = Stopwatch.StartNew();
            using var vm = new MachineModel(2 << 20);
            using var accel = create(vm);
            const ulong entry = 0x10_0000;
            vm.Memory.Write(entry, code);
            var cpu = accel.CreateVcpu(0);
            cpu.SetState(BootState.Long64(vm.Memory, entry, 0x8_0000));
            var exit = cpu.Run();
            sw.Stop();
            if (exit.Reason != VcpuExitReason.HaltedForever) return double.MaxValue; // treat a misbehaving backend as unusable
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return best;
    }
}
