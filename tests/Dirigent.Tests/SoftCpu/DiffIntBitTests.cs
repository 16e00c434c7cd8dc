using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Differential tests for BT/BTS/BTR/BTC (register and immediate offsets, register and memory, LOCK), BSF, BSR,
/// POPCNT and LZCNT. TZCNT is not comparable with this host (it has BMI1): IntDataVmTests checks it runs as BSF.
/// </summary>
public class DiffIntBitTests
{
    private static bool Selected(Code c) =>
        c.Mnemonic() is Mnemonic.Bt or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc or Mnemonic.Bsf or Mnemonic.Bsr
            or Mnemonic.Popcnt or Mnemonic.Lzcnt;

    public static IEnumerable<object[]> Forms()
    {
        foreach (var row in IntForms.Rows(Selected, 0xB175, (c, rng, n) => (ulong)rng.Next(256), perKind: 2)) yield return row;
        yield return IntForms.Hand("lock bts qword [rbx+64],rcx", a => a.@lock.bts(__qword_ptr[rbx + 64], rcx));
        yield return IntForms.Hand("lock btr dword [rbx+128],edx", a => a.@lock.btr(__dword_ptr[rbx + 128], edx));
        yield return IntForms.Hand("lock btc word [rbx+100],si", a => a.@lock.btc(__word_ptr[rbx + 100], si));
        yield return IntForms.Hand("lock bts dword [rbx+20],13", a => a.@lock.bts(__dword_ptr[rbx + 20], 13));
        yield return IntForms.Hand("bt word [rbx+120],di", a => a.bt(__word_ptr[rbx + 120], di));
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, byte[] code) => IntForms.Check(name, code, Fix);

    // A register bit offset with a memory operand reaches other words: keep it inside the 256-byte buffer, with
    // negative offsets as often as positive ones.
    private static void Fix(Instruction ins, MachineState s, Random rng)
    {
        bool isBt = ins.Mnemonic is Mnemonic.Bt or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc;
        if (isBt && ins.Op0Kind == OpKind.Memory && ins.Op1Kind == OpKind.Register)
        {
            int size = ins.Op1Register.GetSize();
            long disp = (long)ins.MemoryDisplacement64;
            long bit = rng.NextInt64(-disp * 8, (256 - size - disp) * 8);
            IntForms.SetRegValue(s, ins.Op1Register, (ulong)bit);
        }
        // Zero sources exercise the "destination unchanged" rule of BSF/BSR.
        if (ins.Mnemonic is Mnemonic.Bsf or Mnemonic.Bsr or Mnemonic.Lzcnt or Mnemonic.Popcnt && rng.Next(4) == 0)
            IntForms.SetOperand(ins, s, 1, ins.Op0Register.GetSize(), 0);
    }
}
