using System.Text;
using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>CPUID, TSC, MSRs, control-register rules, self-modifying code, interrupt and NMI injection.</summary>
public class SystemMiscTests
{
    private static void Cpuid(Assembler a, uint leaf, uint sub, ulong dst)
    {
        a.mov(eax, leaf);
        a.mov(ecx, sub);
        a.cpuid();
        a.mov(__dword_ptr[dst], eax);
        a.mov(__dword_ptr[dst + 4], ebx);
        a.mov(__dword_ptr[dst + 8], ecx);
        a.mov(__dword_ptr[dst + 12], edx);
    }

    private static uint[] Regs(TestVm vm, ulong at) => Enumerable.Range(0, 4).Select(k => vm.Vm.Memory.ReadU32(at + (ulong)k * 4)).ToArray();

    private static string Str(params uint[] regs)
    {
        var sb = new StringBuilder();
        foreach (uint r in regs) for (int k = 0; k < 4; k++) sb.Append((char)(byte)(r >> (8 * k)));
        return sb.ToString().TrimEnd('\0');
    }

    [Fact]
    public void CpuidReportsTheImplementedFeatureSet()
    {
        using var vm = new TestVm();
        uint[] leaves = { 0, 1, 7, 0x15, 0x4000_0000, 0x8000_0000, 0x8000_0001, 0x8000_0002, 0x8000_0003, 0x8000_0004, 0x8000_0008, 0x9999 };
        vm.Start64(a =>
        {
            for (int k = 0; k < leaves.Length; k++) Cpuid(a, leaves[k], 0, Results + (ulong)k * 16);
            a.hlt();
        });
        vm.RunToHlt();
        var r = Enumerable.Range(0, leaves.Length).Select(k => Regs(vm, Results + (ulong)k * 16)).ToArray();
        Assert.Equal("GenuineIntel", Str(r[0][1], r[0][3], r[0][2]));
        Assert.True(r[0][0] >= 0x15);
        // Leaf 1: family 6, APIC ID 0, required features on, unimplemented ones off.
        Assert.Equal(6u, (r[1][0] >> 8) & 0xF);
        Assert.Equal(0u, r[1][1] >> 24);
        uint edx1 = r[1][3], ecx1 = r[1][2];
        foreach (int bit in new[] { 0, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 19, 23, 24, 25, 26 }) Assert.True((edx1 >> bit & 1) != 0, $"leaf1 edx bit {bit}");
        foreach (int bit in new[] { 1, 7, 14, 28 }) Assert.True((edx1 >> bit & 1) == 0, $"leaf1 edx bit {bit} must be clear");
        foreach (int bit in new[] { 0, 9, 13, 23, 24, 31 }) Assert.True((ecx1 >> bit & 1) != 0, $"leaf1 ecx bit {bit}");
        foreach (int bit in new[] { 3, 17, 19, 20, 21, 22, 26, 27, 28 }) Assert.True((ecx1 >> bit & 1) == 0, $"leaf1 ecx bit {bit} must be clear");
        Assert.Equal(new uint[] { 0, 1u << 1, 0, 1u << 29 }, r[2]); // leaf 7: TSC_ADJUST and IA32_ARCH_CAPABILITIES
        Assert.Equal((uint)Dirigent.Accel.Emu.Core.CpuidModel.ApicTimerHz, r[3][2]); // crystal = APIC timer clock
        Assert.Equal(Dirigent.Accel.Emu.Core.Cpu.TscHz, (ulong)r[3][2] * r[3][1] / r[3][0]);
        Assert.Equal("DirigentDrgt", Str(r[4][1], r[4][2], r[4][3]));
        Assert.True(r[5][0] >= 0x8000_0008);
        uint e1d = r[6][3];
        foreach (int bit in new[] { 11, 20, 26, 27, 29 }) Assert.True((e1d >> bit & 1) != 0, $"80000001 edx bit {bit}");
        Assert.Equal(0x21u, r[6][2] & 0x21); // LAHF/SAHF, ABM
        Assert.StartsWith("Dirigent", Str(r[7].Concat(r[8]).Concat(r[9]).ToArray()));
        Assert.Equal((uint)Dirigent.Accel.Emu.Core.Cpu.MaxPhysAddrBits | (48u << 8), r[10][0] & 0xFFFF);
        Assert.Equal((uint)(Dirigent.Accel.Emu.Core.Cpu.TscHz / 1_000_000), r[11][0]); // beyond the maximum: leaf 0x16 (base MHz)
    }

