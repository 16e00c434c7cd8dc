using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Host-vs-emulator differential tests for the x87 FPU. States are built directly as FXSAVE images (ST0 at
/// offset 32, TOP in FSW, abridged tags at offset 4), with some registers empty to exercise stack faults.
/// Exact forms (data movement, integer conversion, rounding, compares, FPREM, FXTRACT, FSCALE, constants, control)
/// use arbitrary 64-bit-significand values and all rounding modes. The emulator computes FADD/FSUB/FMUL/FDIV/FSQRT
/// in binary64, so their tests set FCW.PC to double precision and use double-representable operands of moderate
/// exponent; the same forms also run with arbitrary 80-bit operands and every precision control setting.
/// </summary>
public class DiffX87Tests
{
    private static Action<Assembler> F(Action<Assembler> a) => a;

    public static IEnumerable<object[]> ExactForms()
    {
        yield return ["fld st2", F(a => a.fld(st2))];
        yield return ["fld st0", F(a => a.fld(st0))];
        yield return ["fst st3", F(a => a.fst(st3))];
        yield return ["fstp st1", F(a => a.fstp(st1))];
        yield return ["fxch st4", F(a => a.fxch(st0, st4))];
        yield return ["fchs", F(a => a.fchs())];
        yield return ["fabs", F(a => a.fabs())];
        yield return ["fld m80", F(a => a.fld(__tword_ptr[rbx + 16]))];
        yield return ["fstp m80", F(a => a.fstp(__tword_ptr[rbx + 40]))];
        yield return ["fld m32", F(a => a.fld(__dword_ptr[rbx + 8]))];
        yield return ["fld m64", F(a => a.fld(__qword_ptr[rbx + 24]))];
        yield return ["fst m32", F(a => a.fst(__dword_ptr[rbx + 8]))];
        yield return ["fstp m32", F(a => a.fstp(__dword_ptr[rbx + 12]))];
        yield return ["fst m64", F(a => a.fst(__qword_ptr[rbx + 24]))];
        yield return ["fstp m64", F(a => a.fstp(__qword_ptr[rbx + 32]))];
        yield return ["fild m16", F(a => a.fild(__word_ptr[rbx + 2]))];
        yield return ["fild m32", F(a => a.fild(__dword_ptr[rbx + 4]))];
        yield return ["fild m64", F(a => a.fild(__qword_ptr[rbx + 8]))];
        yield return ["fist m16", F(a => a.fist(__word_ptr[rbx + 2]))];
        yield return ["fist m32", F(a => a.fist(__dword_ptr[rbx + 4]))];
        yield return ["fistp m16", F(a => a.fistp(__word_ptr[rbx + 2]))];
        yield return ["fistp m32", F(a => a.fistp(__dword_ptr[rbx + 4]))];
        yield return ["fistp m64", F(a => a.fistp(__qword_ptr[rbx + 8]))];
        yield return ["fisttp m16", F(a => a.fisttp(__word_ptr[rbx + 2]))];
        yield return ["fisttp m32", F(a => a.fisttp(__dword_ptr[rbx + 4]))];
        yield return ["fisttp m64", F(a => a.fisttp(__qword_ptr[rbx + 8]))];
        yield return ["fbld", F(a => a.fbld(__tword_ptr[rbx + 48]))];
        yield return ["fbstp", F(a => a.fbstp(__tword_ptr[rbx + 48]))];
        yield return ["frndint", F(a => a.frndint())];
        yield return ["fcom st1", F(a => a.fcom(st0, st1))];
        yield return ["fcomp st2", F(a => a.fcomp(st0, st2))];
        yield return ["fcompp", F(a => a.fcompp())];
        yield return ["fucom st1", F(a => a.fucom(st0, st1))];
        yield return ["fucomp st3", F(a => a.fucomp(st0, st3))];
        yield return ["fucompp", F(a => a.fucompp())];
        yield return ["fcomi st1", F(a => a.fcomi(st0, st1))];
        yield return ["fcomip st2", F(a => a.fcomip(st0, st2))];
        yield return ["fucomi st1", F(a => a.fucomi(st0, st1))];
        yield return ["fucomip st1", F(a => a.fucomip(st0, st1))];
        yield return ["fcom m32", F(a => a.fcom(__dword_ptr[rbx + 8]))];
        yield return ["fcomp m64", F(a => a.fcomp(__qword_ptr[rbx + 24]))];
        yield return ["ficom m16", F(a => a.ficom(__word_ptr[rbx + 2]))];
        yield return ["ficomp m32", F(a => a.ficomp(__dword_ptr[rbx + 4]))];
        yield return ["ftst", F(a => a.ftst())];
        yield return ["fxam", F(a => a.fxam())];
        yield return ["fxtract", F(a => a.fxtract())];
        yield return ["fprem", F(a => a.fprem())];
        yield return ["fprem1", F(a => a.fprem1())];
        yield return ["fscale", F(a => a.fscale())];
        yield return ["fld1", F(a => a.fld1())];
        yield return ["fldz", F(a => a.fldz())];
        yield return ["fldpi", F(a => a.fldpi())];
        yield return ["fldl2e", F(a => a.fldl2e())];
        yield return ["fldl2t", F(a => a.fldl2t())];
        yield return ["fldlg2", F(a => a.fldlg2())];
        yield return ["fldln2", F(a => a.fldln2())];
        yield return ["ffree st2", F(a => a.ffree(st2))];
        yield return ["fincstp", F(a => a.fincstp())];
        yield return ["fdecstp", F(a => a.fdecstp())];
        yield return ["fcmovb", F(a => a.fcmovb(st0, st1))];
        yield return ["fcmove", F(a => a.fcmove(st0, st2))];
        yield return ["fcmovbe", F(a => a.fcmovbe(st0, st1))];
        yield return ["fcmovu", F(a => a.fcmovu(st0, st3))];
        yield return ["fcmovnb", F(a => a.fcmovnb(st0, st1))];
        yield return ["fcmovne", F(a => a.fcmovne(st0, st1))];
        yield return ["fcmovnbe", F(a => a.fcmovnbe(st0, st2))];
        yield return ["fcmovnu", F(a => a.fcmovnu(st0, st1))];
        yield return ["fnstsw ax", F(a => a.fnstsw(ax))];
        yield return ["fnstsw m16", F(a => a.fnstsw(__word_ptr[rbx + 6]))];
        yield return ["fnstcw m16", F(a => a.fnstcw(__word_ptr[rbx + 6]))];
        yield return ["fldcw m16", F(a => a.fldcw(__word_ptr[rbx + 6]))];
        yield return ["fnclex", F(a => a.fnclex())];
        yield return ["fninit", F(a => a.fninit())];
        yield return ["fnop", F(a => a.fnop())];
        yield return ["emms", F(a => a.emms())];
        yield return ["fnstenv", F(a => a.fnstenv(__[rbx + 64]))];
        yield return ["fnsave", F(a => a.fnsave(__[rbx + 64]))];
        yield return ["fldenv", F(a => a.fldenv(__[rbx + 64]))];
        yield return ["frstor", F(a => a.frstor(__[rbx + 64]))];
    }

    public static IEnumerable<object[]> ArithForms()
    {
        yield return ["fadd st0,st1", F(a => a.fadd(st0, st1))];
        yield return ["fadd st2,st0", F(a => a.fadd(st2, st0))];
        yield return ["faddp st1", F(a => a.faddp(st1, st0))];
        yield return ["fsub st0,st1", F(a => a.fsub(st0, st1))];
        yield return ["fsub st1,st0", F(a => a.fsub(st1, st0))];
        yield return ["fsubp st2", F(a => a.fsubp(st2, st0))];
        yield return ["fsubr st0,st2", F(a => a.fsubr(st0, st2))];
        yield return ["fsubr st1,st0", F(a => a.fsubr(st1, st0))];
        yield return ["fsubrp st1", F(a => a.fsubrp(st1, st0))];
        yield return ["fmul st0,st1", F(a => a.fmul(st0, st1))];
        yield return ["fmul st3,st0", F(a => a.fmul(st3, st0))];
        yield return ["fmulp st1", F(a => a.fmulp(st1, st0))];
        yield return ["fdiv st0,st1", F(a => a.fdiv(st0, st1))];
        yield return ["fdiv st1,st0", F(a => a.fdiv(st1, st0))];
        yield return ["fdivp st1", F(a => a.fdivp(st1, st0))];
        yield return ["fdivr st0,st1", F(a => a.fdivr(st0, st1))];
        yield return ["fdivr st2,st0", F(a => a.fdivr(st2, st0))];
        yield return ["fdivrp st1", F(a => a.fdivrp(st1, st0))];
        yield return ["fadd m32", F(a => a.fadd(__dword_ptr[rbx + 8]))];
        yield return ["fsub m64", F(a => a.fsub(__qword_ptr[rbx + 24]))];
        yield return ["fsubr m32", F(a => a.fsubr(__dword_ptr[rbx + 8]))];
        yield return ["fmul m64", F(a => a.fmul(__qword_ptr[rbx + 24]))];
        yield return ["fdiv m32", F(a => a.fdiv(__dword_ptr[rbx + 8]))];
        yield return ["fdivr m64", F(a => a.fdivr(__qword_ptr[rbx + 24]))];
        yield return ["fiadd m16", F(a => a.fiadd(__word_ptr[rbx + 2]))];
        yield return ["fisub m32", F(a => a.fisub(__dword_ptr[rbx + 4]))];
        yield return ["fisubr m16", F(a => a.fisubr(__word_ptr[rbx + 2]))];
        yield return ["fimul m32", F(a => a.fimul(__dword_ptr[rbx + 4]))];
        yield return ["fidiv m16", F(a => a.fidiv(__word_ptr[rbx + 2]))];
        yield return ["fidivr m32", F(a => a.fidivr(__dword_ptr[rbx + 4]))];
        yield return ["fsqrt", F(a => a.fsqrt())];
    }

    [Theory]
    [MemberData(nameof(ExactForms))]
    public void ExactMatchesHost(string name, Action<Assembler> form) => Run(name, form, doubles: false);

    [Theory]
    [MemberData(nameof(ArithForms))]
    public void ArithmeticAtDoublePrecisionMatchesHost(string name, Action<Assembler> form) => Run(name, form, doubles: true);

    [Theory]
    [MemberData(nameof(ArithForms))]
    public void ArithmeticExtendedMatchesHost(string name, Action<Assembler> form) => Run(name, form, doubles: false, randomPc: true);

    private static void Run(string name, Action<Assembler> form, bool doubles, bool randomPc = false)
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        using var d = new Differential();
        var code = Differential.Asm(form);
        int seed = StableHash(name); // stable across processes: a failure replays
        var rng = new Random(seed);
        var failures = new List<string>();
        for (int k = 0; k < Differential.CasesPerForm * 2; k++)
        {
            var s = X87Gen.State(rng, doubles, randomPc);
            string diff = d.Compare(code, s, memBase: true);
            if (diff != "") failures.Add(diff + " in: " + X87Gen.Describe(s));
        }
        Differential.AssertNoFailures(nameof(DiffX87Tests), name, seed, Differential.CasesPerForm * 2, failures);
    }

    internal static int StableHash(string s)
    {
        int h = 17;
        foreach (char ch in s) h = h * 31 + ch;
        return h;
    }
}

