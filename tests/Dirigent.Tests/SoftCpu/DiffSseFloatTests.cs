using System.Runtime.CompilerServices;
using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Shared driver and input generators for the SSE differential tests.</summary>
internal static class SseDiff
{
    /// <summary>A seed from the form name that is stable across processes (string.GetHashCode is randomised).</summary>
    public static int Seed(string name)
    {
        uint h = 2166136261;
        foreach (char ch in name) h = (h ^ ch) * 16777619;
        return (int)h;
    }

    public static void Run(string name, Action<Assembler> form, Func<Random, MachineState> state, int casesFactor = 1,
        [CallerFilePath] string callerFile = "")
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        using var d = new Differential();
        var code = Differential.Asm(form);
        int seed = Seed(name);
        var rng = new Random(seed);
        var failures = new List<string>();
        for (int k = 0; k < Differential.CasesPerForm * casesFactor; k++)
        {
            var input = state(rng);
            string diff = d.Compare(code, input, memBase: true);
            if (diff != "") failures.Add($"{diff} (mxcsr in={BitConverter.ToUInt32(input.Fx, 24):x}, x1={Convert.ToHexString(input.Xmm(1))}, x2={Convert.ToHexString(input.Xmm(2))})");
        }
        Differential.AssertNoFailures(Path.GetFileNameWithoutExtension(callerFile), name, seed, Differential.CasesPerForm * casesFactor, failures);
    }

    public static MachineState IntState(Random rng) => Differential.RandomState(rng);

    /// <summary>
    /// XMM lanes and memory filled with single (or double) values biased to edge cases: signed zeros, infinities,
    /// QNaN/SNaN with payloads, denormals, extremes, and values of nearby magnitude (so that additions round and
    /// cancel). MXCSR gets a random rounding mode, DAZ, FTZ and some pre-set sticky flags; exceptions stay masked.
    /// </summary>
    public static MachineState FloatState(Random rng, bool dbl)
    {
        var s = Differential.RandomState(rng);
        for (int k = 0; k < 16; k++) FillLanes(rng, s.Xmm(k), dbl);
        for (int off = 0; off < MachineState.MemSize; off += 16) FillLanes(rng, s.Mem.AsSpan(off, 16), dbl);
        uint mx = 0x1F80u | (uint)rng.Next(4) << 13;
        if (rng.Next(4) == 0) mx |= 0x40;
        if (rng.Next(4) == 0) mx |= 0x8000;
        if (rng.Next(4) == 0) mx |= (uint)rng.Next(64);
        BitConverter.TryWriteBytes(s.Fx.AsSpan(24), mx);
        return s;
    }

    public static MachineState SingleState(Random rng) => FloatState(rng, false);
    public static MachineState DoubleState(Random rng) => FloatState(rng, true);

    /// <summary>Default MXCSR (round to nearest, no DAZ/FTZ), as Linux runs user code.</summary>
    public static MachineState SingleStateDefaultMxcsr(Random rng)
    {
        var s = FloatState(rng, false);
        BitConverter.TryWriteBytes(s.Fx.AsSpan(24), 0x1F80u);
        return s;
    }

    private static void FillLanes(Random rng, Span<byte> dst, bool dbl)
    {
        // One shared exponent neighbourhood per vector so that lanes of different registers often meet.
        if (dbl) for (int b = 0; b < 16; b += 8) BitConverter.TryWriteBytes(dst[b..], DoubleValue(rng));
        else for (int b = 0; b < 16; b += 4) BitConverter.TryWriteBytes(dst[b..], SingleValue(rng));
    }

    public static uint SingleValue(Random rng)
    {
        uint sign = rng.Next(2) == 0 ? 0 : 0x8000_0000;
        uint frac = (uint)rng.Next() & 0x7F_FFFF;
        switch (rng.Next(14))
        {
            case 0: return sign;
            case 1: return sign | 0x7F80_0000;
            case 2: return sign | 0x7FC0_0000 | (frac & 0x3F_FFFF);
            case 3: return sign | 0x7F80_0000 | ((frac & 0x3F_FFFF) | 1);
            case 4: return sign | (frac | 1);
            case 5: return sign | (uint)rng.Next(1, 3) << 23 | frac;
            case 6: return sign | (uint)rng.Next(0xFC, 0xFF) << 23 | frac;
            case 7: return sign | (frac >> rng.Next(0, 23)) | 1;
            case 8: return (uint)BitConverter.SingleToInt32Bits(rng.Next(-1000, 1000));
            case 9: return sign | 0x7F7F_FFFF;
            case 10: return sign | (uint)rng.Next(0x7E, 0x81) << 23 | (frac & 0x7F_FF00);
            case 11: return sign | (uint)rng.Next(0x4E, 0x5F) << 23 | frac;
            default: return sign | (uint)rng.Next(0x7C, 0x84) << 23 | frac;
        }
    }

    public static ulong DoubleValue(Random rng)
    {
        ulong sign = rng.Next(2) == 0 ? 0 : 1UL << 63;
        ulong frac = (ulong)rng.NextInt64() & 0xF_FFFF_FFFF_FFFF;
        switch (rng.Next(14))
        {
            case 0: return sign;
            case 1: return sign | 0x7FF0_0000_0000_0000;
            case 2: return sign | 0x7FF8_0000_0000_0000 | (frac & 0x7_FFFF_FFFF_FFFF);
            case 3: return sign | 0x7FF0_0000_0000_0000 | ((frac & 0x7_FFFF_FFFF_FFFF) | 1);
            case 4: return sign | (frac | 1);
            case 5: return sign | (ulong)rng.Next(1, 3) << 52 | frac;
            case 6: return sign | (ulong)rng.Next(0x7FC, 0x7FF) << 52 | frac;
            case 7: return sign | (frac >> rng.Next(0, 52)) | 1;
            case 8: return (ulong)BitConverter.DoubleToInt64Bits(rng.Next(-1000, 1000));
            case 9: return sign | 0x7FEF_FFFF_FFFF_FFFF;
            case 10: return sign | (ulong)rng.Next(0x3FE, 0x401) << 52 | (frac & 0xF_FFFF_FF00_0000);
            case 11: return sign | (ulong)rng.Next(0x41E, 0x440) << 52 | frac;
            case 12: return sign | (ulong)rng.Next(0x369, 0x36C) << 52 | frac; // products/quotients that land near float range ends
            default: return sign | (ulong)rng.Next(0x3FC, 0x404) << 52 | frac;
        }
    }
}

