using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Hardware task switching in 32-bit protected mode (SDM vol. 3 §7.3): CALL to a TSS and IRET back through the
/// previous-task link, JMP through a task gate, an exception through a task gate with its error code on the new
/// task's stack, the busy-bit rules, the TSS's debug-trap flag, and a fault taken in the new task's context. The
/// expected values are the SDM's (the host CPU cannot run these in user mode).
/// </summary>
public class TaskSwitchTests
{
    private const ulong Tss2 = Tss + 0x1000, Tss3 = Tss + 0x2000;
    private const ushort Tss1Sel = P32Tss, Tss2Sel = 0x30, GateSel = 0x38, Tss3Sel = 0x40;
    private const uint Stack2 = 0x6_0000, Stack3 = 0x7_0000;

    /// <summary>Setup32's machine plus a second and third 32-bit TSS and a task gate to the second.</summary>
    private static void SetupTasks(TestVm vm, ulong entry, uint task2Eip, uint task3Eip = 0)
    {
        Setup32(vm, entry);
        W64(vm, Gdt + Tss1Sel, Desc(Tss, 0x67, 0x8B, 0)); // busy, as LTR leaves it
        W64(vm, Gdt + Tss2Sel, Desc(Tss2, 0x67, 0x89, 0));
        W64(vm, Gdt + GateSel, ((ulong)Tss2Sel << 16) | (0x85UL << 40));
        W64(vm, Gdt + Tss3Sel, Desc(Tss3, 0x67, 0x89, 0));
        vm.Cpu.Gdtr = new TableRegister { Base = Gdt, Limit = 0x47 };
        InitTss(vm, Tss2, task2Eip, Stack2, eax: 0xAAAA_0002);
        InitTss(vm, Tss3, task3Eip, Stack3, eax: 0xAAAA_0003);
    }

    private static void InitTss(TestVm vm, ulong tss, uint eip, uint esp, uint eax)
    {
        var m = vm.Vm.Memory;
        for (ulong o = 0; o < 0x68; o += 4) m.WriteU32(tss + o, 0);
        m.WriteU32(tss + 0x20, eip);
        m.WriteU32(tss + 0x24, 0x2);
        m.WriteU32(tss + 0x28, eax);
        m.WriteU32(tss + 0x38, esp);
        m.WriteU32(tss + 0x4C, P32Code);
        foreach (ulong o in new ulong[] { 0x48, 0x50, 0x54, 0x58, 0x5C }) m.WriteU32(tss + o, P32Data);
    }

    private static byte TypeOf(TestVm vm, ushort sel) => (byte)((R64(vm, Gdt + sel) >> 40) & 0xF);
    private static uint M32(TestVm vm, ulong a) => vm.Vm.Memory.ReadU32(a);

