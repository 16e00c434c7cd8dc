using System.Text;
using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;

namespace Dirigent.Tests.Firmware;

/// <summary>
/// A VM booted through SeaBIOS across the VM's lifecycle: a snapshot taken while its kernel runs restores and goes
/// on (the ROM, shadow RAM state and fw_cfg registers come back with it), and a hardware reset runs SeaBIOS again
/// from the reset vector to the kernel.
/// </summary>
[Trait("Category", "Boot")]
public class SeaBiosLifecycleTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(4);

    private static VmSpec Spec(string disk) => new()
    {
        Firmware = FirmwareKind.Bios, MemoryBytes = 256UL << 20, Accel = AccelKind.Emu, Serial = "none",
        Disks = [new DiskConfig(disk, DiskFormat.Raw, ReadOnly: false)],
    };

    [SkippableFact]
    public void AFirmwareBootedGuestRestoredFromASnapshotAnswersAndPowersOff()
    {
        SeaBiosBootTests.RequirePackages();
        using var dir = new TempDir();
        string disk = SeaBiosBootTests.MakeDisk(dir, "raw", "echo READY; read line; echo GOT:$line; echo ALLDONE");
        using (var vm = Vm.Create(Spec(disk), TextWriter.Null))
        using (var cap = new ConsoleCapture(vm))
        {
            vm.Start();
            Assert.True(cap.WaitFor("READY", Timeout), "guest did not get ready: " + cap.Text[^Math.Min(2000, cap.Text.Length)..]);
            vm.SaveSnapshot(dir["snap"]);
            vm.Stop();
        }
        using var restored = Vm.Restore(dir["snap"], null, TextWriter.Null);
        using var cap2 = new ConsoleCapture(restored);
        restored.Start();
        restored.Console.Write(Encoding.ASCII.GetBytes("typed-after-restore\n"));
        Assert.True(cap2.WaitFor("ALLDONE", Timeout), "restored guest did not finish: " + cap2.Text);
        Assert.Contains("GOT:typed-after-restore", cap2.Text);
        Assert.True(restored.Completion.Wait(Timeout));
        Assert.Equal(VmExitKind.PowerOff, restored.ExitReason!.Kind);
    }

    [SkippableFact]
    public void AHardwareResetRunsSeaBiosAgainAndBootsTheDiskAgain()
    {
        SeaBiosBootTests.RequirePackages();
        using var dir = new TempDir();
        string disk = SeaBiosBootTests.MakeDisk(dir, "raw", "echo READY; sleep 600");
        using var vm = Vm.Create(Spec(disk), TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor("READY", Timeout), "guest did not get ready: " + cap.Text[^Math.Min(2000, cap.Text.Length)..]);
        // A second capture from here on sees only what follows the reset (the first guest sleeps meanwhile).
        using var after = new ConsoleCapture(vm);
        vm.Reset();
        Assert.True(after.WaitFor("READY", Timeout), "no second boot: " + after.Text[^Math.Min(3000, after.Text.Length)..]);
        Assert.Contains("SeaBIOS (version", after.Text);
        Assert.Contains("Booting from Hard Disk", after.Text);
        Assert.Equal(1, vm.Reboots);
        vm.Stop();
    }
}
