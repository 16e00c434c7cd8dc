using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using static Dirigent.Tests.SoftCpu.LifecycleTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// INIT and STARTUP IPIs on the software CPU (SDM 10.4, MP spec B.4): the test thread plays the local APIC and calls
/// InjectInit/InjectSipi while the target vCPU runs, sleeps or is stopped; the change happens on the vCPU's own
/// thread. A second vCPU makes HLT with IF=0 a sleep rather than the end of the run.
/// </summary>
public class SmpStartupTests
{
    // The AP's start-up code lives at 0x8000 (SIPI vector 0x08), its results at 0x9000.
    private const byte Vector = 0x08;
    private const ulong Trampoline = 0x8000, Done = 0x9000, NmiDone = 0x9001;

    /// <summary>64-bit code at CodeBase storing to <paramref name="addr"/> forever, where <paramref name="device"/> sits.</summary>
    private static void LoadStoreLoop(TestVm vm, ulong addr, IMmioDevice device)
    {
        vm.Vm.Mmio.Register(addr, 0x1000, device);
        vm.Load(TestVm.CodeBase, 64, a =>
        {
            var top = a.CreateLabel();
            a.mov(rbx, addr);
            a.Label(ref top);
            a.mov(__dword_ptr[rbx], eax);
            a.jmp(top);
        });
    }

    private static (TestVm vm, Cpu ap) TwoCpus()
    {
        var vm = new TestVm();
        var ap = (Cpu)vm.Accel.CreateVcpu(1);
        // As the VM builds an application processor: the reset state, waiting for a SIPI.
        var s = CpuState.Reset();
        s.Activity = VcpuActivity.WaitForSipi;
        ap.SetState(s);
        // Real-mode start-up code: mark, then park with interrupts off (as Linux parks a CPU).
        vm.Load(Trampoline, 16, a =>
        {
            a.mov(__byte_ptr[Done], 0x5A);
            a.cli();
            a.hlt();
        });
        return (vm, ap);
    }

    /// <summary>An OnIdle hook that sets an event once the guest has written a byte.</summary>
    private static ManualResetEventSlim IdleAfter(TestVm vm, Cpu cpu, ulong addr, byte value)
    {
        var e = new ManualResetEventSlim(false);
        cpu.OnIdle = () => { if (vm.Vm.Memory.ReadU8(addr) == value) e.Set(); };
        return e;
    }

    [Fact]
    public void ApWaitingForSipiRunsItsStartupCodeAfterInitAndSipi()
    {
        var (vm, ap) = TwoCpus();
        using var _ = vm;
        using var waiting = new ManualResetEventSlim(false);
        using var parked = IdleAfter(vm, ap, Done, 0x5A);
        ap.OnIdle += waiting.Set;
        var t = StartOn(ap, out var result);
        try
        {
            Await(waiting, "the AP to wait for a SIPI");
            Assert.Equal(0, vm.Vm.Memory.ReadU8(Done));
            ap.InjectInit();
            ap.InjectSipi(Vector);
            ap.InjectSipi(Vector); // the second SIPI of the pair finds it started and is ignored
            Await(parked, "the AP to run its start-up code and halt");
        }
        finally { StopAndJoin(ap, t); }
        // cli; hlt with another vCPU present sleeps until NMI/INIT/stop instead of ending the run.
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        var s = ap.GetState();
        Assert.Equal(VcpuActivity.Halted, s.Activity);
        Assert.Equal((ushort)(Vector << 8), s.Segments[(int)Seg.CS].Selector);
        Assert.Equal((ulong)Vector << 12, s.Segments[(int)Seg.CS].Base);
        Assert.Equal(0xFEE0_0800UL, s.Msrs[Cpu.MsrApicBase]);
        Assert.Equal(-1, s.SipiVector);
    }