/// <summary>Random x87 machine states for differential tests.</summary>
internal static class X87Gen
{
    public static (ulong M, ushort SE) FromDouble(double d)
    {
        ulong b = BitConverter.DoubleToUInt64Bits(d);
        ushort s = (ushort)((b >> 63) != 0 ? 0x8000 : 0);
        int e = (int)((b >> 52) & 0x7FF);
        ulong f = b & 0xF_FFFF_FFFF_FFFFUL;
        if (e == 0x7FF) return (1UL << 63 | f << 11, (ushort)(s | 0x7FFF));
        if (e == 0) return (0, s); // callers do not pass subnormals
        return (1UL << 63 | f << 11, (ushort)(s | (e - 1023 + 16383)));
    }

    /// <summary>A double of moderate exponent, biased to simple values where results are often exact.</summary>
    public static double RandomDouble(Random rng)
    {
        switch (rng.Next(12))
        {
            case 0: return 0.0;
            case 1: return -0.0;
            case 2: return rng.Next(-100, 100);
            case 3: return rng.Next(-1000, 1000) / 8.0;
            case 4: return double.PositiveInfinity * (rng.Next(2) * 2 - 1);
            case 5: return Math.ScaleB(rng.NextDouble() + 0.5, rng.Next(-60, 60)) * (rng.Next(2) * 2 - 1);
            case 6: return 1.0 / 3 * rng.Next(1, 9);
            default: return Math.ScaleB(rng.NextDouble() * 2 - 1, rng.Next(-200, 200));
        }
    }

