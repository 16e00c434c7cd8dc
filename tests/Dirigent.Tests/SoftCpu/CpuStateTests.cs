using Dirigent.Accel.Emu;
using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Machine.State;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.LifecycleTestKit;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// GetState/SetState of a guest stopped mid-run, restored onto a fresh vCPU (another accelerator over the same machine,
/// as a snapshot restore does): activity, interrupt shadow, NMI masking, pending events and the TSC carry over.
/// </summary>
public class CpuStateTests
{
    private const ulong Log = Results + 0x100, Idx = Results + 0x80;

    /// <summary>Appends one byte to the guest's event log at Log[Idx++].</summary>
    private static void Append(Assembler a, byte value)
    {
        a.mov(rcx, __qword_ptr[Idx]);
        a.mov(__byte_ptr[rcx + (long)Log], value);
        a.inc(__qword_ptr[Idx]);
    }

    /// <summary>Appends '0' + the byte at Flag to the log.</summary>
    private static void AppendFlag(Assembler a)
    {
        a.mov(al, __byte_ptr[Flag]);
        a.add(al, (byte)'0');
        a.mov(rcx, __qword_ptr[Idx]);
        a.mov(__byte_ptr[rcx + (long)Log], al);
        a.inc(__qword_ptr[Idx]);
    }

    /// <summary>Asks to be stopped (RBX = StopAddr) and ends the block, so the stop comes right here.</summary>
    private static void StopHere(Assembler a)
    {
        var next = a.CreateLabel();
        a.mov(__dword_ptr[rbx], eax);
        a.jmp(next);
        a.Label(ref next);
    }

    private static string ReadLog(TestVm vm)
    {
        int n = (int)vm.Vm.Memory.ReadU64(Idx);
        return new string(Enumerable.Range(0, n).Select(k => (char)vm.Vm.Memory.ReadU8(Log + (ulong)k)).ToArray());
    }