    [Fact]
    public void InitWhileRunningParksTheApInTheInitStateKeepingSseAndMsrs()
    {
        var (vm, ap) = TwoCpus();
        using var _ = vm;
        var tick = new TickDevice();
        LoadStoreLoop(vm, TickAddr, tick);
        var s0 = BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop);
        s0.Cr0 |= Cpu.Cr0CD; // kept by INIT (SDM table 10-1)
        ap.SetState(s0);
        var xmm = Vector128.Create(0x1122_3344_5566_7788UL, 0x99AA_BBCC_DDEE_FF00UL).AsByte();
        ap.Xmm[3] = xmm;
        ap.Star = 0x0023_0010_0000_0000UL;
        ap.Pat = 0x0007_0406_0007_0406UL;
        using var waiting = new ManualResetEventSlim(false);
        ap.OnIdle = waiting.Set;
        var t = StartOn(ap, out var result);
        try
        {
            tick.WaitFor(1);
            ap.InjectInit();
            Await(waiting, "the AP to wait for a SIPI after INIT");
        }
        finally { StopAndJoin(ap, t); }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        var s = ap.GetState();
        Assert.Equal(VcpuActivity.WaitForSipi, s.Activity);
        Assert.Equal(-1, s.SipiVector);
        Assert.Equal(0xF000, s.Segments[(int)Seg.CS].Selector);
        Assert.Equal(0xFFFF_0000UL, s.Segments[(int)Seg.CS].Base);
        Assert.Equal(0xFFF0UL, s.Rip);
        Assert.Equal(0x4000_0010UL, s.Cr0);
        Assert.Equal(0UL, s.Cr3);
        Assert.Equal(0UL, s.Cr4);
        Assert.Equal(0UL, s.Efer);
        Assert.Equal(2UL, s.Rflags);
        Assert.Equal(0UL, s.Gpr[3]);
        Assert.Equal((ulong)ap.Cpuid.Signature, s.Gpr[2]);
        Assert.Equal(xmm, ap.Xmm[3]);
        Assert.Equal(0x0023_0010_0000_0000UL, s.Msrs[Cpu.MsrStar]);
        Assert.Equal(0xFEE0_0800UL, s.Msrs[Cpu.MsrApicBase]);

