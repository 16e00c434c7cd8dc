using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using static Dirigent.Tests.SoftCpu.LifecycleTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// The per-vCPU safe-point queue: work for a vCPU runs on its own thread at a block boundary while it executes, on the
/// requester's thread while it does not (not in Run, asleep in HLT, or itself waiting for another vCPU), inline when
/// asked from its own thread; two vCPUs asking each other at the same moment do not deadlock.
/// </summary>
public class SafePointTests
{
    private const ulong PostA = 0xE000_3000, PostB = 0xE000_4000;

    /// <summary>64-bit guest: a store to [rbx], then cli; hlt (a sleep, not the end of the run, with two vCPUs).</summary>
    private static void StoreThenPark(TestVm vm, Cpu cpu, ulong rbx)
    {
        var s = BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop);
        s.Gpr[3] = rbx;
        cpu.SetState(s);
    }

    private static void LoadStoreThenPark(TestVm vm) => vm.Load(TestVm.CodeBase, 64, a =>
    {
        a.mov(__dword_ptr[rbx], eax);
        a.cli();
        a.hlt();
    });

    /// <summary>On a store, waits until both vCPUs are in their handlers, then runs work on the other vCPU.</summary>
    private sealed class CrossPost(Barrier barrier, Func<Cpu> other, int[] ranOn) : IMmioDevice
    {
        public ulong Read(ulong offset, int size) => 0;
        public void Write(ulong offset, int size, ulong value)
        {
            if (!barrier.SignalAndWait(10_000)) return; // hang guard: never throw on a vCPU thread
            other().RunAtSafePoint(c => ranOn[c.Index] = Environment.CurrentManagedThreadId);
        }
    }

    [Fact]
    public void TwoVcpusAskingEachOtherAtOnceDoNotDeadlock()
    {
        using var vm = new TestVm();
        var a = vm.Cpu;
        var b = (Cpu)vm.Accel.CreateVcpu(1);
        var ranOn = new int[2];
        using var barrier = new Barrier(2);
        vm.Vm.Mmio.Register(PostA, 0x1000, new CrossPost(barrier, () => b, ranOn));
        vm.Vm.Mmio.Register(PostB, 0x1000, new CrossPost(barrier, () => a, ranOn));
        LoadStoreThenPark(vm);
        StoreThenPark(vm, a, PostA);
        StoreThenPark(vm, b, PostB);
        using var aParked = new ManualResetEventSlim(false);
        using var bParked = new ManualResetEventSlim(false);
        a.OnIdle = aParked.Set;
        b.OnIdle = bParked.Set;
        var ta = StartOn(a, out var ra);
        var tb = StartOn(b, out var rb);
        try
        {
            Await(aParked, "vCPU 0 to finish its request and park");
            Await(bParked, "vCPU 1 to finish its request and park");
        }
        finally
        {
            StopAndJoin(a, ta);
            StopAndJoin(b, tb);
        }
        Assert.Equal(VcpuExitReason.Stopped, ra[0].Reason);
        Assert.Equal(VcpuExitReason.Stopped, rb[0].Reason);
        // Each one's work ran while it waited for the other: on one of the two vCPU threads.
        var threads = new[] { ta.ManagedThreadId, tb.ManagedThreadId };
        Assert.Contains(ranOn[0], threads);
        Assert.Contains(ranOn[1], threads);
    }

    [Fact]
    public void WorkRunsOnTheVcpuThreadWhileItExecutesAndOnTheRequesterOtherwise()
    {
        using var vm = new TestVm();
        var cpu = vm.Cpu;
        var tick = new TickDevice();
        vm.Vm.Mmio.Register(TickAddr, 0x1000, tick);
        vm.Load(TestVm.CodeBase, 64, a =>
        {
            var top = a.CreateLabel();
            a.mov(rbx, TickAddr);
            a.Label(ref top);
            a.mov(__dword_ptr[rbx], eax);
            a.cmp(__byte_ptr[SystemTestKit.Flag], 0);
            a.je(top);
            a.sti();
            var park = a.CreateLabel();
            a.Label(ref park);
            a.hlt();
            a.jmp(park);
        });
        cpu.SetState(BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));

        // Not in Run: the requester does it.
        int ranOn = 0;
        cpu.RunAtSafePoint(_ => ranOn = Environment.CurrentManagedThreadId);
        Assert.Equal(Environment.CurrentManagedThreadId, ranOn);

        using var idle = new ManualResetEventSlim(false);
        cpu.OnIdle = idle.Set;
        var t = StartOn(cpu, out var result);
        try
        {
            tick.WaitFor(1);
            // Executing: at its next block boundary, on its own thread.
            cpu.RunAtSafePoint(_ => ranOn = Environment.CurrentManagedThreadId);
            Assert.Equal(t.ManagedThreadId, ranOn);

            // Asleep in HLT (IF=1): the requester does it without waking the vCPU.
            vm.Vm.Memory.WriteU8(SystemTestKit.Flag, 1);
            Await(idle, "the vCPU to halt");
            ulong retired = cpu.InstructionsRetired;
            cpu.RunAtSafePoint(_ => ranOn = Environment.CurrentManagedThreadId);
            Assert.Equal(Environment.CurrentManagedThreadId, ranOn);
            Assert.Equal(retired, cpu.InstructionsRetired);
        }
        finally { StopAndJoin(cpu, t); }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
    }

    /// <summary>A store runs work on its own vCPU: inline, without waiting for itself.</summary>
    private sealed class SelfPost(Cpu cpu, int[] ranOn) : IMmioDevice
    {
        public ulong Read(ulong offset, int size) => 0;
        public void Write(ulong offset, int size, ulong value) =>
            cpu.RunAtSafePoint(_ => ranOn[0] = Environment.CurrentManagedThreadId);
    }

    [Fact]
    public void WorkAskedFromTheVcpusOwnThreadRunsInline()
    {
        using var vm = new TestVm();
        var ranOn = new int[1];
        vm.Vm.Mmio.Register(PostA, 0x1000, new SelfPost(vm.Cpu, ranOn));
        LoadStoreThenPark(vm);
        StoreThenPark(vm, vm.Cpu, PostA);
        var t = StartOn(vm.Cpu, out var result);
        // One vCPU: cli; hlt ends the run.
        Assert.Equal(VcpuExitReason.HaltedForever, Join(vm.Cpu, t, result).Reason);
        Assert.Equal(t.ManagedThreadId, ranOn[0]);
    }
}
