using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Dirigent.Accel.Emu.Jit;
using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>SSE availability and alignment faults (on the interpreter and, where the compiled tier inlines the form, compiled), unmasked SIMD exceptions, and the RCP/RSQRT approximations.</summary>
public class SseFaultTests
{
    private const float MinNormal = 1.17549435E-38f;
    private const ulong IdtBase = 0x21_0000, HandlerBase = 0x22_0000;

    /// <summary>An IDT whose handler for vector v writes v to the exit port (stack keeps the error code and RIP).</summary>
    private static void InstallIdt(TestVm vm)
    {
        for (int v = 0; v < 32; v++)
        {
            ulong h = HandlerBase + (ulong)v * 16;
            int vec = v;
            vm.Load(h, 64, a => { a.mov(eax, vec); a.@out(0xF4, al); a.hlt(); });
            ulong lo = (h & 0xFFFF) | (0x10UL << 16) | (0x8E00UL << 32) | (((h >> 16) & 0xFFFF) << 48);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)v * 16, lo);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)v * 16 + 8, h >> 32);
        }
        vm.Cpu.Idtr = new TableRegister { Base = IdtBase, Limit = 32 * 16 - 1 };
    }

    /// <summary>Runs the code; returns the vector of the exception it raised, or -1 if it reached HLT.</summary>
    private static int RunForVector(TestVm vm, Action<Assembler> code, Action<Cpu>? setup = null)
    {
        vm.Start64(code);
        InstallIdt(vm);
        setup?.Invoke(vm.Cpu);
        var exit = vm.Run();
        if (exit.Reason == VcpuExitReason.HaltedForever) return -1;
        Assert.Equal(VcpuExitReason.PowerEvent, exit.Reason);
        return vm.ExitValue!.Value;
    }

    private static ulong Stack(TestVm vm, int slot) => vm.Vm.Memory.ReadU64(vm.Cpu.Gpr[Cpu.RSP] + (ulong)slot * 8);

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void MisalignedMovapsRaisesGpAtTheInstruction(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        int v = RunForVector(vm, a => { a.mov(eax, 0x20_0008); a.movaps(xmm0, __xmmword_ptr[rax]); a.hlt(); });
        Assert.Equal(Vec.GP, v);
        Assert.Equal(0UL, Stack(vm, 0));                     // error code 0
        Assert.Equal(TestVm.CodeBase + 5, Stack(vm, 1));     // RIP of the MOVAPS (after the 5-byte MOV)
    }

    [Theory]
    [InlineData("movdqa store", JitMode.Off)]
    [InlineData("paddb m128", JitMode.Off)]
    [InlineData("addps m128", JitMode.Off)]
    [InlineData("pshufb m128", JitMode.Off)]
    [InlineData("movdqa store", JitMode.Always)]
    [InlineData("paddb m128", JitMode.Always)]
    [InlineData("pxor m128", JitMode.Always)]
    [InlineData("pcmpeqb m128", JitMode.Always)]
    public void OtherAlignedFormsRaiseGp(string which, JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        int v = RunForVector(vm, a =>
        {
            a.mov(eax, 0x20_0004);
            switch (which)
            {
                case "movdqa store": a.movdqa(__xmmword_ptr[rax], xmm1); break;
                case "paddb m128": a.paddb(xmm1, __xmmword_ptr[rax]); break;
                case "addps m128": a.addps(xmm1, __xmmword_ptr[rax]); break;
                case "pxor m128": a.pxor(xmm1, __xmmword_ptr[rax]); break;
                case "pcmpeqb m128": a.pcmpeqb(xmm1, __xmmword_ptr[rax]); break;
                default: a.pshufb(xmm1, __xmmword_ptr[rax]); break;
            }
            a.hlt();
        });
        Assert.Equal(Vec.GP, v);
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void UnalignedFormsAndScalarMemoryDoNotFault(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        int v = RunForVector(vm, a =>
        {
            a.mov(eax, 0x20_0003);
            a.movups(xmm0, __xmmword_ptr[rax]);
            a.movdqu(__xmmword_ptr[rax + 32], xmm0);
            a.lddqu(xmm1, __[rax + 1]);
            a.addss(xmm1, __dword_ptr[rax]);
            a.movsd(xmm2, __qword_ptr[rax + 5]);
            a.hlt();
        });
        Assert.Equal(-1, v);
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void MovapsAlignedDoesNotFault(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        Assert.Equal(-1, RunForVector(vm, a => { a.mov(eax, 0x20_0010); a.movaps(xmm0, __xmmword_ptr[rax]); a.hlt(); }));
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void OsfxsrClearRaisesUd(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        int v = RunForVector(vm, a => { a.addps(xmm0, xmm1); a.hlt(); }, c => c.Cr4 &= ~Cpu.Cr4OSFXSR);
        Assert.Equal(Vec.UD, v);
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void Cr0EmRaisesUd(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        Assert.Equal(Vec.UD, RunForVector(vm, a => { a.pxor(xmm0, xmm1); a.hlt(); }, c => c.Cr0 |= Cpu.Cr0EM));
    }

    [Theory, InlineData(JitMode.Off), InlineData(JitMode.Always)]
    public void Cr0TsRaisesNm(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        Assert.Equal(Vec.NM, RunForVector(vm, a => { a.movdqa(xmm0, xmm1); a.hlt(); }, c => c.Cr0 |= Cpu.Cr0TS));
    }

    [Fact]
    public void LockPrefixRaisesUdEvenWithTsSet()
    {
        using var vm = new TestVm();
        Assert.Equal(Vec.UD, RunForVector(vm, a => { a.db(0xF0, 0x66, 0x0F, 0xFC, 0xC1); a.hlt(); })); // lock paddb xmm0,xmm1
        using var vm2 = new TestVm();
        Assert.Equal(Vec.UD, RunForVector(vm2, a => { a.db(0xF0, 0x66, 0x0F, 0xFC, 0xC1); a.hlt(); }, c => c.Cr0 |= Cpu.Cr0TS));
    }

    [Fact]
    public void MovntiIgnoresOsfxsr()
    {
        using var vm = new TestVm();
        Assert.Equal(-1, RunForVector(vm, a => { a.mov(eax, 0x20_0000); a.movnti(__dword_ptr[rax], ecx); a.hlt(); },
            c => c.Cr4 &= ~Cpu.Cr4OSFXSR));
    }

    [Fact]
    public void LdmxcsrReservedBitRaisesGp()
    {
        using var vm = new TestVm();
        int v = RunForVector(vm, a =>
        {
            a.mov(eax, 0x20_0000);
            a.mov(__dword_ptr[rax], 0x1_1F80);
            a.ldmxcsr(__dword_ptr[rax]);
            a.hlt();
        });
        Assert.Equal(Vec.GP, v);
        Assert.Equal(0x1F80u, vm.Cpu.Mxcsr);
    }

    [Theory]
    [InlineData(true, Vec.XM)]
    [InlineData(false, Vec.UD)]
    public void UnmaskedDivideByZeroFaultsAndKeepsDestination(bool osxmmexcpt, int expected)
    {
        using var vm = new TestVm();
        int v = RunForVector(vm, a =>
        {
            a.mov(eax, 0x20_0000);
            a.mov(__dword_ptr[rax], 0x1F80 & ~0x200); // ZM clear
            a.ldmxcsr(__dword_ptr[rax]);
            a.mov(ecx, 0x3F80_0000);                   // 1.0f
            a.movd(xmm0, ecx);
            a.pxor(xmm1, xmm1);
            a.divss(xmm0, xmm1);
            a.hlt();
        }, c => { if (!osxmmexcpt) c.Cr4 &= ~Cpu.Cr4OSXMMEXCPT; });
        Assert.Equal(expected, v);
        Assert.Equal(0x3F80_0000u, vm.Cpu.Xmm[0].AsUInt32()[0]);
        Assert.Equal(0x1D80u | 4, vm.Cpu.Mxcsr); // ZE recorded
    }

    [Fact]
    public void MaskedDivideByZeroGivesInfinity()
    {
        using var vm = new TestVm();
        int v = RunForVector(vm, a =>
        {
            a.mov(ecx, 0xBF80_0000);                   // -1.0f
            a.movd(xmm0, ecx);
            a.pxor(xmm1, xmm1);
            a.divss(xmm0, xmm1);
            a.hlt();
        });
        Assert.Equal(-1, v);
        Assert.Equal(0xFF80_0000u, vm.Cpu.Xmm[0].AsUInt32()[0]);
        Assert.Equal(0x1F84u, vm.Cpu.Mxcsr);
    }

    public static IEnumerable<object[]> Approximations()
    {
        yield return ["rcpps", (Action<Assembler>)(a => a.rcpps(xmm1, xmm2)), false, 4];
        yield return ["rsqrtps", (Action<Assembler>)(a => a.rsqrtps(xmm1, xmm2)), true, 4];
        yield return ["rcpss", (Action<Assembler>)(a => a.rcpss(xmm1, xmm2)), false, 1];
        yield return ["rsqrtss", (Action<Assembler>)(a => a.rsqrtss(xmm1, xmm2)), true, 1];
        yield return ["rcpps m128", (Action<Assembler>)(a => a.rcpps(xmm1, __xmmword_ptr[rbx + 32])), false, 4];
    }

    /// <summary>
    /// RCP/RSQRT results are implementation-specific (Intel and AMD differ in the low bits), so the emulator's
    /// lane must be the correctly rounded 1/x or 1/sqrt(x), and the host's must agree to the SDM's bound
    /// (relative error ≤ 1.5·2^-12); specials (NaN, ±0, ±inf, negative) must match exactly; everything else
    /// (other lanes, MXCSR, other registers) must match bit for bit.
    /// </summary>
    [Theory]
    [MemberData(nameof(Approximations))]
    public void ApproximationsWithinSdmBound(string name, Action<Assembler> form, bool rsqrt, int lanes)
    {
        Assert.True(NativeRunner.Supported);
        using var host = new NativeRunner();
        using var emu = new EmuRunner();
        var code = Differential.Asm(form);
        int seed = SseDiff.Seed(name); // stable across processes: a failure replays
        var rng = new Random(seed);
        for (int n = 0; n < Differential.CasesPerForm * 4; n++)
        {
            string at = $"seed {seed}, case {n}, {Differential.Describe(code)}";
            var input = SseDiff.SingleStateDefaultMxcsr(rng);
            var hin = input.Clone(); hin.Gpr[3] = host.HostMemAddress;
            var ein = input.Clone(); ein.Gpr[3] = EmuRunner.GuestMemAddress;
            var h = host.Run(code, hin);
            var e = emu.Run(code, ein);
            Span<byte> src = name.EndsWith("m128", StringComparison.Ordinal) ? input.Mem.AsSpan(32, 16) : input.Xmm(2);
            for (int k = 0; k < lanes; k++)
            {
                uint x = BitConverter.ToUInt32(src[(4 * k)..]);
                uint hv = BitConverter.ToUInt32(h.Xmm(1)[(4 * k)..]);
                uint ev = BitConverter.ToUInt32(e.Xmm(1)[(4 * k)..]);
                float xf = BitConverter.UInt32BitsToSingle(x);
                float ef = BitConverter.UInt32BitsToSingle(ev), hf = BitConverter.UInt32BitsToSingle(hv);
                bool tiny = (x & 0x7F80_0000) == 0;
                if (float.IsNaN(xf) || tiny || float.IsInfinity(xf) || (rsqrt && xf < 0))
                {
                    Assert.True(hv == ev, $"{name} special x={x:x8}: host={hv:x8} emu={ev:x8} ({at})");
                    continue;
                }
                float reference = rsqrt ? (float)(1.0 / Math.Sqrt(xf)) : (float)(1.0 / xf);
                if (Math.Abs(reference) < MinNormal) reference = reference < 0 || (x >> 31) != 0 ? -0f : 0f;
                Assert.True(BitConverter.SingleToUInt32Bits(reference) == ev, $"{name} x={x:x8}: emu={ev:x8} reference={BitConverter.SingleToUInt32Bits(reference):x8} ({at})");
                if (Math.Abs(ef) < MinNormal || Math.Abs(hf) < MinNormal)
                    Assert.True(Math.Abs(hf) < MinNormal * 1.001f && Math.Abs(ef) < MinNormal * 1.001f, $"{name} x={x:x8}: host={hv:x8} emu={ev:x8} ({at})");
                else
                    Assert.True(Math.Abs(hf - ef) <= 1.5 * Math.Pow(2, -12) * Math.Abs(ef) * 1.0001, $"{name} x={x:x8}: host={hv:x8} emu={ev:x8} ({at})");
            }
            for (int k = 0; k < 16; k++)
            {
                if (k == 1) continue;
                Assert.True(h.Xmm(k).SequenceEqual(e.Xmm(k)), $"{name}: xmm{k} differs ({at})");
            }
            Assert.True(h.Xmm(1)[(4 * lanes)..].SequenceEqual(e.Xmm(1)[(4 * lanes)..]), $"{name}: untouched lanes differ ({at})");
            Assert.True(BitConverter.ToUInt32(h.Fx, 24) == BitConverter.ToUInt32(e.Fx, 24),
                $"{name}: MXCSR host={BitConverter.ToUInt32(h.Fx, 24):x} emu={BitConverter.ToUInt32(e.Fx, 24):x} ({at})");
        }
    }
}

/// <summary>The portable paths used when the host lacks SSE2/SSSE3 agree with the host instructions.</summary>
public class SseFallbackTests
{
    [Fact]
    public void SoftwareUnpackAndPshufbMatchHostIntrinsics()
    {
        Assert.True(System.Runtime.Intrinsics.X86.Ssse3.IsSupported);
        var rng = new Random(77);
        var buf = new byte[32];
        for (int n = 0; n < 500; n++)
        {
            rng.NextBytes(buf);
            var d = Vector128.Create(buf.AsSpan(0, 16));
            var s = Vector128.Create(buf.AsSpan(16, 16));
            Assert.Equal(System.Runtime.Intrinsics.X86.Sse2.UnpackLow(d, s), Dirigent.Accel.Emu.Instructions.SseInt.Unpack(d, s, 0));
            Assert.Equal(System.Runtime.Intrinsics.X86.Sse2.UnpackHigh(d, s), Dirigent.Accel.Emu.Instructions.SseInt.Unpack(d, s, 2));
            Assert.Equal(System.Runtime.Intrinsics.X86.Sse2.UnpackLow(d.AsUInt16(), s.AsUInt16()).AsByte(), Dirigent.Accel.Emu.Instructions.SseInt.Unpack(d, s, 4));
            Assert.Equal(System.Runtime.Intrinsics.X86.Sse2.UnpackHigh(d.AsUInt16(), s.AsUInt16()).AsByte(), Dirigent.Accel.Emu.Instructions.SseInt.Unpack(d, s, 6));
            Assert.Equal(System.Runtime.Intrinsics.X86.Sse2.UnpackLow(d.AsUInt32(), s.AsUInt32()).AsByte(), Dirigent.Accel.Emu.Instructions.SseInt.Unpack(d, s, 8));
            Assert.Equal(System.Runtime.Intrinsics.X86.Sse2.UnpackHigh(d.AsUInt32(), s.AsUInt32()).AsByte(), Dirigent.Accel.Emu.Instructions.SseInt.Unpack(d, s, 10));
            Assert.Equal(System.Runtime.Intrinsics.X86.Ssse3.Shuffle(d, s), Dirigent.Accel.Emu.Instructions.Ssse3.PshufbSoftware(d, s));
        }
    }
}
