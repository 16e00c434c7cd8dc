using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Every pair of special operands (±0, ±inf, QNaN/SNaN of both signs, denormals, extremes, ordinary values) for
/// the float operations, under each rounding mode and with DAZ+FTZ, compared with the host bit for bit (results,
/// MXCSR flags, EFLAGS for COMIS).
/// </summary>
public class DiffSseSpecialTests
{
    private static readonly uint[] s_singles =
    [
        0, 0x8000_0000, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0001, 0xFFC1_2345, 0x7F80_0001, 0xFFA0_0000,
        1, 0x007F_FFFF, 0x8000_0010, 0x0080_0000, 0x8080_0000, 0x7F7F_FFFF, 0xFF7F_FFFF, 0x3F80_0000,
        0xBFC0_0000, 0x00FF_FFFF, 0x7F00_0000, 0x3400_0001,
    ];

    private static readonly ulong[] s_doubles =
    [
        0, 0x8000_0000_0000_0000, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000, 0x7FF8_0000_0000_0001,
        0xFFF8_1234_5678_9ABC, 0x7FF0_0000_0000_0001, 0xFFF4_0000_0000_0000, 1, 0x000F_FFFF_FFFF_FFFF,
        0x8000_0000_0000_0010, 0x0010_0000_0000_0000, 0x8010_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF,
        0xFFEF_FFFF_FFFF_FFFF, 0x3FF0_0000_0000_0000, 0xBFF8_0000_0000_0000, 0x001F_FFFF_FFFF_FFFF,
        0x7FE0_0000_0000_0000, 0x3CB0_0000_0000_0001,
    ];

    private static readonly uint[] s_mxcsrs = [0x1F80, 0x3F80, 0x5F80, 0x7F80, 0x9FC0];

    private static object[] F(string name, Action<Assembler> a, bool dbl) => [name, a, dbl];

    public static IEnumerable<object[]> Forms()
    {
        yield return F("addps", a => a.addps(xmm1, xmm2), false);
        yield return F("subps", a => a.subps(xmm1, xmm2), false);
        yield return F("mulps", a => a.mulps(xmm1, xmm2), false);
        yield return F("divps", a => a.divps(xmm1, xmm2), false);
        yield return F("minps", a => a.minps(xmm1, xmm2), false);
        yield return F("maxps", a => a.maxps(xmm1, xmm2), false);
        yield return F("sqrtps", a => a.sqrtps(xmm1, xmm2), false);
        yield return F("cmpps lt", a => a.cmpps(xmm1, xmm2, 1), false);
        yield return F("cmpps eq", a => a.cmpps(xmm1, xmm2, 0), false);
        yield return F("cmpps unord", a => a.cmpps(xmm1, xmm2, 3), false);
        yield return F("cmpps nle", a => a.cmpps(xmm1, xmm2, 6), false);
        yield return F("comiss", a => a.comiss(xmm1, xmm2), false);
        yield return F("ucomiss", a => a.ucomiss(xmm1, xmm2), false);
        yield return F("cvtps2pd", a => a.cvtps2pd(xmm1, xmm2), false);
        yield return F("cvtps2dq", a => a.cvtps2dq(xmm1, xmm2), false);
        yield return F("cvttps2dq", a => a.cvttps2dq(xmm1, xmm2), false);
        yield return F("cvtss2si rax", a => a.cvtss2si(rax, xmm2), false);
        yield return F("haddps", a => a.haddps(xmm1, xmm2), false);
        yield return F("addsubps", a => a.addsubps(xmm1, xmm2), false);
        yield return F("addpd", a => a.addpd(xmm1, xmm2), true);
        yield return F("subpd", a => a.subpd(xmm1, xmm2), true);
        yield return F("mulpd", a => a.mulpd(xmm1, xmm2), true);
        yield return F("divpd", a => a.divpd(xmm1, xmm2), true);
        yield return F("minpd", a => a.minpd(xmm1, xmm2), true);
        yield return F("maxpd", a => a.maxpd(xmm1, xmm2), true);
        yield return F("sqrtpd", a => a.sqrtpd(xmm1, xmm2), true);
        yield return F("cmppd le", a => a.cmppd(xmm1, xmm2, 2), true);
        yield return F("cmppd neq", a => a.cmppd(xmm1, xmm2, 4), true);
        yield return F("comisd", a => a.comisd(xmm1, xmm2), true);
        yield return F("ucomisd", a => a.ucomisd(xmm1, xmm2), true);
        yield return F("cvtpd2ps", a => a.cvtpd2ps(xmm1, xmm2), true);
        yield return F("cvtpd2dq", a => a.cvtpd2dq(xmm1, xmm2), true);
        yield return F("cvttsd2si eax", a => a.cvttsd2si(eax, xmm2), true);
        yield return F("cvtsd2si rax", a => a.cvtsd2si(rax, xmm2), true);
        yield return F("hsubpd", a => a.hsubpd(xmm1, xmm2), true);
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void AllSpecialPairsMatchHost(string name, Action<Assembler> form, bool dbl)
    {
        Assert.True(NativeRunner.Supported);
        using var d = new Differential();
        var code = Differential.Asm(form);
        var failures = new List<string>();
        int n = dbl ? s_doubles.Length : s_singles.Length;
        int lanes = dbl ? 2 : 4;
        // Scalar forms and COMIS only look at lane 0, so walk pairs one per run there; packed forms take a lane each.
        bool laneZeroOnly = name.Contains("comis", StringComparison.Ordinal) || name.Contains("2si", StringComparison.Ordinal);
        int step = laneZeroOnly ? 1 : lanes;
        foreach (uint mx in s_mxcsrs)
        {
            for (int p = 0; p < n * n; p += step)
            {
                var s = new MachineState();
                BitConverter.TryWriteBytes(s.Fx.AsSpan(24), mx);
                for (int l = 0; l < step && p + l < n * n; l++)
                {
                    int ia = (p + l) / n, ib = (p + l) % n;
                    if (dbl)
                    {
                        BitConverter.TryWriteBytes(s.Xmm(1)[(8 * l)..], s_doubles[ia]);
                        BitConverter.TryWriteBytes(s.Xmm(2)[(8 * l)..], s_doubles[ib]);
                    }
                    else
                    {
                        BitConverter.TryWriteBytes(s.Xmm(1)[(4 * l)..], s_singles[ia]);
                        BitConverter.TryWriteBytes(s.Xmm(2)[(4 * l)..], s_singles[ib]);
                    }
                }
                string diff = d.Compare(code, s);
                if (diff != "") failures.Add($"{diff} (mxcsr={mx:x}, x1={Convert.ToHexString(s.Xmm(1))}, x2={Convert.ToHexString(s.Xmm(2))})");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} mismatches, first: {failures.FirstOrDefault()}");
    }
}