    [Fact]
    public void CallToATssRunsTheTaskAndIretReturnsThroughTheLink()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 3).Select(_ => a.CreateLabel()).ToArray(); // 0 after call, 1 task2, 2 task2's iret+1
            a.mov(eax, 0x1111_1111u);
            a.mov(ebx, 0x2222_2222u);
            a.call(Tss2Sel, 0);
            a.Label(ref L[0]);
            a.mov(__dword_ptr[Results], eax);
            a.mov(__dword_ptr[Results + 4], ebx);
            a.pushfd();
            a.pop(eax);
            a.mov(__dword_ptr[Results + 8], eax);
            a.mov(eax, cr0);
            a.mov(__dword_ptr[Results + 12], eax);
            a.str(ax);
            a.mov(__word_ptr[Results + 16], ax);
            a.hlt();
            a.Label(ref L[1]);
            a.mov(__dword_ptr[Results + 0x20], eax);
            a.pushfd();
            a.pop(eax);
            a.mov(__dword_ptr[Results + 0x24], eax);
            a.str(ax);
            a.mov(__word_ptr[Results + 0x28], ax);
            a.mov(eax, 0xBBBB_0002u);
            a.iretd();
            a.Label(ref L[2]);
            a.hlt();
            return L;
        });
        SetupTasks(vm, TestVm.CodeBase, (uint)l[1]);
        vm.RunToHlt();
        // The called task: its own EAX, NT set, TR = its TSS; the link holds the caller's TSS.
        Assert.Equal(0xAAAA_0002u, M32(vm, Results + 0x20));
        Assert.NotEqual(0u, M32(vm, Results + 0x24) & (1u << 14));
        Assert.Equal(Tss2Sel, (ushort)M32(vm, Results + 0x28));
        Assert.Equal(Tss1Sel, (ushort)M32(vm, Tss2));
        // Back in the caller: its registers from its TSS, NT clear, CR0.TS set, TR back.
        Assert.Equal(0x1111_1111u, M32(vm, Results));
        Assert.Equal(0x2222_2222u, M32(vm, Results + 4));
        Assert.Equal(0u, M32(vm, Results + 8) & (1u << 14));
        Assert.NotEqual(0u, M32(vm, Results + 12) & 8);
        Assert.Equal(Tss1Sel, (ushort)M32(vm, Results + 16));
        // The caller's TSS got the return EIP; the called task's TSS got its state at the IRET, NT clear.
        Assert.Equal((uint)l[0], M32(vm, Tss + 0x20));
        Assert.Equal((uint)l[2], M32(vm, Tss2 + 0x20));
        Assert.Equal(0xBBBB_0002u, M32(vm, Tss2 + 0x28));
        Assert.Equal(0u, M32(vm, Tss2 + 0x24) & (1u << 14));
        // IRET freed the called task; the caller stayed busy throughout.
        Assert.Equal(0x9, TypeOf(vm, Tss2Sel));
        Assert.Equal(0xB, TypeOf(vm, Tss1Sel));
    }

    [Fact]
    public void JmpThroughATaskGateFreesTheOldTaskAndLinksNothing()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray();
            a.mov(esi, 0x5151_5151u);
            a.jmp(GateSel, 0);
            a.Label(ref L[0]);
            a.hlt();
            a.Label(ref L[1]);
            a.pushfd();
            a.pop(eax);
            a.mov(__dword_ptr[Results], eax);
            a.mov(__dword_ptr[Results + 4], esp);
            a.hlt();
            return L;
        });
        SetupTasks(vm, TestVm.CodeBase, (uint)l[1]);
        vm.RunToHlt();
        Assert.Equal(0u, M32(vm, Results) & (1u << 14)); // JMP: no NT
        Assert.Equal(Stack2, M32(vm, Results + 4));
        Assert.Equal(0u, M32(vm, Tss2)); // no link
        Assert.Equal((uint)l[0], M32(vm, Tss + 0x20));
        Assert.Equal(0x5151_5151u, M32(vm, Tss + 0x40)); // ESI saved
        Assert.Equal(0x9, TypeOf(vm, Tss1Sel));
        Assert.Equal(0xB, TypeOf(vm, Tss2Sel));
        Assert.Equal(Tss2Sel, vm.Cpu.Tr.Selector);
    }

    [Fact]
    public void ExceptionThroughATaskGatePushesItsErrorCodeOnTheNewTasksStack()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray(); // 0 faulting MOV, 1 handler task
            a.mov(eax, 0x1000u);
            a.Label(ref L[0]);
            a.mov(ds, ax); // beyond the GDT limit: #GP(0x1000)
            a.hlt();
            a.Label(ref L[1]);
            a.pop(eax);
            a.mov(__dword_ptr[Results], eax);
            a.mov(__dword_ptr[Results + 4], esp);
            a.pushfd();
            a.pop(eax);
            a.mov(__dword_ptr[Results + 8], eax);
            a.hlt();
            return L;
        });
        SetupTasks(vm, TestVm.CodeBase, 0, (uint)l[1]);
        W64(vm, Idt + 13 * 8, ((ulong)Tss3Sel << 16) | (0x85UL << 40));
        vm.RunToHlt();
        Assert.Equal(0x1000u, M32(vm, Results));
        Assert.Equal(Stack3, M32(vm, Results + 4));
        Assert.NotEqual(0u, M32(vm, Results + 8) & (1u << 14)); // nested task
        Assert.Equal(Tss1Sel, (ushort)M32(vm, Tss3));
        Assert.Equal((uint)l[0], M32(vm, Tss + 0x20)); // a fault saves the faulting instruction's EIP
        Assert.Equal(0xB, TypeOf(vm, Tss3Sel));
    }

    [Fact]
    public void JmpToABusyTssIsGpWithItsSelector()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray();
            a.Label(ref L[0]);
            a.jmp(Tss1Sel, 0); // our own TSS: busy
            a.hlt();
            a.Label(ref L[1]);
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[Results], eax);
            a.mov(eax, __dword_ptr[esp + 4]);
            a.mov(__dword_ptr[Results + 4], eax);
            a.hlt();
            return L;
        });
        SetupTasks(vm, TestVm.CodeBase, 0);
        Gate32(vm, 13, l[1], P32Code);
        vm.RunToHlt();
        Assert.Equal((uint)Tss1Sel, M32(vm, Results));
        Assert.Equal((uint)l[0], M32(vm, Results + 4));
        Assert.Equal(Tss1Sel, vm.Cpu.Tr.Selector);
    }

    [Fact]
    public void TheTssTrapFlagRaisesADebugTrapBeforeTheNewTasksFirstInstruction()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray(); // 0 task2, 1 #DB handler
            a.jmp(Tss2Sel, 0);
            a.Label(ref L[0]);
            a.mov(__dword_ptr[Results + 8], 1u); // never reached: the handler halts
            a.hlt();
            a.Label(ref L[1]);
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[Results], eax);
            a.mov(eax, dr6);
            a.mov(__dword_ptr[Results + 4], eax);
            a.hlt();
            return L;
        });
        SetupTasks(vm, TestVm.CodeBase, (uint)l[0]);
        vm.Vm.Memory.WriteU32(Tss2 + 0x64, 1); // T
        Gate32(vm, 1, l[1], P32Code);
        vm.RunToHlt();
        Assert.Equal((uint)l[0], M32(vm, Results));
        Assert.NotEqual(0u, M32(vm, Results + 4) & (1u << 15)); // DR6.BT
        Assert.Equal(0u, M32(vm, Results + 8));
    }

    [Fact]
    public void ABadSegmentInTheNewTssFaultsInTheNewTasksContext()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray(); // 0 task2, 1 #TS handler
            a.jmp(Tss2Sel, 0);
            a.Label(ref L[0]);
            a.hlt();
            a.Label(ref L[1]);
            a.mov(ax, P32Data); // DS is the bad selector, unusable: the handler (in the new task) repairs it
            a.mov(ds, ax);
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[Results], eax);
            a.mov(eax, __dword_ptr[esp + 4]);
            a.mov(__dword_ptr[Results + 4], eax);
            a.mov(__dword_ptr[Results + 8], esp);
            a.hlt();
            return L;
        });
        SetupTasks(vm, TestVm.CodeBase, (uint)l[0]);
        vm.Vm.Memory.WriteU32(Tss2 + 0x54, 0x1000); // DS beyond the GDT
        Gate32(vm, 10, l[1], P32Code);
        vm.RunToHlt();
        Assert.Equal(0x1000u, M32(vm, Results));          // #TS(DS selector)
        Assert.Equal((uint)l[0], M32(vm, Results + 4));   // pushed EIP: the new task's first instruction
        Assert.Equal(Stack2 - 16, M32(vm, Results + 8));  // on the new task's stack (error code, EIP, CS, EFLAGS)
        Assert.Equal(Tss2Sel, vm.Cpu.Tr.Selector);
        Assert.Equal(0xB, TypeOf(vm, Tss2Sel));
    }
}
