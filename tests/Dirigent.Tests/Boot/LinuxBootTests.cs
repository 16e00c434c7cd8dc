using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;

namespace Dirigent.Tests.Boot;

/// <summary>
/// The default guest (Debian's stock cloud kernel + our busybox initramfs) on the software CPU. The image is
/// built with apt-get on first use (CI runs `apt-get update` before the tests) and cached.
/// </summary>
[Trait("Category", "Boot")]
public class LinuxBootTests
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);

    private static VmSpec Config(string script) => new()
    {
        Kernel = s_image.Value.Kernel,
        Initrds = [s_image.Value.Initramfs],
        Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
        MemoryBytes = 256UL << 20,
    };

    [Fact]
    public void BootsStockKernelAndPowersOffCleanly()
    {
        var r = new GuestRunner();
        int rc = r.Run(Config("echo UNAME=$(uname -r); cat /proc/cpuinfo; grep -H . /sys/devices/system/cpu/vulnerabilities/*; echo DMESG-BEGIN; dmesg; echo DMESG-END; poweroff -f"), BootTimeout);
        string o = r.Output;
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}");
        Assert.Contains($"UNAME={s_image.Value.KernelVersion}", o);
        Assert.Matches(new Regex(@"vendor_id\s*:\s*GenuineIntel"), o);
        Assert.Matches(new Regex(@"model name\s*:\s*Dirigent Virtual CPU"), o);
        Assert.Matches(new Regex(@"flags\s*:.*\bsse2\b.*\bssse3\b"), o);
        // IA32_ARCH_CAPABILITIES keeps mitigations that only cost time here off: KPTI (a TLB flush per kernel entry)
        // and, on kernels that know Indirect Target Selection, the return thunk on every kernel RET.
        Assert.Contains("vulnerabilities/meltdown:Not affected", o);
        if (o.Contains("vulnerabilities/indirect_target_selection:", StringComparison.Ordinal))
            Assert.Contains("vulnerabilities/indirect_target_selection:Not affected", o);
        int b = o.IndexOf("DMESG-BEGIN", StringComparison.Ordinal), e = o.IndexOf("DMESG-END", StringComparison.Ordinal);
        Assert.True(b >= 0 && e > b, "dmesg output missing");
        string dmesg = o[b..e];
        foreach (var bad in new[] { "BUG:", "WARNING:", "Oops", "Call Trace", "unstable", "Unstable" })
            Assert.False(dmesg.Contains(bad, StringComparison.Ordinal), $"dmesg contains '{bad}':\n{dmesg}");
        // The kernel ticks from the PIT until the APIC timer is set up (check_timer ran): CPUID leaf 6 has no ARAT
        // (CpuidModel), without which Linux starts no PIT and its clocks stood still through part of the boot.
        Assert.Contains("..TIMER: vector=", dmesg);
    }

    [Fact]
    public void SerialInputReachesTheGuestThroughInterrupts()
    {
        // The shell blocks in read(2) on the tty; only the UART's receive interrupt can wake it.
        var r = new GuestRunner().When("READY-FOR-INPUT", "hello from the host\n");
        int rc = r.Run(Config("echo READY-FOR-INPUT; read line; echo \"GOT:$line\"; poweroff -f"), BootTimeout);
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
        Assert.Contains("GOT:hello from the host", r.Output);
    }

    [Fact]
    public void GuestExitStatusIsReported()
    {
        var r = new GuestRunner();
        int rc = r.Run(Config("exit 3"), BootTimeout);
        Assert.Equal(0, rc); // /init powers off after the command
        Assert.Contains($"{InitScript.ExitStatusPrefix}3", r.Output);
    }

    [Fact]
    public void GuestRebootUnderNoRebootEndsTheRunWithZero()
    {
        var r = new GuestRunner();
        var cfg = Config("reboot -f");
        cfg.NoReboot = true;
        int rc = r.Run(cfg, BootTimeout);
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
        Assert.Contains("reboot: machine restart", r.Output);
        Assert.Single(Regex.Matches(r.Output, "Linux version"));
    }
}
