using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

public class SmokeTests
{
    [Fact]
    public void LongModeLoopSumsAndHalts()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            var loop = a.CreateLabel();
            a.xor(eax, eax);
            a.mov(ecx, 1000);
            a.Label(ref loop);
            a.add(rax, rcx);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(500500UL, vm.Cpu.Gpr[0]);
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
    }

    [Fact]
    public void ExitPortStopsVmWithValue()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(al, (byte)'h');
            a.@out(0xE9, al);
            a.mov(al, (byte)'i');
            a.@out(0xE9, al);
            a.mov(al, 7);
            a.@out(0xF4, al);
            a.hlt();
        });
        var e = vm.Run();
        Assert.Equal(VcpuExitReason.PowerEvent, e.Reason);
        Assert.Equal(7, vm.ExitValue);
        Assert.Equal("hi", vm.Console.ToString());
    }
}
