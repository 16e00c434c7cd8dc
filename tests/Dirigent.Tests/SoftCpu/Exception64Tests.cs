using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Exceptions, software interrupts, stack switches and fault nesting in long mode, through a guest IDT.</summary>
public class Exception64Tests
{
    [Fact]
    public void UdGpIntAndInt3GoThroughIdtWithCorrectFramesAndErrorCodes()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label hUd = a.CreateLabel(), hGp = a.CreateLabel(), hBp = a.CreateLabel(), hInt = a.CreateLabel();
        Label ud = a.CreateLabel(), r1 = a.CreateLabel(), r2 = a.CreateLabel(), r3 = a.CreateLabel(), r4 = a.CreateLabel(),
            r5 = a.CreateLabel(), gp1 = a.CreateLabel(), gp2 = a.CreateLabel();
        a.mov(rbx, Results);
        a.lea(r15, __[r1]);
        a.Label(ref ud);
        a.ud2();
        a.Label(ref r1);
        a.lea(r15, __[r2]);
        a.mov(eax, 0x60); // beyond the GDT limit: #GP(0x60)
        a.Label(ref gp1);
        a.mov(ds, ax);
        a.Label(ref r2);
        a.lea(r15, __[r3]);
        a.@int(0x40);
        a.Label(ref r3);
        a.lea(r15, __[r4]);
        a.int3();
        a.Label(ref r4);
        a.lea(r15, __[r5]);
        a.mov(rax, cr4);
        a.or(rax, 1); // VME is not supported: #GP(0)
        a.Label(ref gp2);
        a.mov(cr4, rax);
        a.Label(ref r5);
        a.hlt();
        RecordingHandler64(a, ref hUd, 6, false);
        RecordingHandler64(a, ref hGp, 13, true);
        RecordingHandler64(a, ref hBp, 3, false);
        RecordingHandler64(a, ref hInt, 0x40, false);
        var l = Emit(vm, a, TestVm.CodeBase, hUd, hGp, hBp, hInt, ud, r3, r4, gp1, gp2);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 6, l[0]);
        Gate64(vm, 13, l[1]);
        Gate64(vm, 3, l[2]);
        Gate64(vm, 0x40, l[3]);
        vm.RunToHlt();
        var recs = Enumerable.Range(0, 5).Select(n => ReadRec(vm, n)).ToArray();
        Assert.Equal(new Rec(6, 0, 0, l[4], K64), recs[0] with { Cr2 = 0 });
        Assert.Equal(new Rec(13, 0x60, 0, l[7], K64), recs[1] with { Cr2 = 0 });
        Assert.Equal(new Rec(0x40, 0, 0, l[5], K64), recs[2] with { Cr2 = 0 });
        Assert.Equal(new Rec(3, 0, 0, l[6], K64), recs[3] with { Cr2 = 0 });
        Assert.Equal(new Rec(13, 0, 0, l[8], K64), recs[4] with { Cr2 = 0 });
        Assert.Equal(0UL, vm.Cpu.Cr4 & 1);
    }

    [Fact]
    public void DivideErrorIsDeliveredAtTheDivInstruction()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label h = a.CreateLabel(), div = a.CreateLabel(), after = a.CreateLabel();
        a.mov(rbx, Results);
        a.lea(r15, __[after]);
        a.xor(ecx, ecx);
        a.mov(eax, 5);
        a.xor(edx, edx);
        a.Label(ref div);
        a.div(ecx);
        a.Label(ref after);
        a.hlt();
        RecordingHandler64(a, ref h, 0, false);
        var l = Emit(vm, a, TestVm.CodeBase, h, div);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0, l[0]);
        vm.RunToHlt();
        var r = ReadRec(vm, 0);
        Assert.Equal(0UL, r.Tag);
        Assert.Equal(l[1], r.Rip);
    }

    [Fact]
    public void IstGateSwitchesToTheIstStack()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label h = a.CreateLabel();
        a.mov(rsp, 0x7_0000);
        a.@int(0x41);
        a.hlt();
        a.Label(ref h);
        a.mov(__qword_ptr[Results], rsp);
        a.mov(rax, __qword_ptr[rsp + 24]); // pushed RSP
        a.mov(__qword_ptr[Results + 8], rax);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, h);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0x41, l[0], ist: 2);
        W64(vm, Tss + 0x24 + 8, 0x6_0008); // IST2, deliberately misaligned: the CPU aligns it down to 16
        vm.RunToHlt();
        Assert.Equal(0x6_0000UL - 40, R64(vm, Results));
        Assert.Equal(0x7_0000UL, R64(vm, Results + 8));
    }

    [Fact]
    public void Ring3InterruptSwitchesToRsp0AndIretqReturnsToRing3()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label user = a.CreateLabel(), h = a.CreateLabel(), hGp = a.CreateLabel(), back = a.CreateLabel(), gpAt = a.CreateLabel();
        // Kernel: build an IRETQ frame to ring 3.
        a.mov(rax, (ulong)UData);
        a.mov(__qword_ptr[rsp - 8], rax);
        a.mov(rax, 0x5_F000);
        a.mov(__qword_ptr[rsp - 16], rax);
        a.mov(__qword_ptr[rsp - 24], 0x3002); // IOPL=3 so ring 3 may use the console port
        a.mov(__qword_ptr[rsp - 32], U64);
        a.lea(rax, __[user]);
        a.mov(__qword_ptr[rsp - 40], rax);
        a.sub(rsp, 40);
        a.iretq();
        a.Label(ref user);
        a.mov(al, (byte)'u');
        a.@out(0xE9, al);
        a.mov(r14, rsp);
        a.@int(0x80);
        a.Label(ref back);
        a.mov(al, (byte)'b');
        a.@out(0xE9, al);
        a.Label(ref gpAt);
        a.mov(rax, cr0); // privileged at CPL3: #GP(0)
        a.hlt();
        a.Label(ref h);
        // At CPL0 on the RSP0 stack: record the frame and return to ring 3.
        a.mov(__qword_ptr[Results], rsp);
        a.mov(rax, cs);
        a.mov(__qword_ptr[Results + 8], rax);
        a.mov(rax, __qword_ptr[rsp + 8]);
        a.mov(__qword_ptr[Results + 16], rax);
        a.mov(rax, __qword_ptr[rsp + 24]);
        a.mov(__qword_ptr[Results + 24], rax);
        a.mov(rax, __qword_ptr[rsp + 32]);
        a.mov(__qword_ptr[Results + 32], rax);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results + 40], rax);
        a.iretq();
        a.Label(ref hGp);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results + 48], rax);
        a.mov(rax, __qword_ptr[rsp + 8]);
        a.mov(__qword_ptr[Results + 56], rax);
        a.mov(rax, __qword_ptr[rsp + 16]);
        a.mov(__qword_ptr[Results + 64], rax);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, h, hGp, back, gpAt);
        Setup64(vm, TestVm.CodeBase, userPages: true);
        Gate64(vm, 0x80, l[0], dpl: 3);
        Gate64(vm, 13, l[1]);
        W64(vm, Tss + 4, 0x4_0000); // RSP0
        vm.RunToHlt();
        Assert.Equal("ub", vm.Console.ToString());
        Assert.Equal(0x4_0000UL - 40, R64(vm, Results));
        Assert.Equal((ulong)K64, R64(vm, Results + 8));
        Assert.Equal((ulong)U64, R64(vm, Results + 16));
        Assert.Equal(0x5_F000UL, R64(vm, Results + 24));
        Assert.Equal((ulong)UData, R64(vm, Results + 32));
        Assert.Equal(l[2], R64(vm, Results + 40));
        Assert.Equal(0UL, R64(vm, Results + 48));
        Assert.Equal(l[3], R64(vm, Results + 56));
        Assert.Equal((ulong)U64, R64(vm, Results + 64));
    }

    [Fact]
    public void PageFaultWithNotPresentHandlerBecomesDoubleFault()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label df = a.CreateLabel();
        a.mov(rax, 0x1_0000_0000_0000UL >> 4); // not mapped: PML4 entry 1 is empty
        a.mov(rax, __qword_ptr[rax]);
        a.hlt();
        a.Label(ref df);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results], rax);
        a.mov(rax, cr2);
        a.mov(__qword_ptr[Results + 8], rax);
        a.mov(__qword_ptr[Results + 16], 0xDF);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, df);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 14, l[0], present: false);
        Gate64(vm, 8, l[0]);
        vm.RunToHlt();
        Assert.Equal(0xDFUL, R64(vm, Results + 16));
        Assert.Equal(0UL, R64(vm, Results));
        Assert.Equal(0x1_0000_0000_0000UL >> 4, R64(vm, Results + 8));
    }

    [Fact]
    public void TripleFaultShutsDownTheVcpu()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        a.ud2();
        a.hlt();
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        vm.Cpu.Idtr = new TableRegister { Base = Idt, Limit = 0 };
        var e = vm.Run();
        Assert.Equal(VcpuExitReason.Shutdown, e.Reason);
    }

    [Fact]
    public void TripleFaultFromBadStackDuringDoubleFaultShutsDown()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        a.mov(rsp, 0x1_0000_0000_0000UL >> 4); // unmapped stack: every delivery faults
        a.ud2();
        a.hlt();
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 6, TestVm.CodeBase);
        Gate64(vm, 14, TestVm.CodeBase);
        Gate64(vm, 8, TestVm.CodeBase);
        var e = vm.Run();
        Assert.Equal(VcpuExitReason.Shutdown, e.Reason);
    }

    [Fact]
    public void IntNToAGateBelowCplFaultsAtTheIntInstruction()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label user = a.CreateLabel(), intAt = a.CreateLabel(), hGp = a.CreateLabel(), h40 = a.CreateLabel();
        IretqToRing3(a, user);
        a.Label(ref user);
        a.nop();
        a.Label(ref intAt);
        a.@int(0x40); // gate DPL0 from CPL3: #GP(0x40 * 8 + 2)
        a.hlt();
        a.Label(ref hGp);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results], rax);
        a.mov(rax, __qword_ptr[rsp + 8]);
        a.mov(__qword_ptr[Results + 8], rax);
        a.hlt();
        a.Label(ref h40);
        a.mov(__qword_ptr[Results + 16], 1);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, hGp, h40, intAt);
        Setup64(vm, TestVm.CodeBase, userPages: true);
        Gate64(vm, 13, l[0]);
        Gate64(vm, 0x40, l[1]);
        W64(vm, Tss + 4, 0x4_0000);
        vm.RunToHlt();
        Assert.Equal(0x40UL * 8 + 2, R64(vm, Results));
        Assert.Equal(l[2], R64(vm, Results + 8));
        Assert.Equal(0UL, R64(vm, Results + 16));
    }
}