/// <summary>Host-vs-emulator differential tests for SSE/SSE2/SSE3 floating point (results and MXCSR flags).</summary>
public class DiffSseFloatTests
{
    private static object[] F(string name, Action<Assembler> a, bool dbl) => [name, a, dbl];

    public static IEnumerable<object[]> Arith()
    {
        var ops = new (string, bool, Action<Assembler, AssemblerRegisterXMM, AssemblerRegisterXMM>, Action<Assembler, AssemblerRegisterXMM, AssemblerMemoryOperand>)[]
        {
            ("addps", false, (a, x, y) => a.addps(x, y), (a, x, m) => a.addps(x, m)),
            ("addpd", true, (a, x, y) => a.addpd(x, y), (a, x, m) => a.addpd(x, m)),
            ("addss", false, (a, x, y) => a.addss(x, y), (a, x, m) => a.addss(x, m)),
            ("addsd", true, (a, x, y) => a.addsd(x, y), (a, x, m) => a.addsd(x, m)),
            ("subps", false, (a, x, y) => a.subps(x, y), (a, x, m) => a.subps(x, m)),
            ("subpd", true, (a, x, y) => a.subpd(x, y), (a, x, m) => a.subpd(x, m)),
            ("subss", false, (a, x, y) => a.subss(x, y), (a, x, m) => a.subss(x, m)),
            ("subsd", true, (a, x, y) => a.subsd(x, y), (a, x, m) => a.subsd(x, m)),
            ("mulps", false, (a, x, y) => a.mulps(x, y), (a, x, m) => a.mulps(x, m)),
            ("mulpd", true, (a, x, y) => a.mulpd(x, y), (a, x, m) => a.mulpd(x, m)),
            ("mulss", false, (a, x, y) => a.mulss(x, y), (a, x, m) => a.mulss(x, m)),
            ("mulsd", true, (a, x, y) => a.mulsd(x, y), (a, x, m) => a.mulsd(x, m)),
            ("divps", false, (a, x, y) => a.divps(x, y), (a, x, m) => a.divps(x, m)),
            ("divpd", true, (a, x, y) => a.divpd(x, y), (a, x, m) => a.divpd(x, m)),
            ("divss", false, (a, x, y) => a.divss(x, y), (a, x, m) => a.divss(x, m)),
            ("divsd", true, (a, x, y) => a.divsd(x, y), (a, x, m) => a.divsd(x, m)),
            ("minps", false, (a, x, y) => a.minps(x, y), (a, x, m) => a.minps(x, m)),
            ("minpd", true, (a, x, y) => a.minpd(x, y), (a, x, m) => a.minpd(x, m)),
            ("minss", false, (a, x, y) => a.minss(x, y), (a, x, m) => a.minss(x, m)),
            ("minsd", true, (a, x, y) => a.minsd(x, y), (a, x, m) => a.minsd(x, m)),
            ("maxps", false, (a, x, y) => a.maxps(x, y), (a, x, m) => a.maxps(x, m)),
            ("maxpd", true, (a, x, y) => a.maxpd(x, y), (a, x, m) => a.maxpd(x, m)),
            ("maxss", false, (a, x, y) => a.maxss(x, y), (a, x, m) => a.maxss(x, m)),
            ("maxsd", true, (a, x, y) => a.maxsd(x, y), (a, x, m) => a.maxsd(x, m)),
            ("sqrtps", false, (a, x, y) => a.sqrtps(x, y), (a, x, m) => a.sqrtps(x, m)),
            ("sqrtpd", true, (a, x, y) => a.sqrtpd(x, y), (a, x, m) => a.sqrtpd(x, m)),
            ("sqrtss", false, (a, x, y) => a.sqrtss(x, y), (a, x, m) => a.sqrtss(x, m)),
            ("sqrtsd", true, (a, x, y) => a.sqrtsd(x, y), (a, x, m) => a.sqrtsd(x, m)),
            ("addsubps", false, (a, x, y) => a.addsubps(x, y), (a, x, m) => a.addsubps(x, m)),
            ("addsubpd", true, (a, x, y) => a.addsubpd(x, y), (a, x, m) => a.addsubpd(x, m)),
            ("haddps", false, (a, x, y) => a.haddps(x, y), (a, x, m) => a.haddps(x, m)),
            ("haddpd", true, (a, x, y) => a.haddpd(x, y), (a, x, m) => a.haddpd(x, m)),
            ("hsubps", false, (a, x, y) => a.hsubps(x, y), (a, x, m) => a.hsubps(x, m)),
            ("hsubpd", true, (a, x, y) => a.hsubpd(x, y), (a, x, m) => a.hsubpd(x, m)),
            ("comiss", false, (a, x, y) => a.comiss(x, y), (a, x, m) => a.comiss(x, m)),
            ("ucomiss", false, (a, x, y) => a.ucomiss(x, y), (a, x, m) => a.ucomiss(x, m)),
            ("comisd", true, (a, x, y) => a.comisd(x, y), (a, x, m) => a.comisd(x, m)),
            ("ucomisd", true, (a, x, y) => a.ucomisd(x, y), (a, x, m) => a.ucomisd(x, m)),
            ("cvtss2sd", false, (a, x, y) => a.cvtss2sd(x, y), (a, x, m) => a.cvtss2sd(x, m)),
            ("cvtsd2ss", true, (a, x, y) => a.cvtsd2ss(x, y), (a, x, m) => a.cvtsd2ss(x, m)),
            ("cvtps2pd", false, (a, x, y) => a.cvtps2pd(x, y), (a, x, m) => a.cvtps2pd(x, m)),
            ("cvtpd2ps", true, (a, x, y) => a.cvtpd2ps(x, y), (a, x, m) => a.cvtpd2ps(x, m)),
            ("cvtps2dq", false, (a, x, y) => a.cvtps2dq(x, y), (a, x, m) => a.cvtps2dq(x, m)),
            ("cvttps2dq", false, (a, x, y) => a.cvttps2dq(x, y), (a, x, m) => a.cvttps2dq(x, m)),
            ("cvtpd2dq", true, (a, x, y) => a.cvtpd2dq(x, y), (a, x, m) => a.cvtpd2dq(x, m)),
            ("cvttpd2dq", true, (a, x, y) => a.cvttpd2dq(x, y), (a, x, m) => a.cvttpd2dq(x, m)),
        };
        foreach (var (name, dbl, reg, mem) in ops)
        {
            yield return F($"{name} x1,x2", a => reg(a, xmm1, xmm2), dbl);
            yield return F($"{name} x4,x4", a => reg(a, xmm4, xmm4), dbl);
            yield return F($"{name} x10,[rbx+64]", a => mem(a, xmm10, __[rbx + 64]), dbl);
        }
        for (byte p = 0; p < 8; p++)
        {
            byte imm = p;
            yield return F($"cmpps x1,x2,{imm}", a => a.cmpps(xmm1, xmm2, imm), false);
            yield return F($"cmppd x1,x2,{imm}", a => a.cmppd(xmm1, xmm2, imm), true);
            yield return F($"cmpss x1,x2,{imm}", a => a.cmpss(xmm1, xmm2, imm), false);
            yield return F($"cmpsd x1,x2,{imm}", a => a.cmpsd(xmm1, xmm2, imm), true);
        }
        yield return F("cmpps x1,[rbx+16],1", a => a.cmpps(xmm1, __xmmword_ptr[rbx + 16], 1), false);
        yield return F("cmpsd x1,[rbx+8],2", a => a.cmpsd(xmm1, __qword_ptr[rbx + 8], 2), true);
    }

