using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.LifecycleTestKit;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Dirty logging through the soft TLB: every guest store to RAM ends up in the memory's dirty log once
/// CollectDirtyPages returns, whichever path it took (TLB hit, fill, REP STOS bulk copy, LOCK CMPXCHG, page-table
/// A/D update), round after round, also while the vCPU runs on another thread or sleeps in HLT.
/// </summary>
public class DirtyLogTests
{
    // 0x300000..0x3FFFFF: data pages nothing else touches (the kit's tables and results live at 0x21xxxx/0x22xxxx).
    private const ulong PageA = 0x30_0000, PageB = 0x30_1000, PageE = 0x30_5000, PageRead = 0x30_6000;

    private static HashSet<ulong> Harvest(TestVm vm) => vm.Vm.Memory.DirtyLog.Harvest().ToHashSet();

    /// <summary>Sets accessed (and dirty) in BootState's upper-level entries so that walks change none of them.</summary>
    private static void PresetAccessedDirty(TestVm vm)
    {
        var m = vm.Vm.Memory;
        m.WriteU64(BootState.Pml4Addr, m.ReadU64(BootState.Pml4Addr) | 0x20);
        for (ulong g = 0; g < 4; g++)
        {
            m.WriteU64(BootState.PdptAddr + g * 8, m.ReadU64(BootState.PdptAddr + g * 8) | 0x20);
            for (ulong k = 0; k < 512; k++)
            {
                ulong e = BootState.PdAddr + g * 0x1000 + k * 8;
                m.WriteU64(e, m.ReadU64(e) | 0x60);
            }
        }
    }

    [Fact]
    public void EveryWritePathIsLoggedRoundAfterRound()
    {
        using var vm = new TestVm();
        var stop = AddStop(vm);
        var a = new Assembler(64);
        Label top = a.CreateLabel(), next = a.CreateLabel();
        a.mov(rbx, StopAddr);
        a.Label(ref top);
        a.mov(__qword_ptr[PageA + 0x10], rax);        // plain MOV
        a.mov(rdi, PageB + 0x800);                      // REP STOSQ over 8 KiB: three pages
        a.mov(ecx, 0x2000 / 8);
        a.rep.stosq();
        a.mov(rax, __qword_ptr[PageRead]);              // read only: never logged
        a.mov(rax, __qword_ptr[PageE]);                 // LOCK CMPXCHG: the RMW path
        a.lea(rdx, __[rax + 1]);
        a.@lock.cmpxchg(__qword_ptr[PageE], rdx);
        a.mov(__dword_ptr[rbx], eax);                   // stop after this iteration
        a.jmp(next);
        a.Label(ref next);
        a.jmp(top);
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        PresetAccessedDirty(vm);
        var written = new HashSet<ulong> { PageA, PageB, PageB + 0x1000, PageB + 0x2000, PageE };

        // A first iteration with logging off leaves write-TLB entries behind; turning logging on must drop them.
        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        vm.Accel.SetDirtyLogging(true);
        Harvest(vm);
        vm.Accel.CollectDirtyPages();
        Assert.Empty(Harvest(vm)); // nothing written since

        for (int round = 0; round < 3; round++)
        {
            ulong e = vm.Vm.Memory.ReadU64(PageE);
            Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
            Assert.Equal(e + 1, vm.Vm.Memory.ReadU64(PageE));
            vm.Accel.CollectDirtyPages();
            Assert.Equal(written, Harvest(vm));
        }
        vm.Accel.CollectDirtyPages();
        Assert.Empty(Harvest(vm));
        GC.KeepAlive(stop);
    }

    [Fact]
    public void PageTablesWhoseAccessedOrDirtyBitsChangeAreLogged()
    {
        using var vm = new TestVm();
        var stop = AddStop(vm);
        const ulong Pt = 0x31_0000, Linear = 0x40_0000;
        var a = new Assembler(64);
        a.mov(__qword_ptr[Linear + 0x1008], rax);  // sets A and D in PT entry 1
        a.mov(rax, __qword_ptr[Linear + 0x2000]);  // sets A in PT entry 2
        a.hlt();
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        PresetAccessedDirty(vm);
        // 4 MiB..6 MiB through a 4 KiB page table (identity), with A and D clear everywhere on the way.
        var m = vm.Vm.Memory;
        m.WriteU64(BootState.PdAddr + 2 * 8, Pt | 0x3);
        for (ulong k = 0; k < 512; k++) m.WriteU64(Pt + k * 8, (Linear + k * 0x1000) | 0x3);
        vm.Accel.SetDirtyLogging(true);

        vm.RunToHlt();
        vm.Accel.CollectDirtyPages();
        Assert.Equal(new HashSet<ulong> { BootState.PdAddr, Pt, Linear + 0x1000 }, Harvest(vm));
        Assert.Equal(0x60UL, m.ReadU64(Pt + 8) & 0x60);
        Assert.Equal(0x20UL, m.ReadU64(Pt + 16) & 0x60);
        GC.KeepAlive(stop);
    }