    [Fact]
    public void RdtscIsMonotonicAndRdtscpReturnsTscAux()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 0xC000_0103u);
            a.mov(eax, 0x1234u);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(rdi, Results);
            a.mov(esi, 200);
            a.Label(ref loop);
            a.rdtsc();
            a.mov(__dword_ptr[rdi], eax);
            a.mov(__dword_ptr[rdi + 4], edx);
            a.add(rdi, 8);
            a.dec(esi);
            a.jnz(loop);
            a.rdtscp();
            a.mov(__dword_ptr[rdi], ecx);
            a.hlt();
        });
        vm.RunToHlt();
        ulong prev = 0;
        for (int k = 0; k < 200; k++)
        {
            ulong t = R64(vm, Results + (ulong)k * 8);
            Assert.True(t >= prev, $"TSC went backwards at sample {k}");
            prev = t;
        }
        Assert.True(prev > R64(vm, Results));
        Assert.Equal(0x1234u, vm.Vm.Memory.ReadU32(Results + 200 * 8));
    }

    [Fact]
    public void MsrsValidateAndUnknownMsrsFault()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        var L = Enumerable.Range(0, 8).Select(_ => a.CreateLabel()).ToArray();
        a.mov(rbx, Results);
        // FS_BASE via WRMSR, then an FS-relative load sees it.
        a.mov(ecx, 0xC000_0100u);
        a.mov(eax, (uint)Flag);
        a.xor(edx, edx);
        a.wrmsr();
        a.mov(__qword_ptr[Flag + 16], 0x77);
        a.mov(rax, __qword_ptr.fs[16]);
        a.mov(__qword_ptr[Results + 0x200], rax);
        // SWAPGS exchanges GS_BASE and KERNEL_GS_BASE.
        a.mov(ecx, 0xC000_0102u);
        a.mov(eax, 0x1000u);
        a.wrmsr();
        a.swapgs();
        a.mov(ecx, 0xC000_0101u);
        a.rdmsr();
        a.mov(__dword_ptr[Results + 0x208], eax);
        a.lea(r15, __[L[1]]);
        a.mov(ecx, 0x48u); // IA32_SPEC_CTRL is not advertised: #GP(0)
        a.rdmsr();
        a.Label(ref L[1]);
        a.lea(r15, __[L[2]]);
        a.mov(ecx, 0x277u); // PAT with an invalid memory type 2: #GP(0)
        a.mov(eax, 0x0007_0402u);
        a.xor(edx, edx);
        a.wrmsr();
        a.Label(ref L[2]);
        a.lea(r15, __[L[3]]);
        a.mov(ecx, 0xC000_0100u); // non-canonical FS base: #GP(0)
        a.xor(eax, eax);
        a.mov(edx, 0x8000u);
        a.wrmsr();
        a.Label(ref L[3]);
        a.lea(r15, __[L[4]]);
        a.mov(ecx, 0xC000_0080u); // clearing EFER.LME while paging: #GP(0)
        a.rdmsr();
        a.and(eax, ~0x100);
        a.wrmsr();
        a.Label(ref L[4]);
        a.lea(r15, __[L[5]]);
        a.mov(rax, cr4); // clearing CR4.PAE in long mode: #GP(0)
        a.and(eax, ~0x20);
        a.mov(cr4, rax);
        a.Label(ref L[5]);
        a.lea(r15, __[L[6]]);
        a.mov(rax, cr0); // leaving paging from 64-bit mode: #GP(0)
        a.and(eax, 0x7FFF_FFFF);
        a.mov(cr0, rax);
        a.Label(ref L[6]);
        a.lea(r15, __[L[7]]);
        a.xgetbv(); // not advertised: #UD
        a.Label(ref L[7]);
        a.hlt();
        RecordingHandler64(a, ref L[0], 13, true);
        var udLabel = a.CreateLabel();
        RecordingHandler64(a, ref udLabel, 6, false);
        var l = Emit(vm, a, TestVm.CodeBase, L[0], udLabel);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 13, l[0]);
        Gate64(vm, 6, l[1]);
        vm.RunToHlt();
        Assert.Equal(0x77UL, R64(vm, Results + 0x200));
        Assert.Equal(0x1000u, vm.Vm.Memory.ReadU32(Results + 0x208));
        for (int n = 0; n < 6; n++) Assert.Equal((13UL, 0UL), (ReadRec(vm, n).Tag, ReadRec(vm, n).Error));
        Assert.Equal(6UL, ReadRec(vm, 6).Tag);
        Assert.True(vm.Cpu.LongModeActive);
        Assert.Equal(0x20UL, vm.Cpu.Cr4 & 0x20);
    }

    [Fact]
    public void SelfModifyingCodeInTheSameBlockAndAcrossBlocks()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label target = a.CreateLabel(), later = a.CreateLabel(), loop = a.CreateLabel();
        // Patch the immediate of an instruction later in the same block.
        a.lea(rdi, __[target]);
        a.mov(__byte_ptr[rdi + 1], 0x42);
        a.Label(ref target);
        a.mov(al, 0x11);
        a.mov(__byte_ptr[Results], al);
        // Execute a code page, rewrite it, execute again.
        a.mov(ecx, 2);
        a.Label(ref loop);
        a.jmp(0x18_0000UL);
        a.Label(ref later);
        a.mov(__byte_ptr[0x18_0001], 0x99); // "mov al, 0x99" next time
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, later);
        var b = new Assembler(64);
        b.mov(al, 0x55);
        b.mov(__byte_ptr[Results + 1 + 0], al);
        b.add(__byte_ptr[Results + 2], al);
        b.jmp(l[0]);
        Emit(vm, b, 0x18_0000);
        Setup64(vm, TestVm.CodeBase);
        vm.RunToHlt();
        Assert.Equal(0x42, vm.Vm.Memory.ReadU8(Results));
        Assert.Equal(0x99, vm.Vm.Memory.ReadU8(Results + 1));
        Assert.Equal((byte)(0x55 + 0x99), vm.Vm.Memory.ReadU8(Results + 2));
    }

    [Fact]
    public void InjectedInterruptWakesStiHltAndRespectsTheStiShadow()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label h = a.CreateLabel();
        a.mov(__byte_ptr[Flag], 0);
        a.sti();
        a.mov(__byte_ptr[Flag], 1); // runs before the already-pending interrupt (STI shadow)
        a.Label(ref h);
        // Second part: wait for an interrupt injected later.
        a.sti();
        a.hlt();
        a.mov(al, (byte)'A');
        a.@out(0xE9, al);
        a.cli();
        a.hlt();
        var handler = a.CreateLabel();
        a.Label(ref handler);
        a.mov(al, __byte_ptr[Flag]);
        a.add(al, (byte)'0');
        a.@out(0xE9, al);
        a.iretq();
        var l = Emit(vm, a, TestVm.CodeBase, handler);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0x30, l[0]);
        Gate64(vm, 0x31, l[0]);
        vm.Cpu.InjectInterrupt(0x30);
        bool sawHalt = false;
        var injector = new Thread(() =>
        {
            // Waits for the condition (the CPU is in HLT), not for a time; the guard only keeps a broken CPU from
            // hanging the run.
            sawHalt = SpinWait.SpinUntil(() => vm.Cpu.Halted, TimeSpan.FromSeconds(60));
            vm.Cpu.InjectInterrupt(0x31);
        }) { IsBackground = true };
        injector.Start();
        vm.RunToHlt();
        injector.Join();
        Assert.True(sawHalt, "hang guard: the CPU never reached the STI;HLT");
        Assert.Equal("11A", vm.Console.ToString());
    }

    [Fact]
    public void NmiIsDeliveredWithInterruptsDisabledAndBlockedUntilIret()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label wait = a.CreateLabel(), h = a.CreateLabel();
        a.cli();
        a.mov(__byte_ptr[Flag], 0);
        a.Label(ref wait);
        a.cmp(__byte_ptr[Flag], 0);
        a.je(wait);
        a.mov(al, (byte)'D');
        a.@out(0xE9, al);
        a.hlt();
        a.Label(ref h);
        a.mov(al, (byte)'N');
        a.@out(0xE9, al);
        a.add(__byte_ptr[Flag], 1);
        a.iretq();
        var l = Emit(vm, a, TestVm.CodeBase, h);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 2, l[0]);
        // The NMI goes in once the guest has cleared the flag (it then spins with IF=0): an NMI before that would be
        // overwritten by the guest's own store. Waiting on the flag, not on a time.
        vm.Vm.Memory.WriteU8(Flag, 0xFF);
        bool spinning = false;
        var injector = new Thread(() =>
        {
            spinning = SpinWait.SpinUntil(() => vm.Vm.Memory.ReadU8(Flag) == 0, TimeSpan.FromSeconds(60));
            vm.Cpu.InjectNmi();
        }) { IsBackground = true };
        injector.Start();
        vm.RunToHlt();
        injector.Join();
        Assert.True(spinning, "hang guard: the guest never cleared its flag");
        Assert.Equal("ND", vm.Console.ToString());
        Assert.Equal(1, vm.Vm.Memory.ReadU8(Flag));
    }

    [Fact]
    public void Cr8DebugRegistersLmswSmswClts()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label hGp = a.CreateLabel(), hUd = a.CreateLabel(), r1 = a.CreateLabel(), r2 = a.CreateLabel(), r3 = a.CreateLabel();
        a.mov(rbx, Results);
        a.mov(eax, 5);
        a.mov(cr8, rax);
        a.mov(rax, cr8);
        a.mov(__qword_ptr[Results + 0x300], rax);
        a.lea(r15, __[r1]);
        a.mov(eax, 0x10);
        a.mov(cr8, rax); // reserved TPR bits: #GP(0)
        a.Label(ref r1);
        a.mov(eax, 0x1_0001);
        a.mov(dr7, rax);
        a.mov(rax, dr7);
        a.mov(__qword_ptr[Results + 0x308], rax);
        a.mov(eax, 0xF);
        a.mov(dr6, rax);
        a.mov(rax, dr4); // CR4.DE=0: DR4 is DR6
        a.mov(__qword_ptr[Results + 0x310], rax);
        a.mov(rax, cr4);
        a.or(eax, 8);
        a.mov(cr4, rax);
        a.lea(r15, __[r2]);
        a.mov(rax, dr5); // CR4.DE=1: #UD
        a.Label(ref r2);
        a.mov(eax, 0xB); // LMSW: PE|MP|TS; cannot clear PE anyway
        a.lmsw(ax);
        a.smsw(eax);
        a.mov(__qword_ptr[Results + 0x318], rax);
        a.clts();
        a.smsw(eax);
        a.mov(__qword_ptr[Results + 0x320], rax);
        a.lea(r15, __[r3]);
        a.mov(rax, cr0);
        a.or(eax, 0x2000_0000); // NW without CD: #GP(0)
        a.and(eax, ~0x4000_0000);
        a.mov(cr0, rax);
        a.Label(ref r3);
        a.hlt();
        RecordingHandler64(a, ref hGp, 13, true);
        RecordingHandler64(a, ref hUd, 6, false);
        var l = Emit(vm, a, TestVm.CodeBase, hGp, hUd);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 13, l[0]);
        Gate64(vm, 6, l[1]);
        vm.RunToHlt();
        Assert.Equal(5UL, R64(vm, Results + 0x300));
        Assert.Equal(0x1_0401UL, R64(vm, Results + 0x308));
        Assert.Equal(0xFFFF_0FFFUL, R64(vm, Results + 0x310));
        Assert.Equal(0xBUL, R64(vm, Results + 0x318) & 0xF);
        Assert.Equal(0x3UL, R64(vm, Results + 0x320) & 0xF);
        Assert.Equal(new ulong[] { 13, 6, 13 }, new[] { ReadRec(vm, 0).Tag, ReadRec(vm, 1).Tag, ReadRec(vm, 2).Tag });
        Assert.Equal(0UL, R64(vm, Results + 3 * 40));
    }

    [Fact]
    public void MovSsHoldsOffAPendingInterruptForOneInstruction()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label h = a.CreateLabel();
        a.mov(__byte_ptr[Flag], 0);
        a.mov(eax, ss);
        a.sti();
        a.mov(ss, ax);              // the interrupt pending since STI must wait one more instruction
        a.mov(__byte_ptr[Flag], 1);
        a.nop();
        a.cli();
        a.hlt();
        a.Label(ref h);
        a.mov(al, __byte_ptr[Flag]);
        a.add(al, (byte)'0');
        a.@out(0xE9, al);
        a.iretq();
        var l = Emit(vm, a, TestVm.CodeBase, h);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 0x30, l[0]);
        vm.Cpu.InjectInterrupt(0x30);
        vm.RunToHlt();
        Assert.Equal("1", vm.Console.ToString());
    }
}
