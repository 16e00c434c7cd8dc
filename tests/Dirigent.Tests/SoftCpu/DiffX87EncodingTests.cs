using Dirigent.Tests.Native;
using Iced.Intel;
using Decoder = Iced.Intel.Decoder;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Every register-form x87 encoding (D8-DF with mod=11, the undocumented aliases such as FSTPNCE D9 D8+i, FCOM2
/// DC D0+i, FXCH4 DD C8+i or FSTP8 DF D0+i included) against the host CPU, from random states in which stack
/// faults are common: an empty ST(0) or ST(1) (underflow) and a full stack (overflow for the pushing forms).
/// <see cref="DiffX87Tests"/> covers the documented forms with memory operands and arithmetic in depth; this class
/// makes sure no encoding is left out of the stack-fault paths. The transcendentals (FSIN, FPTAN, FYL2X, ...)
/// carry only double precision here, so they run only from states where a stack fault decides the result.
/// Found by the random-bytes fuzzer: FSTPNCE with an empty ST(0) (FUZZ_SEED=20251015 FUZZ_SKIP=12264 of
/// CpuRandomBytesFuzzTests.Mode64).
/// </summary>
public class DiffX87EncodingTests
{
    private static readonly Mnemonic[] Transcendental =
        [Mnemonic.Fsin, Mnemonic.Fcos, Mnemonic.Fsincos, Mnemonic.Fptan, Mnemonic.Fpatan, Mnemonic.F2xm1, Mnemonic.Fyl2x, Mnemonic.Fyl2xp1];

    /// <summary>(bytes as hex, mnemonic): every valid mod=11 encoding, with i = 0, 1 and 7 for the ST(i) forms.</summary>
    public static IEnumerable<object[]> Encodings()
    {
        for (int op = 0xD8; op <= 0xDF; op++)
            for (int modrm = 0xC0; modrm <= 0xFF; modrm++)
            {
                var code = new[] { (byte)op, (byte)modrm };
                var dec = Decoder.Create(64, code);
                dec.Decode(out var ins);
                if (ins.Code == Code.INVALID || ins.Length != 2) continue;
                bool usesSti = false;
                for (int k = 0; k < ins.OpCount; k++)
                    if (ins.GetOpKind(k) == OpKind.Register && ins.GetOpRegister(k) is >= Register.ST1 and <= Register.ST7) usesSti = true;
                if (usesSti && (modrm & 7) is not (1 or 7)) continue;
                yield return [Convert.ToHexString(code), ins.ToString()];
            }
    }

    [Theory]
    [MemberData(nameof(Encodings))]
    public void StackFaultsMatchHost(string hex, string text)
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        var code = Convert.FromHexString(hex);
        var dec = Decoder.Create(64, code);
        dec.Decode(out var ins);
        using var d = new Differential();
        int seed = Differential.StableHash("x87 encoding " + hex);
        var rng = new Random(seed);
        var failures = new List<string>();
        int cases = Differential.CasesPerForm;
        for (int k = 0; k < cases; k++)
        {
            var s = X87Gen.State(rng, doubles: false, randomPc: true);
            ForceStackShape(rng, s, ins.Mnemonic);
            string diff = d.Compare(code, s);
            if (diff != "") failures.Add(diff + " in: " + X87Gen.Describe(s));
        }
        Differential.AssertNoFailures(nameof(DiffX87EncodingTests), $"{text} [{hex}]", seed, cases, failures);
    }

    /// <summary>
    /// Half of the states get a stack fault shape: ST(0) empty, ST(0) valid with ST(1) empty, or all eight valid.
    /// Transcendental forms get only the shapes that fault for them (ST(1) empty for the two-operand FPATAN/FYL2X/
    /// FYL2XP1, a full stack for the pushing FPTAN/FSINCOS), so that their result is the masked response, not a value.
    /// </summary>
    private static void ForceStackShape(Random rng, MachineState s, Mnemonic m)
    {
        bool transcendental = Transcendental.Contains(m);
        if (!transcendental && rng.Next(2) == 0) return;
        var fx = s.Fx;
        int top = (BitConverter.ToUInt16(fx, 2) >> 11) & 7;
        byte tags = fx[4];
        switch (transcendental ? rng.Next(2) * (m is Mnemonic.Fpatan or Mnemonic.Fyl2x or Mnemonic.Fyl2xp1 ? 1 : m is Mnemonic.Fptan or Mnemonic.Fsincos ? 2 : 0) : rng.Next(3))
        {
            case 0: tags &= (byte)~(1 << top); if (transcendental) tags = 0; break;
            case 1: tags |= (byte)(1 << top); tags &= (byte)~(1 << ((top + 1) & 7)); break;
            default: tags = 0xFF; break;
        }
        fx[4] = tags;
    }
}
