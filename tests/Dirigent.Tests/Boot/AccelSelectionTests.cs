using System.Text.RegularExpressions;
using Dirigent.Accel.Kvm;
using Dirigent.Vmm;

namespace Dirigent.Tests.Boot;

/// <summary>`--accel emu|kvm|auto` through `dirigent run`, with the same Multiboot guest on each.</summary>
public class AccelSelectionTests
{
    private static (int rc, string output, string errors) Run(AccelKind accel)
    {
        string path = Path.Combine(Path.GetTempPath(), $"dirigent-accel-{Environment.ProcessId}-{accel}.bin");
        File.WriteAllBytes(path, MultibootRunTests.BuildKernel("same on every accelerator\r\n", 0x05));
        try
        {
            var r = new GuestRunner();
            int rc = r.Run(new VmSpec { Kernel = path, MemoryBytes = 32UL << 20, Accel = accel }, TimeSpan.FromSeconds(60));
            return (rc, r.Output, r.Errors);
        }
        finally { File.Delete(path); }
    }

    [SkippableFact]
    public void KvmAndEmuRunTheSameGuestWithTheSameResult()
    {
        Skip.IfNot(KvmAccelerator.Probe(out string why), $"KVM is not usable on this host, so this test cannot run: {why}");
        var emu = Run(AccelKind.Emu);
        var kvm = Run(AccelKind.Kvm);
        Assert.Equal((0x05 << 1) | 1, emu.rc);
        Assert.Equal(emu.rc, kvm.rc);
        Assert.Equal(emu.output, kvm.output);
        Assert.Contains("same on every accelerator", kvm.output);
    }

    [SkippableFact]
    public void AutoSaysWhichAcceleratorAndWhyInExactlyOneLine()
    {
        var auto = Run(AccelKind.Auto);
        Assert.Equal((0x05 << 1) | 1, auto.rc);
        var lines = auto.errors.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("accel:", StringComparison.Ordinal)).ToList();
        Assert.Single(lines);
        Assert.Matches(new Regex(@"^accel: (kvm|emu) \(.+\)$"), lines[0].TrimEnd('\r'));
        // PVM's KVM emulates every instruction: the calibration must then pick the software CPU.
        if (Directory.Exists("/sys/module/kvm_pvm")) Assert.StartsWith("accel: emu (", lines[0]);
    }

    /// <summary>
    /// `auto` remembers its calibration per host key: the second VM of the same key does not calibrate and says so;
    /// another key, or a damaged file, calibrates again. Timers here are stand-ins that count their calls.
    /// </summary>
    [Fact]
    public void AutoRemembersItsChoiceForTheSameHostKeyAndCalibratesAgainOtherwise()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"dirigent-accel-choice-{Environment.ProcessId}");
        string file = Path.Combine(dir, "accel-auto");
        try
        {
            int kvmRuns = 0, emuRuns = 0;
            double kvmTime = 0.090, emuTime = 0.010;
            AccelKind Choose(string key, out string line)
            {
                var err = new StringWriter();
                var kind = AccelSelector.ChooseAuto(file, key, () => { kvmRuns++; return kvmTime; }, () => { emuRuns++; return emuTime; }, err);
                line = err.ToString().TrimEnd();
                Assert.DoesNotContain('\n', line);
                return kind;
            }

            Assert.Equal(AccelKind.Emu, Choose("boot-a", out string first));
            Assert.Equal((1, 1), (kvmRuns, emuRuns));
            Assert.StartsWith("accel: emu (kvm is slower here: calibration guest took 90.0 ms on kvm, 10.0 ms", first);

            // Same key: remembered, no calibration, the same answer and its figures.
            kvmTime = 0.001; // would pick kvm if it calibrated
            Assert.Equal(AccelKind.Emu, Choose("boot-a", out string second));
            Assert.Equal((1, 1), (kvmRuns, emuRuns));
            Assert.Matches(new Regex(@"^accel: emu \(remembered from this host boot's calibration: kvm 90\.0 ms, software CPU 10\.0 ms; delete .+ to calibrate again\)$"), second);

            // Another key (a reboot, a KVM reload, a new build): calibrates, and the new answer replaces the old.
            Assert.Equal(AccelKind.Kvm, Choose("boot-b", out string third));
            Assert.Equal((2, 2), (kvmRuns, emuRuns));
            Assert.StartsWith("accel: kvm (calibration guest: kvm 1.0 ms, software CPU 10.0 ms)", third);
            Assert.Equal(AccelKind.Kvm, Choose("boot-b", out _));
            Assert.Equal((2, 2), (kvmRuns, emuRuns));

            // A damaged file is not trusted.
            foreach (string junk in new[] { "", "garbage", File.ReadAllText(file).Replace(" kvm ", " xen "), File.ReadAllText(file).Replace(" 1.0 ", " NaN ") })
            {
                File.WriteAllText(file, junk);
                int before = kvmRuns;
                Assert.Equal(AccelKind.Kvm, Choose("boot-b", out _));
                Assert.Equal(before + 1, kvmRuns);
            }

            // Nowhere to remember (the directory is a file): calibrates every time, and says nothing more about it.
            Directory.Delete(dir, recursive: true);
            File.WriteAllText(dir, "not a directory");
            int b2 = kvmRuns;
            Choose("boot-c", out string noCache);
            Choose("boot-c", out _);
            Assert.Equal(b2 + 2, kvmRuns);
            Assert.StartsWith("accel: kvm (calibration guest:", noCache);
        }
        finally
        {
            if (File.Exists(dir)) File.Delete(dir);
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void TheHostKeyNamesThisBootAndBothAcceleratorBuilds()
    {
        string key = AccelSelector.HostKey();
        Assert.Equal(key, AccelSelector.HostKey());
        string boot = File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
        Assert.StartsWith(boot + "/", key);
        Assert.Contains(typeof(Dirigent.Accel.Emu.EmuAccelerator).Assembly.ManifestModule.ModuleVersionId.ToString("N"), key);
        Assert.DoesNotContain(' ', key);
    }
}
