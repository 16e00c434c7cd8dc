using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Host-vs-emulator differential tests for the 64-bit Jcc handlers specialised per condition (after each kind of
/// lazy flag record: SUB/CMP, logic, CMP/TEST/SUB/ADD/INC/DEC fused with the Jcc, ADD, ADC, SBB, INC, DEC and a rotate) and for ROL/ROR of a register by an immediate. The
/// branch outcome shows in RDX: the fall-through path writes a marker the taken path skips.
/// </summary>
public class DiffFastBranchTests
{
    private static readonly (string Name, Action<Assembler> Set)[] Setters =
    [
        ("cmp rax,rcx", a => a.cmp(rax, rcx)),
        ("cmp eax,ecx", a => a.cmp(eax, ecx)),
        ("sub al,cl", a => a.sub(al, cl)),
        ("test rax,rcx", a => a.test(rax, rcx)),
        ("add eax,ecx", a => a.add(eax, ecx)),
        ("inc rax", a => a.inc(rax)),
        ("ror rax,1", a => a.ror(rax, 1)),
        ("adc rax,rcx", a => a.adc(rax, rcx)),
        ("sbb eax,ecx", a => a.sbb(eax, ecx)),
        ("dec ax", a => a.dec(ax)),
        // Register-immediate CMP/TEST: fused with the Jcc that follows them into one handler.
        ("cmp rax,-3", a => a.cmp(rax, -3)),
        ("cmp ecx,0x7fffff00", a => a.cmp(ecx, 0x7fffff00)),
        ("test rax,0x80000001", a => a.test(rax, unchecked((int)0x80000001))),
        ("test ecx,0x80000001", a => a.test(ecx, unchecked((int)0x80000001))),
        ("dec rax", a => a.dec(rax)),
        ("inc eax", a => a.inc(eax)),
        ("dec ecx", a => a.dec(ecx)),
        ("sub rax,rcx", a => a.sub(rax, rcx)),
        ("add rax,-7", a => a.add(rax, -7)),
        ("sub ecx,1", a => a.sub(ecx, 1)),
        ("add ecx,0x7fffffff", a => a.add(ecx, 0x7fffffff)),
    ];

    public static IEnumerable<object[]> Forms()
    {
        foreach (var (name, set) in Setters)
            foreach (ConditionCode cc in Enum.GetValues<ConditionCode>())
            {
                if (cc == ConditionCode.None) continue;
                yield return [$"{name}; j{cc}", (Action<Assembler>)(a =>
                {
                    set(a);
                    var skip = a.CreateLabel();
                    Jcc(a, cc, skip);
                    a.mov(edx, 0x1234);
                    a.Label(ref skip);
                    a.nop();
                })];
            }
        foreach (int n in new[] { 0, 1, 2, 7, 31, 32, 33, 63 })
        {
            yield return [$"rol rcx,{n}", (Action<Assembler>)(a => a.rol(rcx, (byte)n))];
            yield return [$"ror rcx,{n}", (Action<Assembler>)(a => a.ror(rcx, (byte)n))];
            yield return [$"rol ecx,{n}", (Action<Assembler>)(a => a.rol(ecx, (byte)n))];
            yield return [$"ror ecx,{n}", (Action<Assembler>)(a => a.ror(ecx, (byte)n))];
            yield return [$"shl rcx,{n}", (Action<Assembler>)(a => a.shl(rcx, (byte)n))];
            yield return [$"shl ecx,{n}", (Action<Assembler>)(a => a.shl(ecx, (byte)n))];
            yield return [$"shr rcx,{n}", (Action<Assembler>)(a => a.shr(rcx, (byte)n))];
            yield return [$"shr ecx,{n}", (Action<Assembler>)(a => a.shr(ecx, (byte)n))];
            yield return [$"sar rcx,{n}", (Action<Assembler>)(a => a.sar(rcx, (byte)n))];
            yield return [$"sar ecx,{n}", (Action<Assembler>)(a => a.sar(ecx, (byte)n))];
        }
        // Carry chains: each ADC/SBB reads the CF of the lazy record the previous one left.
        yield return ["adc rax,rcx; adc rdx,rsi; adc rdi,r8", (Action<Assembler>)(a => { a.adc(rax, rcx); a.adc(rdx, rsi); a.adc(rdi, r8); })];
        yield return ["sbb eax,ecx; sbb edx,esi; sbb bl,r8b", (Action<Assembler>)(a => { a.sbb(eax, ecx); a.sbb(edx, esi); a.sbb(bl, r8b); })];
        yield return ["adc ax,cx; sbb rdx,rsi", (Action<Assembler>)(a => { a.adc(ax, cx); a.sbb(rdx, rsi); })];
        yield return ["inc rax; adc rdx,rsi", (Action<Assembler>)(a => { a.inc(rax); a.adc(rdx, rsi); })];
        yield return ["dec ecx; sbb edx,esi", (Action<Assembler>)(a => { a.dec(ecx); a.sbb(edx, esi); })];
        // The rotate after a lazy ADD must keep the ADD's ZF/SF/PF/AF.
        yield return ["add rax,rcx; ror rdx,5", (Action<Assembler>)(a => { a.add(rax, rcx); a.ror(rdx, 5); })];
        yield return ["sub eax,ecx; rol edx,3", (Action<Assembler>)(a => { a.sub(eax, ecx); a.rol(edx, 3); })];
    }

    private static void Jcc(Assembler a, ConditionCode cc, Label l)
    {
        switch (cc)
        {
            case ConditionCode.o: a.jo(l); break;
            case ConditionCode.no: a.jno(l); break;
            case ConditionCode.b: a.jb(l); break;
            case ConditionCode.ae: a.jae(l); break;
            case ConditionCode.e: a.je(l); break;
            case ConditionCode.ne: a.jne(l); break;
            case ConditionCode.be: a.jbe(l); break;
            case ConditionCode.a: a.ja(l); break;
            case ConditionCode.s: a.js(l); break;
            case ConditionCode.ns: a.jns(l); break;
            case ConditionCode.p: a.jp(l); break;
            case ConditionCode.np: a.jnp(l); break;
            case ConditionCode.l: a.jl(l); break;
            case ConditionCode.ge: a.jge(l); break;
            case ConditionCode.le: a.jle(l); break;
            default: a.jg(l); break;
        }
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, Action<Assembler> form) => Differential.AssertMatchesHost(name, form, 777,
        // Equal operands half the time so that the equal/zero outcomes are exercised too.
        adjust: (rng, s) => { if (rng.Next(2) == 0) s.Gpr[0] = s.Gpr[1]; });
}
