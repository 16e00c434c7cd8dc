using System.Text;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;

namespace Dirigent.Tests.Boot;

/// <summary>
/// The default Linux guest (stock Debian kernel) snapshotted and restored on the software CPU: after the restore its
/// shell answers on the serial console, its timers tick (sleep returns), a file written before the snapshot hashes
/// the same, and it powers off cleanly. Also the ACPI power button: the default guest powers off on it.
/// </summary>
[Trait("Category", "Boot")]
public class SnapshotLinuxTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(4);

    internal static VmSpec LinuxSpec(string script, ulong memory = 256UL << 20, int cpus = 1)
    {
        var image = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        return new VmSpec
        {
            Kernel = image.Kernel,
            Initrds = [image.Initramfs],
            Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
            MemoryBytes = memory,
            Cpus = cpus,
            Accel = AccelKind.Emu,
            Serial = "none",
        };
    }

    /// <summary>With 2 vCPUs the snapshot holds an SMP guest: both vCPUs' states (the idle one halted) and both APICs.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Linux_guest_restored_from_a_snapshot_answers_keeps_time_and_its_files(int cpus)
    {
        using var dir = new TempDir();
        var spec = LinuxSpec(
            "dd if=/dev/urandom of=/tmp/f bs=64k count=32 2>/dev/null; echo H1=$(sha256sum /tmp/f); " +
            "echo READY; read line; echo GOT:$line; sleep 1; echo H2=$(sha256sum /tmp/f); " +
            "(sha256sum /tmp/f > /tmp/a) & (sha256sum /tmp/f > /tmp/b) & wait; echo NPROC=$(nproc) SAME=$(cat /tmp/a /tmp/b | uniq | wc -l); " +
            "echo ALLDONE", cpus: cpus);
        string before;
        using (var vm = Vm.Create(spec, TextWriter.Null))
        using (var cap = new ConsoleCapture(vm))
        {
            vm.Start();
            Assert.True(cap.WaitFor("READY", Timeout), "guest did not get ready: " + cap.Text[^Math.Min(2000, cap.Text.Length)..]);
            vm.SaveSnapshot(dir["snap"]);      // running: pauses, saves, resumes
            Assert.Equal(VmState.Running, vm.State);
            before = cap.Text;
            vm.Stop();
        }
        string h1 = Regex.Match(before, @"H1=([0-9a-f]{64})").Groups[1].Value;
        Assert.NotEmpty(h1);

        using var restored = Vm.Restore(dir["snap"], null, TextWriter.Null);
        using var cap2 = new ConsoleCapture(restored);
        restored.Start();
        restored.Console.Write(Encoding.ASCII.GetBytes("typed-after-restore\n"));
        Assert.True(cap2.WaitFor("ALLDONE", Timeout), "restored guest did not finish: " + cap2.Text);
        Assert.Contains("GOT:typed-after-restore", cap2.Text);
        Assert.Equal(h1, Regex.Match(cap2.Text, @"H2=([0-9a-f]{64})").Groups[1].Value);
        Assert.Contains($"NPROC={cpus} SAME=1", cap2.Text);
        Assert.True(restored.WaitEnded(Timeout));
        Assert.Equal(VmExitKind.PowerOff, restored.ExitReason!.Kind);
        Assert.DoesNotMatch("BUG|Oops|soft lockup|rcu_sched self-detected|clocksource.*unstable", cap2.Text);
    }

    [Fact]
    public void The_acpi_power_button_powers_the_default_guest_off()
    {
        // The script would run for ten minutes: only the button ends it. The guest's acpid (busybox, on the button's
        // evdev node) runs the power-off handler, which prints its line, syncs and powers off.
        var spec = LinuxSpec("echo READY; sleep 600; echo SLEPT");
        using var vm = Vm.Create(spec, TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor("READY", Timeout), cap.Text);
        vm.PowerButton();
        Assert.Equal(VmState.ShuttingDown, vm.State);
        Assert.True(cap.WaitFor(InitScript.PowerButtonLine, Timeout),
            "the guest never handled the power button: " + cap.Text[^Math.Min(2000, cap.Text.Length)..]);
        Assert.True(vm.WaitEnded(Timeout));
        Assert.Equal(VmExitKind.PowerOff, vm.ExitReason!.Kind);
        Assert.DoesNotContain("SLEPT", cap.Text);
    }
}
