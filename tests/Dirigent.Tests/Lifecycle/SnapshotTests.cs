using System.Text.Json.Nodes;
using Dirigent.Cli;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;
using Dirigent.Vmm.Snapshots;

namespace Dirigent.Tests.Lifecycle;

/// <summary>Snapshots of a tiny guest: save mid-run, restore in a new VM, the run finishes as if never interrupted.</summary>
public class SnapshotTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    /// <summary>Runs the tiny guest straight through: its output and exit value.</summary>
    internal static (string Out, int Exit) Straight(string kernel, AccelKind accel = AccelKind.Emu)
    {
        using var vm = Vm.Create(TinyGuest.Spec(kernel, accel), TextWriter.Null);
        return vm.RunToDebugExit(Timeout);
    }

    /// <summary>Runs until <paramref name="mark"/> is printed, pauses, saves to <paramref name="snap"/>, stops.</summary>
    internal static string SaveMidRun(string kernel, string snap, string mark, AccelKind accel = AccelKind.Emu)
    {
        using var vm = Vm.Create(TinyGuest.Spec(kernel, accel), TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor(mark, Timeout));
        vm.Pause();
        vm.SaveSnapshot(snap);
        Assert.Equal(VmState.Paused, vm.State);
        string before = cap.Text;
        vm.Stop();
        return before;
    }

    internal static (string Out, int Exit) RestoreAndFinish(string snap, AccelKind? accel = null)
    {
        using var vm = Vm.Restore(snap, accel, TextWriter.Null);
        Assert.Equal(VmState.Paused, vm.State);
        return vm.RunToDebugExit(Timeout);
    }

    [Fact]
    public void A_guest_snapshotted_mid_run_finishes_after_restore_with_the_same_output_and_result()
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path);
        var straight = Straight(kernel);
        string snap = dir["snap"];
        string before = SaveMidRun(kernel, snap, "C");
        var after = RestoreAndFinish(snap);
        Assert.Equal(straight.Out, before + after.Out);
        Assert.Equal(straight.Exit, after.Exit);
        // The same snapshot restores again (it is not consumed).
        var again = RestoreAndFinish(snap);
        Assert.Equal(after, again);
    }

    [Fact]
    public void Snapshot_of_a_running_vm_resumes_it_and_the_memory_file_is_sparse()
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 2000);
        using var vm = Vm.Create(TinyGuest.Spec(kernel), TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor("A", Timeout));
        vm.SaveSnapshot(dir["s"]);
        Assert.Equal(VmState.Running, vm.State);
        Assert.True(cap.WaitFor("C", Timeout)); // still running after the snapshot
        vm.Stop();
        var mem = new FileInfo(Path.Combine(dir["s"], SnapshotFiles.MemoryFile));
        Assert.Equal(16L << 20, mem.Length);
        long allocated = DiskUsage(mem.FullName);
        Assert.True(allocated < 4L << 20, $"memory file of an idle 16 MiB guest allocates {allocated} bytes");
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["s"], SnapshotFiles.StateFile)))!;
        Assert.Equal("dirigent-snapshot", (string?)json["format"]);
        Assert.NotNull(json["components"]!["clock"]);
        // A second save into the same directory is refused, the first is untouched.
        var ex = Assert.Throws<VmException>(() => { using var v2 = Vm.Restore(dir["s"], null, TextWriter.Null); v2.SaveSnapshot(dir["s"]); });
        Assert.Contains("already holds a snapshot", ex.Message);
    }

    private static long DiskUsage(string path)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("du", ["-B1", path]) { RedirectStandardOutput = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return long.Parse(o.Split('\t')[0]);
    }

    public static TheoryData<string, string> BadSnapshots => new()
    {
        { "missing", "no such directory" },
        { "no-state", "no state.json" },
        { "truncated-memory", "truncated" },
        { "wrong-version", "format version 99" },
        { "not-json", "corrupt" },
        { "wrong-format", "not a Dirigent snapshot" },
        { "wrong-memory-size", "does not match" },
        { "bad-component", "snapshot" },
    };

    [Theory]
    [MemberData(nameof(BadSnapshots))]
    public void A_bad_snapshot_is_one_line_and_status_2_and_changes_nothing(string damage, string expect)
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 2000, spin: 1000);
        string snap = dir["snap"];
        SaveMidRun(kernel, snap, "A");
        string state = Path.Combine(snap, SnapshotFiles.StateFile), mem = Path.Combine(snap, SnapshotFiles.MemoryFile);
        string target = snap;
        switch (damage)
        {
            case "missing": target = dir["nope"]; break;
            case "no-state": File.Delete(state); break;
            case "truncated-memory": using (var f = File.OpenWrite(mem)) f.SetLength(f.Length - 4096); break;
            case "wrong-version": Edit(state, j => j["version"] = 99); break;
            case "not-json": File.WriteAllText(state, "{ this is not json"); break;
            case "wrong-format": Edit(state, j => j["format"] = "qemu"); break;
            case "wrong-memory-size": Edit(state, j => { j["memoryBytes"] = 32L << 20; }); using (var f = File.OpenWrite(mem)) f.SetLength(32L << 20); break;
            case "bad-component": Edit(state, j => j["components"]!["clock"]!["state"]!["nowNs"] = -5); break;
        }
        var before = Directory.Exists(snap) ? Directory.GetFiles(snap).ToDictionary(f => f, File.ReadAllBytes) : new();
        var err = new StringWriter();
        int rc = VmLauncher.Run(new VmSpec { Serial = "none" }, err, new MemoryStream(), new MemoryStream(), useTerminal: false,
            opts: new RunOptions { RestoreDir = target });
        Assert.Equal(ExitCodes.BadInput, rc);
        string msg = err.ToString().Trim();
        Assert.DoesNotContain('\n', msg);
        Assert.Contains(expect, msg);
        Assert.StartsWith("dirigent run: ", msg);
        foreach (var (f, bytes) in before) Assert.Equal(bytes, File.ReadAllBytes(f));
    }

    private static void Edit(string path, Action<JsonNode> change)
    {
        var j = JsonNode.Parse(File.ReadAllText(path))!;
        change(j);
        File.WriteAllText(path, j.ToJsonString());
    }

    [Fact]
    public void Restore_refuses_a_disk_that_changed_since_the_snapshot()
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 4, spin: 1000);
        string disk = dir["disk.raw"];
        File.WriteAllBytes(disk, new byte[1 << 20]);
        var spec = TinyGuest.Spec(kernel);
        spec.Disks.Add(new DiskConfig(disk, DiskFormat.Raw, false));
        using (var vm = Vm.Create(spec, TextWriter.Null))
        {
            vm.SaveSnapshot(dir["snap"]);
        }
        using (var f = File.OpenWrite(disk)) { f.Position = 4096; f.WriteByte(1); }
        var ex = Assert.Throws<VmException>(() => Vm.Restore(dir["snap"], null, TextWriter.Null));
        Assert.True(ex.BadInput);
        Assert.Contains("changed since the snapshot", ex.Message);
    }

    [Fact]
    public void A_restored_vm_whose_kernel_is_gone_runs_and_a_reboot_ends_it_with_one_line()
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 2000);
        SaveMidRun(kernel, dir["snap"], "A");
        File.Delete(kernel);
        using var vm = Vm.Restore(dir["snap"], null, TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor("C", Timeout)); // it runs from memory: the kernel file is not needed
        var e = Assert.Throws<VmException>(vm.Reset);
        Assert.Contains("cannot load the guest again", e.Message);
        Assert.Equal(VmState.Crashed, vm.State);
        Assert.Equal(VmExitKind.VmmError, vm.ExitReason!.Kind);
    }
}
