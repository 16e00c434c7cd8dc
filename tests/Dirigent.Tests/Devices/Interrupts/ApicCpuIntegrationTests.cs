using Dirigent.Accel.Emu.Core;
using Dirigent.Devices.Interrupts;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Devices.Interrupts;

/// <summary>The software CPU taking a local-APIC timer interrupt through its attached interrupt controller.</summary>
public class ApicCpuIntegrationTests
{
    [Fact]
    public void GuestReceivesLapicTimerInterrupt()
    {
        using var vm = new TestVm();
        var lapic = new LocalApic(0, vm.Vm.Clock, Cpu.TscHz);
        vm.Cpu.AttachInterruptController(lapic, lapic);

        // The handler reports on port 0xE9, EOIs and stops (IRETQ is not needed for this check).
        const ulong handler = TestVm.CodeBase + 0x1000;
        vm.Load(handler, 64, a =>
        {
            a.mov(al, (byte)'T');
            a.@out(0xE9, al);
            a.mov(__dword_ptr[rbx + 0xB0], 0);
            a.cli();
            a.hlt();
        });
        vm.Start64(a =>
        {
            a.mov(rbx, 0xFEE0_0000UL);
            a.mov(__dword_ptr[rbx + 0xF0], 0x1FF);       // SVR: software enable
            a.mov(__dword_ptr[rbx + 0x3E0], 0xB);        // divide by 1
            a.mov(__dword_ptr[rbx + 0x320], 0x40);       // LVT timer: one-shot, vector 0x40
            a.mov(__dword_ptr[rbx + 0x380], 2_000_000);  // 2 ms
            a.sti();
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.hlt();
            a.jmp(wait);
        });

        const ulong idt = TestVm.DataBase;
        for (ulong i = 0; i < 256 * 16; i += 8) vm.Vm.Memory.WriteU64(idt + i, 0);
        ulong gateLo = (handler & 0xFFFF) | ((ulong)BootState.Code64Sel << 16) | (0x8EUL << 40) | ((handler >> 16 & 0xFFFF) << 48);
        vm.Vm.Memory.WriteU64(idt + 0x40 * 16, gateLo);
        vm.Vm.Memory.WriteU64(idt + 0x40 * 16 + 8, handler >> 32);
        vm.Cpu.Idtr = new TableRegister { Base = idt, Limit = 256 * 16 - 1 };

        vm.RunToHlt(10_000);
        Assert.Equal("T", vm.Console.ToString());
        Assert.Equal(0u, (uint)lapic.Read(LocalApic.RegIsr + 0x20, 4)); // EOI retired vector 0x40
        Assert.False(lapic.HasPendingInterrupt);
    }
}
