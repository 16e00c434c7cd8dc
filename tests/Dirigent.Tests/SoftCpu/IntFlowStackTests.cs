using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>PUSH/POP forms, PUSHF/POPF privilege rules, PUSHA/POPA, ENTER/LEAVE (expected values from the SDM by hand).</summary>
public class IntFlowStackTests
{
    private const ulong Top = TestVm.StackTop;

    [Fact]
    public void PushPopForms64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(rax, 0x1122_3344_5566_7788UL);
            a.push(rax);
            a.push(-2);                       // imm8, sign-extended to 64 bits
            a.db(0x66, 0x6A, 0x05);           // push word 5: 2 bytes
            a.push(__qword_ptr[rsp + 2]);     // pushes the -2 (address uses RSP before the decrement)
            a.pop(rbx);                       // rbx = -2
            a.add(rsp, 2);
            a.pop(__qword_ptr[rsp]);          // pops -2, stores at new RSP (over 0x1122..): [top-8] = -2
            a.pop(rcx);                       // rcx = -2
            a.push(rsp);                      // pushes top
            a.pop(rdx);
            a.mov(r8, rsp);
            a.push(0x1234);
            a.pop(rsp);                       // rsp = popped value
            a.mov(r9, rsp);
            a.mov(rsp, r8);
            a.db(0x66, 0x50);                 // push ax
            a.db(0x66, 0x5E);                 // pop si
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(ulong.MaxValue - 1, g[3]);
        Assert.Equal(ulong.MaxValue - 1, g[1]);
        Assert.Equal(Top, g[2]);
        Assert.Equal(Top, g[8]);
        Assert.Equal(0x1234UL, g[9]);
        Assert.Equal(0x7788UL, g[6] & 0xFFFF);
        Assert.Equal(Top, g[4]);
    }

    [Fact]
    public void PopMemoryAddressUsesIncrementedEsp32()
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            a.push(0x11111111);
            a.push(0x22222222);
            a.push(0x33333333);
            a.pop(__dword_ptr[esp + 4]); // pops 0x33333333; ESP = top-8; stores at top-4
            a.pop(eax);                  // 0x22222222
            a.pop(ebx);                  // 0x33333333
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x22222222UL, vm.Cpu.Gpr[0]);
        Assert.Equal(0x33333333UL, vm.Cpu.Gpr[3]);
        Assert.Equal(Top, vm.Cpu.Gpr[4]);
    }

    [Fact]
    public void PushaPopa32()
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            a.mov(eax, 0xA0); a.mov(ecx, 0xC1); a.mov(edx, 0xD2); a.mov(ebx, 0xB3);
            a.mov(ebp, 0xB5); a.mov(esi, 0x56); a.mov(edi, 0xD7);
            a.pushad();
            a.xor(eax, eax); a.xor(ecx, ecx); a.xor(edx, edx); a.xor(ebx, ebx);
            a.xor(ebp, ebp); a.xor(esi, esi); a.xor(edi, edi);
            a.mov(__dword_ptr[esp + 12], 0x5555); // the stored ESP is ignored by POPAD
            a.popad();
            a.pusha();
            a.popa();
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(new ulong[] { 0xA0, 0xC1, 0xD2, 0xB3, Top, 0xB5, 0x56, 0xD7 }, g[..8]);
        // Memory image: EDI at the lowest address ... EAX at top-4, original ESP in the middle.
        var m = vm.Vm.Memory;
        Assert.Equal(0xD7u, m.ReadU32(Top - 32));
        Assert.Equal(0x5555u, m.ReadU32(Top - 20));
        // PUSHA (16-bit) then overwrote the top 16 bytes with words: AX highest, DI lowest.
        Assert.Equal((ushort)0xA0, m.ReadU16(Top - 2));
        Assert.Equal((ushort)0xC1, m.ReadU16(Top - 4));
        Assert.Equal((ushort)0xD7, m.ReadU16(Top - 16));
    }

    [Fact]
    public void EnterWithNestingAndLeave32()
    {
        using var vm = new TestVm();
        const uint bp0 = 0x7_F000;
        vm.Start32(a =>
        {
            a.mov(ebp, bp0);
            a.mov(__dword_ptr[ebp - 4], 0x11111111);
            a.mov(__dword_ptr[ebp - 8], 0x22222222);
            a.enter(0x20, 3);
            a.mov(esi, esp);
            a.mov(edi, ebp);
            a.leave();
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        var m = vm.Vm.Memory;
        // SDM ENTER: push EBP; FrameTemp = ESP; copy level-1 frame pointers from EBP-4, EBP-8; push FrameTemp.
        ulong frame = Top - 4;
        Assert.Equal(bp0, m.ReadU32(Top - 4));
        Assert.Equal(0x11111111u, m.ReadU32(Top - 8));
        Assert.Equal(0x22222222u, m.ReadU32(Top - 12));
        Assert.Equal((uint)frame, m.ReadU32(Top - 16));
        Assert.Equal(frame, g[7]);
        Assert.Equal(Top - 16 - 0x20, g[6]);
        Assert.Equal(bp0, g[5]);
        Assert.Equal(Top, g[4]);
    }

    [Fact]
    public void EnterLevel1AndLeave64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(rbp, 0x1234_5678_9ABCUL);
            a.enter(8, 1);
            a.mov(rsi, rsp);
            a.mov(rdi, rbp);
            a.leave();
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(Top - 8, g[7]);
        Assert.Equal(Top - 16 - 8, g[6]);
        Assert.Equal(Top - 8, vm.Vm.Memory.ReadU64(Top - 16));
        Assert.Equal(0x1234_5678_9ABCUL, g[5]);
        Assert.Equal(Top, g[4]);
    }

    [Fact]
    public void EnterLeave16RealMode()
    {
        using var vm = new TestVm();
        vm.Start16(a =>
        {
            a.mov(bp, 0x6000);
            a.enter(4, 0);
            a.mov(si, sp);
            a.mov(di, bp);
            a.leave();
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(0x6FFEUL, g[7] & 0xFFFF);
        Assert.Equal(0x6FFAUL, g[6] & 0xFFFF);
        Assert.Equal(0x6000UL, g[5] & 0xFFFF);
        Assert.Equal(0x7000UL, g[4] & 0xFFFF);
    }

    [Fact]
    public void PopfAtCpl0ChangesIoplAndIfAndWordFormKeepsUpperBits()
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            a.push(0x4_3001 | 0x200);   // AC, IOPL 3, IF, CF
            a.popfd();
            a.pushfd();
            a.pop(eax);
            a.push(0x0040);             // ZF only in the low 16 bits
            a.popf();
            a.pushfd();
            a.pop(ebx);
            a.cli();
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x4_3203UL, vm.Cpu.Gpr[0]);
        Assert.Equal(0x4_0042UL, vm.Cpu.Gpr[3]);
    }

    /// <summary>Drops the running 32-bit test guest to CPL 3 (flat, paging off) with the given IOPL and IF=1.</summary>
    private static void ToCpl3(TestVm vm, int iopl)
    {
        var s = vm.Cpu.GetState();
        s.Segments[(int)Seg.CS].Selector = 0x1B;
        s.Segments[(int)Seg.CS].Attributes = 0xC0FB;
        s.Segments[(int)Seg.SS].Selector = 0x23;
        s.Segments[(int)Seg.SS].Attributes = 0xC0F3;
        s.Rflags = 0x202 | ((ulong)iopl << 12);
        vm.Cpu.SetState(s);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void PopfAtCpl3KeepsIoplAndIfUnlessAllowed(int iopl)
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            a.push(0x1001);   // IOPL 1, IF 0, CF
            a.popfd();
            a.pushfd();
            a.pop(eax);
            a.hlt();          // #GP at CPL 3: ends the run (no IDT: shutdown)
        });
        ToCpl3(vm, iopl);
        vm.Run();
        ulong expected = 0x3 | ((ulong)iopl << 12) | (iopl == 3 ? 0 : 0x200UL);
        Assert.Equal(expected, vm.Cpu.Gpr[0]);
    }

    [Fact]
    public void PushfClearsRfAndPopfqRestores64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.pushfq();
            a.pop(rax);
            a.push(0x8D5);
            a.popfq();
            a.pushfq();
            a.pop(rbx);
            a.hlt();
        });
        var s = vm.Cpu.GetState();
        s.Rflags |= 1UL << 16; // RF
        vm.Cpu.SetState(s);
        vm.RunToHlt();
        Assert.Equal(0UL, vm.Cpu.Gpr[0] & (1UL << 16));
        Assert.Equal(0x8D7UL, vm.Cpu.Gpr[3]);
    }
}
