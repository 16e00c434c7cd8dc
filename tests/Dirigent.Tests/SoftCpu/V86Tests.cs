using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Virtual-8086 mode without VME (SDM vol. 3 ch. 20): IRET from CPL 0 into V86, real-mode addressing there, an
/// interrupt out to a CPL-0 handler (the nine-value frame, data segments nulled) and IRET back, the IOPL-sensitive
/// instructions (#GP(0) below IOPL 3, allowed at IOPL 3; INT3 never), and HLT's #GP at CPL 3. Expected values are
/// the SDM's: the host cannot run V86 code from a user process.
/// </summary>
public class V86Tests
{
    private const ulong V86Code = 0x1_0000; // CS = 0x1000
    private const ushort V86Cs = 0x1000, V86Ss = 0x2000, V86Ds = 0x3000, V86Fs = 0x4000;

    /// <summary>Assembles 16-bit code for CS:0 (labels are offsets in the segment) and writes it at linear 0x10000.</summary>
    private static ulong[] EmitV86(TestVm vm, Func<Assembler, Func<int, ushort>, Label[]> build)
    {
        ulong[] prev = new ulong[16], got = [];
        for (int pass = 0; pass < 2; pass++)
        {
            var a = new Assembler(16);
            var snap = (ulong[])prev.Clone();
            var labels = build(a, k => (ushort)snap[k]);
            using var ms = new MemoryStream();
            var res = a.Assemble(new StreamCodeWriter(ms), 0, BlockEncoderOptions.ReturnNewInstructionOffsets);
            vm.Vm.Memory.Write(V86Code, ms.ToArray());
            got = labels.Select(l => res.GetLabelRIP(l)).ToArray();
            Array.Copy(got, prev, got.Length);
        }
        return got;
    }

    /// <summary>CPL-0 code that IRETs into V86 at 1000:0000 with the given EFLAGS, SS:SP 2000:0100, DS=ES=3000, FS=GS=4000.</summary>
    private static void IretToV86(Assembler a, uint eflags)
    {
        a.push((int)V86Fs); // GS
        a.push((int)V86Fs); // FS
        a.push((int)V86Ds); // DS
        a.push((int)V86Ds); // ES
        a.push((int)V86Ss);
        a.push(0x100);
        a.push((int)eflags);
        a.push((int)V86Cs);
        a.push(0);
        a.iretd();
    }

    private static uint M32(TestVm vm, ulong a) => vm.Vm.Memory.ReadU32(a);
    private static ushort M16(TestVm vm, ulong a) => (ushort)vm.Vm.Memory.ReadU32(a);

    [Fact]
    public void IretEntersV86AndAnInterruptLeavesItForACpl0HandlerAndBack()
    {
        using var vm = new TestVm();
        var v = EmitV86(vm, (a, at) =>
        {
            var L = Enumerable.Range(0, 3).Select(_ => a.CreateLabel()).ToArray(); // 0 after INT, 1 after IRET, 2 HLT
            a.mov(ax, 0x1234);
            a.mov(__word_ptr[0x10], ax);
            a.mov(ax, ss);
            a.mov(__word_ptr[0x12], ax);
            a.mov(__word_ptr[0x14], sp);
            a.@int(0x21);
            a.Label(ref L[0]);
            a.mov(__word_ptr[0x16], bx);
            a.cli(); // IOPL 3: allowed
            a.pushf();
            a.pop(ax);
            a.mov(__word_ptr[0x18], ax);
            a.pushf();
            a.push(cs);
            a.push((int)at(1));
            a.iret(); // IOPL 3: a real-mode-style return inside V86
            a.Label(ref L[1]);
            a.mov(__word_ptr[0x1A], 0x5A5A);
            a.Label(ref L[2]);
            a.hlt(); // CPL 3: #GP(0)
            return L;
        });
        var k = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray(); // 0 INT 21h handler, 1 #GP handler
            IretToV86(a, 0x2_3002); // VM | IOPL 3 | bit 1
            a.Label(ref L[0]);
            a.mov(ecx, ds);
            a.mov(edx, es);
            a.mov(ax, P32Data);
            a.mov(ds, ax);
            a.mov(__dword_ptr[Results + 40], ecx);
            a.mov(__dword_ptr[Results + 44], edx);
            for (int n = 0; n < 9; n++)
            {
                a.mov(eax, __dword_ptr[esp + 4 * n]);
                a.mov(__dword_ptr[Results + 4 * (ulong)n], eax);
            }
            a.pushfd();
            a.pop(eax);
            a.mov(__dword_ptr[Results + 48], eax);
            a.mov(ebx, 0xBEEFu);
            a.iretd(); // VM=1 in the frame: back to V86, segments from the frame
            a.Label(ref L[1]);
            a.mov(ax, P32Data);
            a.mov(ds, ax);
            for (int n = 0; n < 4; n++)
            {
                a.mov(eax, __dword_ptr[esp + 4 * n]);
                a.mov(__dword_ptr[Results + 64 + 4 * (ulong)n], eax);
            }
            a.hlt();
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        W64(vm, Tss + 4, (0x10UL << 32) | 0x4_0000); // SS0:ESP0
        Gate32(vm, 0x21, k[0], P32Code, dpl: 3);
        Gate32(vm, 13, k[1], P32Code);
        vm.RunToHlt();

        // V86 code addressed memory real-mode style.
        Assert.Equal(0x1234, M16(vm, 0x3_0010));
        Assert.Equal(V86Ss, M16(vm, 0x3_0012));
        Assert.Equal(0x100, M16(vm, 0x3_0014));
        // The INT 21h frame: EIP, CS, EFLAGS (VM set), ESP, SS, ES, DS, FS, GS.
        Assert.Equal((uint)v[0], M32(vm, Results));
        Assert.Equal(V86Cs, M16(vm, Results + 4));
        Assert.NotEqual(0u, M32(vm, Results + 8) & (1u << 17));
        Assert.Equal(3u, (M32(vm, Results + 8) >> 12) & 3);
        Assert.Equal(0x100u, M32(vm, Results + 12));
        Assert.Equal(V86Ss, M16(vm, Results + 16));
        Assert.Equal(V86Ds, M16(vm, Results + 20));
        Assert.Equal(V86Ds, M16(vm, Results + 24));
        Assert.Equal(V86Fs, M16(vm, Results + 28));
        Assert.Equal(V86Fs, M16(vm, Results + 32));
        Assert.Equal(0u, M32(vm, Results + 40) & 0xFFFF); // DS null in the handler
        Assert.Equal(0u, M32(vm, Results + 44) & 0xFFFF); // ES null
        Assert.Equal(0u, M32(vm, Results + 48) & (1u << 17)); // the handler runs outside V86
        // Back in V86: EBX from the handler, CLI allowed at IOPL 3, IRET inside V86 worked.
        Assert.Equal(0xBEEF, M16(vm, 0x3_0016));
        Assert.Equal(0u, M16(vm, 0x3_0018) & 0x200u);
        Assert.Equal(3u, (uint)(M16(vm, 0x3_0018) >> 12) & 3);
        Assert.Equal(0x5A5A, M16(vm, 0x3_001A));
        // HLT at CPL 3: #GP(0) at the HLT, from V86.
        Assert.Equal(0u, M32(vm, Results + 64));
        Assert.Equal((uint)v[2], M32(vm, Results + 68));
        Assert.Equal(V86Cs, M16(vm, Results + 72));
        Assert.NotEqual(0u, M32(vm, Results + 76) & (1u << 17));
    }

