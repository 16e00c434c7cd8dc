namespace Dirigent.Accel.Emu.Native;

/// <summary>
/// A minimal x86-64 encoder for the native tier's templates (Intel SDM vol. 2, chapter 2: REX, ModR/M, SIB). It
/// knows only the forms the templates use, writes bytes straight into a buffer and resolves forward branches to
/// labels by patching their rel32 fields: a block costs about a microsecond, where a general assembler took ~20.
/// Registers are numbered as in the encoding (0 RAX ... 15 R15).
/// </summary>
internal sealed class X64Emitter
{
    public const int Rax = 0, Rcx = 1, Rdx = 2, Rbx = 3, Rsp = 4, Rbp = 5, Rsi = 6, Rdi = 7, R8 = 8, R9 = 9, R10 = 10, R11 = 11;
    private const int NoReg = -1;

    private byte[] _b = new byte[4096];
    private int _n;
    // rel32 fields waiting for their label's address: (offset of the field, label).
    private readonly List<(int at, int label)> _fixups = new();
    private readonly List<int> _labels = new();

    public ReadOnlySpan<byte> Code => _b.AsSpan(0, _n);

    public void Reset()
    {
        _n = 0;
        _fixups.Clear();
        _labels.Clear();
    }

    public int NewLabel()
    {
        _labels.Add(-1);
        return _labels.Count - 1;
    }

    public void Bind(int label) => _labels[label] = _n;

    /// <summary>Patches every branch to its label; false if one was never bound.</summary>
    public bool Finish()
    {
        foreach (var (at, label) in _fixups)
        {
            int target = _labels[label];
            if (target < 0) return false;
            BitConverter.TryWriteBytes(_b.AsSpan(at, 4), target - (at + 4));
        }
        return true;
    }

    private void B(int v)
    {
        if (_n == _b.Length) Array.Resize(ref _b, _b.Length * 2);
        _b[_n++] = (byte)v;
    }

    private void D(int v) { B(v); B(v >> 8); B(v >> 16); B(v >> 24); }

    /// <summary>REX when needed (or forced: byte registers, where a REX makes 4-7 SPL..DIL, never AH..BH).</summary>
    private void Rex(bool w, int reg, int index, int rm, bool force = false)
    {
        int r = (w ? 8 : 0) | ((reg & 8) != 0 ? 4 : 0) | (index >= 0 && (index & 8) != 0 ? 2 : 0) | ((rm & 8) != 0 ? 1 : 0);
        if (r != 0 || force) B(0x40 | r);
    }

    /// <summary>ModR/M (and SIB, displacement) of [base + index*scale + disp]; base is never none here.</summary>
    private void Mem(int reg, int bas, int index, int scale, int disp)
    {
        int mod = disp == 0 && (bas & 7) != Rbp ? 0 : disp == (sbyte)disp ? 1 : 2;
        if (index < 0 && (bas & 7) != Rsp)
            B(mod << 6 | (reg & 7) << 3 | (bas & 7));
        else
        {
            int ss = scale switch { 1 => 0, 2 => 1, 4 => 2, _ => 3 };
            B(mod << 6 | (reg & 7) << 3 | 4);
            B(ss << 6 | ((index < 0 ? Rsp : index) & 7) << 3 | (bas & 7));
        }
        if (mod == 1) B(disp);
        else if (mod == 2) D(disp);
    }

    private void RegRm(int reg, int rm) => B(0xC0 | (reg & 7) << 3 | (rm & 7));

    /// <summary>Prefixes and opcode of an operation on size bytes whose byte form is op - 1 (ADD 01/00 ...).</summary>
    private void SizedOp(int size, int op, int reg, int index, int rm)
    {
        if (size == 2) B(0x66);
        Rex(size == 8, reg, index, rm, force: size == 1);
        B(size == 1 ? op - 1 : op);
    }

    /// <summary>dst = size bytes at [bas + disp], zero-extended (MOV, MOVZX).</summary>
    public void Load(int size, int dst, int bas, int disp)
    {
        if (size >= 4) { Rex(size == 8, dst, NoReg, bas); B(0x8B); }
        else { Rex(false, dst, NoReg, bas); B(0x0F); B(size == 2 ? 0xB7 : 0xB6); }
        Mem(dst, bas, NoReg, 1, disp);
    }

    /// <summary>size bytes at [bas + disp] = src (MOV).</summary>
    public void Store(int size, int bas, int disp, int src)
    {
        SizedOp(size, 0x89, src, NoReg, bas);
        Mem(src, bas, NoReg, 1, disp);
    }

    /// <summary>size (1, 4 or 8, sign-extended) bytes at [bas + disp] = imm.</summary>
    public void StoreImm(int size, int bas, int disp, int imm)
    {
        Rex(size == 8, 0, NoReg, bas);
        B(size == 1 ? 0xC6 : 0xC7);
        Mem(0, bas, NoReg, 1, disp);
        if (size == 1) B(imm); else D(imm);
    }