    [Fact]
    public void HaltedGuestStaysHaltedAfterRestoreAndWakesOnAnInterrupt()
    {
        using var vm = new TestVm();
        var stop = AddStop(vm);
        var a = new Assembler(64);
        Label after = a.CreateLabel(), h = a.CreateLabel();
        a.mov(rbx, StopAddr);
        a.sti();
        a.nop();                        // the STI shadow covers this one
        a.mov(__dword_ptr[rbx], eax);   // stop requested; the block runs on into HLT
        a.hlt();
        a.Label(ref after);
        a.mov(__byte_ptr[Flag], 1);
        a.cli();
        a.hlt();
        a.Label(ref h);
        a.mov(al, __byte_ptr[Flag]);
        a.mov(__byte_ptr[Results], al);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results + 8], rax);
        a.iretq();
        var l = Emit(vm, a, TestVm.CodeBase, after, h);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0x41, l[1]);

        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        var s = vm.Cpu.GetState();
        Assert.Equal(VcpuActivity.Halted, s.Activity);
        Assert.Equal(l[0], s.Rip);
        Assert.NotEqual(0UL, s.Rflags & 0x200);

        using var acc2 = new EmuAccelerator(vm.Vm);
        var cpu2 = (Cpu)acc2.CreateVcpu(0);
        cpu2.SetState(s);
        Assert.Equal(VcpuActivity.Halted, cpu2.GetState().Activity);
        using var idle = new ManualResetEventSlim(false);
        cpu2.OnIdle = idle.Set;
        var t = StartOn(cpu2, out var result);
        try
        {
            Await(idle, "the restored vCPU to sleep in HLT");
            Assert.Equal(0, vm.Vm.Memory.ReadU8(Flag)); // nothing after the HLT ran
            Assert.Equal(0UL, cpu2.InstructionsRetired);
            cpu2.InjectInterrupt(0x41);
            Assert.True(t.Join(10_000), "the vCPU did not finish after the interrupt");
        }
        finally { StopAndJoin(cpu2, t); }
        Assert.Equal(VcpuExitReason.HaltedForever, result[0].Reason);
        Assert.Equal(0, vm.Vm.Memory.ReadU8(Results));          // the interrupt came before the code after HLT
        Assert.Equal(l[0], vm.Vm.Memory.ReadU64(Results + 8));  // and returned to it
        Assert.Equal(1, vm.Vm.Memory.ReadU8(Flag));
        GC.KeepAlive(stop);
    }

    [Fact]
    public void NmiMaskingAndAPendingNmiSurviveRestore()
    {
        using var vm = new TestVm();
        var stop = AddStop(vm);
        var a = new Assembler(64);
        Label spin = a.CreateLabel(), nmi = a.CreateLabel();
        a.Label(ref spin);
        a.jmp(spin);
        a.Label(ref nmi);
        Append(a, (byte)'N');
        StopHere(a); // inside the handler: NMIs are blocked until its IRET
        Append(a, (byte)'I');
        a.iretq();
        var l = Emit(vm, a, TestVm.CodeBase, nmi);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 2, l[0]);
        vm.Cpu.Gpr[Cpu.RBX] = StopAddr;
        vm.Cpu.InjectNmi();

        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        Assert.Equal("N", ReadLog(vm));
        vm.Cpu.InjectNmi(); // latched while the first handler runs
        var s = vm.Cpu.GetState();
        Assert.True(s.NmiMasked);
        Assert.True(s.NmiPending);

        using var acc2 = new EmuAccelerator(vm.Vm);
        var cpu2 = (Cpu)acc2.CreateVcpu(0);
        cpu2.SetState(s);
        stop.Target = cpu2;
        Assert.Equal(VcpuExitReason.Stopped, RunOn(cpu2).Reason);
        // The handler finished (I) before the latched NMI was taken (N): masking held until IRET.
        Assert.Equal("NIN", ReadLog(vm));
        var s2 = cpu2.GetState();
        Assert.True(s2.NmiMasked);
        Assert.False(s2.NmiPending);
    }

    [Fact]
    public void PendingVectorsAndTheStiShadowSurviveRestore()
    {
        using var vm = new TestVm();
        var stop = AddStop(vm);
        var a = new Assembler(64);
        Label h41 = a.CreateLabel(), h80 = a.CreateLabel();
        a.mov(rbx, StopAddr);
        a.mov(__byte_ptr[Flag], 0);
        a.mov(__dword_ptr[rbx], eax); // stop requested; the block runs on through STI, which ends it
        a.sti();
        a.mov(__byte_ptr[Flag], 1);   // in the STI shadow: runs before the pending interrupts
        a.cli();
        a.mov(__dword_ptr[rbx], eax);
        a.hlt();
        a.Label(ref h41);
        Append(a, (byte)'A');
        AppendFlag(a);
        a.iretq();
        a.Label(ref h80);
        Append(a, (byte)'B');
        AppendFlag(a);
        a.iretq();
        var l = Emit(vm, a, TestVm.CodeBase, h41, h80);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0x41, l[0]);
        Gate64(vm, 0x80, l[1]);

        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        vm.Cpu.InjectInterrupt(0x41);
        vm.Cpu.InjectInterrupt(0x80);
        var s = vm.Cpu.GetState();
        Assert.True(s.InterruptShadow);
        Assert.Equal(new byte[] { 0x41, 0x80 }, s.PendingInterrupts);
        Assert.Equal("", ReadLog(vm));

        using var acc2 = new EmuAccelerator(vm.Vm);
        var cpu2 = (Cpu)acc2.CreateVcpu(0);
        cpu2.SetState(s);
        Assert.Equal(new byte[] { 0x41, 0x80 }, cpu2.GetState().PendingInterrupts);
        stop.Target = cpu2;
        Assert.Equal(VcpuExitReason.Stopped, RunOn(cpu2).Reason);
        // Highest vector first, both after the instruction in the shadow (Flag=1).
        Assert.Equal("B1A1", ReadLog(vm));
        Assert.Empty(cpu2.GetState().PendingInterrupts);
        Assert.False(cpu2.GetState().InterruptShadow);
    }

    [Fact]
    public void StopRequestedBeforeTheRunThreadEntersRunEndsThatRun()
    {
        // The VM's Resume prepares the runs, then starts their threads; a Pause right after may reach a vCPU before its
        // thread is in Run. That stop must end the run (it hung the VM's Pause when Run dropped it).
        using var vm = new TestVm();
        vm.Start64(a => { Label spin = a.CreateLabel(); a.Label(ref spin); a.jmp(spin); });
        vm.Cpu.PrepareRun();
        vm.Cpu.RequestStop();
        Assert.Equal(VcpuExitReason.Stopped, RunOn(vm.Cpu).Reason);
    }

    [Fact]
    public void StopLeftOverFromAnEndedRunIsDroppedByPrepareRun()
    {
        using var vm = new TestVm();
        vm.Start64(a => { a.cli(); a.hlt(); });
        vm.Cpu.RequestStop(); // came after the last run had ended
        vm.Cpu.PrepareRun();
        Assert.Equal(VcpuExitReason.HaltedForever, RunOn(vm.Cpu).Reason);
    }

    /// <summary>Injects vector 0x41 and asks for a stop on its first store, only stops on later ones.</summary>
    private sealed class InjectAndStop(Cpu cpu) : Dirigent.Machine.Bus.IMmioDevice
    {
        private int _writes;
        public ulong Read(ulong offset, int size) => 0;
        public void Write(ulong offset, int size, ulong value)
        {
            if (_writes++ == 0) cpu.InjectInterrupt(0x41);
            cpu.RequestStop();
        }
    }

    [Fact]
    public void InterruptPendingWhenTheVcpuStoppedIsTakenAsSoonAsItRunsAgain()
    {
        using var vm = new TestVm();
        vm.Vm.Mmio.Register(StopAddr, 0x1000, new InjectAndStop(vm.Cpu));
        var a = new Assembler(64);
        Label spin = a.CreateLabel(), h = a.CreateLabel(), hspin = a.CreateLabel();
        a.mov(rbx, StopAddr);
        a.sti();
        a.nop();
        a.mov(__dword_ptr[rbx], eax); // interrupt and stop arrive together; the stop wins
        a.Label(ref spin);
        a.jmp(spin);                  // nothing else will ever set an event
        a.Label(ref h);
        a.mov(__byte_ptr[Flag], 1);
        a.mov(__dword_ptr[rbx], eax);
        a.Label(ref hspin);
        a.jmp(hspin);
        var l = Emit(vm, a, TestVm.CodeBase, h);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0x41, l[0]);
        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        Assert.Equal(new byte[] { 0x41 }, vm.Cpu.GetState().PendingInterrupts);
        Assert.Equal(0, vm.Vm.Memory.ReadU8(Flag));
        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        Assert.Equal(1, vm.Vm.Memory.ReadU8(Flag));
    }

    [Fact]
    public void TscContinuesExactlyOnAFreshVcpuWhileTheClockIsStopped()
    {
        using var vm = new TestVm();
        var stop = AddStop(vm);
        const ulong tsc = 0x1_2345_6789_0000;
        var a = new Assembler(64);
        a.mov(rbx, StopAddr);
        a.mov(ecx, 0x10);
        a.mov(eax, unchecked((uint)tsc));
        a.mov(edx, (uint)(tsc >> 32));
        a.wrmsr();
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(__qword_ptr[Results], rax);
        StopHere(a);
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(__qword_ptr[Results + 8], rax);
        a.hlt();
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        vm.Vm.Clock.Stop();

        Assert.Equal(VcpuExitReason.Stopped, vm.Run().Reason);
        Assert.Equal(tsc, vm.Vm.Memory.ReadU64(Results));
        var s = vm.Cpu.GetState();
        Assert.Equal(tsc, s.Msrs[0x10]);
        ulong adjust = s.Msrs[0x3B];
        Assert.NotEqual(0UL, adjust); // WRMSR to the TSC moved IA32_TSC_ADJUST

        using var acc2 = new EmuAccelerator(vm.Vm);
        var cpu2 = (Cpu)acc2.CreateVcpu(0);
        cpu2.SetState(s);
        Assert.Equal(tsc, cpu2.ReadTsc());
        Assert.Equal(adjust, cpu2.GetState().Msrs[0x3B]);
        Assert.Equal(VcpuExitReason.HaltedForever, RunOn(cpu2).Reason);
        Assert.Equal(tsc, vm.Vm.Memory.ReadU64(Results + 8));
        vm.Vm.Clock.Start();
        Assert.True(cpu2.ReadTsc() >= tsc);
        GC.KeepAlive(stop);
    }

    [Fact]
    public void WaitForSipiExecutesNothingAndRoundTrips()
    {
        using var vm = new TestVm();
        Emit(vm, new Assembler(64).Also(a => { a.mov(__byte_ptr[Flag], 1); a.hlt(); }), TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        var s = vm.Cpu.GetState();
        s.Activity = VcpuActivity.WaitForSipi;
        s.SipiVector = -1; // no SIPI latched: a latched one would start it (SmpStartupTests)
        s.Rflags |= 0x200;
        s.PendingInterrupts = [0x41];
        vm.Cpu.SetState(s);
        using var idle = new ManualResetEventSlim(false);
        vm.Cpu.OnIdle = idle.Set;
        var t = StartOn(vm.Cpu, out var result);
        try { Await(idle, "the vCPU to wait for a SIPI"); }
        finally { StopAndJoin(vm.Cpu, t); }
        Assert.Equal(VcpuExitReason.Stopped, result[0].Reason);
        Assert.Equal(0UL, vm.Cpu.InstructionsRetired);
        Assert.Equal(0, vm.Vm.Memory.ReadU8(Flag));
        var s2 = vm.Cpu.GetState();
        Assert.Equal(VcpuActivity.WaitForSipi, s2.Activity);
        Assert.Equal(-1, s2.SipiVector);
        Assert.Equal(new byte[] { 0x41 }, s2.PendingInterrupts);
    }

    [Fact]
    public void RestoredPendingExceptionIsDeliveredFirst()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label h = a.CreateLabel();
        a.mov(__byte_ptr[Flag], 1);
        a.hlt();
        a.Label(ref h);
        a.pop(rax);
        a.mov(__qword_ptr[Results], rax);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results + 8], rax);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, h);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 13, l[0]);
        var s = vm.Cpu.GetState();
        Assert.Null(s.PendingException);
        s.PendingException = new PendingException { Vector = 13, HasErrorCode = true, ErrorCode = 0x18 };
        vm.Cpu.SetState(s);
        Assert.Equal(13, vm.Cpu.GetState().PendingException!.Value.Vector);
        vm.RunToHlt();
        Assert.Equal(0x18UL, vm.Vm.Memory.ReadU64(Results));
        Assert.Equal(TestVm.CodeBase, vm.Vm.Memory.ReadU64(Results + 8));
        Assert.Equal(0, vm.Vm.Memory.ReadU8(Flag));
        Assert.Null(vm.Cpu.GetState().PendingException);
    }

    [Fact]
    public void FxsaveWinsAndXsaveLegacyAreaStandsInWhenFxsaveIsMissing()
    {
        using var vm = new TestVm();
        var s = vm.Cpu.GetState();
        Assert.Null(s.Xsave);
        var xsave = new byte[4096];
        xsave[24] = 0x80; xsave[25] = 0x3F; // MXCSR 0x3F80
        s.Xsave = xsave;
        s.Fxsave[24] = 0xC0; s.Fxsave[25] = 0x1F; // MXCSR 0x1FC0
        vm.Cpu.SetState(s);
        Assert.Equal(0x1FC0u, vm.Cpu.Mxcsr);
        s.Fxsave = [];
        vm.Cpu.SetState(s);
        Assert.Equal(0x3F80u, vm.Cpu.Mxcsr);
    }

    [Fact]
    public void InconsistentStatesAreRejectedWithoutChangingTheVcpu()
    {
        using var vm = new TestVm();
        var good = vm.Cpu.GetState();
        foreach (var bad in new Action<CpuState>[]
                 {
                     s => s.Gpr = new ulong[3],
                     s => s.PendingException = new PendingException { Vector = 40 },
                     s => s.Activity = (VcpuActivity)7,
                     s => { s.Fxsave = []; s.Xsave = null; },
                 })
        {
            var s = good.Clone();
            bad(s);
            Assert.Throws<StateRestoreException>(() => vm.Cpu.SetState(s));
            Assert.Equal(good.Rip, vm.Cpu.Rip);
        }
    }
}

internal static class AssemblerExtensions
{
    public static Assembler Also(this Assembler a, Action<Assembler> build) { build(a); return a; }
}
