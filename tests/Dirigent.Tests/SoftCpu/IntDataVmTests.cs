using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Guest-level checks for the integer groups that the host differential cannot make: #DE and #GP delivered through
/// a 64-bit IDT, CMPXCHG8B/16B success paths, MOV moffs forms, and TZCNT executing as BSF (BMI1 not advertised).
/// </summary>
public class IntDataVmTests
{
    private const ulong IdtBase = 0x1_0000;
    private const ulong HandlerBase = 0x18_0000;
    private const ulong Data = TestVm.DataBase;

    /// <summary>
    /// Starts guest code with handlers for #DE (0) and #GP (13): each stores vector+1 at Data, the pushed RIP at
    /// Data+8 and the error code (or 0) at Data+16, then halts.
    /// </summary>
    private static TestVm StartWithIdt(Action<Assembler> body)
    {
        var vm = new TestVm();
        foreach (int vec in new[] { 0, 6, 13 })
        {
            ulong h = HandlerBase + (ulong)vec * 0x100;
            bool err = vec == 13;
            vm.Load(h, 64, a =>
            {
                a.mov(rdi, Data);
                a.mov(__qword_ptr[rdi], vec + 1);
                if (err)
                {
                    a.mov(rax, __qword_ptr[rsp]);
                    a.mov(__qword_ptr[rdi + 16], rax);
                    a.mov(rax, __qword_ptr[rsp + 8]);
                }
                else a.mov(rax, __qword_ptr[rsp]);
                a.mov(__qword_ptr[rdi + 8], rax);
                a.hlt();
            });
            ulong lo = (h & 0xFFFF) | (0x10UL << 16) | (0x8EUL << 40) | (((h >> 16) & 0xFFFF) << 48);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)vec * 16, lo);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)vec * 16 + 8, h >> 32);
        }
        vm.Start64(body);
        vm.Cpu.Idtr = new TableRegister { Base = IdtBase, Limit = 0xFFF };
        return vm;
    }

    private static void ExpectFault(Action<Assembler, Label> setupAndFault, int vector, ulong errorCode = 0)
    {
        using var vm = StartWithIdt(a =>
        {
            var at = a.CreateLabel();
            a.lea(r15, __[at]);
            setupAndFault(a, at);
            a.mov(rdi, Data);
            a.mov(__qword_ptr[rdi], 0xBAD);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal((ulong)vector + 1, vm.Vm.Memory.ReadU64(Data));
        Assert.Equal(vm.Cpu.Gpr[15], vm.Vm.Memory.ReadU64(Data + 8)); // RIP of the faulting instruction
        Assert.Equal(errorCode, vm.Vm.Memory.ReadU64(Data + 16));
    }

    [Fact]
    public void DivByZeroRaisesDE() => ExpectFault((a, at) =>
    {
        a.mov(eax, 100);
        a.xor(edx, edx);
        a.xor(ecx, ecx);
        a.Label(ref at);
        a.div(ecx);
    }, 0);

    [Fact]
    public void DivQuotientOverflowRaisesDE() => ExpectFault((a, at) =>
    {
        a.mov(rdx, 5);
        a.mov(rax, 0);
        a.mov(rcx, 5);
        a.Label(ref at);
        a.div(rcx);
    }, 0);

    [Fact]
    public void IdivIntMinByMinusOneRaisesDE() => ExpectFault((a, at) =>
    {
        a.mov(rax, long.MinValue);
        a.cqo();
        a.mov(rcx, -1L);
        a.Label(ref at);
        a.idiv(rcx);
    }, 0);

    [Fact]
    public void Idiv32IntMinByMinusOneRaisesDE() => ExpectFault((a, at) =>
    {
        a.mov(eax, 0x8000_0000);
        a.cdq();
        a.mov(ecx, -1);
        a.Label(ref at);
        a.idiv(ecx);
    }, 0);

    [Fact]
    public void Idiv8ByZeroMemoryRaisesDE() => ExpectFault((a, at) =>
    {
        a.mov(rsi, Data + 0x40);
        a.mov(__byte_ptr[rsi], 0);
        a.mov(ax, 77);
        a.Label(ref at);
        a.idiv(__byte_ptr[rsi]);
    }, 0);

    [Fact]
    public void Cmpxchg16bMisalignedRaisesGP() => ExpectFault((a, at) =>
    {
        a.mov(rsi, Data + 0x48);
        a.Label(ref at);
        a.@lock.cmpxchg16b(__xmmword_ptr[rsi]);
    }, 13);

    [Theory]
    [InlineData(new byte[] { 0xF0, 0x0F, 0xC1, 0xC8 })] // lock xadd eax,ecx
    [InlineData(new byte[] { 0xF0, 0x48, 0x0F, 0xB1, 0xC8 })] // lock cmpxchg rax,rcx
    [InlineData(new byte[] { 0xF0, 0x87, 0xC8 })] // lock xchg eax,ecx
    [InlineData(new byte[] { 0xF0, 0x0F, 0xAB, 0xC8 })] // lock bts eax,ecx
    [InlineData(new byte[] { 0xF0, 0x0F, 0xA3, 0x0E })] // lock bt [rsi],ecx
    public void LockWithoutMemoryDestinationRaisesUD(byte[] bytes) => ExpectFault((a, at) =>
    {
        a.mov(rsi, Data + 0x40);
        a.Label(ref at);
        a.db(bytes);
    }, 6);

    [Fact]
    public void DivisionsThatFitComplete()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            // 128-by-64: (2^64 * 3 + 7) / 10
            a.mov(rdx, 3);
            a.mov(rax, 7);
            a.mov(rcx, 10);
            a.div(rcx);
            a.mov(r8, rax);
            a.mov(r9, rdx);
            // signed 128-by-64: -(2^64) / 3
            a.mov(rdx, -1L);
            a.xor(eax, eax);
            a.mov(rcx, 3);
            a.idiv(rcx);
            a.mov(r10, rax);
            a.mov(r11, rdx);
            a.hlt();
        });
        vm.RunToHlt();
        UInt128 n = ((UInt128)3 << 64) + 7;
        Assert.Equal((ulong)(n / 10), vm.Cpu.Gpr[8]);
        Assert.Equal((ulong)(n % 10), vm.Cpu.Gpr[9]);
        Int128 s = -((Int128)1 << 64);
        Assert.Equal((ulong)(long)(s / 3), vm.Cpu.Gpr[10]);
        Assert.Equal((ulong)(long)(s % 3), vm.Cpu.Gpr[11]);
    }

    [Fact]
    public void Cmpxchg8bAnd16bSucceedAndFail()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.WriteU64(Data, 0x1111_2222_3333_4444);
        vm.Vm.Memory.WriteU64(Data + 0x20, 0xAAAA);
        vm.Vm.Memory.WriteU64(Data + 0x28, 0xBBBB);
        vm.Start64(a =>
        {
            a.mov(rsi, Data);
            a.mov(edx, 0x1111_2222);
            a.mov(eax, 0x3333_4444);
            a.mov(ecx, 0x5555_6666);
            a.mov(ebx, 0x7777_8888);
            a.@lock.cmpxchg8b(__qword_ptr[rsi]); // equal: stores ECX:EBX
            a.setz(r8b);
            a.cmpxchg8b(__qword_ptr[rsi]);       // now differs: loads EDX:EAX
            a.setz(r9b);
            a.mov(r10, rax);
            a.mov(r11, rdx);
            a.mov(rax, 0xAAAA);
            a.mov(rdx, 0xBBBB);
            a.mov(rbx, 0x1234_5678_9ABC_DEF0);
            a.mov(rcx, 0x0FED_CBA9_8765_4321);
            a.@lock.cmpxchg16b(__xmmword_ptr[rsi + 0x20]); // equal
            a.setz(r12b);
            a.xor(eax, eax);
            a.@lock.cmpxchg16b(__xmmword_ptr[rsi + 0x20]); // differs: loads RDX:RAX
            a.setz(r13b);
            a.hlt();
        });
        vm.Cpu.Gpr[8] = vm.Cpu.Gpr[9] = vm.Cpu.Gpr[12] = vm.Cpu.Gpr[13] = 0;
        vm.RunToHlt();
        var c = vm.Cpu;
        Assert.Equal(0x5555_6666_7777_8888UL, vm.Vm.Memory.ReadU64(Data));
        Assert.Equal(1UL, c.Gpr[8] & 0xFF);
        Assert.Equal(0UL, c.Gpr[9] & 0xFF);
        Assert.Equal(0x7777_8888UL, c.Gpr[10]);
        Assert.Equal(0x5555_6666UL, c.Gpr[11]);
        Assert.Equal(0x1234_5678_9ABC_DEF0UL, vm.Vm.Memory.ReadU64(Data + 0x20));
        Assert.Equal(0x0FED_CBA9_8765_4321UL, vm.Vm.Memory.ReadU64(Data + 0x28));
        Assert.Equal(1UL, c.Gpr[12] & 0xFF);
        Assert.Equal(0UL, c.Gpr[13] & 0xFF);
        Assert.Equal(0x1234_5678_9ABC_DEF0UL, c.Gpr[0]);
        Assert.Equal(0x0FED_CBA9_8765_4321UL, c.Gpr[2]);
    }

    [Fact]
    public void MovMoffsForms()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.WriteU64(Data + 0x10, 0x8877_6655_4433_2211);
        vm.Start64(a =>
        {
            // Iced picks the A0..A3 moffs encodings for accumulator moves to/from an absolute 64-bit address.
            a.mov(rax, __qword_ptr[(long)Data + 0x10]);
            a.mov(rcx, rax);
            a.mov(eax, 0xCAFE_F00D);
            a.mov(__dword_ptr[(long)Data + 0x20], eax);
            a.mov(al, __byte_ptr[(long)Data + 0x11]);
            a.mov(__word_ptr[(long)Data + 0x30], ax);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x8877_6655_4433_2211UL, vm.Cpu.Gpr[1]);
        Assert.Equal(0xCAFE_F00DU, vm.Vm.Memory.ReadU32(Data + 0x20));
        Assert.Equal((ushort)0xF022, vm.Vm.Memory.ReadU16(Data + 0x30));
    }

    /// <summary>Protected-mode (32-bit) forms: bit offsets reaching other words, XLAT with EBX, moffs32, CDQ.</summary>
    [Fact]
    public void ProtectedModeForms()
    {
        using var vm = new TestVm();
        for (int k = 0; k < 16; k++) vm.Vm.Memory.WriteU8(Data + 0x100 + (ulong)k, (byte)(0xA0 + k));
        vm.Start32(a =>
        {
            a.mov(esi, (uint)Data + 0x80);
            a.mov(eax, -1);
            a.bts(__dword_ptr[esi], eax);   // bit -1: bit 31 of the dword at esi-4
            a.setc(cl);
            a.mov(eax, 35);
            a.bts(__word_ptr[esi], ax);     // bit 35 of a word operand: bit 3 of the word at esi+4
            a.mov(edx, 33);
            a.btc(__dword_ptr[esi], edx);   // bit 1 of the dword at esi+4
            a.mov(ebx, (uint)Data + 0x100);
            a.mov(al, 7);
            a.xlatb();
            a.mov(__byte_ptr[(int)Data + 0x90], al); // moffs32 store
            a.mov(eax, 0x8000_0000);
            a.cdq();
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x8000_0000U, vm.Vm.Memory.ReadU32(Data + 0x7C));
        Assert.Equal(0x0000_000AU, vm.Vm.Memory.ReadU32(Data + 0x84));
        Assert.Equal(0UL, vm.Cpu.Gpr[1] & 0xFF);
        Assert.Equal((byte)0xA7, vm.Vm.Memory.ReadU8(Data + 0x90));
        Assert.Equal(0xFFFF_FFFFUL, vm.Cpu.Gpr[2]);
    }

    /// <summary>Real mode: 16-bit addressing for BT's word selection and XLAT with BX.</summary>
    [Fact]
    public void RealModeForms()
    {
        using var vm = new TestVm();
        for (int k = 0; k < 16; k++) vm.Vm.Memory.WriteU8(0x9000 + (ulong)k, (byte)(0x50 + k));
        vm.Start16(a =>
        {
            a.mov(si, 0x9100); // DS is 0 after reset
            a.mov(ax, -17);
            a.bts(__word_ptr[si], ax);   // bit -17: bit 15 of the word at si-4
            a.mov(bx, 0x9000);
            a.mov(al, 3);
            a.xlatb();
            a.mov(dl, al);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal((ushort)0x8000, vm.Vm.Memory.ReadU16(0x90FC));
        Assert.Equal(0x53UL, vm.Cpu.Gpr[2] & 0xFF);
    }

    [Fact]
    public void MoffsEncodingIsUsed()
    {
        var code = Differential.Asm(a => a.mov(rax, __qword_ptr[(long)Data + 0x10]));
        Assert.Equal(Code.Mov_RAX_moffs64, IntForms.Decode(code).Code);
    }

    /// <summary>F3 0F BC on our CPU must give exactly what BSF gives on the host (same registers, ZF, memory).</summary>
    [Fact]
    public void TzcntExecutesAsBsf()
    {
        Assert.True(NativeRunner.Supported);
        using var native = new NativeRunner();
        using var emu = new EmuRunner();
        const int seed = 0x7C47;
        var rng = new Random(seed);
        foreach (var (bsf, tz) in new[]
                 {
                     (Differential.Asm(a => a.bsf(rcx, rdx)), Differential.Asm(a => a.tzcnt(rcx, rdx))),
                     (Differential.Asm(a => a.bsf(esi, eax)), Differential.Asm(a => a.tzcnt(esi, eax))),
                     (Differential.Asm(a => a.bsf(r9w, __word_ptr[rbx + 8])), Differential.Asm(a => a.tzcnt(r9w, __word_ptr[rbx + 8]))),
                 })
        {
            Assert.Equal(Mnemonic.Tzcnt, IntForms.Decode(tz).Mnemonic);
            for (int k = 0; k < Differential.CasesPerForm; k++)
            {
                var s = Differential.RandomState(rng);
                if (k % 4 == 0) { s.Gpr[2] = 0; s.Gpr[0] = 0; Array.Clear(s.Mem, 8, 2); }
                var hin = s.Clone();
                var ein = s.Clone();
                hin.Gpr[3] = native.HostMemAddress;
                ein.Gpr[3] = EmuRunner.GuestMemAddress;
                var h = native.Run(bsf, hin);
                var e = emu.Run(tz, ein);
                for (int r = 0; r < 16; r++)
                    if (r is not (3 or 4)) Assert.True(h.Gpr[r] == e.Gpr[r], $"{Differential.Describe(tz)} r{r}: host bsf={h.Gpr[r]:x} emu tzcnt={e.Gpr[r]:x} (seed {seed} case {k}; in {Differential.DescribeInput(s)})");
                Assert.True((h.Rflags & Cpu_ZF) == (e.Rflags & Cpu_ZF), $"{Differential.Describe(tz)} ZF (seed {seed} case {k}; in {Differential.DescribeInput(s)})");
            }
        }
    }

    private const ulong Cpu_ZF = 1 << 6;
}
