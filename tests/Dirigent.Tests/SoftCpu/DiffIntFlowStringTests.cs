using Dirigent.Tests.Native;
using Iced.Intel;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Host-vs-emulator differential tests for the string instructions (64-bit address size): RSI/RDI point into the
/// 256-byte buffer on both sides, with and without REP prefixes, small counts, both directions. Overlapping
/// MOVS runs come up naturally and check element-by-element semantics of the bulk copy.
/// </summary>
public class DiffIntFlowStringTests
{
    public enum Kind { Movs, Stos, Lods, Cmps, Scas }
    public enum Rep { None, Rep, Repe, Repne }

    private static Action<Assembler> Build(Kind k, int sz, Rep rep) => a =>
    {
        Assembler p = rep switch { Rep.Rep => a.rep, Rep.Repe => a.repe, Rep.Repne => a.repne, _ => a };
        switch (k, sz)
        {
            case (Kind.Movs, 1): p.movsb(); break;
            case (Kind.Movs, 2): p.movsw(); break;
            case (Kind.Movs, 4): p.movsd(); break;
            case (Kind.Movs, 8): p.movsq(); break;
            case (Kind.Stos, 1): p.stosb(); break;
            case (Kind.Stos, 2): p.stosw(); break;
            case (Kind.Stos, 4): p.stosd(); break;
            case (Kind.Stos, 8): p.stosq(); break;
            case (Kind.Lods, 1): p.lodsb(); break;
            case (Kind.Lods, 2): p.lodsw(); break;
            case (Kind.Lods, 4): p.lodsd(); break;
            case (Kind.Lods, 8): p.lodsq(); break;
            case (Kind.Cmps, 1): p.cmpsb(); break;
            case (Kind.Cmps, 2): p.cmpsw(); break;
            case (Kind.Cmps, 4): p.cmpsd(); break;
            case (Kind.Cmps, 8): p.cmpsq(); break;
            case (Kind.Scas, 1): p.scasb(); break;
            case (Kind.Scas, 2): p.scasw(); break;
            case (Kind.Scas, 4): p.scasd(); break;
            case (Kind.Scas, 8): p.scasq(); break;
        }
    };

    public static IEnumerable<object[]> Forms()
    {
        foreach (Kind k in Enum.GetValues<Kind>())
            foreach (int sz in new[] { 1, 2, 4, 8 })
            {
                var reps = k is Kind.Cmps or Kind.Scas ? new[] { Rep.None, Rep.Repe, Rep.Repne } : new[] { Rep.None, Rep.Rep };
                foreach (var rep in reps)
                    foreach (bool df in new[] { false, true })
                        yield return [k, sz, rep, df];
            }
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(Kind kind, int sz, Rep rep, bool df)
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        using var d = new Differential();
        var code = Differential.Asm(Build(kind, sz, rep));
        // A stable seed (HashCode.Combine is randomised per process): the same cases in every run, named on failure.
        int seed = Differential.StableHash($"{kind}/{sz}/{rep}/{df}") ^ 0x5157;
        var rng = new Random(seed);
        var failures = new List<string>();
        int mem = MachineState.MemSize;
        for (int n = 0; n < Differential.CasesPerForm; n++)
        {
            var s = Differential.RandomState(rng);
            s.Rflags = (s.Rflags & ~0x400UL) | (df ? 0x400UL : 0);
            int count = rep == Rep.None ? 1 : rng.Next(0, 24);
            if (rep != Rep.None) s.Gpr[1] = (ulong)count;
            int span = Math.Max(count, 1) * sz;
            // Offsets of the first element such that every element stays inside the buffer in either direction.
            int lo = df ? span - sz : 0, hi = df ? mem - sz : mem - span;
            int si = rng.Next(lo, hi + 1), di = rng.Next(lo, hi + 1);
            if (kind is Kind.Cmps or Kind.Scas && rng.Next(3) != 0)
            {
                // Make runs of equal data so REPE/REPNE terminate at interesting places.
                if (kind == Kind.Cmps) Array.Copy(s.Mem, si, s.Mem, di, sz);
                for (int k = 0; k < count; k++)
                {
                    int off = df ? -k * sz : k * sz;
                    if (kind == Kind.Cmps) Array.Copy(s.Mem, si + off, s.Mem, di + off, sz);
                    else BitConverter.TryWriteBytes(s.Mem.AsSpan(di + off, sz), s.Gpr[0]);
                }
                if (rng.Next(2) == 0) s.Mem[rng.Next(mem)] ^= (byte)(1 << rng.Next(8));
                if (kind == Kind.Scas && rep == Rep.Repne && rng.Next(2) == 0)
                    for (int k = 0; k < mem; k++) s.Mem[k] = (byte)rng.Next(256);
            }
            if (kind == Kind.Scas && rep == Rep.None && rng.Next(2) == 0)
                BitConverter.TryWriteBytes(s.Mem.AsSpan(di, sz), s.Gpr[0]);
            string diff = d.Compare(code, s, stringRegs: (si, di));
            if (diff != "") failures.Add($"si={si} di={di} rcx={count}: {diff}");
        }
        Differential.AssertNoFailures(nameof(DiffIntFlowStringTests), $"{kind}/{sz}/{rep}/{df}", seed, Differential.CasesPerForm, failures);
    }
}