    /// <summary>dst = imm (the shortest MOV that gives the 64-bit value).</summary>
    public void MovImm(int dst, ulong imm)
    {
        if (imm <= uint.MaxValue) { Rex(false, 0, NoReg, dst); B(0xB8 + (dst & 7)); D((int)imm); }
        else if ((long)imm == (int)imm) { Rex(true, 0, NoReg, dst); B(0xC7); RegRm(0, dst); D((int)imm); }
        else
        {
            Rex(true, 0, NoReg, dst);
            B(0xB8 + (dst & 7));
            D((int)imm);
            D((int)(imm >> 32));
        }
    }

    /// <summary>dst = imm in the 10-byte form whatever the value; returns the immediate's offset (patched later).</summary>
    public int MovImm64(int dst, ulong imm)
    {
        Rex(true, 0, NoReg, dst);
        B(0xB8 + (dst & 7));
        int at = _n;
        D((int)imm);
        D((int)(imm >> 32));
        return at;
    }

    /// <summary>dst = src (64-bit MOV).</summary>
    public void Mov(int dst, int src)
    {
        Rex(true, src, NoReg, dst);
        B(0x89);
        RegRm(src, dst);
    }

    /// <summary>dst = bas + index*scale + disp (LEA; index -1 for none).</summary>
    public void Lea(int dst, int bas, int index, int scale, int disp)
    {
        Rex(true, dst, index, bas);
        B(0x8D);
        Mem(dst, bas, index, scale, disp);
    }

    /// <summary>The ALU operations' "r/m, r" opcodes (the byte forms are one less).</summary>
    public const int OpAdd = 0x01, OpOr = 0x09, OpAdc = 0x11, OpSbb = 0x19, OpAnd = 0x21, OpSub = 0x29, OpXor = 0x31, OpCmp = 0x39;

    /// <summary>dst op= src at size bytes (dst is the r/m operand, as the guest's "r/m, r" forms).</summary>
    public void Alu(int op, int size, int dst, int src)
    {
        SizedOp(size, op, src, NoReg, dst);
        RegRm(src, dst);
    }

    /// <summary>dst op= the 64-bit value at [bas + disp] (ADD or CMP; the "r, r/m" opcodes are op + 2).</summary>
    public void AluLoad64(int op, int dst, int bas, int disp)
    {
        Rex(true, dst, NoReg, bas);
        B(op + 2);
        Mem(dst, bas, NoReg, 1, disp);
    }

    public const int Rol = 0, Ror = 1, Shl = 4, Shr = 5, Sar = 7;

    /// <summary>A shift or rotate of a 32- or 64-bit register by an immediate.</summary>
    public void Shift(int kind, bool w, int dst, int count)
    {
        Rex(w, 0, NoReg, dst);
        B(0xC1);
        RegRm(kind, dst);
        B(count);
    }

    /// <summary>dst (64-bit) = src sign-extended from size bytes (MOVSX, MOVSXD).</summary>
    public void Movsx(int size, int dst, int src)
    {
        Rex(true, dst, NoReg, src);
        if (size == 4) B(0x63);
        else { B(0x0F); B(size == 1 ? 0xBE : 0xBF); }
        RegRm(dst, src);
    }

    /// <summary>dst = src when condition cc (the SDM's tttn: 0 O, 1 NO, 2 B, ... 15 G) holds (64-bit, or 32-bit: w false).</summary>
    public void Cmov(int cc, int dst, int src, bool w = true)
    {
        Rex(w, dst, NoReg, src);
        B(0x0F);
        B(0x40 | cc);
        RegRm(dst, src);
    }

    /// <summary>The low byte of dst = 1 when condition cc holds, else 0 (SETcc).</summary>
    public void Setcc(int cc, int dst)
    {
        Rex(false, 0, NoReg, dst, force: true);
        B(0x0F);
        B(0x90 | cc);
        RegRm(0, dst);
    }

    /// <summary>INC or DEC of a register at size bytes.</summary>
    public void IncDec(bool dec, int size, int dst)
    {
        if (size == 2) B(0x66);
        Rex(size == 8, 0, NoReg, dst, force: size == 1);
        B(size == 1 ? 0xFE : 0xFF);
        RegRm(dec ? 1 : 0, dst);
    }

    /// <summary>NOT of a 32- or 64-bit register.</summary>
    public void Not(bool w, int dst)
    {
        Rex(w, 0, NoReg, dst);
        B(0xF7);
        RegRm(2, dst);
    }

    /// <summary>PUSHFQ then POP dst: the host's RFLAGS into dst.</summary>
    public void ReadFlags(int dst)
    {
        B(0x9C);
        Rex(false, 0, NoReg, dst);
        B(0x58 + (dst & 7));
    }

