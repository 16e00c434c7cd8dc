using Dirigent.Machine.Introspection;
using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Smp;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;
using AccelKind = Dirigent.Vmm.AccelKind;
using Xunit.Abstractions;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// Watchpoints on a multi-vCPU guest (the tiny SMP guest, <see cref="SmpGuest"/>): every vCPU adds 1 to one shared
/// counter with LOCK XADD, so the values stored are 1, 2, ... n, each exactly once, by whichever vCPU won that
/// increment. A watchpoint on the counter must report every one of those stores, from the vCPU that made it, at the
/// XADD, with the value it stored; one added while the vCPUs run must report every store from its first on (another
/// vCPU's soft TLB or compiled code that kept the page unwatched would leave a gap).
/// </summary>
public class SmpWatchpointTests(ITestOutputHelper output)
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(180);
    private const int PerCpu = 5_000;

    [Theory]
    [InlineData(2, true)]
    [InlineData(2, false)]
    [InlineData(4, true)]
    public void WatchpointSeesEveryStoreOfEveryVcpu(int cpus, bool physical)
    {
        using var dir = new TempDir();
        using var vm = CreateVm(dir, cpus);
        var seen = new List<MemoryAccessEvent>();
        // The guest identity-maps its memory, so the virtual watchpoint covers the same bytes.
        using (vm.Introspection.Hooks.AddWatchpoint(SmpGuest.Counter, 8, WatchKind.Write, physical, (_, e) => { lock (seen) seen.Add(e); }))
            RunToPass(vm);
        int total = cpus * PerCpu;
        Assert.Equal(total, seen.Count);
        // Each value 1..total stored once, by the XADD (one instruction), 8 bytes at the counter.
        Assert.Equal(Enumerable.Range(1, total).Select(v => (ulong)v), seen.Select(e => e.Value).Order());
        Assert.Single(seen.Select(e => e.Rip).Distinct());
        Assert.All(seen, e => Assert.True(e.IsWrite && e.Size == 8 && e.Physical == SmpGuest.Counter && e.Linear == SmpGuest.Counter,
            $"vcpu {e.Vcpu} rip {e.Rip:x} size {e.Size} linear {e.Linear:x} physical {e.Physical:x}"));
        // Every vCPU made exactly its share of the increments, and each reported its own.
        var perVcpu = seen.GroupBy(e => e.Vcpu).ToDictionary(g => g.Key, g => g.Count());
        output.WriteLine(string.Join(", ", perVcpu.OrderBy(kv => kv.Key).Select(kv => $"vcpu{kv.Key}={kv.Value}")));
        Assert.Equal(Enumerable.Range(0, cpus), perVcpu.Keys.Order());
        Assert.All(perVcpu.Values, n => Assert.Equal(PerCpu, n));
        // Each vCPU's own stores are in increasing order (its XADDs are sequential).
        foreach (var g in seen.GroupBy(e => e.Vcpu))
            Assert.True(g.Select(e => e.Value).SequenceEqual(g.Select(e => e.Value).Order()), $"vcpu {g.Key}: stores out of order");
    }

    [SkippableFact]
    public void WatchpointAddedWhileVcpusRunReportsEveryLaterStore()
    {
        // The test says something about every vCPU only if each still had increments to make when the watchpoint
        // went in. The guest starts them together, but a loaded host may leave one vCPU's thread unscheduled while
        // the other makes all its increments (a CI run saw that): such a run is checked for gaps, then tried again.
        const int attempts = 5;
        for (int attempt = 1; attempt <= attempts; attempt++)
        {
            if (ArmWhileRunning(attempt)) return;
        }
        Skip.If(true, $"in {attempts} runs a vCPU (or the whole guest) had finished all its increments before the watchpoint went in " +
                      "(the host did not run both vCPU threads at once while it was armed): nothing to say about the other vCPU");
    }

    /// <summary>One run: arms the watchpoint mid-run and checks the stores; false when a vCPU had already finished then.</summary>
    private bool ArmWhileRunning(int attempt)
    {
        const int cpus = 2;
        using var dir = new TempDir();
        using var vm = CreateVm(dir, cpus, perCpu: 40_000);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        int total = cpus * 40_000;
        // Wait (on the guest's own progress) until the vCPUs are in their increments, then arm the watchpoint.
        bool running = SpinWait.SpinUntil(() => vm.Machine.Memory.ReadU64(SmpGuest.Counter) >= 1_000 || vm.WaitEnded(TimeSpan.Zero), HangGuard);
        Assert.True(running, "the guest never started its increments");
        var seen = new List<MemoryAccessEvent>();
        ulong before, doneAtArming;
        using (vm.Introspection.Hooks.AddWatchpoint(SmpGuest.Counter, 8, WatchKind.Write, physical: true, (_, e) => { lock (seen) seen.Add(e); }))
        {
            // Read once the watchpoint is in: a vCPU not done by now stores at least once more, and must be reported.
            doneAtArming = vm.Machine.Memory.ReadU64(SmpGuest.Done);
            before = vm.Machine.Memory.ReadU64(SmpGuest.Counter);
            Assert.True(vm.WaitEnded(HangGuard), $"no debug-exit within {HangGuard.TotalSeconds} s; console:\n{cap.Text}");
        }
        Assert.Equal(SmpGuest.Pass, vm.ExitReason!.DebugExitValue);
        output.WriteLine($"run {attempt}: armed at counter {before} with {doneAtArming} vCPUs done; {seen.Count} stores reported");
        // Arming is a rendezvous of the vCPUs; a fast host (or one that ran a vCPU alone) may see the guest end first.
        if (before >= (ulong)total) return false;
        // From the first reported store on, every value up to the end was reported exactly once: no vCPU kept storing
        // through a translation made before the watchpoint existed.
        var values = seen.Select(e => e.Value).Order().ToList();
        ulong first = values[0];
        Assert.True(first <= before + 1, $"first reported store {first}, but the counter was {before} when the watchpoint was armed");
        Assert.Equal(Enumerable.Range((int)first, total - (int)first + 1).Select(v => (ulong)v), values);
        if (doneAtArming != 0) return false;
        Assert.Equal(Enumerable.Range(0, cpus), seen.Select(e => e.Vcpu).Distinct().Order());
        return true;
    }

    private static Vm CreateVm(TempDir dir, int cpus, int perCpu = PerCpu) =>
        Vm.Create(new VmSpec
        {
            Kernel = SmpGuest.WriteKernel(dir.Path, SmpWork.LockXadd, cpus, perCpu),
            MemoryBytes = 32UL << 20,
            Cpus = cpus,
            Accel = AccelKind.Emu,
            Serial = "none",
        }, TextWriter.Null);

    private void RunToPass(Vm vm)
    {
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(vm.WaitEnded(HangGuard), $"no debug-exit within {HangGuard.TotalSeconds} s; console:\n{cap.Text}");
        output.WriteLine(cap.Text);
        var exit = vm.ExitReason!;
        Assert.True(exit.Kind == VmExitKind.DebugExit && exit.DebugExitValue == SmpGuest.Pass, $"{exit}; console:\n{cap.Text}");
    }
}
