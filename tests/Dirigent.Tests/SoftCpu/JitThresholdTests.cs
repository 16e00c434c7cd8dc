using Dirigent.Accel.Emu.Jit;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// When the compiled tier queues a block: after <see cref="JitCompiler.UserThreshold"/> interpreted runs at a
/// lower-half address (user space on 64-bit systems), after <see cref="JitCompiler.Threshold"/> in the upper half
/// (the kernel). The same loop runs at both addresses (the upper one maps the same page through PML4 entry 511).
/// </summary>
public class JitThresholdTests
{
    private const ulong Page = 0x18_0000, UpperAlias = 0xFFFF_FF80_0000_0000;

    /// <summary>Runs a one-block loop <paramref name="runs"/> times at <paramref name="at"/>; returns how many blocks were queued.</summary>
    private static long QueuedAfter(ulong at, int runs)
    {
        using var vm = new TestVm(jit: JitMode.On);
        var a = new Assembler(64);
        Label loop = a.CreateLabel();
        a.mov(ecx, runs + 1);
        a.Label(ref loop);
        a.dec(ecx);          // the loop's own block (from the second pass on): exactly `runs` runs
        a.jnz(loop);
        a.hlt();
        Emit(vm, a, Page);
        var start = new Assembler(64);
        start.mov(rax, at);
        start.jmp(rax);
        Emit(vm, start, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        vm.Vm.Memory.WriteU64(BootState.Pml4Addr + 511 * 8, vm.Vm.Memory.ReadU64(BootState.Pml4Addr));
        vm.RunToHlt();
        return vm.Accel.CompiledTier!.BlocksQueued;
    }

    /// <summary>The thresholds a VM's compiled tier gets (defaults, or the environment's overrides); Off starts no thread.</summary>
    private static (int Kernel, int User) Thresholds()
    {
        using var t = new JitCompiler(JitMode.Off);
        return (t.Threshold, t.UserThreshold);
    }

    [Fact]
    public void A_user_half_block_is_queued_at_the_user_threshold()
    {
        int user = Thresholds().User;
        Assert.Equal(0, QueuedAfter(Page, user - 2));
        Assert.Equal(1, QueuedAfter(Page, user + 10));
    }

    [Fact]
    public void A_kernel_half_block_waits_for_the_kernel_threshold()
    {
        var (kernel, user) = Thresholds();
        Assert.True(user < kernel, $"user threshold {user}, kernel threshold {kernel}");
        Assert.Equal(0, QueuedAfter(UpperAlias + Page, user + 10));
        Assert.Equal(0, QueuedAfter(UpperAlias + Page, kernel - 2));
        Assert.Equal(1, QueuedAfter(UpperAlias + Page, kernel + 10));
    }
}
