using System.Numerics;
using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Differential tests for MUL, IMUL (1-, 2-, 3-operand), DIV and IDIV at every size, register and memory.
/// Divisions that would fault (#DE) are skipped here (they would kill the host); IntDataVmTests checks #DE in a guest.
/// </summary>
public class DiffIntMulDivTests
{
    private static bool Selected(Code c) => c.Mnemonic() is Mnemonic.Mul or Mnemonic.Imul or Mnemonic.Div or Mnemonic.Idiv;

    public static IEnumerable<object[]> Forms()
    {
        foreach (var row in IntForms.Rows(Selected, 0x3D1F, perKind: 2))
        {
            // Dividing rDX:rAX by rDX always overflows the quotient: nothing to compare.
            var ins = IntForms.Decode((byte[])row[1]);
            if (IsDiv(ins) && ins.Op0Kind == OpKind.Register && ins.Op0Register.GetFullRegister() == Register.RDX && ins.Op0Register.GetSize() > 1) continue;
            yield return row;
        }
        yield return IntForms.Hand("mul ah", a => a.mul(ah));
        yield return IntForms.Hand("idiv ch", a => a.idiv(ch));
        yield return IntForms.Hand("imul ax,dx,-3", a => a.imul(ax, dx, -3));
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, byte[] code) => IntForms.Check(name, code, Fix, Skip);

    private static bool IsDiv(Instruction ins) => ins.Mnemonic is Mnemonic.Div or Mnemonic.Idiv;

    private static int Size(Instruction ins) => ins.Op0Kind == OpKind.Register ? ins.Op0Register.GetSize() : ins.MemorySize.GetSize();

    /// <summary>Dividend high half (AH for 8-bit, else rDX) and low half, as the instruction sees them.</summary>
    private static (ulong hi, ulong lo) Dividend(MachineState s, int size) => size switch
    {
        1 => ((byte)(s.Gpr[0] >> 8), (byte)s.Gpr[0]),
        2 => ((ushort)s.Gpr[2], (ushort)s.Gpr[0]),
        4 => ((uint)s.Gpr[2], (uint)s.Gpr[0]),
        _ => (s.Gpr[2], s.Gpr[0]),
    };

    // Most random dividends overflow the quotient; steer the high half so most cases divide.
    private static void Fix(Instruction ins, MachineState s, Random rng)
    {
        if (!IsDiv(ins) || rng.Next(8) == 0) return;
        int size = Size(ins);
        ulong d = IntForms.Operand(ins, s, 0, size);
        if (d == 0) return;
        ulong mask = size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
        ulong lo = Dividend(s, size).lo;
        ulong hi;
        if (ins.Mnemonic == Mnemonic.Div) hi = ((ulong)rng.NextInt64() & mask) % d;
        else hi = ((lo >> (size * 8 - 1)) & 1) != 0 ? mask : 0; // sign extension of the low half
        if (size == 1) s.Gpr[0] = (s.Gpr[0] & ~0xFF00UL) | (hi << 8);
        else s.Gpr[2] = (s.Gpr[2] & ~mask) | hi;
        // The divisor may be the dividend register itself; the test re-reads it in Skip.
    }

    private static bool Skip(Instruction ins, MachineState s)
    {
        if (!IsDiv(ins)) return false;
        int size = Size(ins);
        int bits = size * 8;
        ulong d = IntForms.Operand(ins, s, 0, size);
        if (d == 0) return true;
        var (hi, lo) = Dividend(s, size);
        BigInteger dividend = ((BigInteger)hi << bits) | lo;
        if (ins.Mnemonic == Mnemonic.Div) return dividend / d >= BigInteger.One << bits;
        if (hi >> (bits - 1) != 0) dividend -= BigInteger.One << (2 * bits);
        BigInteger sd = d >> (bits - 1) != 0 ? (BigInteger)d - (BigInteger.One << bits) : d;
        BigInteger q = BigInteger.Divide(dividend, sd);
        return q >= BigInteger.One << (bits - 1) || q < -(BigInteger.One << (bits - 1));
    }
}
