using Dirigent.Devices;
using Dirigent.Devices.Serial;
using Dirigent.Devices.Timer;
using Dirigent.Tests.Infrastructure;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Devices.Misc;

/// <summary>Guest code on the software CPU drives the devices through IN/OUT, as Linux's early code does.</summary>
public sealed class GuestDeviceTests
{
    [Fact]
    public void GuestPitCalibrationLoopWaitsForOut2()
    {
        using var vm = new TestVm();
        var pit = new Pit8254(vm.Vm.Clock, null);
        vm.Vm.Io.Register(PcPlatform.PitPort, Pit8254.PortCount, pit);
        vm.Vm.Io.Register(PcPlatform.SystemControlPortB, 1, new SystemControlPortB(pit));
        vm.Start64(a =>
        {
            var poll = a.CreateLabel();
            a.@in(al, 0x61);
            a.and(al, 0xFD);
            a.or(al, 0x01);
            a.@out(0x61, al);      // gate on, speaker off
            a.mov(al, 0xB0);
            a.@out(0x43, al);      // channel 2, LSB/MSB, mode 0
            a.mov(al, 11932 & 0xFF);
            a.@out(0x42, al);
            a.mov(al, 11932 >> 8);
            a.@out(0x42, al);      // 10 ms
            a.xor(ecx, ecx);
            a.Label(ref poll);
            a.inc(rcx);
            a.@in(al, 0x61);
            a.test(al, 0x20);
            a.jz(poll);
            a.hlt();
        });
        long start = vm.Vm.Clock.NowNs;
        vm.RunToHlt();
        long elapsed = vm.Vm.Clock.NowNs - start;
        Assert.True(elapsed >= 9_999_000, $"guest finished after {elapsed} ns");
        Assert.True(vm.Cpu.Gpr[1] > 1, "OUT2 was high at once");
    }

    private sealed class Capture : ISerialBackend
    {
        public readonly List<byte> Bytes = new();
        public void Write(byte b) { lock (Bytes) Bytes.Add(b); }
    }

    [Fact]
    public void GuestPrintsThroughCom1AndReadsInput()
    {
        using var vm = new TestVm();
        var capture = new Capture();
        var uart = new Uart16550(capture, null, vm.Vm.Clock);
        vm.Vm.Io.Register(PcPlatform.Com1Port, Uart16550.PortCount, uart);
        uart.EnqueueInput("!"u8);
        vm.Start64(a =>
        {
            void WaitLsr(byte bit)
            {
                var wait = a.CreateLabel();
                a.mov(dx, PcPlatform.Com1Port + 5);
                a.Label(ref wait);
                a.@in(al, dx);
                a.test(al, bit);
                a.jz(wait);
            }
            foreach (byte c in "Hi"u8.ToArray())
            {
                WaitLsr(0x20);
                a.mov(dx, PcPlatform.Com1Port);
                a.mov(al, c);
                a.@out(dx, al);
            }
            // Echo the received byte back.
            WaitLsr(0x01);
            a.mov(dx, PcPlatform.Com1Port);
            a.@in(al, dx);
            a.mov(bl, al);
            WaitLsr(0x20);
            a.mov(dx, PcPlatform.Com1Port);
            a.mov(al, bl);
            a.@out(dx, al);
            a.hlt();
        });
        vm.RunToHlt();
        lock (capture.Bytes) Assert.Equal("Hi!"u8.ToArray(), capture.Bytes.ToArray());
    }
}
