using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Exceptions and privilege transitions in 32-bit protected mode (IDT with 8-byte gates, 32-bit TSS).</summary>
public class Exception32Tests
{
    /// <summary>Logs (tag, error, pushed EIP, pushed CS) at [EBX] as dwords and resumes at EDI.</summary>
    private static void Handler(Assembler a, ref Label l, int tag, bool hasError)
    {
        a.Label(ref l);
        a.mov(__dword_ptr[ebx], tag);
        if (hasError)
        {
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[ebx + 4], eax);
            a.add(esp, 4);
        }
        else a.mov(__dword_ptr[ebx + 4], 0);
        a.mov(eax, __dword_ptr[esp]);
        a.mov(__dword_ptr[ebx + 8], eax);
        a.mov(eax, __dword_ptr[esp + 4]);
        a.mov(__dword_ptr[ebx + 12], eax);
        a.add(ebx, 16);
        a.mov(__dword_ptr[esp], edi);
        a.iretd();
    }

    private static Label[] Labels(Assembler a, int n) => Enumerable.Range(0, n).Select(_ => a.CreateLabel()).ToArray();

    [Fact]
    public void UdGpAndIntNInProtectedMode()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            // 0 hUd, 1 hGp, 2 hInt, 3 hBp, 4 ud, 5 gp, 6 r1, 7 r2, 8 r3, 9 r4
            var L = Labels(a, 10);
            a.mov(ebx, (uint)Results);
            a.mov(edi, at(6));
            a.Label(ref L[4]);
            a.ud2();
            a.Label(ref L[6]);
            a.mov(edi, at(7));
            a.mov(eax, (uint)P32Tss); // a TSS is not a data segment: #GP(0x28)
            a.Label(ref L[5]);
            a.mov(es, ax);
            a.Label(ref L[7]);
            a.mov(edi, at(8));
            a.@int(0x21);
            a.Label(ref L[8]);
            a.mov(edi, at(9));
            a.int3();
            a.Label(ref L[9]);
            a.hlt();
            Handler(a, ref L[0], 6, false);
            Handler(a, ref L[1], 13, true);
            Handler(a, ref L[2], 0x21, false);
            Handler(a, ref L[3], 3, false);
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        Gate32(vm, 6, l[0], P32Code);
        Gate32(vm, 13, l[1], P32Code);
        Gate32(vm, 0x21, l[2], P32Code, type: 0xF);
        Gate32(vm, 3, l[3], P32Code);
        vm.RunToHlt();
        uint[] Rec(int n) => Enumerable.Range(0, 4).Select(k => R32(vm, Results + (ulong)(n * 16 + k * 4))).ToArray();
        Assert.Equal(new uint[] { 6, 0, (uint)l[4], P32Code }, Rec(0));
        Assert.Equal(new uint[] { 13, P32Tss, (uint)l[5], P32Code }, Rec(1));
        Assert.Equal(new uint[] { 0x21, 0, (uint)l[8], P32Code }, Rec(2));
        Assert.Equal(new uint[] { 3, 0, (uint)l[9], P32Code }, Rec(3));
    }

    [Fact]
    public void Ring3IntSwitchesToTssStackAndIretdReturnsToRing3()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            // 0 h, 1 back, 2 hGp, 3 user
            var L = Labels(a, 4);
            a.mov(__dword_ptr[esp - 4], (uint)P32UData);
            a.mov(__dword_ptr[esp - 8], 0x5_F000u);
            a.mov(__dword_ptr[esp - 12], 0x3002u);
            a.mov(__dword_ptr[esp - 16], (uint)P32UCode);
            a.mov(__dword_ptr[esp - 20], at(3));
            a.sub(esp, 20);
            a.iretd();
            a.Label(ref L[3]);
            a.mov(ax, P32UData);
            a.mov(ds, ax);
            a.mov(al, (byte)'u');
            a.@out(0xE9, al);
            a.@int(0x80);
            a.Label(ref L[1]);
            a.mov(__dword_ptr[Results + 40], 0x600D);
            a.mov(eax, cs);
            a.mov(__dword_ptr[Results + 44], eax);
            a.hlt(); // privileged at CPL3: #GP(0)
            a.Label(ref L[2]);
            a.mov(eax, __dword_ptr[esp + 8]);
            a.mov(__dword_ptr[Results + 48], eax);
            a.hlt();
            a.Label(ref L[0]);
            a.mov(__dword_ptr[Results], esp);
            for (int k = 0; k < 5; k++)
            {
                a.mov(eax, __dword_ptr[esp + 4 * k]);
                a.mov(__dword_ptr[Results + 4 + 4 * (ulong)k], eax);
            }
            a.mov(eax, ds);
            a.mov(__dword_ptr[Results + 24], eax);
            a.iretd();
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        Gate32(vm, 0x80, l[0], P32Code, dpl: 3);
        Gate32(vm, 13, l[2], P32Code);
        W64(vm, Tss + 4, (0x10UL << 32) | 0x4_0000); // ESP0, SS0
        vm.RunToHlt();
        Assert.Equal("u", vm.Console.ToString());
        Assert.Equal(0x4_0000u - 20, R32(vm, Results));
        Assert.Equal((uint)l[1], R32(vm, Results + 4));
        Assert.Equal((uint)P32UCode, R32(vm, Results + 8));
        Assert.Equal(0x3002u, R32(vm, Results + 12) & 0x3FFF & ~0x8D5u);
        Assert.Equal(0x5_F000u, R32(vm, Results + 16));
        Assert.Equal((uint)P32UData, R32(vm, Results + 20));
        Assert.Equal(0x600Du, R32(vm, Results + 40));
        Assert.Equal((uint)P32UCode, R32(vm, Results + 44));
        Assert.Equal((uint)P32UCode, R32(vm, Results + 48));
        Assert.Equal(0, vm.Cpu.Cpl);
    }

    [Fact]
    public void SysenterSysexitRoundTrip()
    {
        using var vm = new TestVm();
        Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            // 0 user, 1 entry
            var L = Labels(a, 2);
            a.mov(ecx, 0x174u);
            a.mov(eax, (uint)P32Code);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, 0x175u);
            a.mov(eax, 0x4_0000u);
            a.wrmsr();
            a.mov(ecx, 0x176u);
            a.mov(eax, at(1));
            a.wrmsr();
            a.mov(esi, 0u);
            a.mov(edx, at(0));
            a.mov(ecx, 0x5_F000u);
            a.sysexit();
            a.Label(ref L[0]);
            a.mov(eax, cs);
            a.mov(__dword_ptr[Results], eax);
            a.mov(eax, ss);
            a.mov(__dword_ptr[Results + 4], eax);
            a.mov(__dword_ptr[Results + 8], esp);
            a.sysenter();
            a.Label(ref L[1]);
            a.add(esi, 1);
            a.mov(eax, cs);
            a.mov(__dword_ptr[Results + 12], eax);
            a.mov(eax, ss);
            a.mov(__dword_ptr[Results + 16], eax);
            a.mov(__dword_ptr[Results + 20], esp);
            a.hlt();
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        vm.RunToHlt();
        Assert.Equal(0x1Bu, R32(vm, Results));
        Assert.Equal(0x23u, R32(vm, Results + 4));
        Assert.Equal(0x5_F000u, R32(vm, Results + 8));
        Assert.Equal((uint)P32Code, R32(vm, Results + 12));
        Assert.Equal((uint)P32Data, R32(vm, Results + 16));
        Assert.Equal(0x4_0000u, R32(vm, Results + 20));
        Assert.Equal(1UL, vm.Cpu.Gpr[6]);
    }
}
