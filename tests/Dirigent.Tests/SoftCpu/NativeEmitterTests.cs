using Dirigent.Accel.Emu.Native;
using Iced.Intel;
using static Dirigent.Accel.Emu.Native.X64Emitter;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// The native tier's encoder (Native/X64Emitter.cs): every form it writes, for registers and displacements that need
/// REX bits, SIB bytes and both displacement sizes, decoded again by Iced and compared with what was meant.
/// </summary>
public class NativeEmitterTests
{
    private static string Decode(X64Emitter e)
    {
        Assert.True(e.Finish());
        var bytes = e.Code.ToArray();
        var d = Decoder.Create(64, new ByteArrayCodeReader(bytes));
        var f = new NasmFormatter();
        f.Options.HexPrefix = "0x";
        f.Options.HexSuffix = "";
        f.Options.UppercaseHex = false;
        f.Options.SpaceAfterOperandSeparator = true;
        f.Options.SmallHexNumbersInDecimal = false;
        f.Options.ShowBranchSize = false;
        f.Options.BranchLeadingZeros = false;
        f.Options.SignedImmediateOperands = true;
        var o = new StringOutput();
        var lines = new List<string>();
        while (d.IP < (ulong)bytes.Length)
        {
            var i = d.Decode();
            Assert.False(i.IsInvalid, $"invalid encoding at {i.IP}: {Convert.ToHexString(bytes)}");
            f.Format(i, o);
            lines.Add(o.ToStringAndReset());
        }
        return string.Join("; ", lines);
    }

    private static void Is(string expected, Action<X64Emitter> emit)
    {
        var e = new X64Emitter();
        emit(e);
        Assert.Equal(expected, Decode(e));
    }

    [Fact]
    public void Loads_zero_extend_at_every_size()
    {
        Is("mov rax, [rdi+0x20]", e => e.Load(8, Rax, Rdi, 0x20));
        Is("mov r8d, [rdi+0x7c]", e => e.Load(4, R8, Rdi, 0x7C));
        Is("movzx r9d, word [rsi+0x1000]", e => e.Load(2, R9, Rsi, 0x1000));
        Is("movzx ecx, byte [r11]", e => e.Load(1, Rcx, R11, 0));
        Is("mov r11, [rsi-0x8]", e => e.Load(8, R11, Rsi, -8));
        Is("mov rax, [rsp+0x8]", e => e.Load(8, Rax, Rsp, 8));
        Is("mov rax, [rbp]", e => e.Load(8, Rax, Rbp, 0));
    }

    [Fact]
    public void Stores_at_every_size_and_immediates()
    {
        Is("mov [rdi+0x8], r8", e => e.Store(8, Rdi, 8, R8));
        Is("mov [rax], r9d", e => e.Store(4, Rax, 0, R9));
        Is("mov [rdi+0x21], r10w", e => e.Store(2, Rdi, 0x21, R10));
        Is("mov [rdi+0x1], r8b", e => e.Store(1, Rdi, 1, R8));
        Is("mov [rax], cl", e => e.Store(1, Rax, 0, Rcx));
        Is("mov byte [rsi+0x90], 0x5", e => e.StoreImm(1, Rsi, 0x90, 5));
        Is("mov dword [rdi+0x4], 0x0", e => e.StoreImm(4, Rdi, 4, 0));
        Is("mov qword [r11], -0x1", e => e.StoreImm(8, R11, 0, -1));
    }

    [Fact]
    public void Moves_of_immediates_pick_a_form_that_keeps_the_value()
    {
        Is("mov r8d, -0x1", e => e.MovImm(R8, 0xFFFF_FFFF)); // imm32 0xffffffff, zero-extended into r8
        Is("mov rax, -0x80", e => e.MovImm(Rax, unchecked((ulong)-128L)));
        Is("mov r9, -0x7f000000", e => e.MovImm(R9, 0xFFFF_FFFF_8100_0000)); // imm32, sign-extended
        Is("mov r10, 0x123456789", e => e.MovImm(R10, 0x1_2345_6789));
        Is("mov rcx, r8", e => e.Mov(Rcx, R8));
        Is("mov r10, rax", e => e.Mov(R10, Rax));
    }

