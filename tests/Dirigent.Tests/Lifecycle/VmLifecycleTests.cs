using Dirigent.Tests.Storage;
using Dirigent.Vmm;

namespace Dirigent.Tests.Lifecycle;

/// <summary>The embeddable VM object: states, pause/resume with VM time frozen, stop, several VMs at once.</summary>
public class VmLifecycleTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    [Fact]
    public void A_guest_runs_to_its_debug_exit_and_the_vm_reports_why_it_ended()
    {
        using var dir = new TempDir();
        using var vm = Vm.Create(TinyGuest.Spec(TinyGuest.WriteKernel(dir.Path, ticks: 3, spin: 1000)), TextWriter.Null);
        Assert.Equal(VmState.Created, vm.State);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(vm.WaitEnded(Timeout));
        Assert.Equal(VmState.Stopped, vm.State);
        Assert.Equal(VmExitKind.DebugExit, vm.ExitReason!.Kind);
        Assert.Equal("ABC=", cap.Text);
        Assert.Equal("ABC=", System.Text.Encoding.ASCII.GetString(vm.Console.Recent()));
        Assert.Throws<VmStateException>(vm.Resume);
    }

    [Fact]
    public void Pause_freezes_vm_time_and_the_guest_and_resume_continues_to_the_same_result()
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path);
        int expected;
        string expectedOut;
        using (var straight = Vm.Create(TinyGuest.Spec(kernel), TextWriter.Null))
        using (var cap = new ConsoleCapture(straight))
        {
            straight.Start();
            Assert.True(straight.WaitEnded(Timeout));
            expected = straight.ExitReason!.DebugExitValue;
            expectedOut = cap.Text;
        }

        using var vm = Vm.Create(TinyGuest.Spec(kernel), TextWriter.Null);
        using var cap2 = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap2.WaitFor("B", Timeout));
        vm.Pause();
        Assert.Equal(VmState.Paused, vm.State);
        var t0 = vm.Uptime;
        string out0 = cap2.Text;
        ulong instret = vm.VcpuList[0].InstructionsRetired;
        // Nothing runs while paused: let host time pass by waiting on something that never comes.
        Assert.False(vm.WaitEnded(TimeSpan.FromMilliseconds(200)));
        Assert.Equal(t0, vm.Uptime);
        Assert.Equal(out0, cap2.Text);
        Assert.Equal(instret, vm.VcpuList[0].InstructionsRetired);
        Assert.Throws<VmStateException>(vm.Pause);
        vm.Resume();
        Assert.Equal(VmState.Running, vm.State);
        Assert.True(vm.WaitEnded(Timeout));
        Assert.Equal(expectedOut, cap2.Text);
        Assert.Equal(expected, vm.ExitReason!.DebugExitValue);
        Assert.True(vm.Uptime >= t0);
    }

    [Fact]
    public void Stop_ends_a_running_vm_with_a_typed_reason()
    {
        using var dir = new TempDir();
        using var vm = Vm.Create(TinyGuest.Spec(TinyGuest.WriteKernel(dir.Path, ticks: 1000)), TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        var exited = new TaskCompletionSource<VmExitReason>();
        vm.Exited += r => exited.TrySetResult(r);
        vm.Start();
        Assert.True(cap.WaitFor("A", Timeout));
        vm.Stop();
        Assert.Equal(VmState.Stopped, vm.State);
        Assert.True(exited.Task.WaitDone(Timeout));
        Assert.Equal(VmExitKind.StoppedByRequest, vm.ExitReason!.Kind);
        Assert.Throws<VmStateException>(vm.Start);
    }

    [Fact]
    public void Three_vms_run_at_once_in_one_process_and_each_gets_its_own_result()
    {
        using var dir = new TempDir();
        var kernels = new[] { (3, 2000), (5, 3000), (4, 1000) }
            .Select((t, i) =>
            {
                string p = Path.Combine(dir.Path, $"k{i}.bin");
                File.WriteAllBytes(p, TinyGuest.Build(t.Item1, t.Item2));
                return (p, t.Item1);
            }).ToArray();
        var vms = kernels.Select(k => Vm.Create(TinyGuest.Spec(k.p), TextWriter.Null)).ToArray();
        var caps = vms.Select(v => new ConsoleCapture(v)).ToArray();
        try
        {
            foreach (var v in vms) v.Start();
            for (int i = 0; i < vms.Length; i++)
            {
                Assert.True(vms[i].WaitEnded(Timeout));
                Assert.Equal(VmExitKind.DebugExit, vms[i].ExitReason!.Kind);
                Assert.Equal(new string(Enumerable.Range(0, kernels[i].Item2).Select(n => (char)('A' + n)).ToArray()) + "=", caps[i].Text);
            }
        }
        finally
        {
            foreach (var c in caps) c.Dispose();
            foreach (var v in vms) v.Dispose();
        }
    }
}

/// <summary>A guest reboot resets every component: the machine after reset equals a freshly built one.</summary>
public class VmResetTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    private static string Normalize(string json)
    {
        var o = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        foreach (var k in o.Select(kv => kv.Key).Where(k => k.StartsWith("ns", StringComparison.Ordinal) || k.Contains("Ns", StringComparison.Ordinal)
                     || k.Contains("time", StringComparison.OrdinalIgnoreCase) || k.Contains("ticks", StringComparison.OrdinalIgnoreCase)).ToList())
            o.Remove(k);
        return o.ToJsonString();
    }

    [SkippableTheory]
    [InlineData(AccelKind.Emu)]
    [InlineData(AccelKind.Kvm)]
    public void After_reset_every_component_and_the_boot_vcpu_equal_a_fresh_machine(AccelKind accel)
    {
        if (accel == AccelKind.Kvm) Dirigent.Tests.Kvm.Differential.RequireKvm();
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 2000);
        using var fresh = Vm.Create(TinyGuest.Spec(kernel, accel), TextWriter.Null);
        var expected = fresh.CaptureManifest();
        using var vm = Vm.Create(TinyGuest.Spec(kernel, accel), TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor("C", Timeout));
        vm.Pause();
        vm.Reset();
        Assert.Equal(VmState.Paused, vm.State);
        Assert.Equal(1, vm.Reboots);
        var actual = vm.CaptureManifest();
        Assert.Equal(expected.Components.Keys.Order(), actual.Components.Keys.Order());
        foreach (var (name, unit) in expected.Components)
        {
            // VM time runs on across a reboot (as a PC's clock does), and so does the RTC's wall-clock time; what
            // components record relative to VM time ("ns since ...") and the RTC's time of day are left out.
            if (name == "clock") continue;
            string f = Normalize(unit.State.GetRawText()), r = Normalize(actual.Components[name].State.GetRawText());
            Assert.True(f == r, $"{name} after reset differs from a fresh machine:\n fresh: {f}\n reset: {r}");
        }
        var c0 = expected.Cpus[0];
        var c1 = actual.Cpus[0];
        c0.Msrs.Remove(0x10); c1.Msrs.Remove(0x10); // the TSC counts on
        Assert.Equal(System.Text.Json.JsonSerializer.Serialize(c0, Dirigent.Vmm.Snapshots.SnapshotFiles.Json),
            System.Text.Json.JsonSerializer.Serialize(c1, Dirigent.Vmm.Snapshots.SnapshotFiles.Json));
        // And it runs the guest again from the start.
        vm.Resume();
        Assert.True(cap.WaitFor("CAB", Timeout) || cap.Text.Contains("AB"));
        vm.Stop();
    }
}