    /// <summary>Any 80-bit value: normals of all magnitudes (bias towards the integer range), zeros, infinities,
    /// NaNs, denormals, and now and then an unsupported encoding.</summary>
    public static (ulong M, ushort SE) RandomExt(Random rng)
    {
        ushort s = (ushort)(rng.Next(2) == 0 ? 0 : 0x8000);
        ulong m = (ulong)rng.NextInt64() | (ulong)rng.Next() << 63;
        switch (rng.Next(22))
        {
            case 21: return (1UL << 63 | m, s); // pseudo-denormal
            case 20: return (m >> 1, (ushort)(s | (rng.Next(2) == 0 ? 0x7FFF : rng.Next(1, 0x7FFF)))); // unsupported
            case 0: return (0, s);
            case 1: return (1UL << 63, (ushort)(s | 0x7FFF));
            case 2: return (1UL << 63 | 1UL << 62 | (m >> 20), (ushort)(s | 0x7FFF)); // QNaN
            case 3: return (1UL << 63 | (m >> 3) | 1, (ushort)(s | 0x7FFF)); // SNaN
            case 4: return (m >> 1 >> rng.Next(63), s); // denormal
            case 5: return (1UL << 63 | m >> rng.Next(1, 64) << rng.Next(0, 5), (ushort)(s | (16383 + rng.Next(-3, 70))));
            case 6: { var (mm, se) = FromDouble(rng.Next(-100000, 100000) / 4.0); return (mm, se); }
            case 7: return (1UL << 63 | m, (ushort)(s | (16383 + rng.Next(-2, 2)))); // around +-1, +-0.5
            case 8: return (1UL << 63 | m, (ushort)(s | rng.Next(1, 0x7FFF)));
            case 9: return (1UL << 63 | (m >> 40 << 40), (ushort)(s | (16383 + rng.Next(0, 64))));
            default: return (1UL << 63 | m, (ushort)(s | (16383 + rng.Next(-80, 80))));
        }
    }