    [Fact]
    public void Lea_with_and_without_index()
    {
        Is("lea rax, [rax+r10*8+0x40]", e => e.Lea(Rax, Rax, R10, 8, 0x40));
        Is("lea r11, [r11+r10]", e => e.Lea(R11, R11, R10, 1, 0));
        Is("lea r9, [rax+0x8]", e => e.Lea(R9, Rax, -1, 1, 8));
        Is("lea rax, [rax-0x8]", e => e.Lea(Rax, Rax, -1, 1, -8));
        Is("lea rax, [rax+0x12345678]", e => e.Lea(Rax, Rax, -1, 1, 0x12345678));
    }

    [Fact]
    public void Alu_forms_at_every_size()
    {
        Is("add r8, r9", e => e.Alu(OpAdd, 8, R8, R9));
        Is("sub r8d, r9d", e => e.Alu(OpSub, 4, R8, R9));
        Is("and r8w, r9w", e => e.Alu(OpAnd, 2, R8, R9));
        Is("xor r8b, r9b", e => e.Alu(OpXor, 1, R8, R9));
        Is("or al, cl", e => e.Alu(OpOr, 1, Rax, Rcx));
        Is("cmp rcx, r8", e => e.Alu(OpCmp, 8, Rcx, R8));
        Is("add rax, [r11+0x8]", e => e.AluLoad64(OpAdd, Rax, R11, 8));
        Is("cmp r10, [r11]", e => e.AluLoad64(OpCmp, R10, R11, 0));
        Is("add rax, [rdx+0x58]", e => e.AluLoad64(OpAdd, Rax, Rdx, 0x58));
        Is("and r10d, 0x7ff", e => e.AluImm(OpAnd, false, R10, 0x7FF));
    }

    [Fact]
    public void Carries_bit_tests_multiplies_and_the_shared_routine_call()
    {
        Is("adc r10b, r11b", e => e.Alu(OpAdc, 1, R10, R11));
        Is("sbb r8d, r9d", e => e.Alu(OpSbb, 4, R8, R9));
        Is("adc rcx, r9", e => e.Alu(OpAdc, 8, Rcx, R9));
        Is("sbb ax, cx", e => e.Alu(OpSbb, 2, Rax, Rcx));
        Is("bt r8, r9", e => e.BitTest(OpBt, true, R8, R9));
        Is("bts r8d, r9d", e => e.BitTest(OpBts, false, R8, R9));
        Is("btr rax, rcx", e => e.BitTest(OpBtr, true, Rax, Rcx));
        Is("btc r11d, r10d", e => e.BitTest(OpBtc, false, R11, R10));
        Is("imul r8, r9", e => e.Imul(true, R8, R9));
        Is("imul r8d, ecx", e => e.Imul(false, R8, Rcx));
        Is("bswap r8", e => e.Bswap(true, R8));
        Is("bswap eax", e => e.Bswap(false, Rax));
        Is("neg r8", e => e.Neg(8, R8));
        Is("neg r8d", e => e.Neg(4, R8));
        Is("neg r8w", e => e.Neg(2, R8));
        Is("neg r8b", e => e.Neg(1, R8));
        Is("rol r8, 0xd", e => e.Shift(Rol, true, R8, 13));
        Is("ror r8d, 0x7", e => e.Shift(Ror, false, R8, 7));
        Is("call r11", e => e.CallReg(R11));
        Is("lock cmpxchg [r11], r9", e => e.LockRmw(false, 8, R11, R9));
        Is("lock cmpxchg [r11], r9b", e => e.LockRmw(false, 1, R11, R9));
        Is("lock xadd [rax], r9d", e => e.LockRmw(true, 4, Rax, R9));
        Is("lock xadd [rax], cx", e => e.LockRmw(true, 2, Rax, Rcx));
    }

