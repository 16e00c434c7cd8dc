using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Vmm;

namespace Dirigent.Tests.Boot;

/// <summary>
/// The default guest (Debian's stock kernel) with several vCPUs on the software CPU: the kernel brings every AP up
/// through INIT/STARTUP IPIs, sees them all, runs jobs on them at once with results identical to the host's, and
/// logs nothing alarming (no lockups, stalls, TSC warps, oopses). 4 vCPUs on this 2-core host also checks that
/// time-sharing works: vCPUs that outnumber host cores still make progress (PAUSE yields, HLT sleeps).
/// </summary>
[Trait("Category", "Boot")]
public class SmpLinuxTests
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(6);

    /// <summary>What the jobs hash: `seq FIRST 7 LAST` output, distinct per job and reproducible on the host.</summary>
    private const int SeqLast = 300_000;

    /// <summary>dmesg lines that mean the SMP guest is unwell.</summary>
    private static readonly string[] BadDmesg =
    [
        "BUG:", "WARNING:", "Oops", "Call Trace", "soft lockup", "hard LOCKUP", "rcu_sched self-detected stall",
        "rcu: INFO", "detected stall", "TSC synchronization", "unstable", "Unstable", "failed to boot", "Not responding",
        "APIC error", "spurious APIC interrupt", "IRQ lockup",
    ];

    private static VmSpec Config(int cpus, string script) => new()
    {
        Kernel = s_image.Value.Kernel,
        Initrds = [s_image.Value.Initramfs],
        Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
        MemoryBytes = 256UL << 20,
        Cpus = cpus,
    };

    private static string HostHash(int first)
    {
        var sb = new StringBuilder();
        for (int v = first; v <= SeqLast; v += 7) sb.Append(v).Append('\n');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.ASCII.GetBytes(sb.ToString())));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void KernelBringsUpEveryVcpuAndRunsJobsOnThemAtOnce(int cpus)
    {
        // One job per vCPU, started together; each prints its hash and the CPU it finished on.
        string script = $$"""
            echo NPROC=$(nproc)
            echo CPUINFO=$(grep -c ^processor /proc/cpuinfo)
            echo ONLINE=$(cat /sys/devices/system/cpu/online)
            for i in $(seq 1 {{cpus}}); do
              ( h=$(seq $i 7 {{SeqLast}} | sha256sum); echo "JOB$i=${h%% *}" ) &
            done
            wait
            grep -H . /proc/interrupts | grep -E 'LOC|RES|CAL|TLB' | tr -s ' '
            echo DMESG-BEGIN; dmesg; echo DMESG-END
            poweroff -f
            """;
        var r = new GuestRunner();
        int rc = r.Run(Config(cpus, script), Timeout);
        string o = r.Output;
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}");
        Assert.Contains($"NPROC={cpus}", o);
        Assert.Contains($"CPUINFO={cpus}", o);
        Assert.Contains($"ONLINE=0-{cpus - 1}", o);
        for (int i = 1; i <= cpus; i++)
            Assert.Contains($"JOB{i}={HostHash(i)}", o);
        int b = o.IndexOf("DMESG-BEGIN", StringComparison.Ordinal), e = o.IndexOf("DMESG-END", StringComparison.Ordinal);
        Assert.True(b >= 0 && e > b, "dmesg output missing");
        string dmesg = o[b..e];
        Assert.Matches(new Regex($@"smp: Brought up 1 node, {cpus} CPUs"), dmesg);
        foreach (var bad in BadDmesg)
            Assert.False(dmesg.Contains(bad, StringComparison.Ordinal), $"dmesg contains '{bad}':\n{dmesg}");
    }

    [Fact]
    public void FourVcpusBusyForSixtySecondsOnTwoHostCoresReportNoLockupsOrStalls()
    {
        // Four user-space spinners plus the kernel's own work (timers, RCU, the watchdog threads) on every vCPU for 60 s
        // of VM time: with more vCPUs than host cores, every vCPU thread must still get its turn well within the soft
        // lockup (20 s) and RCU stall (21 s) thresholds. A 5th process counts ticks, so time demonstrably passed.
        const string script = """
            pids=
            for i in 1 2 3 4; do ( while :; do :; done ) & pids="$pids $!"; done
            start=$(cut -d. -f1 /proc/uptime)
            while [ $(( $(cut -d. -f1 /proc/uptime) - start )) -lt 60 ]; do sleep 5; done
            kill $pids
            echo BUSY-DONE=$(( $(cut -d. -f1 /proc/uptime) - start ))
            echo DMESG-BEGIN; dmesg; echo DMESG-END
            poweroff -f
            """;
        var r = new GuestRunner();
        int rc = r.Run(Config(4, script), Timeout);
        string o = r.Output;
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}");
        var done = Regex.Match(o, @"BUSY-DONE=(\d+)");
        Assert.True(done.Success && int.Parse(done.Groups[1].Value) >= 60, GuestRunner.Tail(o));
        int b = o.IndexOf("DMESG-BEGIN", StringComparison.Ordinal), e = o.IndexOf("DMESG-END", StringComparison.Ordinal);
        Assert.True(b >= 0 && e > b, "dmesg output missing");
        string dmesg = o[b..e];
        foreach (var bad in BadDmesg)
            Assert.False(dmesg.Contains(bad, StringComparison.Ordinal), $"dmesg contains '{bad}':\n{dmesg}");
    }
}
