using Dirigent.Accel.Emu.Core;
using Dirigent.Accel.Emu.Jit;
using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>MMX and x87 sharing one register file (SDM vol. 1 9.5), the MMX availability faults, and CPUID's MMX bit;
/// each on the interpreter and with every block compiled.</summary>
public class MmxStateTests
{
    private const ulong Value = 0x0123_4567_89AB_CDEFUL;

    private static VcpuExit RunExpectingFault(TestVm vm)
    {
        var e = vm.Run();
        Assert.Equal(VcpuExitReason.Shutdown, e.Reason);
        return e;
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void WriteSetsPhysicalRegisterTopZeroAllValidAndExponentOnes(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        vm.Start64(a =>
        {
            a.fninit();
            a.fld1();       // R7
            a.fldz();       // R6; TOP = 6, R0-R5 empty
            a.mov(rax, Value);
            a.movq(mm3, rax);
            a.hlt();
        });
        Assert.Equal(VcpuExitReason.HaltedForever, vm.Run().Reason);
        var c = vm.Cpu;
        Assert.Equal(0, c.FpuTop);
        Assert.Equal(0xFF, c.FpuTags);
        Assert.Equal(Value, c.FpuRegs[3].M);            // physical R3, not ST(3) = R1
        Assert.Equal(0xFFFF, c.FpuRegs[3].SE);
        Assert.Equal(0x8000_0000_0000_0000UL, c.FpuRegs[7].M); // the x87 values stay, now tagged valid
        Assert.Equal(0x3FFF, c.FpuRegs[7].SE);
        Assert.True(c.FpuRegs[6].IsZero);
        Assert.Equal(0, c.Fsw & 0x3800);
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void ReadOfMmxRegisterLeavesItsExponentAndEmmsEmptiesTags(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        vm.Start64(a =>
        {
            a.fninit();
            a.fld1();       // R7 = 1.0 (mm7 reads its significand)
            a.movq(rcx, mm7);
            a.emms();
            a.hlt();
        });
        Assert.Equal(VcpuExitReason.HaltedForever, vm.Run().Reason);
        var c = vm.Cpu;
        Assert.Equal(0x8000_0000_0000_0000UL, c.Gpr[Cpu.RCX]);
        Assert.Equal(0x3FFF, c.FpuRegs[7].SE);          // only writes set the exponent
        Assert.Equal(0, c.FpuTags);                     // EMMS: all empty
        Assert.Equal(0, c.FpuTop);
    }

    [Theory]
    [InlineData(Cpu.Cr0TS, "#NM", JitMode.Off)]
    [InlineData(Cpu.Cr0EM, "#UD", JitMode.Off)]
    [InlineData(Cpu.Cr0EM | Cpu.Cr0TS, "#UD", JitMode.Off)]
    [InlineData(Cpu.Cr0TS, "#NM", JitMode.Always)]
    [InlineData(Cpu.Cr0EM, "#UD", JitMode.Always)]
    public void AvailabilityFaultsLeaveX87StateAlone(ulong cr0Bits, string fault, JitMode jit)
    {
        foreach (var body in new Action<Assembler>[]
        {
            a => a.paddb(mm1, mm2), a => a.movd(mm0, eax), a => a.movq(__qword_ptr[rsp - 16], mm1), a => a.pextrw(eax, mm1, 1),
            a => a.pmovmskb(eax, mm1), a => a.psrlq(mm1, 3), a => a.pshufw(mm1, mm2, 0x1B),
        })
        {
            using var vm = new TestVm(jit: jit);
            vm.Start64(a => { body(a); a.hlt(); });
            vm.Cpu.FpuTop = 5;
            vm.Cpu.FpuTags = 0xE0;
            vm.Cpu.Cr0 |= cr0Bits;
            Assert.Contains(fault, RunExpectingFault(vm).Detail);
            Assert.Equal(5, vm.Cpu.FpuTop);
            Assert.Equal(0xE0, vm.Cpu.FpuTags);
        }
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void RunsWithCr4OsfxsrClear(JitMode jit)
    {
        // MMX needs neither CR4.OSFXSR nor anything else SSE wants: it runs with OSFXSR clear.
        using var vm = new TestVm(jit: jit);
        vm.Start64(a => { a.mov(eax, 7); a.movd(mm2, eax); a.paddd(mm2, mm2); a.movd(ecx, mm2); a.hlt(); });
        vm.Cpu.Cr4 &= ~Cpu.Cr4OSFXSR;
        Assert.Equal(VcpuExitReason.HaltedForever, vm.Run().Reason);
        Assert.Equal(14UL, vm.Cpu.Gpr[Cpu.RCX]);
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void PendingUnmaskedX87ExceptionRaisesMf(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        vm.Start64(a => { a.paddb(mm1, mm2); a.hlt(); });
        vm.Cpu.Cr0 |= Cpu.Cr0NE;
        vm.Cpu.Fcw = 0x37B;                                   // ZM clear
        vm.Cpu.FswNoTop = Cpu.FswZE | Cpu.FswES | Cpu.FswB;   // a divide by zero pending
        Assert.Contains("#MF", RunExpectingFault(vm).Detail);
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void LockPrefixIsUd(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        vm.Start64(a => { a.db(0xF0, 0x0F, 0xFC, 0xCA); a.hlt(); }); // LOCK PADDB mm1, mm2
        Assert.Contains("#UD", RunExpectingFault(vm).Detail);
    }

    [Fact]
    public void CpuidAdvertisesMmx()
    {
        Assert.True(Dirigent.Accel.Emu.Core.Dispatch.IsImplemented(Code.Paddb_mm_mmm64));
        Assert.NotEqual(0u, CpuidModel.CreateDefault().Leaf1Edx & CpuidModel.MMX);
    }
}