    [Fact]
    public void Shifts_sign_extensions_and_conditional_moves()
    {
        Is("shr r10, 0xc", e => e.Shift(Shr, true, R10, 12));
        Is("shl r10d, 0x5", e => e.Shift(Shl, false, R10, 5));
        Is("sar rcx, 0x10", e => e.Shift(Sar, true, Rcx, 16));
        Is("movsx r8, r8b", e => e.Movsx(1, R8, R8));
        Is("movsx r8, r8w", e => e.Movsx(2, R8, R8));
        Is("movsxd r8, r8d", e => e.Movsx(4, R8, R8));
        Is("cmove r9, r8", e => e.Cmov(CcE, R9, R8));
        Is("cmovg r9, r8", e => e.Cmov(CcG, R9, R8));
        Is("cmovb rax, rcx", e => e.Cmov(CcB, Rax, Rcx));
        Is("cmovle r8d, ecx", e => e.Cmov(CcLe, R8, Rcx, w: false));
        Is("setne r8b", e => e.Setcc(CcNe, R8));
        Is("setb cl", e => e.Setcc(CcB, Rcx));
        Is("inc r8", e => e.IncDec(false, 8, R8));
        Is("dec r8d", e => e.IncDec(true, 4, R8));
        Is("inc r8w", e => e.IncDec(false, 2, R8));
        Is("dec r8b", e => e.IncDec(true, 1, R8));
        Is("and r9, -0x8d6", e => e.AluImm(OpAnd, true, R9, ~0x8D5));
        Is("not r8", e => e.Not(true, R8));
        Is("not r8d", e => e.Not(false, R8));
        Is("pushf; pop r10", e => e.ReadFlags(R10));
        Is("push r10; popf", e => e.WriteFlags(R10));
    }

    [Fact]
    public void Branches_reach_their_labels()
    {
        Is("jne 0xc; mov eax, 0x1; ret; mov eax, 0x2; ret", e =>
        {
            int l = e.NewLabel();
            e.Jcc(CcNe, l);
            e.MovEaxImm(1);
            e.Ret();
            e.Bind(l);
            e.MovEaxImm(2);
            e.Ret();
        });
        var u = new X64Emitter();
        u.Jcc(CcE, u.NewLabel());
        Assert.False(u.Finish());
    }

    [Fact]
    public void Chain_forms_memory_immediates_and_patchable_jumps()
    {
        Is("cmp dword [rsi+0x1c], 0x0", e => e.AluMemImm(OpCmp, 4, Rsi, 0x1C, 0));
        Is("sub dword [rax], 0x1", e => e.AluMemImm(OpSub, 4, Rax, 0, 1));
        Is("add qword [rsi+0x120], 0x7", e => e.AluMemImm(OpAdd, 8, Rsi, 0x120, 7));
        Is("add qword [rsi-0x10], 0x12345", e => e.AluMemImm(OpAdd, 8, Rsi, -0x10, 0x12345));
        Is("cmp r10d, 0x5", e => e.AluImm(OpCmp, false, R10, 5));
        Is("sub ecx, 0x40", e => e.AluImm(OpSub, false, Rcx, 64));
        Is("add rax, 0x1000", e => e.AluImm(OpAdd, true, Rax, 0x1000));
        Is("shl r10, cl", e => e.ShiftCl(Shl, true, R10));
        Is("shr r11d, cl", e => e.ShiftCl(Shr, false, R11));
        // A JMP's and a Jcc's rel32 fields are where the caller says, so that a link can repoint them.
        var e = new X64Emitter();
        int l = e.NewLabel();
        int jcc = e.Jcc(CcNe, l);
        int jmp = e.Jmp(l);
        int open = e.JmpPlaceholder();
        e.Bind(l);
        e.Ret();
        Assert.Equal("jne 0x10; jmp 0x10; jmp 0x10; ret", Decode(e));
        Assert.Equal((2, 7, 12), (jcc, jmp, open));
    }
}