    [Fact]
    public void CollectWhileTheVcpuRunsOnAnotherThreadSeesEveryRound()
    {
        using var vm = new TestVm();
        var tick = new TickDevice();
        vm.Vm.Mmio.Register(TickAddr, 0x1000, tick);
        var a = new Assembler(64);
        Label top = a.CreateLabel();
        a.mov(rbx, TickAddr);
        a.Label(ref top);
        a.mov(__qword_ptr[PageA], rax);
        a.inc(rax);
        a.mov(__dword_ptr[rbx], eax);
        a.jmp(top);
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        PresetAccessedDirty(vm);
        vm.Accel.SetDirtyLogging(true);
        var t = StartOn(vm.Cpu, out var result);
        try
        {
            tick.WaitFor(1);
            for (int round = 0; round < 5; round++)
            {
                Harvest(vm);
                // Two ticks after the harvest: a whole iteration, so a store to PageA, came after it. Without the
                // collect below dropping the write entry, that store (a TLB hit) would go unlogged.
                tick.WaitFor(tick.Ticks + 2);
                vm.Accel.CollectDirtyPages();
                Assert.Equal(new HashSet<ulong> { PageA }, Harvest(vm));
            }
        }
        finally
        {
            StopAndJoin(vm.Cpu, t);
        }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
    }

    [Fact]
    public void StoresThroughAnEntryFilledBeforeAHarvestAreLoggedEvenIfTheVcpuThenHalts()
    {
        using var vm = new TestVm();
        var gate = new GateDevice();
        vm.Vm.Mmio.Register(GateAddr, 0x1000, gate);
        var a = new Assembler(64);
        Label back = a.CreateLabel();
        a.mov(rbx, GateAddr);
        a.mov(__qword_ptr[PageB], rax);       // fills the write entry (logged)
        a.mov(__dword_ptr[rbx], eax);         // the test harvests while the vCPU waits here
        a.mov(__qword_ptr[PageB + 8], rax);   // a TLB hit: no hook on this store
        a.sti();
        a.Label(ref back);
        a.hlt();                              // asleep with IF=1: CollectDirtyPages must not wait for it
        a.jmp(back);
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        PresetAccessedDirty(vm);
        vm.Accel.SetDirtyLogging(true);
        Harvest(vm);
        using var idle = new ManualResetEventSlim(false);
        vm.Cpu.OnIdle = idle.Set;
        var t = StartOn(vm.Cpu, out var result);
        try
        {
            Await(gate.Entered, "the guest to reach the gate");
            Assert.Equal(new HashSet<ulong> { PageB }, Harvest(vm));
            gate.Open.Set();
            Await(idle, "the guest to halt");
            ulong retired = vm.Cpu.InstructionsRetired;
            vm.Accel.CollectDirtyPages();
            Assert.Equal(new HashSet<ulong> { PageB }, Harvest(vm));
            Assert.Equal(retired, vm.Cpu.InstructionsRetired); // it was not woken to do it
        }
        finally
        {
            gate.Open.Set();
            StopAndJoin(vm.Cpu, t);
        }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        Assert.Equal(VcpuActivity.Halted, vm.Cpu.GetState().Activity);
    }

    [Fact]
    public void WithLoggingOffNothingIsLogged()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        a.mov(__qword_ptr[PageA], rax);
        a.hlt();
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        vm.Accel.CollectDirtyPages();
        vm.RunToHlt();
        vm.Accel.CollectDirtyPages();
        Assert.False(vm.Vm.Memory.DirtyLog.Enabled);
        Assert.Empty(Harvest(vm));
    }
}
