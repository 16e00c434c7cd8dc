using Dirigent.Tests.Native;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Host-vs-emulator differential tests for the MMX forms, on the interpreter and the compiled tier. The harness
/// moves the whole FXSAVE image both ways, so the mm registers (the x87 register slots), TOP and the abridged tag
/// byte are loaded and compared without extra plumbing: each case starts from random x87 registers (significand
/// AND sign/exponent), a random TOP (so ST(i) and the physical Ri differ, catching mm-indexing by ST) and random
/// tags, and every instruction must leave the same registers, TOP=0 and all-valid tags (EMMS: all empty).
/// </summary>
public class DiffMmxTests
{
    private static object[] F(string name, Action<Assembler> a) => [name, a];

    /// <summary>Random integer state plus random x87 register file, TOP and tag byte (no pending exception: FSW.ES=0).</summary>
    public static MachineState MmState(Random rng)
    {
        var s = Differential.RandomState(rng);
        for (int k = 0; k < 8; k++)
        {
            BitConverter.TryWriteBytes(s.Fx.AsSpan(32 + 16 * k), Differential.RandomValue(rng));
            BitConverter.TryWriteBytes(s.Fx.AsSpan(40 + 16 * k), (ushort)rng.Next(0x10000));
        }
        s.Fx[2] = 0;
        s.Fx[3] = (byte)(rng.Next(8) << 3);   // TOP in FSW bits 11-13
        s.Fx[4] = (byte)rng.Next(256);        // abridged tag word
        return s;
    }

