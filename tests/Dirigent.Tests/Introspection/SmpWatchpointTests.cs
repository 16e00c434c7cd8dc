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

    [Fact]
    public void WatchpointAddedWhileVcpusRunReportsEveryLaterStore()
    {
        const int cpus = 2;
        using var dir = new TempDir();
        using var vm = CreateVm(dir, cpus, perCpu: 40_000);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        int total = cpus * 40_000;
        // Wait (on the guest's own progress) until both vCPUs are in their increments, then arm the watchpoint.
        bool running = SpinWait.SpinUntil(() => vm.Machine.Memory.ReadU64(SmpGuest.Counter) >= 1_000 || vm.WaitEnded(TimeSpan.Zero), HangGuard);
        Assert.True(running, "the guest never started its increments");
        var seen = new List<MemoryAccessEvent>();
        ulong before;
        using (vm.Introspection.Hooks.AddWatchpoint(SmpGuest.Counter, 8, WatchKind.Write, physical: true, (_, e) => { lock (seen) seen.Add(e); }))
        {
            before = vm.Machine.Memory.ReadU64(SmpGuest.Counter);
            Assert.True(vm.WaitEnded(HangGuard), $"no debug-exit within {HangGuard.TotalSeconds} s; console:\n{cap.Text}");
        }
        Assert.Equal(SmpGuest.Pass, vm.ExitReason!.DebugExitValue);
        output.WriteLine($"armed at counter {before}; {seen.Count} stores reported");
        Assert.True(before < (ulong)total, $"the guest finished ({before}) before the watchpoint was armed: nothing was tested");
        // From the first reported store on, every value up to the end was reported exactly once: no vCPU kept storing
        // through a translation made before the watchpoint existed.
        var values = seen.Select(e => e.Value).Order().ToList();
        ulong first = values[0];
        Assert.True(first <= before + 1, $"first reported store {first}, but the counter was {before} when the watchpoint was armed");
        Assert.Equal(Enumerable.Range((int)first, total - (int)first + 1).Select(v => (ulong)v), values);
        Assert.Equal(Enumerable.Range(0, cpus), seen.Select(e => e.Vcpu).Distinct().Order());
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
