using Dirigent.Accel.Emu.Core;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Instruction sequences the Linux x86-64 boot path runs, reproduced in isolation.</summary>
public class LinuxEntrySequenceTests
{
    [Fact]
    public void LgdtThenLretqReloadsCodeSegment()
    {
        using var vm = new TestVm();
        const ulong gdt = TestVm.DataBase, gdtr = TestVm.DataBase + 0x100;
        vm.Vm.Memory.WriteU64(gdt + 0x00, 0);
        vm.Vm.Memory.WriteU64(gdt + 0x08, 0x00cf9a000000ffff);
        vm.Vm.Memory.WriteU64(gdt + 0x10, 0x00af9a000000ffff);
        vm.Vm.Memory.WriteU64(gdt + 0x18, 0x00cf92000000ffff);
        vm.Vm.Memory.WriteU16(gdtr, 0x1F);
        vm.Vm.Memory.WriteU64(gdtr + 2, gdt);
        vm.Start64(a =>
        {
            var after = a.CreateLabel();
            a.xor(eax, eax);
            a.mov(ds, eax);
            a.mov(ss, eax);
            a.mov(rax, gdtr);
            a.lgdt(__[rax]);
            a.push(0x10);
            a.lea(rax, __[after]);
            a.push(rax);
            a.db(0x48, 0xCB); // lretq
            a.Label(ref after);
            a.mov(ebx, 0x1234);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x1234UL, vm.Cpu.Gpr[3]);
        Assert.Equal((ushort)0x10, vm.Cpu.Sreg[1].Selector);
    }

    [Fact]
    public void ArchCapabilitiesMsrSaysNoMeltdownSoLinuxSkipsKpti()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(ecx, 0x10A);
            a.rdmsr();
            a.hlt();
        });
        vm.RunToHlt();
        ulong caps = (vm.Cpu.Gpr[2] << 32) | (uint)vm.Cpu.Gpr[0];
        Assert.NotEqual(0UL, caps & CpuidModel.ArchCapRdclNo); // no Meltdown: no KPTI
        Assert.NotEqual(0UL, caps & CpuidModel.ArchCapItsNo); // no Indirect Target Selection: no return thunks
        Assert.NotEqual(0UL, caps & CpuidModel.ArchCapBhiNo);
        Assert.Equal(vm.Cpu.Cpuid.ArchCapabilities, (vm.Cpu.Gpr[2] << 32) | (uint)vm.Cpu.Gpr[0]);
    }

    [Fact]
    public void TscAdjustFollowsTscWritesAndMovesTheTsc()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            // IA32_TSC_ADJUST = 10^12: the TSC jumps forward by that much.
            a.mov(ecx, 0x3B);
            a.mov(rax, 1_000_000_000_000L);
            a.mov(rdx, rax);
            a.shr(rdx, 32);
            a.wrmsr();
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.mov(r8, rax);
            // Writing the TSC to 5 moves IA32_TSC_ADJUST by the same (negative) delta.
            a.mov(ecx, 0x10);
            a.mov(eax, 5);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, 0x3B);
            a.rdmsr();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.mov(r9, rax);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.True(vm.Cpu.Gpr[8] >= 1_000_000_000_000UL, $"TSC after adjust: {vm.Cpu.Gpr[8]}");
        // adjust = 10^12 + (5 - TSC at the write) = 5 - the ticks since the adjust write: slightly below 5.
        Assert.InRange((long)vm.Cpu.Gpr[9], -2_000_000_000L, 5L);
        Assert.Equal(vm.Cpu.TscAdjust, vm.Cpu.Gpr[9]);
        Assert.True(vm.Cpu.ReadTsc() < 1_000_000_000UL, "TSC restarts near 5 after the write");
    }
}