    public static IEnumerable<object[]> Forms()
    {
        var rr = new (string, Action<Assembler, AssemblerRegisterMM, AssemblerRegisterMM>, Action<Assembler, AssemblerRegisterMM, AssemblerMemoryOperand>)[]
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
            ("punpcklwd", (a, x, y) => a.punpcklwd(x, y), (a, x, m) => a.punpcklwd(x, m)),
            ("punpckldq", (a, x, y) => a.punpckldq(x, y), (a, x, m) => a.punpckldq(x, m)),
            ("punpckhbw", (a, x, y) => a.punpckhbw(x, y), (a, x, m) => a.punpckhbw(x, m)),
            ("punpckhwd", (a, x, y) => a.punpckhwd(x, y), (a, x, m) => a.punpckhwd(x, m)),
            ("punpckhdq", (a, x, y) => a.punpckhdq(x, y), (a, x, m) => a.punpckhdq(x, m)),
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
            yield return F($"{name} mm1,mm2", a => reg(a, mm1, mm2));
            yield return F($"{name} mm7,mm7", a => reg(a, mm7, mm7));
            // Low unpacks read only 32 bits: the operand sits at the buffer's end so a 64-bit read would show.
            bool m32 = name.StartsWith("punpckl");
            yield return F($"{name} mm5,[rbx+{(m32 ? 252 : 40)}]", a => mem(a, mm5, m32 ? __dword_ptr[rbx + 252] : __qword_ptr[rbx + 40]));
        }
        foreach (byte imm in new byte[] { 0, 1, 7, 15, 16, 31, 32, 63, 64, 200 })
        {
            yield return F($"psllw mm1,{imm}", a => a.psllw(mm1, imm));
            yield return F($"pslld mm1,{imm}", a => a.pslld(mm1, imm));
            yield return F($"psllq mm1,{imm}", a => a.psllq(mm1, imm));
            yield return F($"psrlw mm1,{imm}", a => a.psrlw(mm1, imm));
            yield return F($"psrld mm1,{imm}", a => a.psrld(mm1, imm));
            yield return F($"psrlq mm1,{imm}", a => a.psrlq(mm1, imm));
            yield return F($"psraw mm1,{imm}", a => a.psraw(mm1, imm));
            yield return F($"psrad mm1,{imm}", a => a.psrad(mm1, imm));
        }
        foreach (byte imm in new byte[] { 0, 1, 5, 8, 9, 15, 16, 17, 255 })
            yield return F($"palignr mm1,mm2,{imm}", a => a.palignr(mm1, mm2, imm));
        yield return F("palignr mm1,[rbx+16],3", a => a.palignr(mm1, __qword_ptr[rbx + 16], 3));
        // Shift counts from a register: small, lane-width boundary and huge counts.
        foreach (ulong cnt in new ulong[] { 3, 16, 33, 64, 0x1_0000_0001 })
        {
            yield return F($"psrlw mm1,mm2=({cnt})", a => { a.mov(rax, cnt); a.movq(mm2, rax); a.psrlw(mm1, mm2); });
            yield return F($"psrad mm1,mm2=({cnt})", a => { a.mov(rax, cnt); a.movq(mm2, rax); a.psrad(mm1, mm2); });
            yield return F($"psllq mm1,mm2=({cnt})", a => { a.mov(rax, cnt); a.movq(mm2, rax); a.psllq(mm1, mm2); });
        }
        yield return F("movd mm1,ecx", a => a.movd(mm1, ecx));
        yield return F("movd mm2,[rbx+4]", a => a.movd(mm2, __dword_ptr[rbx + 4]));
        yield return F("movq mm3,rdx", a => a.movq(mm3, rdx));
        yield return F("movd ecx,mm4", a => a.movd(ecx, mm4));
        yield return F("movd [rbx+1],mm2", a => a.movd(__dword_ptr[rbx + 1], mm2));
        yield return F("movq r10,mm6", a => a.movq(r10, mm6));
        yield return F("movq mm0,mm7", a => a.movq(mm0, mm7));
        yield return F("movq mm1,[rbx+8]", a => a.movq(mm1, __qword_ptr[rbx + 8]));
        yield return F("movq [rbx+24],mm5", a => a.movq(__qword_ptr[rbx + 24], mm5));
        yield return F("movntq [rbx+16],mm3", a => a.movntq(__qword_ptr[rbx + 16], mm3));
        yield return F("maskmovq mm1,mm2 (rdi=rbx+8)", a => { a.lea(rdi, __[rbx + 8]); a.maskmovq(mm1, mm2); a.mov(edi, 0); });
        yield return F("movdq2q mm3,x4", a => a.movdq2q(mm3, xmm4));
        yield return F("movq2dq x9,mm6", a => a.movq2dq(xmm9, mm6));
        yield return F("cvtpi2ps x1,mm2", a => a.cvtpi2ps(xmm1, mm2));
        yield return F("cvtpi2ps x1,[rbx+8]", a => a.cvtpi2ps(xmm1, __qword_ptr[rbx + 8]));
        yield return F("cvtpi2pd x1,mm2", a => a.cvtpi2pd(xmm1, mm2));
        yield return F("cvtpi2pd x1,[rbx+8]", a => a.cvtpi2pd(xmm1, __qword_ptr[rbx + 8]));
        yield return F("cvtps2pi mm1,x2", a => a.cvtps2pi(mm1, xmm2));
        yield return F("cvtps2pi mm1,[rbx+8]", a => a.cvtps2pi(mm1, __qword_ptr[rbx + 8]));
        yield return F("cvttps2pi mm1,x2", a => a.cvttps2pi(mm1, xmm2));
        yield return F("cvtpd2pi mm1,x2", a => a.cvtpd2pi(mm1, xmm2));
        yield return F("cvtpd2pi mm1,[rbx+16]", a => a.cvtpd2pi(mm1, __xmmword_ptr[rbx + 16]));
        yield return F("cvttpd2pi mm1,x2", a => a.cvttpd2pi(mm1, xmm2));
        yield return F("pmovmskb edx,mm4", a => a.pmovmskb(edx, mm4));
        yield return F("pmovmskb r12,mm4", a => a.pmovmskb(r12, mm4));
        yield return F("emms", a => a.emms());
        yield return F("paddb mm1,mm2; emms", a => { a.paddb(mm1, mm2); a.emms(); });
        foreach (byte imm in new byte[] { 0x1B, 0x4E, 0xE4, 0x00, 0xFF, 0x93 })
        {
            yield return F($"pshufw mm1,mm2,{imm}", a => a.pshufw(mm1, mm2, imm));
        }
        yield return F("pshufw mm1,[rbx+48],0x1b", a => a.pshufw(mm1, __qword_ptr[rbx + 48], 0x1B));
        foreach (byte imm in new byte[] { 0, 2, 3, 5, 0xFE })
        {
            yield return F($"pinsrw mm1,ecx,{imm}", a => a.pinsrw(mm1, ecx, imm));
            yield return F($"pinsrw mm1,[rbx+3],{imm}", a => a.pinsrw(mm1, __word_ptr[rbx + 3], imm));
            yield return F($"pextrw eax,mm2,{imm}", a => a.pextrw(eax, mm2, imm));
            yield return F($"pextrw r11,mm2,{imm}", a => a.pextrw(r11, mm2, imm));
        }
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, Action<Assembler> form) => SseDiff.Run(name, form, MmState);
}
