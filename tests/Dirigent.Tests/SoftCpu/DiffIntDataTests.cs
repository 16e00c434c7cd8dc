using System.Runtime.CompilerServices;
using Dirigent.Tests.Native;
using Iced.Intel;
using Decoder = Iced.Intel.Decoder;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Builds one encoding per (Iced code, register-or-memory) from the code's operand description, so the differential
/// tests cover every encoding of an instruction family without listing them by hand. Registers are random (never
/// RSP, nor RBX which holds the buffer address); memory operands are [rbx+disp8] inside the 256-byte buffer.
/// </summary>
internal static class IntForms
{
    private static readonly Register[] s_r64 = [Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI, Register.RBP,
        Register.R8, Register.R9, Register.R10, Register.R11, Register.R12, Register.R13, Register.R14, Register.R15];

    private static Register Pick(Random rng, int size)
    {
        var full = s_r64[rng.Next(s_r64.Length)];
        int k = full - Register.RAX;
        return size switch
        {
            8 => full,
            4 => Register.EAX + k,
            2 => Register.AX + k,
            _ => k < 4 ? Register.AL + k : Register.SPL + (k - 4),
        };
    }

    /// <summary>True when the code has an r/m operand, so a memory variant exists.</summary>
    public static bool HasRm(Code code)
    {
        var op = code.ToOpCode();
        for (int n = 0; n < op.OpCount; n++)
            if (op.GetOpKind(n) is OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem
                or OpCodeOperandKind.r64_or_mem or OpCodeOperandKind.mem) return true;
        return false;
    }

    public static bool HasRegForm(Code code)
    {
        var op = code.ToOpCode();
        for (int n = 0; n < op.OpCount; n++)
            if (op.GetOpKind(n) == OpCodeOperandKind.mem) return false;
        return true;
    }

    /// <summary>Encodes the code with random registers, a memory operand if <paramref name="memory"/>, and imm(n) immediates.</summary>
    public static byte[] Build(Code code, bool memory, Random rng, Func<int, ulong>? imm = null)
    {
        var op = code.ToOpCode();
        var ins = new Instruction { Code = code };
        for (int n = 0; n < op.OpCount; n++)
        {
            var k = op.GetOpKind(n);
            int regSize = k switch
            {
                OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r8_reg or OpCodeOperandKind.r8_opcode => 1,
                OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r16_reg or OpCodeOperandKind.r16_opcode => 2,
                OpCodeOperandKind.r32_or_mem or OpCodeOperandKind.r32_reg or OpCodeOperandKind.r32_opcode => 4,
                OpCodeOperandKind.r64_or_mem or OpCodeOperandKind.r64_reg or OpCodeOperandKind.r64_opcode => 8,
                _ => 0,
            };
            bool isRm = k is OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem
                or OpCodeOperandKind.r64_or_mem or OpCodeOperandKind.mem;
            if (isRm && (memory || k == OpCodeOperandKind.mem))
            {
                ins.SetOpKind(n, OpKind.Memory);
                ins.MemoryBase = Register.RBX;
                ins.MemoryDisplacement64 = (ulong)(16 * rng.Next(1, 14) + (rng.Next(2) == 0 ? 0 : rng.Next(1, 8)));
                ins.MemoryDisplSize = 1;
                continue;
            }
            if (regSize != 0)
            {
                ins.SetOpKind(n, OpKind.Register);
                ins.SetOpRegister(n, Pick(rng, regSize));
                continue;
            }
            switch (k)
            {
                case OpCodeOperandKind.al: SetReg(ref ins, n, Register.AL); break;
                case OpCodeOperandKind.cl: SetReg(ref ins, n, Register.CL); break;
                case OpCodeOperandKind.ax: SetReg(ref ins, n, Register.AX); break;
                case OpCodeOperandKind.eax: SetReg(ref ins, n, Register.EAX); break;
                case OpCodeOperandKind.rax: SetReg(ref ins, n, Register.RAX); break;
                case OpCodeOperandKind.imm8_const_1: ins.SetOpKind(n, OpKind.Immediate8); ins.SetImmediate(n, 1); break;
                case OpCodeOperandKind.imm8: ins.SetOpKind(n, OpKind.Immediate8); ins.SetImmediate(n, (byte)Imm(n)); break;
                case OpCodeOperandKind.imm16: ins.SetOpKind(n, OpKind.Immediate16); ins.SetImmediate(n, (ushort)Imm(n)); break;
                case OpCodeOperandKind.imm32: ins.SetOpKind(n, OpKind.Immediate32); ins.SetImmediate(n, (uint)Imm(n)); break;
                case OpCodeOperandKind.imm64: ins.SetOpKind(n, OpKind.Immediate64); ins.SetImmediate(n, Imm(n)); break;
                case OpCodeOperandKind.imm8sex16: ins.SetOpKind(n, OpKind.Immediate8to16); ins.SetImmediate(n, (long)(sbyte)Imm(n)); break;
                case OpCodeOperandKind.imm8sex32: ins.SetOpKind(n, OpKind.Immediate8to32); ins.SetImmediate(n, (long)(sbyte)Imm(n)); break;
                case OpCodeOperandKind.imm8sex64: ins.SetOpKind(n, OpKind.Immediate8to64); ins.SetImmediate(n, (long)(sbyte)Imm(n)); break;
                case OpCodeOperandKind.imm32sex64: ins.SetOpKind(n, OpKind.Immediate32to64); ins.SetImmediate(n, (long)(int)Imm(n)); break;
                default: throw new NotSupportedException($"{code}: operand kind {k}");
            }
        }
        var w = new BytesWriter();
        Encoder.Create(64, w).Encode(ins, EmuRunner.CodeAddr);
        return w.Bytes.ToArray();

        ulong Imm(int n) => imm != null ? imm(n) : Differential.RandomValue(rng);
    }

