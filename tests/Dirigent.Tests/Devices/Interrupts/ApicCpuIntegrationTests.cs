using Dirigent.Accel.Emu.Core;
using Dirigent.Devices.Interrupts;
using Dirigent.Devices;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
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

        WriteGate(vm, 0x40, handler);

        vm.RunToHlt(10_000);
        Assert.Equal("T", vm.Console.ToString());
        Assert.Equal(0u, (uint)lapic.Read(LocalApic.RegIsr + 0x20, 4)); // EOI retired vector 0x40
        Assert.False(lapic.HasPendingInterrupt);
    }

    private static void WriteGate(TestVm vm, int vector, ulong handler)
    {
        const ulong idt = TestVm.DataBase;
        for (ulong i = 0; i < 256 * 16; i += 8) vm.Vm.Memory.WriteU64(idt + i, 0);
        ulong lo = (handler & 0xFFFF) | ((ulong)BootState.Code64Sel << 16) | (0x8EUL << 40) | ((handler >> 16 & 0xFFFF) << 48);
        vm.Vm.Memory.WriteU64(idt + (ulong)vector * 16, lo);
        vm.Vm.Memory.WriteU64(idt + (ulong)vector * 16 + 8, handler >> 32);
        vm.Cpu.Idtr = new TableRegister { Base = idt, Limit = 256 * 16 - 1 };
    }

    /// <summary>A port whose write pulses an IRQ line, so the guest can make a "device" interrupt itself.</summary>
    private sealed class IrqTrigger(Dirigent.Machine.Interrupts.IIrqLine line) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0;
        public void Write(ushort offset, int size, uint value) => line.Pulse();
    }

    [Fact]
    public void GuestReceivesPicInterruptThroughLint0VirtualWire()
    {
        using var vm = new TestVm();
        var router = new InterruptRouter(vm.Vm.Clock, 1, Cpu.TscHz);
        router.Pic.RegisterPorts(vm.Vm.Io);
        vm.Vm.Io.Register(0x99, 1, new IrqTrigger(router.Line(PcPlatform.IrqKeyboard)));
        var bsp = router.LocalApics[0];
        vm.Cpu.AttachInterruptController(bsp, bsp);

        const ulong handler = TestVm.CodeBase + 0x1000;
        vm.Load(handler, 64, a =>
        {
            a.mov(al, (byte)'K');
            a.@out(0xE9, al);
            a.mov(al, 0x20);   // non-specific EOI to the master 8259
            a.@out(0x20, al);
            a.cli();
            a.hlt();
        });
        vm.Start64(a =>
        {
            // init_8259A as Linux does it, vectors 0x30/0x38, only IRQ1 and the cascade unmasked
            foreach (var (port, v) in new (byte, byte)[] {
                (0x21, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
                (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0xF9), (0xA1, 0xFF) })
            {
                a.mov(al, v);
                a.@out(port, al);
            }
            a.sti();
            a.@out(0x99, al);  // the "keyboard" raises IRQ1
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.hlt();
            a.jmp(wait);
        });
        WriteGate(vm, 0x31, handler);

        vm.RunToHlt(10_000);
        Assert.Equal("K", vm.Console.ToString());
        vm.Vm.Io.Write(0x20, 1, 0x0B);
        Assert.Equal(0u, vm.Vm.Io.Read(0x20, 1)); // the guest's EOI retired IRQ1
    }
}
