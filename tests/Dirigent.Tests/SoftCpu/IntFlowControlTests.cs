using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Near CALL/RET/JMP, LOOPcc and JrCXZ in 16-, 32- and 64-bit modes (expected values worked out by hand from the SDM).</summary>
public class IntFlowControlTests
{
    [Fact]
    public void CallRetJmpVariants64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            Label f1 = a.CreateLabel(), f2 = a.CreateLabel(), f3 = a.CreateLabel(), after = a.CreateLabel();
            a.xor(eax, eax);
            a.call(f1);
            a.lea(rbx, __[f2]);
            a.call(rbx);
            a.mov(rcx, TestVm.DataBase);
            a.mov(__qword_ptr[rcx], rbx);
            a.call(__qword_ptr[rcx]);
            a.mov(r8, rsp);
            a.push(1);
            a.push(2);
            a.call(f3);
            a.mov(r9, rsp);
            a.lea(rdx, __[after]);
            a.mov(__qword_ptr[rcx + 8], rdx);
            a.jmp(__qword_ptr[rcx + 8]);
            a.mov(eax, 0xBAD);
            a.Label(ref after);
            a.mov(r10, __qword_ptr[rsp - 24]); // return address that ret 16 popped
            a.hlt();
            a.Label(ref f1); a.add(rax, 1); a.ret();
            a.Label(ref f2); a.add(rax, 0x10); a.ret();
            a.Label(ref f3); a.add(rax, 0x100); a.ret(16);
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(0x121UL, g[0]);
        Assert.Equal(g[8], g[9]);
        Assert.Equal(TestVm.StackTop, g[4]);
        Assert.InRange(g[10], TestVm.CodeBase, TestVm.CodeBase + 0x100);
    }

    [Fact]
    public void LoopFamily64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            Label l1 = a.CreateLabel(), l2 = a.CreateLabel(), l3 = a.CreateLabel();
            a.xor(edx, edx);
            a.mov(ecx, 5);
            a.Label(ref l1); a.inc(edx); a.loop(l1);
            a.mov(r12, rcx);
            // LOOP with a 32-bit count (67 E2): RCX upper half is ignored and then cleared.
            a.mov(rcx, 0x1_0000_0003UL);
            a.xor(r10d, r10d);
            a.db(0x49, 0xFF, 0xC2, 0x67, 0xE2, 0xFA); // inc r10; loop ecx, back to inc
            a.mov(r13, rcx);
            a.mov(ecx, 10);
            a.xor(esi, esi);
            a.Label(ref l2); a.inc(esi); a.cmp(esi, 4); a.loopne(l2);
            a.mov(r14, rcx);
            a.mov(ecx, 10);
            a.xor(edi, edi);
            a.Label(ref l3); a.inc(edi); a.cmp(edi, 1); a.loope(l3);
            a.mov(r15, rcx);
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(5UL, g[2]);
        Assert.Equal(0UL, g[12]);
        Assert.Equal(3UL, g[10]);
        Assert.Equal(0UL, g[13]);
        Assert.Equal(4UL, g[6]);
        Assert.Equal(6UL, g[14]);
        Assert.Equal(2UL, g[7]);
        Assert.Equal(8UL, g[15]);
    }

    [Fact]
    public void JrcxzUsesAddressSize64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(rcx, 0x1_0000_0000UL);
            a.xor(r11d, r11d);
            a.db(0x67, 0xE3, 0x04);             // jecxz +4: taken (ECX = 0)
            a.db(0x49, 0x83, 0xCB, 0x01);       // or r11, 1 (skipped)
            a.db(0xE3, 0x04);                   // jrcxz +4: not taken
            a.db(0x49, 0x83, 0xCB, 0x02);       // or r11, 2
            a.xor(ecx, ecx);
            a.db(0xE3, 0x04);                   // jrcxz +4: taken
            a.db(0x49, 0x83, 0xCB, 0x04);       // or r11, 4 (skipped)
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(2UL, vm.Cpu.Gpr[11]);
    }

    private const ulong G32 = TestVm.CodeBase + 0x800;

    [Fact]
    public void CallRetLoop32()
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            Label f = a.CreateLabel(), l = a.CreateLabel(), skip = a.CreateLabel();
            a.xor(eax, eax);
            a.call(f);
            a.mov(ebx, (uint)TestVm.DataBase);
            a.mov(edx, (uint)G32);
            a.mov(__dword_ptr[ebx], edx);
            a.call(__dword_ptr[ebx]);
            a.mov(esi, esp);
            a.push(7); a.push(8);
            a.call(f); // plain ret leaves the pushes
            a.mov(edi, esp);
            a.add(esp, 8);
            a.mov(ecx, 3);
            a.Label(ref l); a.add(eax, 0x1000); a.loop(l);
            a.jecxz(skip);
            a.mov(eax, 0xBAD);
            a.Label(ref skip);
            a.hlt();
            a.Label(ref f); a.add(eax, 1); a.ret();
        });
        vm.Load(G32, 32, a => { a.add(eax, 0x10); a.ret(); });
        vm.RunToHlt();
        var r = vm.Cpu.Gpr;
        Assert.Equal(0x3012UL, r[0]);
        Assert.Equal(r[6] - 8, r[7]);
        Assert.Equal(TestVm.StackTop, r[4]);
    }

    [Fact]
    public void RealModeCallRetLoopAndJcxz()
    {
        using var vm = new TestVm();
        vm.Start16(a =>
        {
            Label f = a.CreateLabel(), l = a.CreateLabel(), t = a.CreateLabel();
            a.xor(ax, ax);
            a.mov(sp, 0x7000);
            a.push(0x1111);
            a.call(f);              // ret 2 pops the argument
            a.mov(si, sp);
            a.mov(cx, 4);
            a.Label(ref l); a.add(ax, 0x100); a.loop(l);
            a.jcxz(t);
            a.mov(ax, 0xBAD);
            a.Label(ref t);
            a.mov(bx, 0x7E00);
            a.jmp(bx);
            a.Label(ref f); a.add(ax, 1); a.ret(2);
        });
        vm.Load(0x7E00, 16, a => { a.add(ax, 0x2000); a.hlt(); });
        vm.RunToHlt();
        Assert.Equal(0x2401UL, vm.Cpu.Gpr[0] & 0xFFFF);
        Assert.Equal(0x7000UL, vm.Cpu.Gpr[6] & 0xFFFF);
    }

    [Fact]
    public void SixteenBitBranchTargetWrapsAt64K()
    {
        using var vm = new TestVm();
        // jmp rel16 at 0000:FFF0 to FFF3+1D = 0x10010, which wraps to IP 0x0010.
        vm.Start16(a => a.db(0xE9, 0x1D, 0x00), 0xFFF0);
        vm.Vm.Memory.Write(0x10, new byte[] { 0xB8, 0x34, 0x12, 0xF4 }); // mov ax,1234h; hlt
        vm.RunToHlt();
        Assert.Equal(0x1234UL, vm.Cpu.Gpr[0] & 0xFFFF);
        Assert.Equal(0x14UL, vm.Cpu.Rip);
    }

    [Fact]
    public void SixteenBitJccTargetWrapsAt64K()
    {
        using var vm = new TestVm();
        // xor ax,ax (ZF=1); jz rel16 at 0000:FFF2 to FFF6+1B = 0x10011, which wraps to IP 0x0011.
        vm.Start16(a => a.db(0x31, 0xC0, 0x0F, 0x84, 0x1B, 0x00), 0xFFF0);
        vm.Vm.Memory.Write(0x11, new byte[] { 0xB8, 0x34, 0x12, 0xF4 });
        vm.RunToHlt();
        Assert.Equal(0x1234UL, vm.Cpu.Gpr[0] & 0xFFFF);
    }

    [Fact]
    public void OperandSize16JccIn32BitCodeMasksTarget()
    {
        using var vm = new TestVm();
        // At 0x100000: xor eax,eax; jz rel16 (66 0F 84): target (0x100007 + 0x100) & 0xFFFF = 0x0107.
        vm.Start32(a => a.db(0x31, 0xC0, 0x66, 0x0F, 0x84, 0x00, 0x01));
        vm.Vm.Memory.Write(0x107, new byte[] { 0xB8, 0x77, 0, 0, 0, 0xF4 });
        vm.RunToHlt();
        Assert.Equal(0x77UL, vm.Cpu.Gpr[0]);
        Assert.Equal(0x10DUL, vm.Cpu.Rip);
    }

    [Fact]
    public void RetToNonCanonicalTargetFaultsWithStackIntact()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(rax, 0x8000_0000_0000_0000UL);
            a.push(rax);
            a.mov(rbx, rsp);
            a.ret();
        });
        IntFlowSupport.InstallIdt(vm, longMode: true);
        vm.RunToHlt();
        Assert.Equal(13u, IntFlowSupport.Vector(vm));
        // #GP frame (5 qwords + error code) sits below the (16-aligned) RSP the RET saw: the RET did not pop.
        Assert.Equal((vm.Cpu.Gpr[3] & ~0xFUL) - 6 * 8, vm.Cpu.Gpr[4]);
    }
}
