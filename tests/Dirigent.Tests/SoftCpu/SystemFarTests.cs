using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Far JMP/CALL/RET through code segments and call gates, compatibility mode, and descriptor-table instructions.</summary>
public class SystemFarTests
{
    private const ulong Ptr = Results + 0x800; // far pointers in memory

    /// <summary>CALL m16:64 [disp32] (REX.W FF /3): encoded by hand, the assembler has no syntax for it.</summary>
    private static void CallFar64(Assembler a, ulong addr)
    {
        a.db(0x48, 0xFF, 0x1C, 0x25);
        a.dd((uint)addr);
    }

    /// <summary>RETFQ (REX.W CB).</summary>
    private static void Retfq(Assembler a) => a.db(0x48, 0xCB);

    [Fact]
    public void FarCallRetAndJumpsToCompatibilityModeAndBack()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label far64 = a.CreateLabel(), back = a.CreateLabel(), afterCall = a.CreateLabel();
        a.mov(r12, rsp);
        a.lea(rax, __[far64]);
        a.mov(__qword_ptr[Ptr], rax);
        a.mov(__word_ptr[Ptr + 8], K64);
        CallFar64(a, Ptr);
        a.Label(ref afterCall);
        a.mov(__qword_ptr[Results + 8], rsp);
        // JMP m16:32 to 32-bit compatibility-mode code at 0x180000, which jumps back with JMP ptr16:32.
        a.mov(__dword_ptr[Ptr + 16], 0x18_0000);
        a.mov(__word_ptr[Ptr + 20], K32);
        a.jmp(__fword_ptr[Ptr + 16]);
        a.Label(ref back);
        a.mov(rax, cs);
        a.mov(__qword_ptr[Results + 24], rax);
        a.hlt();
        a.Label(ref far64);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[Results], rax);
        a.mov(rax, __qword_ptr[rsp + 8]);
        a.mov(__qword_ptr[Results + 32], rax);
        Retfq(a);
        var l = Emit(vm, a, TestVm.CodeBase, back, afterCall);
        vm.Load(0x18_0000, 32, b =>
        {
            b.mov(eax, cs);
            b.mov(__dword_ptr[(uint)Results + 16], eax);
            b.jmp(K64, (uint)l[0]);
        });
        Setup64(vm, TestVm.CodeBase);
        vm.RunToHlt();
        Assert.Equal(l[1], R64(vm, Results));
        Assert.Equal((ulong)K64, R64(vm, Results + 32));
        Assert.Equal(TestVm.StackTop, R64(vm, Results + 8));
        Assert.Equal((ulong)K32, R64(vm, Results + 16) & 0xFFFF);
        Assert.Equal((ulong)K64, R64(vm, Results + 24));
    }

    [Fact]
    public void LongModeCallGateFromRing3AndFarReturn()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label user = a.CreateLabel(), gateTarget = a.CreateLabel(), afterCall = a.CreateLabel(), fin = a.CreateLabel();
        IretqToRing3(a, user);
        a.Label(ref user);
        a.mov(__qword_ptr[Ptr], 0);
        a.mov(__word_ptr[Ptr + 8], GateSel | 3);
        CallFar64(a, Ptr);
        a.Label(ref afterCall);
        a.mov(__qword_ptr[Results + 40], rsp);
        a.mov(rax, cs);
        a.mov(__qword_ptr[Results + 48], rax);
        a.@int(0x81);
        a.Label(ref gateTarget);
        a.mov(__qword_ptr[Results], rsp);
        for (int k = 0; k < 4; k++)
        {
            a.mov(rax, __qword_ptr[rsp + 8 * k]);
            a.mov(__qword_ptr[Results + 8 + 8 * (ulong)k], rax);
        }
        Retfq(a);
        a.Label(ref fin);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, gateTarget, afterCall, fin);
        Setup64(vm, TestVm.CodeBase, userPages: true);
        // 16-byte call gate at 0x48, DPL3, to K64:gateTarget.
        ulong t = l[0];
        W64(vm, Gdt + GateSel, (t & 0xFFFF) | ((ulong)K64 << 16) | (0xECUL << 40) | (((t >> 16) & 0xFFFF) << 48));
        W64(vm, Gdt + GateSel + 8, t >> 32);
        vm.Cpu.Gdtr = new Dirigent.Machine.Accel.TableRegister { Base = Gdt, Limit = 0x57 };
        W64(vm, Tss + 4, 0x4_0000);
        Gate64(vm, 0x81, l[2], dpl: 3);
        vm.RunToHlt();
        Assert.Equal(0x4_0000UL - 32, R64(vm, Results));
        Assert.Equal(l[1], R64(vm, Results + 8));
        Assert.Equal((ulong)U64, R64(vm, Results + 16));
        Assert.Equal(0x5_F000UL, R64(vm, Results + 24));
        Assert.Equal((ulong)UData, R64(vm, Results + 32));
        Assert.Equal(0x5_F000UL, R64(vm, Results + 40));
        Assert.Equal((ulong)U64, R64(vm, Results + 48));
    }

    [Fact]
    public void ProtectedModeCallGateCopiesParametersAndRetfInvalidatesDataSegments()
    {
        using var vm = new TestVm();
        const ushort gate = 0x30;
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            // 0 user, 1 target, 2 afterCall, 3 hGp
            var L = Enumerable.Range(0, 4).Select(_ => a.CreateLabel()).ToArray();
            a.mov(__dword_ptr[esp - 4], (uint)P32UData);
            a.mov(__dword_ptr[esp - 8], 0x5_F000u);
            a.mov(__dword_ptr[esp - 12], 0x2u);
            a.mov(__dword_ptr[esp - 16], (uint)P32UCode);
            a.mov(__dword_ptr[esp - 20], at(0));
            a.sub(esp, 20);
            a.iretd();
            a.Label(ref L[0]);
            a.mov(ax, P32UData);
            a.mov(ds, ax);
            a.mov(es, ax);
            a.mov(__dword_ptr[esp - 4], 0x1111_1111u); // two "pushed" parameters
            a.mov(__dword_ptr[esp - 8], 0x2222_2222u);
            a.sub(esp, 8);
            a.call((ushort)(gate | 3), 0);
            a.Label(ref L[2]);
            a.mov(__dword_ptr[Results + 64], esp);
            a.mov(eax, es);
            a.mov(__dword_ptr[Results + 68], eax);
            a.mov(eax, ds);
            a.mov(__dword_ptr[Results + 72], eax);
            a.hlt(); // #GP at CPL3 ends the test
            a.Label(ref L[1]);
            a.mov(ax, P32Data);
            a.mov(es, ax); // kernel data: must be nulled by the return to CPL3
            a.mov(__dword_ptr[Results], esp);
            for (int k = 0; k < 6; k++)
            {
                a.mov(eax, __dword_ptr[esp + 4 * k]);
                a.mov(__dword_ptr[Results + 4 + 4 * (ulong)k], eax);
            }
            a.retf(8);
            a.Label(ref L[3]);
            a.hlt();
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        ulong t = l[1];
        // 32-bit call gate, DPL3, 2 parameters.
        W64(vm, Gdt + gate, (t & 0xFFFF) | ((ulong)P32Code << 16) | (2UL << 32) | (0xECUL << 40) | (((t >> 16) & 0xFFFF) << 48));
        vm.Cpu.Gdtr = new Dirigent.Machine.Accel.TableRegister { Base = Gdt, Limit = 0x37 };
        W64(vm, Tss + 4, (0x10UL << 32) | 0x4_0000);
        Gate32(vm, 13, l[3], P32Code);
        vm.RunToHlt();
        var m = vm.Vm.Memory;
        Assert.Equal(0x4_0000u - 24, m.ReadU32(Results));
        Assert.Equal((uint)l[2], m.ReadU32(Results + 4));
        Assert.Equal((uint)P32UCode, m.ReadU32(Results + 8));
        Assert.Equal(0x2222_2222u, m.ReadU32(Results + 12));
        Assert.Equal(0x1111_1111u, m.ReadU32(Results + 16));
        Assert.Equal(0x5_F000u - 8, m.ReadU32(Results + 20));
        Assert.Equal((uint)P32UData, m.ReadU32(Results + 24));
        Assert.Equal(0x5_F000u, m.ReadU32(Results + 64));
        Assert.Equal(0u, m.ReadU32(Results + 68) & 0xFFFF);
        Assert.Equal((uint)P32UData, m.ReadU32(Results + 72) & 0xFFFF);
    }

    [Fact]
    public void DescriptorTableInstructions()
    {
        using var vm = new TestVm();
        const ushort tss2 = 0x48, ldt = 0x58, ldtData = 0x04 | 3; // LDT entry 0, TI=1, RPL3
        var a = new Assembler(64);
        Label hGp = a.CreateLabel();
        Label[] skip = Enumerable.Range(0, 8).Select(_ => a.CreateLabel()).ToArray();
        Label r1 = a.CreateLabel();
        a.mov(rbx, Results + 0x400);
        a.sgdt(__[Results]);
        a.sidt(__[Results + 16]);
        a.mov(ax, tss2);
        a.ltr(ax);
        a.str(eax);
        a.mov(__qword_ptr[Results + 32], rax);
        a.lea(r15, __[r1]);
        a.mov(ax, tss2);
        a.ltr(ax); // busy now: #GP(0x48)
        a.Label(ref r1);
        // LAR/LSL/VERR/VERW record ZF as 1/0 bytes.
        void Zf(int idx, ulong at)
        {
            a.mov(__byte_ptr[at], 0);
            a.jnz(skip[idx]);
            a.mov(__byte_ptr[at], 1);
            a.Label(ref skip[idx]);
        }
        a.mov(ecx, U64);
        a.lar(eax, ecx);
        Zf(0, Results + 40);
        a.mov(__dword_ptr[Results + 44], eax);
        a.mov(ecx, KData);
        a.lsl(eax, ecx);
        Zf(1, Results + 48);
        a.mov(__dword_ptr[Results + 52], eax);
        a.mov(cx, K64);
        a.verr(cx);
        Zf(2, Results + 56);
        a.verw(cx);
        Zf(3, Results + 57);
        a.mov(cx, KData);
        a.verw(cx);
        Zf(4, Results + 58);
        a.xor(ecx, ecx);
        a.lar(eax, ecx);
        Zf(5, Results + 59);
        a.mov(cx, 0x400); // beyond the GDT limit: no fault, ZF=0
        a.lsl(eax, ecx);
        Zf(6, Results + 60);
        // LLDT and a data segment from the LDT.
        a.mov(ax, ldt);
        a.lldt(ax);
        a.sldt(ecx);
        a.mov(__qword_ptr[Results + 64], rcx);
        a.mov(ax, ldtData);
        a.mov(es, ax);
        a.mov(eax, es);
        a.mov(__qword_ptr[Results + 72], rax);
        a.hlt();
        RecordingHandler64(a, ref hGp, 13, true);
        var l = Emit(vm, a, TestVm.CodeBase, hGp);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 13, l[0]);
        const ulong ldtBase = Results + 0x600;
        W64(vm, Gdt + tss2, Desc(Tss + 0x100, 0x67, 0x89, 0));
        W64(vm, Gdt + tss2 + 8, 0);
        W64(vm, Gdt + ldt, Desc(ldtBase, 0xF, 0x82, 0));
        W64(vm, Gdt + ldt + 8, 0);
        W64(vm, ldtBase, 0x00CF_F300_0000_FFFF); // DPL3 data
        vm.Cpu.Gdtr = new Dirigent.Machine.Accel.TableRegister { Base = Gdt, Limit = 0x67 };
        vm.RunToHlt();
        var m = vm.Vm.Memory;
        Assert.Equal((ushort)0x67, m.ReadU16(Results));
        Assert.Equal(Gdt, m.ReadU64(Results + 2));
        Assert.Equal((ushort)0xFFF, m.ReadU16(Results + 16));
        Assert.Equal(Idt, m.ReadU64(Results + 18));
        Assert.Equal((ulong)tss2, m.ReadU64(Results + 32));
        Assert.Equal(0x8Bu, (uint)(m.ReadU64(Gdt + tss2) >> 40) & 0xFF); // marked busy
        Assert.Equal((13UL, (ulong)tss2), (R64(vm, Results + 0x400), R64(vm, Results + 0x408)));
        Assert.Equal(1, m.ReadU8(Results + 40));
        Assert.Equal(0x00A0_FB00u, m.ReadU32(Results + 44) | 0x100); // LAR: bits 23:20 and 15:8 (accessed bit aside)
        Assert.Equal(1, m.ReadU8(Results + 48));
        Assert.Equal(0xFFFF_FFFFu, m.ReadU32(Results + 52));
        Assert.Equal(new byte[] { 1, 0, 1, 0, 0 }, new[] { m.ReadU8(Results + 56), m.ReadU8(Results + 57), m.ReadU8(Results + 58), m.ReadU8(Results + 59), m.ReadU8(Results + 60) });
        Assert.Equal((ulong)ldt, m.ReadU64(Results + 64));
        Assert.Equal((ulong)ldtData, m.ReadU64(Results + 72));
    }

    [Fact]
    public void FarPointerLoadsAndSegmentPushPop()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label hGp = a.CreateLabel(), r1 = a.CreateLabel();
        a.mov(rbx, Results + 0x400);
        a.mov(__dword_ptr[Ptr], 0x1234_5678);
        a.mov(__word_ptr[Ptr + 4], UData);
        a.lfs(eax, __fword_ptr[Ptr]);
        a.mov(__qword_ptr[Results], rax);
        a.mov(ecx, fs);
        a.mov(__qword_ptr[Results + 8], rcx);
        a.push(fs);
        a.pop(gs);
        a.mov(ecx, gs);
        a.mov(__qword_ptr[Results + 16], rcx);
        a.mov(__qword_ptr[Results + 24], rsp);
        a.lea(r15, __[r1]);
        a.mov(__word_ptr[Ptr + 4], K64);
        a.mov(edx, 0xABCDu);
        a.lgs(edx, __fword_ptr[Ptr]); // execute-only code segment: #GP(0x10), EDX unchanged
        a.Label(ref r1);
        a.mov(__qword_ptr[Results + 32], rdx);
        a.hlt();
        RecordingHandler64(a, ref hGp, 13, true);
        var l = Emit(vm, a, TestVm.CodeBase, hGp);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 13, l[0]);
        // Make K64 execute-only so that loading it into a data segment register faults.
        W64(vm, Gdt + K64, 0x00AF_9900_0000_FFFF);
        vm.RunToHlt();
        Assert.Equal(0x1234_5678UL, R64(vm, Results));
        Assert.Equal((ulong)UData, R64(vm, Results + 8));
        Assert.Equal((ulong)UData, R64(vm, Results + 16));
        Assert.Equal(TestVm.StackTop, R64(vm, Results + 24));
        Assert.Equal((13UL, (ulong)K64), (R64(vm, Results + 0x400), R64(vm, Results + 0x408)));
        Assert.Equal(0xABCDUL, R64(vm, Results + 32));
    }
}