    private static void SetReg(ref Instruction ins, int n, Register r)
    {
        ins.SetOpKind(n, OpKind.Register);
        ins.SetOpRegister(n, r);
    }

    private sealed class BytesWriter : CodeWriter
    {
        public readonly List<byte> Bytes = [];
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    public static Instruction Decode(byte[] code)
    {
        var d = Decoder.Create(64, code);
        d.IP = EmuRunner.CodeAddr;
        d.Decode(out var ins);
        return ins;
    }

    /// <summary>Theory rows: a register variant and a memory variant of every code the predicate selects.</summary>
    public static IEnumerable<object[]> Rows(Func<Code, bool> select, int seed, Func<Code, Random, int, ulong>? imm = null, int perKind = 1)
    {
        var rng = new Random(seed);
        foreach (Code c in Enum.GetValues<Code>())
        {
            if (!select(c) || c.ToOpCode().Encoding != EncodingKind.Legacy || !c.ToOpCode().Mode64) continue;
            for (int v = 0; v < perKind; v++)
            {
                if (HasRegForm(c)) yield return Row(c, false);
                if (HasRm(c)) yield return Row(c, true);
            }
        }

        object[] Row(Code c, bool mem)
        {
            var bytes = Build(c, mem, rng, imm == null ? null : n => imm(c, rng, n));
            return [$"{c}: {Decode(bytes)}", bytes];
        }
    }

    /// <summary>Value of a register operand in a state.</summary>
    public static ulong Reg(MachineState s, Register r)
    {
        if (r is >= Register.AH and <= Register.BH) return (byte)(s.Gpr[r - Register.AH] >> 8);
        ulong v = s.Gpr[r.GetFullRegister() - Register.RAX];
        return r.GetSize() switch { 1 => (byte)v, 2 => (ushort)v, 4 => (uint)v, _ => v };
    }

    public static void SetRegValue(MachineState s, Register r, ulong value)
    {
        int k = r.GetFullRegister() - Register.RAX;
        s.Gpr[k] = r.GetSize() switch
        {
            1 => (s.Gpr[k] & ~0xFFUL) | (byte)value,
            2 => (s.Gpr[k] & ~0xFFFFUL) | (ushort)value,
            4 => (uint)value,
            _ => value,
        };
    }

    /// <summary>Value of operand n (register or [rbx+disp] memory), zero-extended.</summary>
    public static ulong Operand(Instruction ins, MachineState s, int n, int size)
    {
        if (ins.GetOpKind(n) == OpKind.Register) return Reg(s, ins.GetOpRegister(n));
        return BitConverter.ToUInt64(s.Mem, (int)ins.MemoryDisplacement64) & (size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1);
    }

