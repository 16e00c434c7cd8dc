using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Host-vs-emulator differential tests for the ALU group (seeded, so failures reproduce).</summary>
public class DiffAluTests
{
    public static IEnumerable<object[]> Forms()
    {
        yield return ["add rax,rcx", (Action<Assembler>)(a => a.add(rax, rcx))];
        yield return ["adc eax,ecx", (Action<Assembler>)(a => a.adc(eax, ecx))];
        yield return ["sub cx,dx", (Action<Assembler>)(a => a.sub(cx, dx))];
        yield return ["sbb al,dl", (Action<Assembler>)(a => a.sbb(al, dl))];
        yield return ["and rdx,rsi", (Action<Assembler>)(a => a.and(rdx, rsi))];
        yield return ["or ah,cl", (Action<Assembler>)(a => a.or(ah, cl))];
        yield return ["xor r9d,r10d", (Action<Assembler>)(a => a.xor(r9d, r10d))];
        yield return ["cmp rax,rdx", (Action<Assembler>)(a => a.cmp(rax, rdx))];
        yield return ["test cl,dl", (Action<Assembler>)(a => a.test(cl, dl))];
        yield return ["inc r8w", (Action<Assembler>)(a => a.inc(r8w))];
        yield return ["dec ecx", (Action<Assembler>)(a => a.dec(ecx))];
        yield return ["neg rdx", (Action<Assembler>)(a => a.neg(rdx))];
        yield return ["not si", (Action<Assembler>)(a => a.not(si))];
        yield return ["add rax,-5", (Action<Assembler>)(a => a.add(rax, -5))];
        yield return ["adc dword [rbx+8],ecx", (Action<Assembler>)(a => a.adc(__dword_ptr[rbx + 8], ecx))];
        yield return ["lock sub qword [rbx+16],rdx", (Action<Assembler>)(a => a.@lock.sub(__qword_ptr[rbx + 16], rdx))];
        yield return ["sbb cx,[rbx+3]", (Action<Assembler>)(a => a.sbb(cx, __word_ptr[rbx + 3]))];
        yield return ["lock inc byte [rbx+1]", (Action<Assembler>)(a => a.@lock.inc(__byte_ptr[rbx + 1]))];
        yield return ["lock neg qword [rbx+8]", (Action<Assembler>)(a => a.@lock.neg(__qword_ptr[rbx + 8]))];
        yield return ["lock not word [rbx+6]", (Action<Assembler>)(a => a.@lock.not(__word_ptr[rbx + 6]))];
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, Action<Assembler> form) => Differential.AssertMatchesHost(name, form, 12345, memBase: true);
}
