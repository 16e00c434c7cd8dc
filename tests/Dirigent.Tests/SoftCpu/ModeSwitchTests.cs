using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Mode transitions driven entirely by guest code, boot-sector style, and real-mode interrupts.</summary>
public class ModeSwitchTests
{
    private static void Out(Assembler a, char ch)
    {
        a.mov(al, (byte)ch);
        a.@out(0xE9, al);
    }

    [Fact]
    public void RealToProtectedToLongModeInGuestCode()
    {
        using var vm = new TestVm();
        // ---- 16-bit boot sector at 0:7C00: GDT, LGDT, CR0.PE, far jump ----
        vm.Start16(a =>
        {
            a.cli();
            Out(a, 'R');
            uint[] gdt = { 0, 0, 0xFFFF, 0x00CF_9B00, 0xFFFF, 0x00CF_9300, 0xFFFF, 0x00AF_9B00 };
            for (int k = 0; k < gdt.Length; k++) a.mov(__dword_ptr[0x5000 + 4 * k], gdt[k]);
            a.mov(__word_ptr[0x5100], 0x1F);
            a.mov(__dword_ptr[0x5102], 0x5000u);
            a.lgdt(__[0x5100]);
            a.mov(eax, cr0);
            a.or(eax, 1);
            a.mov(cr0, eax);
            a.jmp(0x08, 0x8000);
        });
        // ---- 32-bit protected mode at 0x8000: page tables, PAE, LME, PG, far jump to 64-bit ----
        vm.Load(0x8000, 32, a =>
        {
            var zero = a.CreateLabel();
            a.mov(ax, 0x10);
            a.mov(ds, ax);
            a.mov(es, ax);
            a.mov(ss, ax);
            a.mov(esp, 0x7000);
            Out(a, 'P');
            a.mov(edi, 0x1_0000);
            a.mov(ecx, 3 * 1024);
            a.Label(ref zero);
            a.mov(__dword_ptr[edi], 0);
            a.add(edi, 4);
            a.dec(ecx);
            a.jnz(zero);
            a.mov(__dword_ptr[0x1_0000], 0x1_1003);
            a.mov(__dword_ptr[0x1_1000], 0x1_2003);
            a.mov(__dword_ptr[0x1_2000], 0x83);
            a.mov(__dword_ptr[0x1_2008], 0x20_0083);
            a.mov(eax, cr4);
            a.or(eax, 0x20);
            a.mov(cr4, eax);
            a.mov(eax, 0x1_0000);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC000_0080);
            a.rdmsr();
            a.or(eax, 0x100);
            a.wrmsr();
            a.mov(eax, cr0);
            a.or(eax, 0x8000_0000);
            a.mov(cr0, eax);
            Out(a, 'C'); // compatibility mode: LMA=1, CS still 32-bit
            a.mov(ecx, 0xC000_0080);
            a.rdmsr();
            a.mov(__dword_ptr[0x5210], eax);
            a.jmp(0x18, 0x9000);
        });
        // ---- 64-bit ----
        vm.Load(0x9000, 64, a =>
        {
            Out(a, 'L');
            a.mov(rax, 0x1122_3344_5566_7788UL);
            a.mov(__qword_ptr[0x5200], rax);
            a.mov(rax, rsp);
            a.mov(__qword_ptr[0x5208], rax);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal("RPCL", vm.Console.ToString());
        Assert.True(vm.Cpu.Is64BitMode);
        Assert.True(vm.Cpu.LongModeActive);
        Assert.Equal((ushort)0x18, vm.Cpu.Sreg[1].Selector);
        Assert.Equal(0x1122_3344_5566_7788UL, vm.Vm.Memory.ReadU64(0x5200));
        Assert.Equal(0x7000UL, vm.Vm.Memory.ReadU64(0x5208));
        Assert.Equal(0x500u, vm.Vm.Memory.ReadU32(0x5210) & 0x500); // LME and LMA seen from compatibility mode
        Assert.Equal(0x10000UL, vm.Cpu.Cr3);
    }

    [Fact]
    public void RealModeIntFarCallAndUdGoThroughTheIvt()
    {
        using var vm = new TestVm();
        vm.Start16(a =>
        {
            a.mov(__dword_ptr[0x40 * 4], 0x0000_7E00u); // IVT[0x40] = 0000:7E00
            a.mov(__dword_ptr[6 * 4], 0x07E0_0080u);   // IVT[6] = 07E0:0080 (= 0x7E80)
            a.mov(__dword_ptr[3 * 4], 0x0000_7E40u);   // IVT[3] = 0000:7E40
            a.int3();
            a.@int(0x40);
            Out(a, 'M');
            a.call(0x0000, 0x7F00);
            Out(a, 'B');
            a.ud2();
        });
        vm.Load(0x7E00, 16, a =>
        {
            Out(a, 'I');
            a.iret();
        });
        vm.Load(0x7E40, 16, a =>
        {
            Out(a, '3');
            a.iret();
        });
        vm.Load(0x7E80, 16, a =>
        {
            Out(a, 'U');
            a.mov(ax, cs);
            a.mov(__word_ptr[0x6000], ax);
            a.mov(bx, sp);
            a.mov(ax, __word_ptr[bx]); // SS = DS = 0
            a.mov(__word_ptr[0x6002], ax);
            a.hlt();
        });
        vm.Load(0x7F00, 16, a =>
        {
            Out(a, 'F');
            a.retf();
        });
        vm.RunToHlt();
        Assert.Equal("3IMFBU", vm.Console.ToString());
        Assert.Equal(0x07E0, vm.Vm.Memory.ReadU16(0x6000));
        // #UD pushes the address of UD2 itself: the last two bytes of the boot code.
        ushort pushedIp = vm.Vm.Memory.ReadU16(0x6002);
        Assert.Equal(0x0F, vm.Vm.Memory.ReadU8(pushedIp));
        Assert.Equal(0x0B, vm.Vm.Memory.ReadU8(pushedIp + 1UL));
    }
}

/// <summary>Leaving and re-entering long mode from compatibility mode, as Linux's decompressor trampoline does.</summary>
public class ModeSwitchLongModeExitTests
{
    [Fact]
    public void PagingOffInCompatibilityModeClearsLmaAndPagingOnSetsItAgain()
    {
        using var vm = new TestVm();
        const ulong compat = 0x18_0000;
        var a = new Assembler(64);
        Label back = a.CreateLabel();
        // RETFQ to the 32-bit code segment: frame is RIP, CS.
        a.mov(__qword_ptr[rsp - 16], (int)compat);
        a.mov(__qword_ptr[rsp - 8], SystemTestKit.K32);
        a.sub(rsp, 16);
        a.db(0x48, 0xCB);
        a.Label(ref back);
        a.mov(ecx, 0xC000_0080u);
        a.rdmsr();
        a.mov(__dword_ptr[SystemTestKit.Results + 8], eax);
        a.mov(__qword_ptr[SystemTestKit.Results + 16], rsp);
        a.hlt();
        var l = SystemTestKit.Emit(vm, a, TestVm.CodeBase, back);
        vm.Load(compat, 32, b =>
        {
            b.mov(eax, cr0);
            b.and(eax, 0x7FFF_FFFF);
            b.mov(cr0, eax);
            b.mov(ecx, 0xC000_0080u);
            b.rdmsr();
            b.mov(__dword_ptr[(uint)SystemTestKit.Results], eax);
            b.mov(eax, cr0);
            b.or(eax, 0x8000_0000);
            b.mov(cr0, eax);
            b.jmp(SystemTestKit.K64, (uint)l[0]);
        });
        SystemTestKit.Setup64(vm, TestVm.CodeBase);
        vm.RunToHlt();
        Assert.Equal(0x100u, vm.Vm.Memory.ReadU32(SystemTestKit.Results) & 0x500);     // LME only
        Assert.Equal(0x500u, vm.Vm.Memory.ReadU32(SystemTestKit.Results + 8) & 0x500); // LME | LMA
        Assert.Equal(TestVm.StackTop, vm.Vm.Memory.ReadU64(SystemTestKit.Results + 16));
        Assert.True(vm.Cpu.Is64BitMode);
    }
}