    /// <summary>PUSH src then POPFQ: RFLAGS from src (callers change only the arithmetic flags).</summary>
    public void WriteFlags(int src)
    {
        Rex(false, 0, NoReg, src);
        B(0x50 + (src & 7));
        B(0x9D);
    }

    /// <summary>Jcc rel32 to a label; returns the offset of its rel32 field (a link site that may be patched later).</summary>
    public int Jcc(int cc, int label)
    {
        B(0x0F);
        B(0x80 | cc);
        int at = _n;
        _fixups.Add((at, label));
        D(0);
        return at;
    }

    /// <summary>JMP rel32 to a label; returns the offset of its rel32 field (a link site that may be patched later).</summary>
    public int Jmp(int label)
    {
        B(0xE9);
        int at = _n;
        _fixups.Add((at, label));
        D(0);
        return at;
    }

    /// <summary>JMP rel32 whose field the caller sets once the code's address is known; returns the field's offset.</summary>
    public int JmpPlaceholder()
    {
        B(0xE9);
        int at = _n;
        D(0);
        return at;
    }

    /// <summary>op (ADD, SUB, CMP ...) of a sign-extended 32-bit immediate into a 32- or 64-bit register.</summary>
    public void AluImm(int op, bool w, int dst, int imm)
    {
        Rex(w, 0, NoReg, dst);
        bool short8 = imm == (sbyte)imm;
        B(short8 ? 0x83 : 0x81);
        RegRm(op >> 3, dst);
        if (short8) B(imm); else D(imm);
    }

    /// <summary>A shift of a 32- or 64-bit register by CL.</summary>
    public void ShiftCl(int kind, bool w, int dst)
    {
        Rex(w, 0, NoReg, dst);
        B(0xD3);
        RegRm(kind, dst);
    }

    /// <summary>op (ADD, SUB, CMP ...) of a sign-extended 32-bit immediate into size (4 or 8) bytes at [bas + disp].</summary>
    public void AluMemImm(int op, int size, int bas, int disp, int imm)
    {
        Rex(size == 8, 0, NoReg, bas);
        bool short8 = imm == (sbyte)imm;
        B(short8 ? 0x83 : 0x81);
        // The "r/m, imm" group's ModR/M reg field is the operation's number: the "r/m, r" opcode's bits 5:3.
        Mem(op >> 3, bas, NoReg, 1, disp);
        if (short8) B(imm); else D(imm);
    }

    public void MovEaxImm(int imm) { B(0xB8); D(imm); }

    /// <summary>The bit-test group's "r/m, r" opcodes (second byte after 0F).</summary>
    public const int OpBt = 0xA3, OpBts = 0xAB, OpBtr = 0xB3, OpBtc = 0xBB;

    /// <summary>BT/BTS/BTR/BTC dst, src on 32- or 64-bit registers (the bit offset is taken modulo the size).</summary>
    public void BitTest(int op, bool w, int dst, int src)
    {
        Rex(w, src, NoReg, dst);
        B(0x0F);
        B(op);
        RegRm(src, dst);
    }

    /// <summary>IMUL dst, src (two-operand form, 32- or 64-bit).</summary>
    public void Imul(bool w, int dst, int src)
    {
        Rex(w, dst, NoReg, src);
        B(0x0F);
        B(0xAF);
        RegRm(dst, src);
    }

    /// <summary>BSWAP of a 32- or 64-bit register.</summary>
    public void Bswap(bool w, int reg)
    {
        Rex(w, 0, NoReg, reg);
        B(0x0F);
        B(0xC8 + (reg & 7));
    }

    /// <summary>NEG of a register at size bytes.</summary>
    public void Neg(int size, int dst)
    {
        SizedOp(size, 0xF7, 0, NoReg, dst);
        RegRm(3, dst);
    }

    /// <summary>LOCK CMPXCHG [bas], src at size bytes (the accumulator is the host's RAX) when xadd is false, else LOCK XADD [bas], src.</summary>
    public void LockRmw(bool xadd, int size, int bas, int src)
    {
        B(0xF0);
        if (size == 2) B(0x66);
        Rex(size == 8, src, NoReg, bas, force: size == 1);
        B(0x0F);
        B((xadd ? 0xC1 : 0xB1) - (size == 1 ? 1 : 0));
        Mem(src, bas, NoReg, 1, 0);
    }

    /// <summary>CALL through a register (the shared routines at the arena's front).</summary>
    public void CallReg(int reg)
    {
        Rex(false, 0, NoReg, reg);
        B(0xFF);
        RegRm(2, reg);
    }

    public void Ret() => B(0xC3);

    public const int CcO = 0, CcNo = 1, CcB = 2, CcAe = 3, CcE = 4, CcNe = 5, CcBe = 6, CcA = 7, CcS = 8, CcNs = 9,
        CcP = 10, CcNp = 11, CcL = 12, CcGe = 13, CcLe = 14, CcG = 15;
}