    [Fact]
    public void BelowIopl3TheSensitiveInstructionsFaultButInt3DoesNot()
    {
        using var vm = new TestVm();
        var v = EmitV86(vm, (a, at) =>
        {
            var L = Enumerable.Range(0, 6).Select(_ => a.CreateLabel()).ToArray();
            a.Label(ref L[0]);
            a.@int(0x21);
            a.Label(ref L[1]);
            a.cli();
            a.Label(ref L[2]);
            a.pushf();
            a.Label(ref L[3]);
            a.popf();
            a.Label(ref L[4]);
            a.iret();
            a.Label(ref L[5]);
            a.int3();
            return L;
        });
        var k = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 2).Select(_ => a.CreateLabel()).ToArray(); // 0 #GP handler, 1 #BP handler
            IretToV86(a, 0x2_0202); // VM, IOPL 0, IF
            a.Label(ref L[0]);
            // Record the faulting IP, then skip the instruction (CD ib is two bytes, the others one) and go back.
            a.mov(ax, P32Data);
            a.mov(ds, ax);
            a.mov(ecx, __dword_ptr[Flag]);
            a.mov(eax, __dword_ptr[esp + 4]);
            a.mov(__dword_ptr[ecx * 4 + (uint)Results], eax);
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[ecx * 4 + (uint)Results + 0x40], eax);
            a.inc(ecx);
            a.mov(__dword_ptr[Flag], ecx);
            a.mov(eax, __dword_ptr[esp + 4]);
            a.movzx(edx, __byte_ptr[eax + (uint)V86Code]);
            a.add(eax, 1);
            a.cmp(edx, 0xCD);
            a.jne(L[1]);
            a.add(eax, 1);
            a.Label(ref L[1]);
            a.mov(__dword_ptr[esp + 4], eax);
            a.add(esp, 4); // drop the error code
            a.iretd();
            return L;
        });
        // The #BP handler: its own code after the #GP handler.
        var bp = Emit2(vm, TestVm.CodeBase + 0x800, 32, (a, at) =>
        {
            var L = new[] { a.CreateLabel() };
            a.Label(ref L[0]);
            a.mov(ax, P32Data);
            a.mov(ds, ax);
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[Results + 0x80], eax);
            a.mov(eax, __dword_ptr[esp + 8]);
            a.mov(__dword_ptr[Results + 0x84], eax);
            a.hlt();
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        W64(vm, Tss + 4, (0x10UL << 32) | 0x4_0000);
        Gate32(vm, 13, k[0], P32Code);
        Gate32(vm, 3, bp[0], P32Code, dpl: 3);
        vm.RunToHlt();
        Assert.Equal(5u, M32(vm, Flag));
        for (int n = 0; n < 5; n++)
        {
            Assert.Equal((uint)v[n], M32(vm, Results + 4 * (ulong)n));
            Assert.Equal(0u, M32(vm, Results + 0x40 + 4 * (ulong)n)); // #GP(0)
        }
        Assert.Equal((uint)v[5] + 1, M32(vm, Results + 0x80)); // INT3 is a trap: the next IP
        Assert.NotEqual(0u, M32(vm, Results + 0x84) & (1u << 17));
    }
}
