using System.Diagnostics;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Time;
using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;
using Dirigent.Vmm.Snapshots;
using Xunit.Abstractions;

namespace Dirigent.Tests.Smp;

/// <summary>
/// Snapshots, live migration and pause/resume of the tiny SMP guest (<see cref="SmpGuest"/>) on the software CPU,
/// taken while all its vCPUs work on shared memory, or before the boot processor has started its APs. The vCPU
/// activity state (running, halted, waiting for SIPI) travels with the saved CPU state, so a restored or migrated
/// guest must finish with exactly the counts of a run never interrupted; the guest checks them itself as well and
/// exits with <see cref="SmpGuest.Pass"/>.
/// <para>
/// The guest prints nothing while it works, so the tests wait for its progress in VM time: a VM-clock timer reads the
/// shared counter from guest RAM every millisecond of VM time until it reaches a mark (no host sleeps; the hang guard
/// is the only wall-clock bound). Each snapshot's memory file then shows where the counter was when it was saved.
/// </para>
/// <para>
/// How fast the guest gets through its work depends on the host's load (vCPU threads time-share 2 cores with other
/// work), so a test could otherwise find the guest already ended when it wants to save, pause or migrate it. The
/// tests therefore hold the guest's finish line: before the first instruction they lower its <c>Done</c> count (which
/// each vCPU raises with LOCK INC when its share is done, and the BSP waits to equal the vCPU count before it
/// reports) by <see cref="FinishHold"/>, and add it back, with the VM paused, once the last save, pause or migration
/// is behind them. The counts the guest checks are untouched; a vCPU that finished its share meanwhile waits in HLT
/// (the BSP spins), which a snapshot must then carry as it is.
/// </para>
/// </summary>
public class SmpSnapshotTests(ITestOutputHelper output)
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(120);
    /// <summary>How often (VM time) the progress timer looks at the guest's counter.</summary>
    private const long ProgressPollNs = 1_000_000;

    // The guest's shared variables (SmpGuest's layout is the one source of truth).
    private const ulong CounterGpa = SmpGuest.Counter, NowServingGpa = SmpGuest.NowServing, DoneGpa = SmpGuest.Done;
    /// <summary>Taken from the guest's <c>Done</c> count while the test holds its finish line.</summary>
    private const ulong FinishHold = 1UL << 32;

    /// <summary>
    /// Iterations per vCPU: the work then takes from a few hundred milliseconds to seconds on a shared 2-core host,
    /// long enough for the snapshot points at fractions of it to fall mid-work in practice (the held finish line makes
    /// the tests correct either way). The ticket lock with more vCPUs than host cores is bimodal: each vCPU may run
    /// its share alone within one host time slice (fast), or a preempted holder stalls all the others (seconds per
    /// thousand rounds), hence the smaller count for 4.
    /// </summary>
    private static int PerCpu(SmpWork work, int cpus) => work switch
    {
        SmpWork.LockXadd => 1_000_000,
        SmpWork.TicketLock => cpus <= 2 ? 100_000 : 10_000,
        _ => throw new ArgumentOutOfRangeException(nameof(work)),
    };

    /// <summary>The shared variable that counts finished iterations of all vCPUs together.</summary>
    private static ulong ProgressGpa(SmpWork work) => work == SmpWork.TicketLock ? NowServingGpa : CounterGpa;

    // ------------------------------------------------------------------ 1. snapshots mid-work, in a chain

    /// <summary>
    /// Three snapshots in a chain: the guest runs to 1/4 of its work, is saved while running, stopped, restored in a
    /// new VM that runs to 1/2, saved, stopped, restored, and so on; the fourth VM finishes. Each snapshot holds all
    /// vCPUs started (none waits for SIPI) and the counter between its mark and the end. Where the guest outran the
    /// test (the fast mode of the 4-vCPU ticket lock), the later snapshots hold APs halted in their park loop with the
    /// BSP spinning, and those must come through the chain as well.
    /// </summary>
    [Theory]
    [InlineData(SmpWork.LockXadd, 2)]
    [InlineData(SmpWork.LockXadd, 4)]
    [InlineData(SmpWork.TicketLock, 2)]
    [InlineData(SmpWork.TicketLock, 4)]
    public void A_chain_of_snapshots_taken_mid_work_finishes_with_exact_counts(SmpWork work, int cpus)
    {
        using var dir = new TempDir();
        int perCpu = PerCpu(work, cpus);
        ulong total = (ulong)(cpus * perCpu), gpa = ProgressGpa(work);
        var clock = Stopwatch.StartNew();
        var vm = Vm.Create(Spec(dir, work, cpus, perCpu), TextWriter.Null);
        var cap = new ConsoleCapture(vm);
        try
        {
            HoldFinish(vm);
            vm.Start();
            Assert.True(cap.WaitFor(Header(work, cpus) + "up\n", HangGuard), $"the APs never checked in; console:\n{cap.Text}");
            for (int i = 1; i <= 3; i++)
            {
                ulong mark = total * (ulong)i / 4;
                Assert.True(WaitForGuestCount(vm, gpa, mark, HangGuard), $"the count never reached {mark}; console:\n{cap.Text}");
                string snap = dir[$"snap{i}"];
                vm.SaveSnapshot(snap);
                Assert.Equal(VmState.Running, vm.State); // a snapshot of a running VM lets it run on
                vm.Stop();
                // The first VM printed the header only, the restored ones nothing (the guest reports at the end).
                Assert.Equal(i == 1 ? Header(work, cpus) + "up\n" : "", cap.Text);
                cap.Dispose();
                vm.Dispose();

                ulong saved = ReadSnapshotU64(snap, gpa);
                var acts = Vm.ReadManifest(snap).Cpus.Select(c => c.Activity).ToArray();
                output.WriteLine($"snapshot {i} at {clock.ElapsedMilliseconds} ms: count {saved} of {total}, vCPUs {string.Join(",", acts)}");
                Assert.InRange(saved, mark, total);
                Assert.Equal(cpus, acts.Length);
                // The BSP works, then spins for the others: never halted. An AP that finished its share early parks
                // in HLT; none may be back to waiting for a SIPI.
                Assert.Equal(VcpuActivity.Running, acts[0]);
                Assert.DoesNotContain(VcpuActivity.WaitForSipi, acts);

                vm = Vm.Restore(snap, null, TextWriter.Null);
                Assert.Equal(VmState.Paused, vm.State);
                if (i == 3) ReleaseFinish(vm);
                cap = new ConsoleCapture(vm);
                vm.Start();
            }
            string report = FinishPassing(vm, cap, work, cpus, perCpu);
            Assert.StartsWith(" ", report); // the report only: the header was printed before the first snapshot
            output.WriteLine($"{clock.ElapsedMilliseconds} ms in all");
        }
        finally
        {
            cap.Dispose();
            vm.Dispose();
        }
    }

    // ------------------------------------------------------------------ 2. snapshots while APs wait for SIPI

    /// <summary>
    /// A VM saved before it ever ran: the BSP at the kernel entry, every AP waiting for a SIPI with none latched.
    /// Restored, the APs stay waiting until the guest's own INIT/STARTUP IPIs start them; the run is exact.
    /// </summary>
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void A_snapshot_taken_before_start_keeps_the_aps_waiting_for_sipi_until_the_guest_starts_them(int cpus)
    {
        const SmpWork work = SmpWork.LockXadd;
        const int perCpu = 20_000;
        using var dir = new TempDir();
        string snap = dir["created"];
        using (var vm = Vm.Create(Spec(dir, work, cpus, perCpu), TextWriter.Null))
        {
            vm.SaveSnapshot(snap);
            Assert.Equal(VmState.Created, vm.State);
        }
        var saved = Vm.ReadManifest(snap).Cpus;
        Assert.Equal(cpus, saved.Count);
        Assert.Equal(VcpuActivity.Running, saved[0].Activity);
        for (int k = 1; k < cpus; k++)
        {
            Assert.Equal(VcpuActivity.WaitForSipi, saved[k].Activity);
            Assert.Equal(-1, saved[k].SipiVector);
        }
        // The same snapshot twice: it is not consumed, and both runs are exact.
        for (int run = 0; run < 2; run++)
        {
            using var vm = Vm.Restore(snap, null, TextWriter.Null);
            Assert.Equal(VmState.Paused, vm.State);
            for (int k = 1; k < cpus; k++) Assert.Equal(VcpuActivity.WaitForSipi, vm.VcpuList[k].GetState().Activity);
            using var cap = new ConsoleCapture(vm);
            vm.Start();
            string report = FinishPassing(vm, cap, work, cpus, perCpu);
            Assert.StartsWith(Header(work, cpus) + "up\n", report);
        }
    }

    /// <summary>
    /// A VM paused and saved while its BSP starts the APs (right after it printed its header, which it does just
    /// before INIT and the two STARTUPs): where exactly each AP is then is up to the host's scheduling (waiting for
    /// SIPI, a SIPI latched, in the trampoline, checked in), and whichever it is, the restored run and the original
    /// resumed after the save both finish exactly.
    /// </summary>
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void A_snapshot_taken_while_the_bsp_starts_the_aps_finishes_exactly_and_so_does_the_original(int cpus)
    {
        const SmpWork work = SmpWork.LockXadd;
        const int perCpu = 20_000;
        using var dir = new TempDir();
        string snap = dir["bringup"];
        string before;
        using (var vm = Vm.Create(Spec(dir, work, cpus, perCpu), TextWriter.Null))
        using (var cap = new ConsoleCapture(vm))
        {
            HoldFinish(vm);
            vm.Start();
            Assert.True(cap.WaitFor(Header(work, cpus), HangGuard), $"no header; console:\n{cap.Text}");
            vm.Pause();
            vm.SaveSnapshot(snap);
            Assert.Equal(VmState.Paused, vm.State);
            before = cap.Text;
            ReleaseFinish(vm);
            vm.Resume();
            string all = FinishPassing(vm, cap, work, cpus, perCpu);
            Assert.StartsWith(Header(work, cpus) + "up\n", all);
        }
        var saved = Vm.ReadManifest(snap).Cpus;
        output.WriteLine($"saved after \"{before.Replace("\n", "\\n")}\": " +
            string.Join(", ", saved.Select(s => $"{s.Activity} sipi={s.SipiVector} rip={s.Rip:x}")));
        Assert.Equal(VcpuActivity.Running, saved[0].Activity);
        using (var vm = Vm.Restore(snap, null, TextWriter.Null))
        using (var cap = new ConsoleCapture(vm))
        {
            ReleaseFinish(vm);
            vm.Start();
            string after = FinishPassing(vm, cap, work, cpus, perCpu);
            Assert.Equal(Header(work, cpus) + "up\n", before + after[..after.IndexOf(" counter=", StringComparison.Ordinal)]);
        }
    }

    // ------------------------------------------------------------------ 3. live migration

    /// <summary>
    /// Live migration over a Unix socket while all vCPUs work (as MigrationTests does for the one-vCPU guest): the
    /// source ends as Migrated, the target arrives paused with the count between the mark and the end, and finishes.
    /// </summary>
    [Theory]
    [InlineData(SmpWork.LockXadd, 2)]
    [InlineData(SmpWork.LockXadd, 4)]
    [InlineData(SmpWork.TicketLock, 2)]
    public void A_running_smp_guest_migrates_and_finishes_with_exact_counts_on_the_target(SmpWork work, int cpus)
    {
        using var dir = new TempDir();
        // Four times the usual work, moved at 1/16 of it: pre-copy takes a few hundred milliseconds of host time
        // (a new VM, the first pass over RAM), and the guest should still be at work when it ends.
        int perCpu = 4 * PerCpu(work, cpus);
        ulong total = (ulong)(cpus * perCpu), gpa = ProgressGpa(work), mark = total / 16;
        string uri = $"unix:{dir["mig.sock"]}";
        var listening = new ManualResetEventSlim();
        Vm? target = null;
        Exception? targetError = null;
        var t = new Thread(() =>
        {
            try { target = Vm.Incoming(uri, null, TextWriter.Null, CancellationToken.None, _ => listening.Set()); }
            catch (Exception e) { targetError = e; listening.Set(); }
        });
        t.Start();
        Assert.True(listening.Wait(HangGuard));
        using (var source = Vm.Create(Spec(dir, work, cpus, perCpu), TextWriter.Null))
        using (var cap = new ConsoleCapture(source))
        {
            HoldFinish(source);
            source.Start();
            Assert.True(cap.WaitFor(Header(work, cpus) + "up\n", HangGuard), $"the APs never checked in; console:\n{cap.Text}");
            Assert.True(WaitForGuestCount(source, gpa, mark, HangGuard), $"the count never reached {mark}");
            source.Migrate(uri);
            Assert.True(t.Join(HangGuard));
            Assert.Null(targetError);
            Assert.Equal(VmState.Stopped, source.State);
            Assert.Equal(VmExitKind.Migrated, source.ExitReason!.Kind);
            Assert.Equal(Header(work, cpus) + "up\n", cap.Text);
            var stats = source.LastMigration!;
            output.WriteLine($"migration: {stats}");
            Assert.True(stats.Rounds >= 2, $"pre-copy made {stats.Rounds} rounds");
        }
        using (target)
        {
            Assert.Equal(VmState.Paused, target!.State);
            ulong arrived = target.Machine.Memory.ReadU64(gpa);
            var acts = target.VcpuList.Select(v => v.GetState().Activity).ToArray();
            output.WriteLine($"arrived with count {arrived} of {total}, vCPUs {string.Join(",", acts)}");
            Assert.InRange(arrived, mark, total);
            Assert.Equal(VcpuActivity.Running, acts[0]);
            Assert.DoesNotContain(VcpuActivity.WaitForSipi, acts);
            ReleaseFinish(target);
            using var cap = new ConsoleCapture(target);
            target.Start();
            string report = FinishPassing(target, cap, work, cpus, perCpu);
            Assert.StartsWith(" ", report);
        }
    }

    // ------------------------------------------------------------------ 4. pause/resume

    /// <summary>
    /// Twenty pauses spread over the work, each at a higher count: while paused the count stands still and every vCPU
    /// is stopped (none waiting for SIPI); after each resume the work goes on, and the end is exact.
    /// </summary>
    [Theory]
    [InlineData(SmpWork.LockXadd, 2)]
    [InlineData(SmpWork.LockXadd, 4)]
    [InlineData(SmpWork.TicketLock, 2)]
    [InlineData(SmpWork.TicketLock, 4)]
    public void Twenty_pauses_and_resumes_during_the_work_leave_the_counts_exact(SmpWork work, int cpus)
    {
        const int pauses = 20;
        using var dir = new TempDir();
        int perCpu = PerCpu(work, cpus);
        ulong total = (ulong)(cpus * perCpu), gpa = ProgressGpa(work);
        using var vm = Vm.Create(Spec(dir, work, cpus, perCpu), TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        HoldFinish(vm);
        vm.Start();
        Assert.True(cap.WaitFor(Header(work, cpus) + "up\n", HangGuard), $"the APs never checked in; console:\n{cap.Text}");
        ulong previous = 0;
        for (int i = 1; i <= pauses; i++)
        {
            // Marks spread over the first part of the work: the guest also runs on between a mark and the pause.
            ulong mark = total * (ulong)i / 48;
            Assert.True(WaitForGuestCount(vm, gpa, mark, HangGuard), $"pause {i}: the count never reached {mark}");
            vm.Pause();
            Assert.Equal(VmState.Paused, vm.State);
            ulong atPause = vm.Machine.Memory.ReadU64(gpa);
            var acts = vm.VcpuList.Select(v => v.GetState().Activity).ToArray();
            Assert.Equal(atPause, vm.Machine.Memory.ReadU64(gpa)); // stopped vCPUs add nothing
            Assert.InRange(atPause, Math.Max(mark, previous), total);
            Assert.Equal(VcpuActivity.Running, acts[0]);
            Assert.DoesNotContain(VcpuActivity.WaitForSipi, acts);
            previous = atPause;
            if (i == pauses) ReleaseFinish(vm);
            vm.Resume();
        }
        output.WriteLine($"last pause at count {previous} of {total}");
        string all = FinishPassing(vm, cap, work, cpus, perCpu);
        Assert.StartsWith(Header(work, cpus) + "up\n ", all);
    }

    // ------------------------------------------------------------------ helpers

    private static string Header(SmpWork work, int cpus) => $"SMP {work} cpus={cpus}\n";

    private static VmSpec Spec(TempDir dir, SmpWork work, int cpus, int perCpu) => new()
    {
        Kernel = SmpGuest.WriteKernel(dir.Path, work, cpus, perCpu),
        MemoryBytes = 32UL << 20,
        Cpus = cpus,
        Accel = AccelKind.Emu,
        Serial = "none",
    };

    /// <summary>Before the VM first runs: the guest cannot end (see the class summary) until <see cref="ReleaseFinish"/>.</summary>
    private static void HoldFinish(Vm vm)
    {
        Assert.Equal(VmState.Created, vm.State);
        Assert.Equal(0UL, vm.Machine.Memory.ReadU64(DoneGpa));
        vm.Machine.Memory.WriteU64(DoneGpa, unchecked(0 - FinishHold));
    }

    /// <summary>On a paused VM (no vCPU runs, so a plain read-modify-write is safe): lets the guest finish.</summary>
    private static void ReleaseFinish(Vm vm)
    {
        Assert.Equal(VmState.Paused, vm.State);
        ulong done = vm.Machine.Memory.ReadU64(DoneGpa);
        Assert.True(unchecked(done + FinishHold) <= (ulong)vm.Spec.Cpus, $"Done = 0x{done:x}: the finish line was not held");
        vm.Machine.Memory.WriteU64(DoneGpa, unchecked(done + FinishHold));
    }

    /// <summary>
    /// Waits for the running <paramref name="vm"/>'s guest to count to at least <paramref name="atLeast"/> at
    /// <paramref name="gpa"/>: a VM-clock timer re-reads it every <see cref="ProgressPollNs"/> of VM time (it does not
    /// fire while the VM is paused). False when the VM ended first or the hang guard ran out.
    /// </summary>
    private static bool WaitForGuestCount(Vm vm, ulong gpa, ulong atLeast, TimeSpan guard)
    {
        var reached = new ManualResetEventSlim();
        var clock = vm.Machine.Clock;
        var mem = vm.Machine.Memory;
        var gate = new object();
        bool stop = false;
        VirtualClock.TimerEntry? entry = null;
        void Check()
        {
            // Under the gate: once the waiter has left, no callback reads guest RAM (the VM may be disposed then).
            lock (gate)
            {
                if (stop) return;
                if (mem.ReadU64(gpa) >= atLeast) { reached.Set(); return; }
                entry = clock.Schedule(clock.NowNs + ProgressPollNs, Check);
            }
        }
        lock (gate) entry = clock.Schedule(clock.NowNs, Check);
        int got = WaitHandle.WaitAny([reached.WaitHandle, ((IAsyncResult)vm.Completion).AsyncWaitHandle], guard);
        lock (gate)
        {
            stop = true;
            entry?.Cancel();
        }
        return got == 0;
    }

    /// <summary>A little-endian u64 of guest RAM as a snapshot's memory file holds it (RAM below 4 GiB: file offset = GPA).</summary>
    private static ulong ReadSnapshotU64(string snap, ulong gpa)
    {
        using var f = File.OpenHandle(Path.Combine(snap, SnapshotFiles.MemoryFile));
        Span<byte> b = stackalloc byte[8];
        Assert.Equal(8, RandomAccess.Read(f, b, (long)gpa));
        return BitConverter.ToUInt64(b);
    }

    /// <summary>
    /// Waits for the guest's debug-exit, asserts it passed with the exact counts of <paramref name="work"/>, and
    /// returns what <paramref name="cap"/> saw.
    /// </summary>
    private string FinishPassing(Vm vm, ConsoleCapture cap, SmpWork work, int cpus, int perCpu)
    {
        bool ended = vm.WaitEnded(HangGuard);
        string text = cap.Text;
        output.WriteLine($"console:\n{text}");
        Assert.True(ended, $"no debug-exit within {HangGuard.TotalSeconds} s; console:\n{text}");
        var exit = vm.ExitReason!;
        Assert.True(exit.Kind == VmExitKind.DebugExit, $"{exit}; console:\n{text}");
        Assert.True(exit.DebugExitValue == SmpGuest.Pass, $"exit value 0x{exit.DebugExitValue:x}; console:\n{text}");
        Assert.EndsWith("\nPASS\n", text);
        ulong total = (ulong)(cpus * perCpu);
        if (work == SmpWork.TicketLock)
            Assert.Contains($" guarded={total:X16} tickets={total:X16} serving={total:X16}", text);
        else
            Assert.Contains($" counter={total:X16}", text);
        return text;
    }
}