    public static void SetOperand(Instruction ins, MachineState s, int n, int size, ulong value)
    {
        if (ins.GetOpKind(n) == OpKind.Register) { SetRegValue(s, ins.GetOpRegister(n), value); return; }
        for (int b = 0; b < size; b++) s.Mem[(int)ins.MemoryDisplacement64 + b] = (byte)(value >> (8 * b));
    }

    /// <summary>
    /// Runs CasesPerForm random states through host and emulator. fix adjusts a state (e.g. a shift count), skip
    /// drops states that would fault on the host, mask gives extra flag bits to ignore for that state.
    /// </summary>
    public static void Check(string name, byte[] code, Action<Instruction, MachineState, Random>? fix = null,
        Func<Instruction, MachineState, bool>? skip = null, Func<Instruction, MachineState, ulong>? mask = null,
        [CallerFilePath] string callerFile = "")
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        var ins = Decode(code);
        using var d = new Differential();
        int seed = Differential.StableHash(name) ^ 0x1D47A; // stable across processes: a failure replays
        var rng = new Random(seed);
        var failures = new List<string>();
        int ran = 0;
        for (int k = 0; k < Differential.CasesPerForm * 4 && ran < Differential.CasesPerForm; k++)
        {
            var s = Differential.RandomState(rng);
            s.Gpr[NativeRunner.MemBaseReg] = 0;
            fix?.Invoke(ins, s, rng);
            if (skip != null && skip(ins, s)) continue;
            ran++;
            try
            {
                string diff = d.Compare(code, s, mask?.Invoke(ins, s) ?? 0, compareFx: false, memBase: true);
                if (diff != "") failures.Add(diff);
            }
            catch (InvalidOperationException e)
            {
                failures.Add($"{Differential.Describe(code)}: in {Differential.DescribeInput(s)}: {e.Message}");
            }
        }
        Assert.True(ran > 0, "every case was skipped");
        Differential.AssertNoFailures(Path.GetFileNameWithoutExtension(callerFile), name, seed, ran, failures);
    }

    /// <summary>Assembles hand-written forms (for registers like AH that the generator avoids).</summary>
    public static object[] Hand(string name, Action<Assembler> build) => [name, Differential.Asm(build)];
}

/// <summary>Differential tests for MOV/MOVZX/MOVSX/MOVSXD/LEA/XCHG/XADD/CMPXCHG/CMOVcc/SETcc/BSWAP/CBW../LAHF/SAHF/XLAT/NOP.</summary>
public class DiffIntDataTests
{
    private static bool Selected(Code c)
    {
        string s = c.ToString();
        switch (c.Mnemonic())
        {
            case Mnemonic.Mov: return !s.Contains("moffs", StringComparison.Ordinal) && !s.Contains("Sreg", StringComparison.Ordinal) &&
                                      !s.Contains("_cr", StringComparison.Ordinal) && !s.Contains("_dr", StringComparison.Ordinal) &&
                                      !s.Contains("_tr", StringComparison.Ordinal) && !s.Contains("Sreg", StringComparison.Ordinal);
            case Mnemonic.Movzx: case Mnemonic.Movsx: case Mnemonic.Movsxd:
            case Mnemonic.Xchg: case Mnemonic.Xadd: case Mnemonic.Cmpxchg: case Mnemonic.Bswap:
            case Mnemonic.Cbw: case Mnemonic.Cwde: case Mnemonic.Cdqe: case Mnemonic.Cwd: case Mnemonic.Cdq: case Mnemonic.Cqo:
            case Mnemonic.Lahf: case Mnemonic.Sahf:
                return true;
            default:
                if (c.ConditionCode() == ConditionCode.None) return false;
                return (s.StartsWith("Cmov", StringComparison.Ordinal) && s.Split('_').Length == 3)
                       || (s.StartsWith("Set", StringComparison.Ordinal) && s.EndsWith("_rm8", StringComparison.Ordinal));
        }
    }

