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
}
