using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>SYSCALL/SYSRET, SYSENTER/SYSEXIT and SWAPGS round trips with privilege changes.</summary>
public class SystemCallTests
{
    private static void Wrmsr(Assembler a, uint msr, ulong v)
    {
        a.mov(ecx, msr);
        a.mov(eax, (uint)v);
        a.mov(edx, (uint)(v >> 32));
        a.wrmsr();
    }

    [Fact]
    public void SyscallSysretRoundTripChangesCplAndSavesRipAndFlags()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label entry = a.CreateLabel(), user = a.CreateLabel(), afterSyscall = a.CreateLabel(), after2 = a.CreateLabel(), done = a.CreateLabel();
        // STAR: SYSCALL CS=0x10/SS=0x18; SYSRET base 0x20 -> CS64=0x33, SS=0x2B.
        Wrmsr(a, 0xC000_0081, (0x20UL << 48) | (0x10UL << 32));
        a.lea(rax, __[entry]);
        a.xor(edx, edx); // the entry point is below 4 GiB
        a.mov(ecx, 0xC000_0082);
        a.wrmsr();
        Wrmsr(a, 0xC000_0084, 0x3700); // SFMASK: IOPL, IF, DF, TF
        a.lea(rcx, __[user]);
        a.mov(r11, 0x3202); // user RFLAGS: IOPL=3, IF=1
        a.mov(r13, 0); // syscall counter
        a.sysretq();
        // ---- ring 3 ----
        a.Label(ref user);
        a.mov(rax, cs);
        a.mov(__qword_ptr[Results], rax);
        a.mov(rax, ss);
        a.mov(__qword_ptr[Results + 8], rax);
        a.mov(al, (byte)'U');
        a.@out(0xE9, al);
        a.syscall();
        a.Label(ref afterSyscall);
        a.mov(al, (byte)'R');
        a.@out(0xE9, al);
        a.syscall();
        a.Label(ref after2);
        a.hlt();
        // ---- kernel entry ----
        a.Label(ref entry);
        a.add(r13, 1);
        a.mov(__qword_ptr[Results + 16], rcx);
        a.mov(__qword_ptr[Results + 24], r11);
        a.mov(rax, cs);
        a.mov(__qword_ptr[Results + 32], rax);
        a.mov(rax, ss);
        a.mov(__qword_ptr[Results + 40], rax);
        a.cmp(r13, 2);
        a.je(done);
        a.sysretq();
        a.Label(ref done);
        a.cli();
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, after2);
        Setup64(vm, TestVm.CodeBase, userPages: true);
        vm.RunToHlt();
        Assert.Equal("UR", vm.Console.ToString());
        Assert.Equal((ulong)U64, R64(vm, Results));
        Assert.Equal((ulong)UData, R64(vm, Results + 8));
        Assert.Equal(l[0], R64(vm, Results + 16));
        Assert.Equal(0x3202UL, R64(vm, Results + 24) & 0x3FFFFF & ~0x8D5UL);
        Assert.Equal((ulong)K64, R64(vm, Results + 32));
        Assert.Equal((ulong)KData, R64(vm, Results + 40));
        Assert.Equal(0, vm.Cpu.Cpl);
        Assert.Equal(0UL, vm.Cpu.Rflags & 0x3700); // SFMASK applied on entry
    }
}
