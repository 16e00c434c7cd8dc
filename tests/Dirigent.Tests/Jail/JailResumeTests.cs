using Dirigent.Storage;
using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;

namespace Dirigent.Tests.Jail;

/// <summary>
/// `dirigent run --jail` resuming a VM: from a snapshot (--restore: the snapshot directory is bound in read-only), from
/// a live migration (--incoming unix:PATH: the VMM listens inside the jail, PATH is a link to its socket), and with a
/// qcow2 disk whose backing file lies elsewhere (the backing chain is bound in read-only). Each run is the tiny guest,
/// which must end with the same output and result as a straight run.
/// </summary>
public class JailResumeTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    private static void Finish(JailTests.JailedRun run, string serial, string before, (string Out, int Exit) straight)
    {
        Assert.True(run.Process.WaitForExit(Timeout), "the jailed VM did not finish: " + run.Output);
        run.Process.WaitForExit();
        Assert.True((straight.Exit << 1 | 1) == run.Process.ExitCode, $"status {run.Process.ExitCode}: {run.Output}");
        Assert.Equal(straight.Out, before + File.ReadAllText(serial, System.Text.Encoding.Latin1));
    }

    [SkippableFact]
    public void A_snapshot_restores_inside_the_jail()
    {
        JailTests.SkipUnlessJailCanRun();
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 200);
        var straight = SnapshotTests.Straight(kernel);
        string snap = dir["snap"], serial = dir["serial.txt"];
        string before = SnapshotTests.SaveMidRun(kernel, snap, "C");
        using var run = new JailTests.JailedRun(["--jail", "--restore", snap, "--serial", $"file:{serial}"]);
        Finish(run, serial, before, straight);
    }

    [SkippableFact]
    public void A_vm_migrates_into_a_jailed_incoming_process()
    {
        JailTests.SkipUnlessJailCanRun();
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 200);
        var straight = SnapshotTests.Straight(kernel);
        string sock = dir["in.sock"], serial = dir["serial.txt"];
        using var run = new JailTests.JailedRun(["--jail", "--incoming", $"unix:{sock}", "--serial", $"file:{serial}"]);
        Assert.True(run.WaitFor("waiting for an incoming migration", Timeout), run.Output);
        Assert.True(File.Exists(sock), $"{sock} does not lead to the jailed VMM's socket: {run.Output}");
        using var source = Vm.Create(TinyGuest.Spec(kernel), TextWriter.Null);
        using var cap = new ConsoleCapture(source);
        source.Start();
        Assert.True(cap.WaitFor("C", Timeout));
        source.Migrate($"unix:{sock}");
        Assert.Equal(VmExitKind.Migrated, source.ExitReason!.Kind);
        Finish(run, serial, cap.Text, straight);
        Assert.False(File.Exists(sock), "the link to the jail's socket is left behind");
    }

    [SkippableFact]
    public void A_qcow2_backing_file_outside_the_disk_directory_is_reachable()
    {
        JailTests.SkipUnlessJailCanRun();
        using var dir = new TempDir();
        using var other = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 20);
        var straight = SnapshotTests.Straight(kernel);
        string bas = other["base.raw"], overlay = dir["overlay.qcow2"], serial = dir["serial.txt"];
        DiskImage.Create(bas, "raw", 1 << 20);
        DiskImage.Create(overlay, "qcow2", 1 << 20, bas, "raw");
        Chown.To(overlay, 65534, 65534);
        using var run = new JailTests.JailedRun(["--jail", "--kernel", kernel, "--memory", "16M", "--accel", "emu",
            "--disk", $"{overlay},format=qcow2", "--serial", $"file:{serial}"]);
        Finish(run, serial, "", straight);
    }
}
