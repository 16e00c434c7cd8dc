using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Host-vs-emulator differential tests for SSE moves, SSE2 packed integer and SSSE3 forms.</summary>
public class DiffSseIntTests
{
    private static object[] F(string name, Action<Assembler> a) => [name, a];

    public static IEnumerable<object[]> Moves()
    {
        yield return F("movaps x1,x2", a => a.movaps(xmm1, xmm2));
        yield return F("movaps x3,[rbx+16]", a => a.movaps(xmm3, __xmmword_ptr[rbx + 16]));
        yield return F("movaps [rbx+32],x4", a => a.movaps(__xmmword_ptr[rbx + 32], xmm4));
        yield return F("movapd x9,[rbx+48]", a => a.movapd(xmm9, __xmmword_ptr[rbx + 48]));
        yield return F("movapd [rbx+64],x10", a => a.movapd(__xmmword_ptr[rbx + 64], xmm10));
        yield return F("movdqa x15,[rbx+80]", a => a.movdqa(xmm15, __xmmword_ptr[rbx + 80]));
        yield return F("movdqa [rbx+96],x0", a => a.movdqa(__xmmword_ptr[rbx + 96], xmm0));
        yield return F("movdqa x8,x1", a => a.movdqa(xmm8, xmm1));
        yield return F("movups x1,[rbx+3]", a => a.movups(xmm1, __xmmword_ptr[rbx + 3]));
        yield return F("movups [rbx+5],x2", a => a.movups(__xmmword_ptr[rbx + 5], xmm2));
        yield return F("movupd x1,[rbx+7]", a => a.movupd(xmm1, __xmmword_ptr[rbx + 7]));
        yield return F("movupd [rbx+9],x2", a => a.movupd(__xmmword_ptr[rbx + 9], xmm2));
        yield return F("movdqu x11,[rbx+1]", a => a.movdqu(xmm11, __xmmword_ptr[rbx + 1]));
        yield return F("movdqu [rbx+13],x12", a => a.movdqu(__xmmword_ptr[rbx + 13], xmm12));
        yield return F("lddqu x5,[rbx+17]", a => a.lddqu(xmm5, __[rbx + 17]));
        yield return F("movntps [rbx+16],x3", a => a.movntps(__xmmword_ptr[rbx + 16], xmm3));
        yield return F("movntpd [rbx+32],x3", a => a.movntpd(__xmmword_ptr[rbx + 32], xmm3));
        yield return F("movntdq [rbx+48],x3", a => a.movntdq(__xmmword_ptr[rbx + 48], xmm3));
        yield return F("movnti [rbx+3],ecx", a => a.movnti(__dword_ptr[rbx + 3], ecx));
        yield return F("movnti [rbx+9],rdx", a => a.movnti(__qword_ptr[rbx + 9], rdx));
        yield return F("movss x1,x2", a => a.movss(xmm1, xmm2));
        yield return F("movss x1,[rbx+4]", a => a.movss(xmm1, __dword_ptr[rbx + 4]));
        yield return F("movss [rbx+6],x7", a => a.movss(__dword_ptr[rbx + 6], xmm7));
        yield return F("movsd x1,x2", a => a.movsd(xmm1, xmm2));
        yield return F("movsd x13,[rbx+8]", a => a.movsd(xmm13, __qword_ptr[rbx + 8]));
        yield return F("movsd [rbx+2],x7", a => a.movsd(__qword_ptr[rbx + 2], xmm7));
        yield return F("movd x1,ecx", a => a.movd(xmm1, ecx));
        yield return F("movd x1,[rbx+4]", a => a.movd(xmm1, __dword_ptr[rbx + 4]));
        yield return F("movq x9,rdx", a => a.movq(xmm9, rdx));
        yield return F("movd ecx,x2", a => a.movd(ecx, xmm2));
        yield return F("movd [rbx+1],x2", a => a.movd(__dword_ptr[rbx + 1], xmm2));
        yield return F("movq r10,x14", a => a.movq(r10, xmm14));
        yield return F("movq x1,x2", a => a.movq(xmm1, xmm2));
        yield return F("movq x1,[rbx+8]", a => a.movq(xmm1, __qword_ptr[rbx + 8]));
        yield return F("movq [rbx+24],x5", a => a.movq(__qword_ptr[rbx + 24], xmm5));
        yield return F("movlps x1,[rbx+8]", a => a.movlps(xmm1, __qword_ptr[rbx + 8]));
        yield return F("movlps [rbx+8],x1", a => a.movlps(__qword_ptr[rbx + 8], xmm1));
        yield return F("movhps x1,[rbx+8]", a => a.movhps(xmm1, __qword_ptr[rbx + 8]));
        yield return F("movhps [rbx+8],x1", a => a.movhps(__qword_ptr[rbx + 8], xmm1));
        yield return F("movlpd x1,[rbx+8]", a => a.movlpd(xmm1, __qword_ptr[rbx + 8]));
        yield return F("movlpd [rbx+8],x1", a => a.movlpd(__qword_ptr[rbx + 8], xmm1));
        yield return F("movhpd x1,[rbx+8]", a => a.movhpd(xmm1, __qword_ptr[rbx + 8]));
        yield return F("movhpd [rbx+8],x1", a => a.movhpd(__qword_ptr[rbx + 8], xmm1));
        yield return F("movhlps x1,x2", a => a.movhlps(xmm1, xmm2));
        yield return F("movlhps x1,x2", a => a.movlhps(xmm1, xmm2));
        yield return F("movmskps eax,x3", a => a.movmskps(eax, xmm3));
        yield return F("movmskps r9,x3", a => a.movmskps(r9, xmm3));
        yield return F("movmskpd ecx,x11", a => a.movmskpd(ecx, xmm11));
        yield return F("pmovmskb edx,x4", a => a.pmovmskb(edx, xmm4));
        yield return F("pmovmskb r12,x4", a => a.pmovmskb(r12, xmm4));
        yield return F("maskmovdqu x1,x2 (rdi=rbx+8)", a => { a.lea(rdi, __[rbx + 8]); a.maskmovdqu(xmm1, xmm2); a.mov(edi, 0); });
        yield return F("movddup x1,x2", a => a.movddup(xmm1, xmm2));
        yield return F("movddup x1,[rbx+8]", a => a.movddup(xmm1, __qword_ptr[rbx + 8]));
        yield return F("movsldup x1,[rbx+16]", a => a.movsldup(xmm1, __xmmword_ptr[rbx + 16]));
        yield return F("movshdup x1,x2", a => a.movshdup(xmm1, xmm2));
        yield return F("stmxcsr [rbx+4]", a => a.stmxcsr(__dword_ptr[rbx + 4]));
        yield return F("ldmxcsr (via stmxcsr, modify RC)", a =>
        {
            a.stmxcsr(__dword_ptr[rbx + 4]);
            a.xor(__dword_ptr[rbx + 4], 0x6040);
            a.ldmxcsr(__dword_ptr[rbx + 4]);
        });
    }