    public static IEnumerable<object[]> Forms()
    {
        foreach (var row in IntForms.Rows(c => Selected(c) && c.ToOpCode().Mode64, 0xDA7A)) yield return row;
        yield return IntForms.Hand("mov ah,ch", a => a.mov(ah, ch));
        yield return IntForms.Hand("movzx ecx,ah", a => a.movzx(ecx, ah));
        yield return IntForms.Hand("movsx eax,dh", a => a.movsx(eax, dh));
        yield return IntForms.Hand("xchg ah,cl", a => a.xchg(ah, cl));
        yield return IntForms.Hand("lock xchg [rbx+8],rcx", a => a.@lock.xchg(__qword_ptr[rbx + 8], rcx));
        yield return IntForms.Hand("lock xadd [rbx+12],edx", a => a.@lock.xadd(__dword_ptr[rbx + 12], edx));
        yield return IntForms.Hand("lock xadd [rbx+5],dl", a => a.@lock.xadd(__byte_ptr[rbx + 5], dl));
        yield return IntForms.Hand("lock cmpxchg [rbx+16],rsi", a => a.@lock.cmpxchg(__qword_ptr[rbx + 16], rsi));
        yield return IntForms.Hand("lock cmpxchg [rbx+6],cx", a => a.@lock.cmpxchg(__word_ptr[rbx + 6], cx));
        yield return IntForms.Hand("lea eax,[rcx+rdx*4+12]", a => a.lea(eax, __[rcx + rdx * 4 + 12]));
        yield return IntForms.Hand("lea cx,[rsi-7]", a => a.lea(cx, __[rsi - 7]));
        yield return IntForms.Hand("lea rax,[esi+edi*2]", a => a.lea(rax, __[esi + edi * 2]));
        yield return IntForms.Hand("lea r9,[r10+r11*8-100000]", a => a.lea(r9, __[r10 + r11 * 8 - 100000]));
        yield return IntForms.Hand("lea r8d,[rax+rax]", a => a.lea(r8d, __[rax + rax]));
        yield return IntForms.Hand("xlatb", a => a.xlatb());
        yield return IntForms.Hand("nop", a => a.nop());
        yield return IntForms.Hand("nop dword [rax+rax]", a => a.nop(__dword_ptr[rax + rax]));
        yield return IntForms.Hand("pause", a => a.pause());
        yield return IntForms.Hand("endbr64", a => a.endbr64());
        yield return IntForms.Hand("cldemote [rbx+9]", a => a.cldemote(__byte_ptr[rbx + 9]));
        yield return IntForms.Hand("nop word [rbx+rax*2+0x1234]", a => a.nop(__word_ptr[rbx + rax * 2 + 0x1234]));
        yield return IntForms.Hand("reserved-nop 0F 19 /r", a => a.db(0x0F, 0x19, 0xC1));
        yield return IntForms.Hand("prefetcht0 [rsi]", a => a.prefetcht0(__byte_ptr[rsi]));
        yield return IntForms.Hand("prefetchnta [rbx+3]", a => a.prefetchnta(__byte_ptr[rbx + 3]));
        yield return IntForms.Hand("prefetchw [rbx]", a => a.prefetchw(__byte_ptr[rbx]));
        yield return IntForms.Hand("cmpxchg8b [rbx+8] (fail path)", a => a.cmpxchg8b(__qword_ptr[rbx + 8]));
        yield return IntForms.Hand("lock cmpxchg16b [rbx+32] (fail path)", a => a.@lock.cmpxchg16b(__xmmword_ptr[rbx + 32]));
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public void MatchesHost(string name, byte[] code) => IntForms.Check(name, code, Fix);

    private static void Fix(Instruction ins, MachineState s, Random rng)
    {
        switch (ins.Mnemonic)
        {
            case Mnemonic.Cmpxchg:
                {
                    // Half the cases take the "equal" path: accumulator = destination.
                    if (rng.Next(2) == 0) break;
                    int size = ins.Op1Register.GetSize();
                    ulong v = IntForms.Operand(ins, s, 0, size);
                    ulong m = size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
                    s.Gpr[0] = (s.Gpr[0] & ~m) | v;
                    break;
                }
            case Mnemonic.Cmpxchg8b:
            case Mnemonic.Cmpxchg16b:
                // Only the failure path is comparable: on success the store takes RBX, which is each side's own
                // buffer address. Make the low word differ so the comparison fails. (Success: IntDataVmTests.)
                s.Gpr[0] = ~BitConverter.ToUInt64(s.Mem, (int)ins.MemoryDisplacement64);
                break;
        }
    }
}
