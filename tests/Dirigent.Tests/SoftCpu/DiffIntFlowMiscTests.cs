using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Host-vs-emulator tests for the flag instructions, alone and right after an ALU op (lazy flags pending).</summary>
public class DiffIntFlowMiscTests
{
    public static IEnumerable<object[]> Forms()
    {
        yield return ["clc", (Action<Assembler>)(a => a.clc())];
        yield return ["stc", (Action<Assembler>)(a => a.stc())];
        yield return ["cmc", (Action<Assembler>)(a => a.cmc())];
        yield return ["cld", (Action<Assembler>)(a => a.cld())];
        yield return ["std", (Action<Assembler>)(a => a.std())];
        yield return ["add rax,rcx; cmc", (Action<Assembler>)(a => { a.add(rax, rcx); a.cmc(); })];
        yield return ["sub eax,ecx; stc", (Action<Assembler>)(a => { a.sub(eax, ecx); a.stc(); })];
        yield return ["cmp dl,cl; clc", (Action<Assembler>)(a => { a.cmp(dl, cl); a.clc(); })];
        yield return ["inc rax; cmc", (Action<Assembler>)(a => { a.inc(rax); a.cmc(); })];
        yield return ["adc ax,cx; std", (Action<Assembler>)(a => { a.adc(ax, cx); a.std(); })];
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, Action<Assembler> form) => Differential.AssertMatchesHost(name, form, 777,
        adjust: (rng, s) => { if (rng.Next(2) == 0) s.Rflags |= 0x400; }); // DF half the time
}