    public static IEnumerable<object[]> Integer()
    {
        var rr = new (string, Action<Assembler, AssemblerRegisterXMM, AssemblerRegisterXMM>, Action<Assembler, AssemblerRegisterXMM, AssemblerMemoryOperand>)[]
        {
            ("paddb", (a, x, y) => a.paddb(x, y), (a, x, m) => a.paddb(x, m)),
            ("paddw", (a, x, y) => a.paddw(x, y), (a, x, m) => a.paddw(x, m)),
            ("paddd", (a, x, y) => a.paddd(x, y), (a, x, m) => a.paddd(x, m)),
            ("paddq", (a, x, y) => a.paddq(x, y), (a, x, m) => a.paddq(x, m)),
            ("psubb", (a, x, y) => a.psubb(x, y), (a, x, m) => a.psubb(x, m)),
            ("psubw", (a, x, y) => a.psubw(x, y), (a, x, m) => a.psubw(x, m)),
            ("psubd", (a, x, y) => a.psubd(x, y), (a, x, m) => a.psubd(x, m)),
            ("psubq", (a, x, y) => a.psubq(x, y), (a, x, m) => a.psubq(x, m)),
            ("paddsb", (a, x, y) => a.paddsb(x, y), (a, x, m) => a.paddsb(x, m)),
            ("paddsw", (a, x, y) => a.paddsw(x, y), (a, x, m) => a.paddsw(x, m)),
            ("paddusb", (a, x, y) => a.paddusb(x, y), (a, x, m) => a.paddusb(x, m)),
            ("paddusw", (a, x, y) => a.paddusw(x, y), (a, x, m) => a.paddusw(x, m)),
            ("psubsb", (a, x, y) => a.psubsb(x, y), (a, x, m) => a.psubsb(x, m)),
            ("psubsw", (a, x, y) => a.psubsw(x, y), (a, x, m) => a.psubsw(x, m)),
            ("psubusb", (a, x, y) => a.psubusb(x, y), (a, x, m) => a.psubusb(x, m)),
            ("psubusw", (a, x, y) => a.psubusw(x, y), (a, x, m) => a.psubusw(x, m)),
            ("pmullw", (a, x, y) => a.pmullw(x, y), (a, x, m) => a.pmullw(x, m)),
            ("pmulhw", (a, x, y) => a.pmulhw(x, y), (a, x, m) => a.pmulhw(x, m)),
            ("pmulhuw", (a, x, y) => a.pmulhuw(x, y), (a, x, m) => a.pmulhuw(x, m)),
            ("pmuludq", (a, x, y) => a.pmuludq(x, y), (a, x, m) => a.pmuludq(x, m)),
            ("pmaddwd", (a, x, y) => a.pmaddwd(x, y), (a, x, m) => a.pmaddwd(x, m)),
            ("pavgb", (a, x, y) => a.pavgb(x, y), (a, x, m) => a.pavgb(x, m)),
            ("pavgw", (a, x, y) => a.pavgw(x, y), (a, x, m) => a.pavgw(x, m)),
            ("pminub", (a, x, y) => a.pminub(x, y), (a, x, m) => a.pminub(x, m)),
            ("pmaxub", (a, x, y) => a.pmaxub(x, y), (a, x, m) => a.pmaxub(x, m)),
            ("pminsw", (a, x, y) => a.pminsw(x, y), (a, x, m) => a.pminsw(x, m)),
            ("pmaxsw", (a, x, y) => a.pmaxsw(x, y), (a, x, m) => a.pmaxsw(x, m)),
            ("psadbw", (a, x, y) => a.psadbw(x, y), (a, x, m) => a.psadbw(x, m)),
            ("pcmpeqb", (a, x, y) => a.pcmpeqb(x, y), (a, x, m) => a.pcmpeqb(x, m)),
            ("pcmpeqw", (a, x, y) => a.pcmpeqw(x, y), (a, x, m) => a.pcmpeqw(x, m)),
            ("pcmpeqd", (a, x, y) => a.pcmpeqd(x, y), (a, x, m) => a.pcmpeqd(x, m)),
            ("pcmpgtb", (a, x, y) => a.pcmpgtb(x, y), (a, x, m) => a.pcmpgtb(x, m)),
            ("pcmpgtw", (a, x, y) => a.pcmpgtw(x, y), (a, x, m) => a.pcmpgtw(x, m)),
            ("pcmpgtd", (a, x, y) => a.pcmpgtd(x, y), (a, x, m) => a.pcmpgtd(x, m)),
            ("pand", (a, x, y) => a.pand(x, y), (a, x, m) => a.pand(x, m)),
            ("pandn", (a, x, y) => a.pandn(x, y), (a, x, m) => a.pandn(x, m)),
            ("por", (a, x, y) => a.por(x, y), (a, x, m) => a.por(x, m)),
            ("pxor", (a, x, y) => a.pxor(x, y), (a, x, m) => a.pxor(x, m)),
            ("andps", (a, x, y) => a.andps(x, y), (a, x, m) => a.andps(x, m)),
            ("andnpd", (a, x, y) => a.andnpd(x, y), (a, x, m) => a.andnpd(x, m)),
            ("orps", (a, x, y) => a.orps(x, y), (a, x, m) => a.orps(x, m)),
            ("xorpd", (a, x, y) => a.xorpd(x, y), (a, x, m) => a.xorpd(x, m)),
            ("psllw", (a, x, y) => a.psllw(x, y), (a, x, m) => a.psllw(x, m)),
            ("pslld", (a, x, y) => a.pslld(x, y), (a, x, m) => a.pslld(x, m)),
            ("psllq", (a, x, y) => a.psllq(x, y), (a, x, m) => a.psllq(x, m)),
            ("psrlw", (a, x, y) => a.psrlw(x, y), (a, x, m) => a.psrlw(x, m)),
            ("psrld", (a, x, y) => a.psrld(x, y), (a, x, m) => a.psrld(x, m)),
            ("psrlq", (a, x, y) => a.psrlq(x, y), (a, x, m) => a.psrlq(x, m)),
            ("psraw", (a, x, y) => a.psraw(x, y), (a, x, m) => a.psraw(x, m)),
            ("psrad", (a, x, y) => a.psrad(x, y), (a, x, m) => a.psrad(x, m)),
            ("packsswb", (a, x, y) => a.packsswb(x, y), (a, x, m) => a.packsswb(x, m)),
            ("packssdw", (a, x, y) => a.packssdw(x, y), (a, x, m) => a.packssdw(x, m)),
            ("packuswb", (a, x, y) => a.packuswb(x, y), (a, x, m) => a.packuswb(x, m)),
            ("punpcklbw", (a, x, y) => a.punpcklbw(x, y), (a, x, m) => a.punpcklbw(x, m)),
            ("punpckhbw", (a, x, y) => a.punpckhbw(x, y), (a, x, m) => a.punpckhbw(x, m)),
            ("punpcklwd", (a, x, y) => a.punpcklwd(x, y), (a, x, m) => a.punpcklwd(x, m)),
            ("punpckhwd", (a, x, y) => a.punpckhwd(x, y), (a, x, m) => a.punpckhwd(x, m)),
            ("punpckldq", (a, x, y) => a.punpckldq(x, y), (a, x, m) => a.punpckldq(x, m)),
            ("punpckhdq", (a, x, y) => a.punpckhdq(x, y), (a, x, m) => a.punpckhdq(x, m)),
            ("punpcklqdq", (a, x, y) => a.punpcklqdq(x, y), (a, x, m) => a.punpcklqdq(x, m)),
            ("punpckhqdq", (a, x, y) => a.punpckhqdq(x, y), (a, x, m) => a.punpckhqdq(x, m)),
            ("unpcklps", (a, x, y) => a.unpcklps(x, y), (a, x, m) => a.unpcklps(x, m)),
            ("unpckhps", (a, x, y) => a.unpckhps(x, y), (a, x, m) => a.unpckhps(x, m)),
            ("unpcklpd", (a, x, y) => a.unpcklpd(x, y), (a, x, m) => a.unpcklpd(x, m)),
            ("unpckhpd", (a, x, y) => a.unpckhpd(x, y), (a, x, m) => a.unpckhpd(x, m)),
            ("pshufb", (a, x, y) => a.pshufb(x, y), (a, x, m) => a.pshufb(x, m)),
            ("phaddw", (a, x, y) => a.phaddw(x, y), (a, x, m) => a.phaddw(x, m)),
            ("phaddd", (a, x, y) => a.phaddd(x, y), (a, x, m) => a.phaddd(x, m)),
            ("phaddsw", (a, x, y) => a.phaddsw(x, y), (a, x, m) => a.phaddsw(x, m)),
            ("phsubw", (a, x, y) => a.phsubw(x, y), (a, x, m) => a.phsubw(x, m)),
            ("phsubd", (a, x, y) => a.phsubd(x, y), (a, x, m) => a.phsubd(x, m)),
            ("phsubsw", (a, x, y) => a.phsubsw(x, y), (a, x, m) => a.phsubsw(x, m)),
            ("pabsb", (a, x, y) => a.pabsb(x, y), (a, x, m) => a.pabsb(x, m)),
            ("pabsw", (a, x, y) => a.pabsw(x, y), (a, x, m) => a.pabsw(x, m)),
            ("pabsd", (a, x, y) => a.pabsd(x, y), (a, x, m) => a.pabsd(x, m)),
            ("psignb", (a, x, y) => a.psignb(x, y), (a, x, m) => a.psignb(x, m)),
            ("psignw", (a, x, y) => a.psignw(x, y), (a, x, m) => a.psignw(x, m)),
            ("psignd", (a, x, y) => a.psignd(x, y), (a, x, m) => a.psignd(x, m)),
            ("pmaddubsw", (a, x, y) => a.pmaddubsw(x, y), (a, x, m) => a.pmaddubsw(x, m)),
            ("pmulhrsw", (a, x, y) => a.pmulhrsw(x, y), (a, x, m) => a.pmulhrsw(x, m)),
        };
        foreach (var (name, reg, mem) in rr)
        {
            yield return F($"{name} x1,x2", a => reg(a, xmm1, xmm2));
            yield return F($"{name} x3,x3", a => reg(a, xmm3, xmm3));
            yield return F($"{name} x9,[rbx+32]", a => mem(a, xmm9, __xmmword_ptr[rbx + 32]));
        }
        foreach (byte imm in new byte[] { 0, 1, 7, 8, 15, 16, 31, 33, 63, 64, 200 })
        {
            yield return F($"psllw x1,{imm}", a => a.psllw(xmm1, imm));
            yield return F($"pslld x1,{imm}", a => a.pslld(xmm1, imm));
            yield return F($"psllq x1,{imm}", a => a.psllq(xmm1, imm));
            yield return F($"psrlw x1,{imm}", a => a.psrlw(xmm1, imm));
            yield return F($"psrld x1,{imm}", a => a.psrld(xmm1, imm));
            yield return F($"psrlq x1,{imm}", a => a.psrlq(xmm1, imm));
            yield return F($"psraw x1,{imm}", a => a.psraw(xmm1, imm));
            yield return F($"psrad x1,{imm}", a => a.psrad(xmm1, imm));
            yield return F($"pslldq x1,{imm}", a => a.pslldq(xmm1, imm));
            yield return F($"psrldq x1,{imm}", a => a.psrldq(xmm1, imm));
            yield return F($"palignr x1,x2,{imm}", a => a.palignr(xmm1, xmm2, imm));
        }
        yield return F("palignr x1,[rbx+16],5", a => a.palignr(xmm1, __xmmword_ptr[rbx + 16], 5));
        foreach (byte imm in new byte[] { 0x1B, 0x4E, 0xE4, 0x00, 0xFF, 0x93 })
        {
            yield return F($"pshufd x1,x2,{imm}", a => a.pshufd(xmm1, xmm2, imm));
            yield return F($"pshufhw x1,x2,{imm}", a => a.pshufhw(xmm1, xmm2, imm));
            yield return F($"pshuflw x1,x2,{imm}", a => a.pshuflw(xmm1, xmm2, imm));
            yield return F($"shufps x1,x2,{imm}", a => a.shufps(xmm1, xmm2, imm));
            yield return F($"shufpd x1,x2,{imm}", a => a.shufpd(xmm1, xmm2, imm));
        }
        yield return F("pshufd x1,[rbx+48],0x1b", a => a.pshufd(xmm1, __xmmword_ptr[rbx + 48], 0x1B));
        yield return F("shufps x1,[rbx+48],0x1b", a => a.shufps(xmm1, __xmmword_ptr[rbx + 48], 0x1B));
        for (byte k = 0; k < 9; k += 3)
        {
            byte imm = k;
            yield return F($"pinsrw x1,ecx,{imm}", a => a.pinsrw(xmm1, ecx, imm));
            yield return F($"pinsrw x1,[rbx+3],{imm}", a => a.pinsrw(xmm1, __word_ptr[rbx + 3], imm));
            yield return F($"pextrw eax,x2,{imm}", a => a.pextrw(eax, xmm2, imm));
            yield return F($"pextrw r11,x2,{imm}", a => a.pextrw(r11, xmm2, imm));
        }
    }

    [Theory]
    [MemberData(nameof(Moves))]
    [MemberData(nameof(Integer))]
    public void MatchesHost(string name, Action<Assembler> form) => SseDiff.Run(name, form, SseDiff.IntState);
}
