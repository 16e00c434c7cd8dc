using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// MUL, IMUL (one-, two- and three-operand), DIV, IDIV. CF = OF = "the high half is significant"; SF/ZF/PF are
/// undefined and get the low result's values, AF is cleared. DIV/IDIV raise #DE on a zero divisor and on a quotient
/// that does not fit (IDIV INT_MIN / -1 included) and leave the flags alone.
/// </summary>
internal static unsafe class IntegerMulDiv
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Mul, Code.Mul_rm8, Code.Mul_rm16, Code.Mul_rm32, Code.Mul_rm64);
        r.Add(&Imul1, Code.Imul_rm8, Code.Imul_rm16, Code.Imul_rm32, Code.Imul_rm64);
        r.Add(&Imul2, Code.Imul_r16_rm16, Code.Imul_r32_rm32, Code.Imul_r64_rm64);
        r.Add(&Imul3, Code.Imul_r16_rm16_imm16, Code.Imul_r32_rm32_imm32, Code.Imul_r64_rm64_imm32,
            Code.Imul_r16_rm16_imm8, Code.Imul_r32_rm32_imm8, Code.Imul_r64_rm64_imm8);
        r.Add(&Div, Code.Div_rm8, Code.Div_rm16, Code.Div_rm32, Code.Div_rm64);
        r.Add(&Idiv, Code.Idiv_rm8, Code.Idiv_rm16, Code.Idiv_rm32, Code.Idiv_rm64);
    }

    /// <summary>Operand 0 of the one-operand forms (r/m), zero-extended, and its size.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Rm0(Cpu c, ref Instruction i, out int size)
    {
        if (i.Op0Kind == OpKind.Register)
        {
            Register r = i.Op0Register;
            size = Cpu.RegSize(r);
            return c.GetReg(r);
        }
        size = Cpu.MemSize(ref i);
        return c.ReadLinear(c.MemLinear(ref i, size, false), size);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SetMulFlags(Cpu c, ulong low, int size, bool overflow) =>
        c.SetArithFlags(IntegerShift.Szp(low, size) | (overflow ? Cpu.CF | Cpu.OF : 0));

    private static void Mul(Cpu c, ref Instruction i)
    {
        ulong b = Rm0(c, ref i, out int size);
        ulong a = c.Gpr[Cpu.RAX];
        switch (size)
        {
            case 1:
                {
                    ulong p = (byte)a * b;
                    c.SetReg(Register.AX, p);
                    SetMulFlags(c, p, 1, p > 0xFF);
                    break;
                }
            case 2:
                {
                    ulong p = (ushort)a * b;
                    c.SetReg(Register.AX, p);
                    c.SetReg(Register.DX, p >> 16);
                    SetMulFlags(c, p, 2, p > 0xFFFF);
                    break;
                }
            case 4:
                {
                    ulong p = (uint)a * b;
                    c.Gpr[Cpu.RAX] = (uint)p;
                    c.Gpr[Cpu.RDX] = p >> 32;
                    SetMulFlags(c, p, 4, p > 0xFFFF_FFFF);
                    break;
                }
            default:
                {
                    ulong hi = Math.BigMul(a, b, out ulong lo);
                    c.Gpr[Cpu.RAX] = lo;
                    c.Gpr[Cpu.RDX] = hi;
                    SetMulFlags(c, lo, 8, hi != 0);
                    break;
                }
        }
    }

    private static void Imul1(Cpu c, ref Instruction i)
    {
        ulong bu = Rm0(c, ref i, out int size);
        ulong a = c.Gpr[Cpu.RAX];
        switch (size)
        {
            case 1:
                {
                    long p = (sbyte)a * (long)(sbyte)bu;
                    c.SetReg(Register.AX, (ulong)p);
                    SetMulFlags(c, (ulong)p, 1, p != (sbyte)p);
                    break;
                }
            case 2:
                {
                    long p = (short)a * (long)(short)bu;
                    c.SetReg(Register.AX, (ulong)p);
                    c.SetReg(Register.DX, (ulong)(p >> 16));
                    SetMulFlags(c, (ulong)p, 2, p != (short)p);
                    break;
                }
            case 4:
                {
                    long p = (int)a * (long)(int)bu;
                    c.Gpr[Cpu.RAX] = (uint)p;
                    c.Gpr[Cpu.RDX] = (uint)(p >> 32);
                    SetMulFlags(c, (ulong)p, 4, p != (int)p);
                    break;
                }
            default:
                {
                    long hi = Math.BigMul((long)a, (long)bu, out long lo);
                    c.Gpr[Cpu.RAX] = (ulong)lo;
                    c.Gpr[Cpu.RDX] = (ulong)hi;
                    SetMulFlags(c, (ulong)lo, 8, hi != (lo >> 63));
                    break;
                }
        }
    }

    /// <summary>Truncated signed product of two size-byte values and whether it overflowed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong SignedProduct(ulong a, ulong b, int size, out bool overflow)
    {
        switch (size)
        {
            case 2:
                {
                    long p = (short)a * (long)(short)b;
                    overflow = p != (short)p;
                    return (ulong)p;
                }
            case 4:
                {
                    long p = (int)a * (long)(int)b;
                    overflow = p != (int)p;
                    return (ulong)p;
                }
            default:
                {
                    long hi = Math.BigMul((long)a, (long)b, out long lo);
                    overflow = hi != (lo >> 63);
                    return (ulong)lo;
                }
        }
    }

    private static void Imul2(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        int size = Cpu.RegSize(d);
        ulong b = i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : c.ReadLinear(c.MemLinear(ref i, size, false), size);
        ulong p = SignedProduct(c.GetReg(d), b, size, out bool ov);
        c.SetReg(d, p);
        SetMulFlags(c, p, size, ov);
    }

    /// <summary>Compiled code writing back an inline IMUL's flags: as <see cref="Imul2"/> sets them.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void SetMulFlagsForJit(Cpu c, ulong low, int size, bool overflow) => SetMulFlags(c, low, size, overflow);

    private static void Imul3(Cpu c, ref Instruction i)
    {
        Register d = i.Op0Register;
        int size = Cpu.RegSize(d);
        ulong a = i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : c.ReadLinear(c.MemLinear(ref i, size, false), size);
        ulong p = SignedProduct(a, i.GetImmediate(2), size, out bool ov);
        c.SetReg(d, p);
        SetMulFlags(c, p, size, ov);
    }

    private static CpuException DivideError() => new(Vec.DE);

    private static void Div(Cpu c, ref Instruction i)
    {
        ulong b = Rm0(c, ref i, out int size);
        if (b == 0) throw DivideError();
        switch (size)
        {
            case 1:
                {
                    ulong a = (ushort)c.Gpr[Cpu.RAX];
                    ulong q = a / b;
                    if (q > 0xFF) throw DivideError();
                    c.SetReg(Register.AX, q | ((a % b) << 8));
                    break;
                }
            case 2:
                {
                    ulong a = ((ulong)(ushort)c.Gpr[Cpu.RDX] << 16) | (ushort)c.Gpr[Cpu.RAX];
                    ulong q = a / b;
                    if (q > 0xFFFF) throw DivideError();
                    c.SetReg(Register.AX, q);
                    c.SetReg(Register.DX, a % b);
                    break;
                }
            case 4:
                {
                    ulong a = (c.Gpr[Cpu.RDX] << 32) | (uint)c.Gpr[Cpu.RAX];
                    ulong q = a / b;
                    if (q > 0xFFFF_FFFF) throw DivideError();
                    c.Gpr[Cpu.RAX] = q;
                    c.Gpr[Cpu.RDX] = a % b;
                    break;
                }
            default:
                {
                    ulong hi = c.Gpr[Cpu.RDX], lo = c.Gpr[Cpu.RAX];
                    if (hi == 0)
                    {
                        c.Gpr[Cpu.RAX] = lo / b;
                        c.Gpr[Cpu.RDX] = lo % b;
                        break;
                    }
                    if (hi >= b) throw DivideError(); // quotient would need more than 64 bits
                    UInt128 a = new(hi, lo);
                    c.Gpr[Cpu.RAX] = (ulong)(a / b);
                    c.Gpr[Cpu.RDX] = (ulong)(a % b);
                    break;
                }
        }
    }

    private static void Idiv(Cpu c, ref Instruction i)
    {
        ulong bu = Rm0(c, ref i, out int size);
        if (bu == 0) throw DivideError();
        switch (size)
        {
            case 1:
                {
                    long a = (short)c.Gpr[Cpu.RAX], b = (sbyte)bu;
                    long q = a / b; // |a| < 2^15, so no host overflow
                    if (q != (sbyte)q) throw DivideError();
                    c.SetReg(Register.AX, (ulong)(byte)q | ((ulong)(byte)(a % b) << 8));
                    break;
                }
            case 2:
                {
                    long a = (int)(((uint)(ushort)c.Gpr[Cpu.RDX] << 16) | (ushort)c.Gpr[Cpu.RAX]), b = (short)bu;
                    long q = a / b;
                    if (q != (short)q) throw DivideError();
                    c.SetReg(Register.AX, (ulong)q);
                    c.SetReg(Register.DX, (ulong)(a % b));
                    break;
                }
            case 4:
                {
                    long a = (long)((c.Gpr[Cpu.RDX] << 32) | (uint)c.Gpr[Cpu.RAX]), b = (int)bu;
                    if (b == -1)
                    {
                        // long.MinValue / -1 would throw on the host; the quotient never fits then anyway.
                        if (a == long.MinValue || -a != (int)-a) throw DivideError();
                        c.Gpr[Cpu.RAX] = (uint)-a;
                        c.Gpr[Cpu.RDX] = 0;
                        break;
                    }
                    long q = a / b;
                    if (q != (int)q) throw DivideError();
                    c.Gpr[Cpu.RAX] = (uint)q;
                    c.Gpr[Cpu.RDX] = (uint)(a % b);
                    break;
                }
            default:
                {
                    long b = (long)bu, lo = (long)c.Gpr[Cpu.RAX];
                    if ((long)c.Gpr[Cpu.RDX] == lo >> 63)
                    {
                        // The dividend fits 64 bits (the usual CQO; IDIV case): only MinValue / -1 overflows.
                        if (b == -1 && lo == long.MinValue) throw DivideError();
                        c.Gpr[Cpu.RAX] = (ulong)(lo / b);
                        c.Gpr[Cpu.RDX] = (ulong)(lo % b);
                        break;
                    }
                    Int128 a = (Int128)new UInt128(c.Gpr[Cpu.RDX], c.Gpr[Cpu.RAX]);
                    Int128 q, rem;
                    if (b == -1)
                    {
                        if (a == Int128.MinValue) throw DivideError();
                        q = -a;
                        rem = 0;
                    }
                    else
                    {
                        q = a / b;
                        rem = a % b;
                    }
                    if (q != (long)q) throw DivideError();
                    c.Gpr[Cpu.RAX] = (ulong)(long)q;
                    c.Gpr[Cpu.RDX] = (ulong)(long)rem;
                    break;
                }
        }
    }
}
