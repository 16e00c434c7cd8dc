using Dirigent.Accel.Kvm;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;
using Xunit.Abstractions;

namespace Dirigent.Tests.Boot;

/// <summary>
/// The default guest (stock Debian kernel, busybox initramfs) under `--accel kvm`, with KVM's in-kernel irqchip.
/// Only where KVM runs on hardware virtualization: on an emulating KVM (PVM, ~1M instructions/s) a Linux boot would
/// take hours, so there (and where KVM is missing) the test is reported skipped with the reason.
/// </summary>
[Trait("Category", "Boot")]
public class KvmLinuxBootTests(ITestOutputHelper output)
{
    [SkippableFact]
    public void Stock_linux_boots_under_kvm_runs_a_command_and_powers_off()
    {
        Skip.IfNot(KvmAccelerator.HasHardwareVirtualization(out string why), why);
        output.WriteLine($"hardware virtualization: {why}");
        var image = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        var cfg = new VmSpec
        {
            Kernel = image.Kernel,
            Initrds = [image.Initramfs],
            // `read` blocks on the tty until the UART's receive interrupt, through KVM's in-kernel IOAPIC, wakes it.
            Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument("echo KVM-GUEST-UP; cat /proc/uptime; echo READY-FOR-INPUT; read line; echo \"GOT:$line\"; exit 5")}",
            MemoryBytes = 256UL << 20,
            Accel = AccelKind.Kvm,
        };
        var r = new GuestRunner().When("READY-FOR-INPUT", "typed on the host\n");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int rc = r.Run(cfg, TimeSpan.FromMinutes(2));
        output.WriteLine($"wall {sw.Elapsed.TotalSeconds:F2} s; errors: {r.Errors}");
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
        Assert.Contains("KVM-GUEST-UP", r.Output);
        Assert.Contains("GOT:typed on the host", r.Output);
        Assert.Contains($"{InitScript.ExitStatusPrefix}5", r.Output);
        Assert.Contains("kvm: interrupt controllers: kvm in-kernel", r.Errors);
    }

    /// <summary>SMP under KVM: the in-kernel LAPICs start the APs (INIT/SIPI), one host thread per vCPU.</summary>
    [SkippableTheory]
    [InlineData(2)]
    [InlineData(4)]
    public void Stock_linux_brings_up_every_vcpu_under_kvm(int cpus)
    {
        Skip.IfNot(KvmAccelerator.HasHardwareVirtualization(out string why), why);
        var image = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        var cfg = new VmSpec
        {
            Kernel = image.Kernel,
            Initrds = [image.Initramfs],
            Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument("echo NPROC=$(nproc); echo ONLINE=$(cat /sys/devices/system/cpu/online); dmesg | grep -c -E 'BUG:|WARNING:|Oops|stall|lockup' | sed 's/^/BAD=/'")}",
            MemoryBytes = 256UL << 20,
            Cpus = cpus,
            Accel = AccelKind.Kvm,
        };
        var r = new GuestRunner();
        int rc = r.Run(cfg, TimeSpan.FromMinutes(2));
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
        Assert.Contains($"NPROC={cpus}", r.Output);
        Assert.Contains($"ONLINE=0-{cpus - 1}", r.Output);
        Assert.Contains("BAD=0", r.Output);
    }
}
