using Dirigent.Tests.Kvm;
using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;
using Xunit.Abstractions;
using AccelKind = Dirigent.Vmm.AccelKind;

namespace Dirigent.Tests.Smp;

/// <summary>
/// The tiny SMP guest (<see cref="SmpGuest"/>) through the real VM object: the BSP starts its APs with INIT and
/// STARTUP IPIs, then all vCPUs work on shared memory at once. 4 vCPUs on a 2-core host must time-share. Every
/// final value is exact; the guest checks them itself too and exits with <see cref="SmpGuest.Pass"/>.
/// </summary>
public class SmpGuestTests(ITestOutputHelper output)
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(120);
    private const int PerCpu = 20_000;

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void LockXaddCounterIsExact(int cpus)
    {
        string text = RunPassing(SmpWork.LockXadd, cpus, PerCpu);
        Assert.Contains($" counter={(ulong)(cpus * PerCpu):X16}", text);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void LockCmpxchgLoopCounterIsExact(int cpus)
    {
        string text = RunPassing(SmpWork.LockCmpxchg, cpus, PerCpu);
        Assert.Contains($" counter={(ulong)(cpus * PerCpu):X16}", text);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void TicketSpinlockKeepsAPlainCounterExact(int cpus)
    {
        string text = RunPassing(SmpWork.TicketLock, cpus, PerCpu);
        ulong total = (ulong)(cpus * PerCpu);
        Assert.Contains($" guarded={total:X16} tickets={total:X16} serving={total:X16}", text);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Cmpxchg16bPairIsExactAndNeverTorn(int cpus)
    {
        string text = RunPassing(SmpWork.Cmpxchg16b, cpus, PerCpu);
        ulong total = (ulong)(cpus * PerCpu);
        Assert.Contains($" lo={total:X16} hi={total:X16} torn={0:X16}", text);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void FixedAndNmiIpisArriveExactlyOnceEach(int cpus)
    {
        const int rounds = 100;
        string text = RunPassing(SmpWork.Ipis, cpus, rounds);
        Assert.Contains($" fixed0={0:X16} nmi0={0:X16}", text);
        for (int d = 1; d < cpus; d++)
            Assert.Contains($" fixed{d}={SmpGuest.FixedPerRound * rounds:X16} nmi{d}={SmpGuest.NmiPerRound * rounds:X16}", text);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void CrossModifiedCodeRunsTheNewInstructions(int cpus)
    {
        const int rounds = 500;
        string text = RunPassing(SmpWork.CrossModifyingCode, cpus, rounds);
        Assert.Contains($" acks={(ulong)((cpus - 1) * rounds):X16} bad={0:X16}", text);
    }

    /// <summary>The single-vCPU paths of the same guest (no APs to start): the skeleton itself must be sound.</summary>
    [Theory]
    [InlineData(SmpWork.LockXadd)]
    [InlineData(SmpWork.Cmpxchg16b)]
    [InlineData(SmpWork.Ipis)]
    [InlineData(SmpWork.CrossModifyingCode)]
    public void OneVcpuRunsTheSameGuest(SmpWork work) => RunPassing(work, 1, 100);

    [SkippableFact]
    public void LockXaddCounterIsExactOnKvm()
    {
        Differential.RequireKvm();
        const int cpus = 2;
        string text = RunPassing(SmpWork.LockXadd, cpus, PerCpu, AccelKind.Kvm);
        Assert.Contains($" counter={(ulong)(cpus * PerCpu):X16}", text);
    }

    /// <summary>Runs the guest to its debug-exit; asserts it reported PASS and returns its console output.</summary>
    private string RunPassing(SmpWork work, int cpus, int iterations, AccelKind accel = AccelKind.Emu)
    {
        using var dir = new TempDir();
        var spec = new VmSpec
        {
            Kernel = SmpGuest.WriteKernel(dir.Path, work, cpus, iterations),
            MemoryBytes = 32UL << 20,
            Cpus = cpus,
            Accel = accel,
            Serial = "none",
        };
        using var vm = Vm.Create(spec, TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        var started = System.Diagnostics.Stopwatch.StartNew();
        vm.Start();
        bool ended = vm.WaitEnded(HangGuard);
        output.WriteLine($"{started.Elapsed.TotalMilliseconds:F0} ms; console:\n{cap.Text}");
        Assert.True(ended, $"no debug-exit within {HangGuard.TotalSeconds} s; console:\n{cap.Text}");
        var exit = vm.ExitReason!;
        Assert.True(exit.Kind == VmExitKind.DebugExit, $"{exit}; console:\n{cap.Text}");
        Assert.True(exit.DebugExitValue == SmpGuest.Pass, $"exit value 0x{exit.DebugExitValue:x}; console:\n{cap.Text}");
        Assert.Contains($"SMP {work} cpus={cpus}\nup\n", cap.Text);
        Assert.EndsWith("\nPASS\n", cap.Text);
        return cap.Text;
    }
}
