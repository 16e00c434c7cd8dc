using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>x87 tests on a bare TestVm (faults, control state, save areas) and differential tests that need a
/// custom comparison (FXSAVE images, transcendental results within a tolerance).</summary>
public class X87Tests
{
    private const ulong Data = TestVm.DataBase;

    private static VcpuExit RunExpectingFault(TestVm vm)
    {
        var e = vm.Run();
        Assert.Equal(VcpuExitReason.Shutdown, e.Reason);
        return e;
    }

    [Fact]
    public void FninitSetsDefaults()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.fld1();
            a.fldz();
            a.fninit();
            a.mov(rbx, Data);
            a.fnstcw(__word_ptr[rbx]);
            a.fnstsw(ax);
            a.fnstenv(__[rbx + 16]);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x037F, vm.Vm.Memory.ReadU16(Data));
        Assert.Equal(0UL, vm.Cpu.Gpr[0] & 0xFFFF);
        Assert.Equal(0xFFFFu, vm.Vm.Memory.ReadU32(Data + 16 + 8) & 0xFFFF); // all tags empty
        Assert.Equal(0x37F | 0x3F, vm.Cpu.Fcw); // FNSTENV masks exceptions (already masked)
    }

    [Theory]
    [InlineData(1.0, 2.0, 0x0100)]   // ST0 < src: C0
    [InlineData(3.0, 2.0, 0x0000)]   // ST0 > src
    [InlineData(2.0, 2.0, 0x4000)]   // equal: C3
    public void FnstswAxAfterFcom(double st0, double src, int expectedCc)
    {
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Data, BitConverter.GetBytes(st0));
        vm.Vm.Memory.Write(Data + 8, BitConverter.GetBytes(src));
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fninit();
            a.fld(__qword_ptr[rbx]);
            a.fcom(__qword_ptr[rbx + 8]);
            a.fnstsw(ax);
            a.hlt();
        });
        vm.RunToHlt();
        ulong sw = vm.Cpu.Gpr[0] & 0xFFFF;
        Assert.Equal((ulong)expectedCc, sw & 0x4700);
        Assert.Equal(7UL, (sw >> 11) & 7); // one value pushed: TOP = 7
    }

    [Fact]
    public void FcompUnorderedWithNaN()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Data, BitConverter.GetBytes(double.NaN));
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fninit();
            a.fld1();
            a.fcomp(__qword_ptr[rbx]);
            a.fnstsw(ax);
            a.hlt();
        });
        vm.RunToHlt();
        ulong sw = vm.Cpu.Gpr[0] & 0xFFFF;
        Assert.Equal(0x4500UL, sw & 0x4700);
        Assert.Equal(1UL, sw & 1); // IE (masked)
        Assert.Equal(0UL, (sw >> 11) & 7); // popped
    }

    [Fact]
    public void FxsaveFxrstorRoundTripIsExact()
    {
        using var vm = new TestVm();
        // An 80-bit value with all 64 significand bits used survives FLD m80 / FXSAVE / FXRSTOR / FSTP m80.
        byte[] ext = [0x21, 0x43, 0x65, 0x87, 0xA9, 0xCB, 0xED, 0xFF, 0x05, 0xC0];
        vm.Vm.Memory.Write(Data, ext);
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fninit();
            a.fld(__tword_ptr[rbx]);
            a.fldpi();
            a.fxsave(__[rbx + 0x100]);
            a.fninit();
            a.mov(__dword_ptr[rbx + 0x100 + 24], 0x1F80 | 0x6000); // MXCSR with RC = toward zero
            a.fxrstor(__[rbx + 0x100]);
            a.fxsave64(__[rbx + 0x400]);
            a.fstp(__tword_ptr[rbx + 32]); // pi
            a.fstp(__tword_ptr[rbx + 48]); // the value
            a.hlt();
        });
        vm.RunToHlt();
        var img1 = new byte[512];
        var img2 = new byte[512];
        vm.Vm.Memory.Read(Data + 0x100, img1);
        vm.Vm.Memory.Read(Data + 0x400, img2);
        Assert.Equal(0x037F, BitConverter.ToUInt16(img1, 0));
        Assert.Equal(6 << 11, BitConverter.ToUInt16(img1, 2)); // TOP = 6
        Assert.Equal(0xC0, img1[4]);                           // physical registers 6 and 7 in use
        Assert.Equal(0x7F80u, BitConverter.ToUInt32(img2, 24));
        Assert.Equal(0xFFFFu, BitConverter.ToUInt32(img1, 28));
        Assert.Equal(ext, img1.AsSpan(48, 10).ToArray());       // ST1
        Assert.Equal(0xC90FDAA22168C235UL, BitConverter.ToUInt64(img1, 32));
        // The two images agree on everything but FIP/FDP (64-bit format in the second).
        Assert.Equal(img1.AsSpan(0, 8).ToArray(), img2.AsSpan(0, 8).ToArray());
        Assert.Equal(img1.AsSpan(28).ToArray(), img2.AsSpan(28).ToArray());
        var back = new byte[10];
        vm.Vm.Memory.Read(Data + 48, back);
        Assert.Equal(ext, back);
        Assert.Equal(0x7F80u, vm.Cpu.Mxcsr);
    }

    [Fact]
    public void FxsaveMisalignedRaisesGp()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(rbx, Data + 8);
            a.fxsave(__[rbx]);
            a.hlt();
        });
        var e = RunExpectingFault(vm);
        Assert.Contains("#GP", e.Detail);
    }

    [Fact]
    public void FxrstorReservedMxcsrBitsRaiseGp()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fxsave(__[rbx]);
            a.mov(__dword_ptr[rbx + 24], 0x1F80 | 0x10000);
            a.fxrstor(__[rbx]);
            a.hlt();
        });
        var e = RunExpectingFault(vm);
        Assert.Contains("#GP", e.Detail);
    }

    [Fact]
    public void TsRaisesNm()
    {
        using var vm = new TestVm();
        vm.Start64(a => { a.fld1(); a.hlt(); });
        vm.Cpu.Cr0 |= Cpu.Cr0TS;
        var e = RunExpectingFault(vm);
        Assert.Contains("#NM", e.Detail);
    }

    [Fact]
    public void UnmaskedZeroDivideRaisesMfOnNextWaitingInstruction()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Data, BitConverter.GetBytes((ushort)0x37B)); // ZM cleared
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fninit();
            a.fldcw(__word_ptr[rbx]);
            a.fld1();
            a.fldz();
            a.fdivp(st1, st0);   // sets ZE, ES, B; ST1 keeps 1.0 and the pop happens? no: unmasked aborts
            a.fnstsw(ax);        // non-waiting: no fault
            a.mov(ecx, 1);
            a.wait();           // #MF here
            a.mov(ecx, 2);
            a.hlt();
        });
        var e = RunExpectingFault(vm);
        Assert.Contains("#MF", e.Detail);
        Assert.Equal(1UL, vm.Cpu.Gpr[1]);
        ulong sw = vm.Cpu.Gpr[0] & 0xFFFF;
        Assert.Equal(0x8084UL, sw & 0x80FF); // B, ES, ZE
    }

    [Fact]
    public void StackOverflowGivesIndefiniteAndC1()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.fninit();
            for (int k = 0; k < 9; k++) a.fld1();
            a.fnstsw(ax);
            a.mov(rbx, Data);
            a.fstp(__qword_ptr[rbx]);
            a.hlt();
        });
        vm.RunToHlt();
        ulong sw = vm.Cpu.Gpr[0] & 0xFFFF;
        Assert.Equal(0x0241UL, sw & 0x0241); // C1 (overflow), SF, IE
        Assert.Equal(0xFFF8_0000_0000_0000UL, vm.Vm.Memory.ReadU64(Data));
    }

    [Fact]
    public void Protected32FnsaveFrstorAndFxsaveFormat()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Data, BitConverter.GetBytes(-2.5));
        vm.Start32(a =>
        {
            a.mov(ebx, (uint)Data);
            a.fninit();
            a.fld(__qword_ptr[ebx]);
            a.fldl2e();
            a.fnsave(__[ebx + 0x100]);     // saves and reinitialises
            a.fnstsw(ax);
            a.mov(ecx, eax);
            a.frstor(__[ebx + 0x100]);
            a.fxsave(__[ebx + 0x200]);
            a.fstp(st0);
            a.fistp(__dword_ptr[ebx + 8]);  // -2.5 rounds to even: -2
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0UL, vm.Cpu.Gpr[1] & 0xFFFF);                           // after FNSAVE: FNINIT state
        Assert.Equal(0xFFFF037Fu, vm.Vm.Memory.ReadU32(Data + 0x100));      // FCW with reserved ones
        Assert.Equal(0x0FFFu, vm.Vm.Memory.ReadU32(Data + 0x108) & 0xFFFF); // tags: 6, 7 valid, rest empty
        Assert.Equal(0xB8AA3B295C17F0BCUL, vm.Vm.Memory.ReadU64(Data + 0x100 + 28)); // ST0 = log2(e)
        Assert.Equal(0xC0, vm.Vm.Memory.ReadU8(Data + 0x204));              // abridged tags after FRSTOR
        Assert.Equal((ulong)(TestVm.CodeBase), vm.Vm.Memory.ReadU32(Data + 0x208) & 0xFFF00000u);
        Assert.Equal(unchecked((uint)-2), vm.Vm.Memory.ReadU32(Data + 8));
    }

    [Theory]
    [InlineData(Cpu.Cr0MP | Cpu.Cr0TS, true)]
    [InlineData(Cpu.Cr0TS, false)]       // WAIT ignores TS unless MP is set
    [InlineData(Cpu.Cr0EM, false)]       // and ignores EM
    public void WaitRaisesNmOnlyWithMpAndTs(ulong cr0Bits, bool faults)
    {
        using var vm = new TestVm();
        vm.Start64(a => { a.wait(); a.hlt(); });
        vm.Cpu.Cr0 = (vm.Cpu.Cr0 & ~(Cpu.Cr0MP | Cpu.Cr0TS | Cpu.Cr0EM)) | cr0Bits;
        var e = vm.Run();
        if (faults) { Assert.Equal(VcpuExitReason.Shutdown, e.Reason); Assert.Contains("#NM", e.Detail); }
        else Assert.Equal(VcpuExitReason.HaltedForever, e.Reason);
    }

    [Theory]
    [InlineData(Cpu.Cr0EM)]
    [InlineData(Cpu.Cr0TS)]
    public void FxsaveAndFnstswRaiseNmWithEmOrTs(ulong cr0Bits)
    {
        foreach (var body in new Action<Iced.Intel.Assembler>[] { a => a.fxsave(__[rbx]), a => a.fnstsw(ax) })
        {
            using var vm = new TestVm();
            vm.Start64(a => { a.mov(rbx, Data); body(a); a.hlt(); });
            vm.Cpu.Cr0 |= cr0Bits;
            Assert.Contains("#NM", RunExpectingFault(vm).Detail);
        }
    }

    [Fact]
    public void UnmaskedInvalidLeavesDestinationAndRaisesMfAtNextFloatInstruction()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Data, BitConverter.GetBytes((ushort)0x37E)); // IM cleared
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fninit();
            a.fldcw(__word_ptr[rbx]);
            a.fld1();
            a.fchs();
            a.fsqrt();                          // sqrt(-1): #IA, unmasked
            a.fnstsw(ax);
            a.fnstenv(__[rbx + 16]);            // non-waiting; masks everything afterwards
            a.fldcw(__word_ptr[rbx]);           // unmask IM again: FLDCW is non-waiting too
            a.fstp(__tword_ptr[rbx + 64]);      // waiting: #MF before it executes
            a.hlt();
        });
        var e = RunExpectingFault(vm);
        Assert.Contains("#MF", e.Detail);
        Assert.Equal(0x8081UL, vm.Cpu.Gpr[0] & 0x80FF);             // B, ES, IE
        Assert.Equal(0xBFFF, vm.Cpu.St(0).SE);                      // -1.0 still there
        Assert.Equal(0x8000_0000_0000_0000UL, vm.Cpu.St(0).M);
        Assert.Equal(0x037E | 0x40, vm.Vm.Memory.ReadU16(Data + 16) | 0x40); // FNSTENV stored the unmasked FCW
    }

    [Fact]
    public void WaitingFstswRaisesPendingMfButFnstswDoesNot()
    {
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Data, BitConverter.GetBytes((ushort)0x37B)); // ZM cleared
        vm.Start64(a =>
        {
            a.mov(rbx, Data);
            a.fninit();
            a.fldcw(__word_ptr[rbx]);
            a.fldz();
            a.fld1();
            a.fdiv(st0, st1);    // unmasked #Z pending
            a.fnstsw(ax);
            a.mov(ecx, 1);
            a.db(0x9B, 0xDF, 0xE0); // FSTSW AX (WAIT form)
            a.mov(ecx, 2);
            a.hlt();
        });
        var e = RunExpectingFault(vm);
        Assert.Contains("#MF", e.Detail);
        Assert.Equal(1UL, vm.Cpu.Gpr[1]);
    }

    [Fact]
    public void Fnstenv16BitLayout()
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            a.mov(ebx, (uint)Data);
            a.fninit();
            a.fld1();
            a.fldz();
            a.db(0x66);                         // operand-size prefix: 14-byte environment
            a.fnstenv(__[ebx]);
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(0x037F, vm.Vm.Memory.ReadU16(Data));
        Assert.Equal(6 << 11, vm.Vm.Memory.ReadU16(Data + 2));
        Assert.Equal(0x1FFF, vm.Vm.Memory.ReadU16(Data + 4));      // ST0 (phys 6) zero, ST1 (phys 7) valid
        Assert.InRange(vm.Vm.Memory.ReadU16(Data + 6), 1, 20);        // FIP low 16 bits: FLDZ, near CodeBase
        Assert.Equal(vm.Cpu.Sreg[Cpu.CS].Selector, vm.Vm.Memory.ReadU16(Data + 8));
        Assert.Equal(0u, vm.Vm.Memory.ReadU32(Data + 14));             // nothing written past 14 bytes
    }

    // ---------------- differential with custom comparison ----------------

    [Fact]
    public void FxsaveImageMatchesHost()
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        using var native = new NativeRunner();
        using var emu = new EmuRunner();
        var code = Differential.Asm(a => a.fxsave(__[rbx]));
        const int seed = 4242;
        var rng = new Random(seed);
        for (int k = 0; k < Differential.CasesPerForm; k++)
        {
            var s = X87Gen.State(rng, doubles: false);
            var hin = s.Clone(); hin.Gpr[3] = native.HostMemAddress;
            var ein = s.Clone(); ein.Gpr[3] = EmuRunner.GuestMemAddress;
            var h = native.Run(code, hin);
            var e = emu.Run(code, ein);
            for (int off = 0; off < MachineState.MemSize; off++)
            {
                if (off is >= 6 and < 24 or >= 28 and < 32) continue; // FOP/FIP/FDP, MXCSR_MASK (host-specific)
                Assert.True(h.Mem[off] == e.Mem[off], $"seed {seed} case {k} byte {off}: host={h.Mem[off]:x2} emu={e.Mem[off]:x2}; {X87Gen.Describe(s)}");
            }
        }
    }

    public static IEnumerable<object[]> TranscendentalForms()
    {
        yield return ["fsin", (Action<Assembler>)(a => a.fsin()), -10.0, 10.0];
        yield return ["fcos", (Action<Assembler>)(a => a.fcos()), -10.0, 10.0];
        yield return ["fsincos", (Action<Assembler>)(a => a.fsincos()), -10.0, 10.0];
        yield return ["fptan", (Action<Assembler>)(a => a.fptan()), -1.5, 1.5];
        yield return ["fpatan", (Action<Assembler>)(a => a.fpatan()), -100.0, 100.0];
        yield return ["f2xm1", (Action<Assembler>)(a => a.f2xm1()), -1.0, 1.0];
        yield return ["fyl2x", (Action<Assembler>)(a => a.fyl2x()), 0.001, 1000.0];
        yield return ["fyl2xp1", (Action<Assembler>)(a => a.fyl2xp1()), -0.29, 0.29];
    }

    /// <summary>Transcendentals use the host's double math in the emulator: results must agree with the hardware
    /// to within a few units in the last place of a double; stack effects and invalid/zero-divide flags exactly.</summary>
    [Theory]
    [MemberData(nameof(TranscendentalForms))]
    public void TranscendentalsMatchHostWithinDoublePrecision(string name, Action<Assembler> form, double lo, double hi)
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        using var native = new NativeRunner();
        using var emu = new EmuRunner();
        var code = Differential.Asm(form);
        int seed = DiffX87Tests.StableHash(name); // stable across processes: a failure replays
        var rng = new Random(seed);
        for (int k = 0; k < Differential.CasesPerForm; k++)
        {
            var s = X87Gen.State(rng, doubles: true);
            s.Fx[4] = 0;
            int top = (BitConverter.ToUInt16(s.Fx, 2) >> 11) & 7;
            for (int i = 0; i < 2; i++)
            {
                double v = i == 0 ? lo + (hi - lo) * rng.NextDouble() : X87Gen.RandomDouble(rng);
                if (i == 1 && (double.IsInfinity(v) || v == 0)) v = 1.5;
                var (m, se) = X87Gen.FromDouble(v);
                BitConverter.TryWriteBytes(s.Fx.AsSpan(32 + 16 * i), m);
                BitConverter.TryWriteBytes(s.Fx.AsSpan(40 + 16 * i), se);
                s.Fx[4] |= (byte)(1 << ((top + i) & 7));
            }
            var h = native.Run(code, s.Clone());
            var e = emu.Run(code, s.Clone());
            ushort hsw = BitConverter.ToUInt16(h.Fx, 2), esw = BitConverter.ToUInt16(e.Fx, 2);
            string ctx = $"seed {seed} case {k}, {Differential.Describe(code)}: {X87Gen.Describe(s)}";
            Assert.True((hsw & 0x3845) == (esw & 0x3845), $"FSW host={hsw:x4} emu={esw:x4}; {ctx}");
            Assert.True(h.Fx[4] == e.Fx[4], $"FTW host={h.Fx[4]:x2} emu={e.Fx[4]:x2}; {ctx}");
            for (int i = 0; i < 8; i++)
            {
                if ((h.Fx[4] & (1 << ((((hsw >> 11) & 7) + i) & 7))) == 0) continue;
                double hv = ToDouble(h.Fx, 32 + 16 * i), ev = ToDouble(e.Fx, 32 + 16 * i);
                double tol = Math.Max(Math.Abs(hv), 1e-300) * 4e-16 * (name == "f2xm1" || name == "fyl2xp1" ? 4 : 1);
                Assert.True(Math.Abs(hv - ev) <= tol || hv.Equals(ev), $"ST{i} host={hv:R} emu={ev:R}; {ctx}");
            }
        }
    }

    private static double ToDouble(byte[] fx, int off)
    {
        ulong m = BitConverter.ToUInt64(fx, off);
        int se = BitConverter.ToUInt16(fx, off + 8);
        int e = se & 0x7FFF;
        double sign = (se & 0x8000) != 0 ? -1 : 1;
        if (e == 0x7FFF) return (m << 1) == 0 ? sign * double.PositiveInfinity : double.NaN;
        return sign * Math.ScaleB((double)m, e - 16383 - 63);
    }
}