        // A SIPI while it is stopped is latched (saved as SipiVector) and starts it when it next runs.
        ap.InjectSipi(Vector);
        var latched = ap.GetState();
        Assert.Equal(VcpuActivity.WaitForSipi, latched.Activity);
        Assert.Equal(Vector, latched.SipiVector);
        using var parked = IdleAfter(vm, ap, Done, 0x5A);
        t = StartOn(ap, out result);
        try { Await(parked, "the latched SIPI to start the AP"); }
        finally { StopAndJoin(ap, t); }
        Assert.Equal(VcpuActivity.Halted, ap.GetState().Activity);
    }

    [Fact]
    public void RestoredLatchedSipiStartsTheVcpu()
    {
        var (vm, ap) = TwoCpus();
        using var _ = vm;
        var s = ap.GetState();
        s.SipiVector = Vector;
        ap.SetState(s);
        using var parked = IdleAfter(vm, ap, Done, 0x5A);
        var t = StartOn(ap, out var result);
        try { Await(parked, "the restored SIPI to start the AP"); }
        finally { StopAndJoin(ap, t); }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        Assert.Equal((ushort)(Vector << 8), ap.GetState().Segments[(int)Seg.CS].Selector);
    }

    [Fact]
    public void SipiIsIgnoredUnlessTheVcpuWaitsForOne()
    {
        var (vm, ap) = TwoCpus();
        using var _ = vm;
        var tick = new TickDevice();
        LoadStoreLoop(vm, TickAddr, tick);
        ap.SetState(BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        var t = StartOn(ap, out var result);
        try
        {
            tick.WaitFor(1);
            ap.InjectSipi(Vector);
            long seen = tick.Ticks;
            tick.WaitFor(seen + 2); // still looping: the SIPI changed nothing
        }
        finally { StopAndJoin(ap, t); }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        var s = ap.GetState();
        Assert.Equal(VcpuActivity.Running, s.Activity);
        Assert.Equal(-1, s.SipiVector);
        Assert.True(s.Segments[(int)Seg.CS].L);
        Assert.Equal(0, vm.Vm.Memory.ReadU8(Done));

        // Nor is a stopped vCPU that is not waiting for one.
        ap.InjectSipi(Vector);
        Assert.Equal(-1, ap.GetState().SipiVector);
    }

    [Fact]
    public void InitOnTheBspRestartsItAtTheResetVector()
    {
        using var vm = new TestVm();
        var ap = (Cpu)vm.Accel.CreateVcpu(1);
        var gate = new GateDevice();
        LoadStoreLoop(vm, GateAddr, gate); // the test sends INIT while the vCPU waits in the gate's store
        var bsp = vm.Cpu;
        bsp.SetState(BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        var t = StartOn(bsp, out var result);
        try
        {
            Await(gate.Entered, "the BSP to reach the gate");
            bsp.InjectInit();
            // The INIT is taken at the next boundary, before the stop: the vCPU stops in the INIT state.
            bsp.RequestStop();
            gate.Open.Set();
        }
        finally
        {
            gate.Open.Set();
            StopAndJoin(bsp, t);
        }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        var s = bsp.GetState();
        Assert.Equal(VcpuActivity.Running, s.Activity);
        Assert.Equal(0xF000, s.Segments[(int)Seg.CS].Selector);
        Assert.Equal(0xFFFF_0000UL, s.Segments[(int)Seg.CS].Base);
        Assert.Equal(0xFFF0UL, s.Rip);
        Assert.Equal(0x10UL, s.Cr0);
        Assert.Equal(0UL, s.Efer);
        Assert.Equal(0xFEE0_0900UL, s.Msrs[Cpu.MsrApicBase]);
        Assert.Equal(0xFEE0_0800UL, ap.GetState().Msrs[Cpu.MsrApicBase]);
    }

    [Fact]
    public void InitReachingAStoppedVcpuShowsInItsSavedState()
    {
        using var vm = new TestVm();
        vm.Cpu.SetState(BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        vm.Cpu.InjectInterrupt(0x40);
        vm.Cpu.InjectNmi();
        vm.Cpu.InjectInit();
        var s = vm.Cpu.GetState();
        Assert.Equal(VcpuActivity.Running, s.Activity); // vCPU 0 is the BSP
        Assert.Equal(0xFFF0UL, s.Rip);
        Assert.Equal(0xF000, s.Segments[(int)Seg.CS].Selector);
        Assert.Empty(s.PendingInterrupts);
        Assert.False(s.NmiPending);
        // IA32_APIC_BASE round-trips through GetState/SetState.
        s.Msrs[Cpu.MsrApicBase] = 0xFEE0_0100UL; // BSP, globally disabled
        vm.Cpu.SetState(s);
        Assert.Equal(0xFEE0_0100UL, vm.Cpu.GetState().Msrs[Cpu.MsrApicBase]);
    }

    [Fact]
    public void HltWithInterruptsOffEndsTheRunOnlyOnAUniprocessor()
    {
        using (var uni = new TestVm())
        {
            uni.Start16(a => { a.cli(); a.hlt(); });
            Assert.Equal(VcpuExitReason.HaltedForever, uni.Run().Reason);
        }

        // With two vCPUs the parked AP sleeps; an NMI wakes it (real-mode IVT entry 2 → a handler that marks and
        // parks again) and an INIT puts it back to waiting for a SIPI.
        var (vm, ap) = TwoCpus();
        using var _ = vm;
        vm.Load(0x8100, 16, a => { a.mov(__byte_ptr[NmiDone], 0x77); a.cli(); a.hlt(); });
        vm.Vm.Memory.WriteU32(2 * 4, 0x0000_8100); // IVT[2] = 0000:8100
        using var parked = IdleAfter(vm, ap, Done, 0x5A);
        var t = StartOn(ap, out var result);
        try
        {
            ap.InjectInit();
            ap.InjectSipi(Vector);
            Await(parked, "the AP to park with cli; hlt");
            using var nmiSeen = IdleAfter(vm, ap, NmiDone, 0x77);
            ap.InjectNmi();
            Await(nmiSeen, "the NMI to wake the parked AP");
            using var waiting = new ManualResetEventSlim(false);
            ap.OnIdle = () => { if (ap.WaitingForSipi) waiting.Set(); };
            ap.InjectInit();
            Await(waiting, "INIT to put the AP back to waiting for a SIPI");
        }
        finally { StopAndJoin(ap, t); }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        Assert.Equal(VcpuActivity.WaitForSipi, ap.GetState().Activity);
    }
}