    public static MachineState State(Random rng, bool doubles, bool randomPc = false)
    {
        var st = Differential.RandomState(rng);
        int top = rng.Next(8);
        // Mostly 2-7 valid registers; sometimes none or all (stack underflow/overflow).
        int n = rng.Next(10) switch { 0 => 0, 1 => 8, 2 => 1, _ => rng.Next(2, 8) };
        int rc = rng.Next(4);
        int pc = randomPc ? rng.Next(3) switch { 0 => 0, 1 => 2, _ => 3 } : doubles ? 2 : 3;
        ushort fcw = (ushort)(0x7F | pc << 8 | rc << 10);
        ushort fsw = (ushort)(top << 11);
        if (rng.Next(4) == 0) fsw |= (ushort)(rng.Next(16) switch { var b => (b & 7) << 8 | (b >> 3) << 14 });
        var fx = st.Fx;
        Array.Clear(fx, 0, 24); // MXCSR (24) stays 0x1F80: the host process needs SSE exceptions masked
        Array.Clear(fx, 32, 128);
        fx[0] = (byte)fcw; fx[1] = (byte)(fcw >> 8);
        fx[2] = (byte)fsw; fx[3] = (byte)(fsw >> 8);
        byte tags = 0;
        for (int i = 0; i < 8; i++)
        {
            if (i < n) tags |= (byte)(1 << ((top + i) & 7));
            var (m, se) = doubles ? FromDouble(RandomDouble(rng)) : RandomExt(rng);
            if (i >= n && rng.Next(2) == 0) { m = 0; se = 0; }
            BitConverter.TryWriteBytes(fx.AsSpan(32 + 16 * i), m);
            BitConverter.TryWriteBytes(fx.AsSpan(40 + 16 * i), se);
        }
        fx[4] = tags;
        // Memory operands: integers of every size near limits, and floats of the right kind.
        var mem = st.Mem;
        if (rng.Next(2) == 0) BitConverter.TryWriteBytes(mem.AsSpan(2), (short)Differential.RandomValue(rng));
        if (rng.Next(2) == 0) BitConverter.TryWriteBytes(mem.AsSpan(4), (int)Differential.RandomValue(rng));
        if (rng.Next(2) == 0) BitConverter.TryWriteBytes(mem.AsSpan(8), (long)Differential.RandomValue(rng));
        if (doubles || rng.Next(2) == 0)
        {
            double v = doubles ? RandomDouble(rng) : BitConverter.UInt64BitsToDouble(Differential.RandomValue(rng));
            BitConverter.TryWriteBytes(mem.AsSpan(8), (float)v);
            BitConverter.TryWriteBytes(mem.AsSpan(24), doubles ? RandomDouble(rng) : v);
        }
        if (doubles)
        {
            BitConverter.TryWriteBytes(mem.AsSpan(2), (short)rng.Next(-1000, 1000));
            BitConverter.TryWriteBytes(mem.AsSpan(4), rng.Next(-100000, 100000));
        }
        var (em, ese) = RandomExt(rng);
        BitConverter.TryWriteBytes(mem.AsSpan(16), em);
        if (!doubles && rng.Next(3) == 0) BitConverter.TryWriteBytes(mem.AsSpan(24), ese);
        // A valid BCD number at 48 most of the time.
        if (rng.Next(4) != 0)
        {
            ulong lo = 0; ushort hi = (ushort)(rng.Next(2) << 15);
            int digits = rng.Next(1, 19);
            for (int dgt = 0; dgt < 18; dgt++)
            {
                ulong nib = dgt < digits ? (ulong)rng.Next(10) : 0;
                if (dgt < 16) lo |= nib << (4 * dgt); else hi |= (ushort)(nib << (4 * (dgt - 16)));
            }
            BitConverter.TryWriteBytes(mem.AsSpan(48), lo);
            BitConverter.TryWriteBytes(mem.AsSpan(56), hi);
        }
        // An FLDENV/FRSTOR image at 64: masked control word, any status/tag word, arbitrary registers.
        BitConverter.TryWriteBytes(mem.AsSpan(64), 0xFFFF0000u | (uint)(0x7F | rng.Next(4) << 8 | rng.Next(4) << 10));
        BitConverter.TryWriteBytes(mem.AsSpan(68), (uint)rng.Next() & 0xFFFF_7F7F);
        BitConverter.TryWriteBytes(mem.AsSpan(72), (uint)rng.Next());
        for (int i = 0; i < 8; i++)
        {
            var (rm, rse) = RandomExt(rng);
            BitConverter.TryWriteBytes(mem.AsSpan(92 + 10 * i), rm);
            BitConverter.TryWriteBytes(mem.AsSpan(100 + 10 * i), rse);
        }
        // FLDCW source: a control word with every exception masked (unmasked ones would fault on the host).
        BitConverter.TryWriteBytes(mem.AsSpan(6), (ushort)(0x7F | rng.Next(4) << 8 | rng.Next(4) << 10 | rng.Next(2) << 12));
        return st;
    }

    public static string Describe(MachineState s)
    {
        var sb = new System.Text.StringBuilder();
        sb.Append($"fcw={BitConverter.ToUInt16(s.Fx, 0):x} fsw={BitConverter.ToUInt16(s.Fx, 2):x} tags={s.Fx[4]:x2}");
        for (int i = 0; i < 8; i++) sb.Append($" st{i}={BitConverter.ToUInt16(s.Fx, 40 + 16 * i):x4}:{BitConverter.ToUInt64(s.Fx, 32 + 16 * i):x16}");
        sb.Append($" m2={BitConverter.ToUInt16(s.Mem, 2):x} m4={BitConverter.ToUInt32(s.Mem, 4):x} m8={BitConverter.ToUInt64(s.Mem, 8):x} m16={BitConverter.ToUInt16(s.Mem, 24):x4}:{BitConverter.ToUInt64(s.Mem, 16):x16} m24={BitConverter.ToUInt64(s.Mem, 24):x}");
        return sb.ToString();
    }
}
