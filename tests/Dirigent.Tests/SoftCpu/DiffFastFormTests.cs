using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Host-vs-emulator differential tests for the 64-bit forms the software CPU gives specialised handlers at block
/// translation (MOV/MOVZX loads and stores, ALU with a memory or immediate operand), including each addressing
/// shape: base+disp, base+index*scale, RIP-relative and a 32-bit destination that must zero-extend.
/// </summary>
public class DiffFastFormTests
{
    public static IEnumerable<object[]> Forms()
    {
        yield return ["mov rax,[rbx+8]", (Action<Assembler>)(a => a.mov(rax, __qword_ptr[rbx + 8]))];
        yield return ["mov ecx,[rbx+4]", (Action<Assembler>)(a => a.mov(ecx, __dword_ptr[rbx + 4]))];
        yield return ["mov rdx,[rbx+rcx*8]", (Action<Assembler>)(a => { a.and(ecx, 7); a.mov(rdx, __qword_ptr[rbx + rcx * 8]); })];
        yield return ["mov r9d,[rbx+rsi*2+6]", (Action<Assembler>)(a => { a.and(esi, 15); a.mov(r9d, __dword_ptr[rbx + rsi * 2 + 6]); })];
        yield return ["movzx eax,byte [rbx+3]", (Action<Assembler>)(a => a.movzx(eax, __byte_ptr[rbx + 3]))];
        yield return ["movzx rdx,word [rbx+5]", (Action<Assembler>)(a => a.movzx(rdx, __word_ptr[rbx + 5]))];
        yield return ["mov [rbx+16],rdx", (Action<Assembler>)(a => a.mov(__qword_ptr[rbx + 16], rdx))];
        yield return ["mov [rbx+12],esi", (Action<Assembler>)(a => a.mov(__dword_ptr[rbx + 12], esi))];
        yield return ["mov qword [rbx+8],-3", (Action<Assembler>)(a => a.mov(__qword_ptr[rbx + 8], -3))];
        yield return ["mov dword [rbx+4],0x89abcdef", (Action<Assembler>)(a => a.mov(__dword_ptr[rbx + 4], unchecked((int)0x89abcdef)))];
        yield return ["add rax,[rbx+8]", (Action<Assembler>)(a => a.add(rax, __qword_ptr[rbx + 8]))];
        yield return ["add eax,[rbx+8]", (Action<Assembler>)(a => a.add(eax, __dword_ptr[rbx + 8]))];
        yield return ["sub rcx,[rbx]", (Action<Assembler>)(a => a.sub(rcx, __qword_ptr[rbx]))];
        yield return ["sub ecx,[rbx+1]", (Action<Assembler>)(a => a.sub(ecx, __dword_ptr[rbx + 1]))];
        yield return ["cmp rdx,[rbx+24]", (Action<Assembler>)(a => a.cmp(rdx, __qword_ptr[rbx + 24]))];
        yield return ["cmp edx,[rbx+24]", (Action<Assembler>)(a => a.cmp(edx, __dword_ptr[rbx + 24]))];
        yield return ["and rsi,[rbx+8]", (Action<Assembler>)(a => a.and(rsi, __qword_ptr[rbx + 8]))];
        yield return ["and esi,[rbx+8]", (Action<Assembler>)(a => a.and(esi, __dword_ptr[rbx + 8]))];
        yield return ["or rdi,[rbx+8]", (Action<Assembler>)(a => a.or(rdi, __qword_ptr[rbx + 8]))];
        yield return ["or edi,[rbx+8]", (Action<Assembler>)(a => a.or(edi, __dword_ptr[rbx + 8]))];
        yield return ["xor r8,[rbx+8]", (Action<Assembler>)(a => a.xor(r8, __qword_ptr[rbx + 8]))];
        yield return ["xor r8d,[rbx+8]", (Action<Assembler>)(a => a.xor(r8d, __dword_ptr[rbx + 8]))];
        yield return ["cmp [rbx+8],rax", (Action<Assembler>)(a => a.cmp(__qword_ptr[rbx + 8], rax))];
        yield return ["cmp [rbx+8],eax", (Action<Assembler>)(a => a.cmp(__dword_ptr[rbx + 8], eax))];
        yield return ["test [rbx+8],rcx", (Action<Assembler>)(a => a.test(__qword_ptr[rbx + 8], rcx))];
        yield return ["test [rbx+8],ecx", (Action<Assembler>)(a => a.test(__dword_ptr[rbx + 8], ecx))];
        yield return ["cmp qword [rbx+8],-1", (Action<Assembler>)(a => a.cmp(__qword_ptr[rbx + 8], -1))];
        yield return ["cmp dword [rbx+8],0x7fffffff", (Action<Assembler>)(a => a.cmp(__dword_ptr[rbx + 8], 0x7fffffff))];
        yield return ["cmp dword [rbx+8],-2", (Action<Assembler>)(a => a.cmp(__dword_ptr[rbx + 8], -2))];
        yield return ["add rax,-5", (Action<Assembler>)(a => a.add(rax, -5))];
        yield return ["add ecx,0x7ffffff0", (Action<Assembler>)(a => a.add(ecx, 0x7ffffff0))];
        yield return ["add eax,-1 (eax form)", (Action<Assembler>)(a => a.add(eax, -100000))];
        yield return ["sub rdx,0x80", (Action<Assembler>)(a => a.sub(rdx, 0x80))];
        yield return ["sub r10d,3", (Action<Assembler>)(a => a.sub(r10d, 3))];
        yield return ["cmp rsi,-1", (Action<Assembler>)(a => a.cmp(rsi, -1))];
        yield return ["cmp esi,0x40", (Action<Assembler>)(a => a.cmp(esi, 0x40))];
        yield return ["and rdi,-16", (Action<Assembler>)(a => a.and(rdi, -16))];
        yield return ["and edi,0xff00", (Action<Assembler>)(a => a.and(edi, 0xff00))];
        yield return ["or r11,1", (Action<Assembler>)(a => a.or(r11, 1))];
        yield return ["or r11d,-8", (Action<Assembler>)(a => a.or(r11d, -8))];
        yield return ["xor rax,-1", (Action<Assembler>)(a => a.xor(rax, -1))];
        yield return ["xor eax,0x55", (Action<Assembler>)(a => a.xor(eax, 0x55))];
        yield return ["test rcx,0x100", (Action<Assembler>)(a => a.test(rcx, 0x100))];
        yield return ["test ecx,-1", (Action<Assembler>)(a => a.test(ecx, -1))];
        yield return ["test rax,-2 (rax form)", (Action<Assembler>)(a => a.test(rax, -2))];
        yield return ["lea rax,[rsi+rcx*4+8]", (Action<Assembler>)(a => a.lea(rax, __qword_ptr[rsi + rcx * 4 + 8]))];
        yield return ["lea ecx,[rsi+rdi*2-5]", (Action<Assembler>)(a => a.lea(ecx, __dword_ptr[rsi + rdi * 2 - 5]))];
        yield return ["lea rdx,[rdx+0x7fffffff]", (Action<Assembler>)(a => a.lea(rdx, __qword_ptr[rdx + 0x7fffffff]))];
        yield return ["mov byte [rbx+3],0x80", (Action<Assembler>)(a => a.mov(__byte_ptr[rbx + 3], 0x80))];
        yield return ["cmp byte [rbx+2],0x7f", (Action<Assembler>)(a => a.cmp(__byte_ptr[rbx + 2], 0x7f))];
        yield return ["cmp byte [rbx+2],0x80", (Action<Assembler>)(a => a.cmp(__byte_ptr[rbx + 2], 0x80))];
        yield return ["test byte [rbx+1],0x81", (Action<Assembler>)(a => a.test(__byte_ptr[rbx + 1], 0x81))];
        yield return ["test dword [rbx+4],0x80000001", (Action<Assembler>)(a => a.test(__dword_ptr[rbx + 4], unchecked((int)0x80000001)))];
        // Not specialised (16-bit destination merges): must still behave.
        yield return ["add cx,-3", (Action<Assembler>)(a => a.add(cx, -3))];
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, Action<Assembler> form) => Differential.AssertMatchesHost(name, form, 4242, memBase: true);
}