    public static IEnumerable<object[]> IntConversions()
    {
        yield return F("cvtsi2ss x1,ecx", a => a.cvtsi2ss(xmm1, ecx), false);
        yield return F("cvtsi2ss x1,rcx", a => a.cvtsi2ss(xmm1, rcx), false);
        yield return F("cvtsi2ss x1,[rbx+4]", a => a.cvtsi2ss(xmm1, __dword_ptr[rbx + 4]), false);
        yield return F("cvtsi2sd x1,edx", a => a.cvtsi2sd(xmm1, edx), true);
        yield return F("cvtsi2sd x1,rdx", a => a.cvtsi2sd(xmm1, rdx), true);
        yield return F("cvtsi2sd x1,[rbx+8]", a => a.cvtsi2sd(xmm1, __qword_ptr[rbx + 8]), true);
        yield return F("cvtss2si eax,x2", a => a.cvtss2si(eax, xmm2), false);
        yield return F("cvtss2si rax,x2", a => a.cvtss2si(rax, xmm2), false);
        yield return F("cvttss2si eax,x2", a => a.cvttss2si(eax, xmm2), false);
        yield return F("cvttss2si r8,[rbx+4]", a => a.cvttss2si(r8, __dword_ptr[rbx + 4]), false);
        yield return F("cvtsd2si eax,x2", a => a.cvtsd2si(eax, xmm2), true);
        yield return F("cvtsd2si rax,[rbx+8]", a => a.cvtsd2si(rax, __qword_ptr[rbx + 8]), true);
        yield return F("cvttsd2si ecx,x3", a => a.cvttsd2si(ecx, xmm3), true);
        yield return F("cvttsd2si rcx,x3", a => a.cvttsd2si(rcx, xmm3), true);
        yield return F("cvtdq2ps x1,x2", a => a.cvtdq2ps(xmm1, xmm2), false);
        yield return F("cvtdq2ps x1,[rbx+16]", a => a.cvtdq2ps(xmm1, __xmmword_ptr[rbx + 16]), false);
        yield return F("cvtdq2pd x1,x2", a => a.cvtdq2pd(xmm1, xmm2), true);
        yield return F("cvtdq2pd x1,[rbx+8]", a => a.cvtdq2pd(xmm1, __qword_ptr[rbx + 8]), true);
    }

    [Theory]
    [MemberData(nameof(Arith))]
    public void MatchesHost(string name, Action<Assembler> form, bool dbl) =>
        SseDiff.Run(name, form, dbl ? SseDiff.DoubleState : SseDiff.SingleState, 2);

    [Theory]
    [MemberData(nameof(IntConversions))]
    public void IntConversionsMatchHost(string name, Action<Assembler> form, bool dbl)
    {
        // Half the cases with integer-biased GPRs/lanes (for int→float), half with float lanes (for float→int).
        SseDiff.Run(name, form, rng => rng.Next(2) == 0 ? RandomIntsWithMxcsr(rng) : SseDiff.FloatState(rng, dbl), 2);
    }

    private static MachineState RandomIntsWithMxcsr(Random rng)
    {
        var s = Differential.RandomState(rng);
        uint mx = 0x1F80u | (uint)rng.Next(4) << 13;
        BitConverter.TryWriteBytes(s.Fx.AsSpan(24), mx);
        return s;
    }
}
