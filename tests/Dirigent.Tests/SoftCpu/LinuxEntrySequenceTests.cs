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
        Assert.Equal(1UL, vm.Cpu.Gpr[0] & 1); // RDCL_NO
        Assert.Equal(vm.Cpu.Cpuid.ArchCapabilities, (vm.Cpu.Gpr[2] << 32) | (uint)vm.Cpu.Gpr[0]);
    }
}
