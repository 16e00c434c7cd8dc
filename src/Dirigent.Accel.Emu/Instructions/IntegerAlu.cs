using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>ADD, ADC, SUB, SBB, AND, OR, XOR, CMP, TEST, INC, DEC, NEG, NOT (LOCK-able forms atomic on RAM).</summary>
internal static unsafe class IntegerAlu
{
    public static void Install(HandlerRegistry r)
    {
        foreach (Code c in Enum.GetValues<Code>())
        {
            switch (c.Mnemonic())
            {
                case Mnemonic.Add: r.Add(&Add, c); break;
                case Mnemonic.Adc: r.Add(&Adc, c); break;
                case Mnemonic.Sub: r.Add(&Sub, c); break;
                case Mnemonic.Sbb: r.Add(&Sbb, c); break;
                case Mnemonic.And: r.Add(&And, c); break;
                case Mnemonic.Or: r.Add(&Or, c); break;
                case Mnemonic.Xor: r.Add(&Xor, c); break;
                case Mnemonic.Cmp: r.Add(&Cmp, c); break;
                case Mnemonic.Test: r.Add(&Test, c); break;
                case Mnemonic.Inc: r.Add(&Inc, c); break;
                case Mnemonic.Dec: r.Add(&Dec, c); break;
                case Mnemonic.Neg: r.Add(&Neg, c); break;
                case Mnemonic.Not: r.Add(&Not, c); break;
            }
        }
    }

    // ReverseSub (b - a) exists only so that LOCK NEG can share the compare-exchange loop: NEG m = 0 - m.
    private enum Op { Add, Adc, Sub, Sbb, And, Or, Xor, Cmp, Test, ReverseSub }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Compute(Op op, ulong a, ulong b, bool cin) => op switch
    {
        Op.Add => a + b,
        Op.Adc => a + b + (cin ? 1UL : 0),
        Op.Sub or Op.Cmp => a - b,
        Op.Sbb => a - b - (cin ? 1UL : 0),
        Op.And or Op.Test => a & b,
        Op.Or => a | b,
        Op.ReverseSub => b - a,
        _ => a ^ b,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SetFlags(Cpu c, Op op, int size, ulong res, ulong a, ulong b, bool cin)
    {
        switch (op)
        {
            case Op.Add: c.SetLazyFlags(LazyOp.Add, size, res, a, b); break;
            case Op.Adc: c.SetLazyFlagsWithCarry(LazyOp.Adc, size, res, a, b, cin); break;
            case Op.Sub: case Op.Cmp: c.SetLazyFlags(LazyOp.Sub, size, res, a, b); break;
            case Op.Sbb: c.SetLazyFlagsWithCarry(LazyOp.Sbb, size, res, a, b, cin); break;
            default: c.SetLazyFlags(LazyOp.Logic, size, res, a, b); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Binary(Cpu c, ref Instruction i, Op op)
    {
        bool writeBack = op != Op.Cmp && op != Op.Test;
        bool cin = (op == Op.Adc || op == Op.Sbb) && c.GetCF();
        if (i.Op0Kind == OpKind.Register)
        {
            Register r = i.Op0Register;
            int size = Cpu.RegSize(r);
            ulong a = c.GetReg(r);
            ulong b = i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : c.ReadOp(ref i, 1, size);
            ulong res = Compute(op, a, b, cin);
            if (writeBack) c.SetReg(r, res);
            SetFlags(c, op, size, res, a, b, cin);
        }
        else
        {
            int size = Cpu.MemSize(ref i);
            ulong la = c.MemLinear(ref i, size, writeBack);
            ulong b = i.Op1Kind == OpKind.Register ? c.GetReg(i.Op1Register) : i.GetImmediate(1) & Cpu.SizeMask(size);
            ulong a, res;
            if (writeBack && i.HasLockPrefix)
            {
                a = AtomicRmw(c, la, size, op, b, cin, out res);
            }
            else
            {
                a = c.ReadLinear(la, size);
                res = Compute(op, a, b, cin);
                if (writeBack) c.WriteLinear(la, size, res);
            }
            SetFlags(c, op, size, res, a, b, cin);
        }
    }

    /// <summary>Read-modify-write as one host atomic (compare-exchange loop) so LOCKed ops are atomic across vCPUs.</summary>
    private static ulong AtomicRmw(Cpu c, ulong la, int size, Op op, ulong b, bool cin, out ulong res)
    {
        byte* p = c.HostPointerForRmw(la, size);
        if (p == null)
        {
            lock (Cpu.SplitLock)
            {
                ulong a0 = c.ReadLinear(la, size);
                res = Compute(op, a0, b, cin);
                c.WriteLinear(la, size, res);
                return a0;
            }
        }
        while (true)
        {
            ulong a;
            bool ok;
            switch (size)
            {
                case 1: a = Volatile.Read(ref *p); res = Compute(op, a, b, cin); ok = Interlocked.CompareExchange(ref *p, (byte)res, (byte)a) == (byte)a; break;
                case 2: a = Volatile.Read(ref *(ushort*)p); res = Compute(op, a, b, cin); ok = Interlocked.CompareExchange(ref *(ushort*)p, (ushort)res, (ushort)a) == (ushort)a; break;
                case 4: a = Volatile.Read(ref *(uint*)p); res = Compute(op, a, b, cin); ok = Interlocked.CompareExchange(ref *(uint*)p, (uint)res, (uint)a) == (uint)a; break;
                default: a = Volatile.Read(ref *(ulong*)p); res = Compute(op, a, b, cin); ok = Interlocked.CompareExchange(ref *(ulong*)p, res, a) == a; break;
            }
            if (ok) return a;
        }
    }

    private static void Add(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Add);
    private static void Adc(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Adc);
    private static void Sub(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Sub);
    private static void Sbb(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Sbb);
    private static void And(Cpu c, ref Instruction i) => Binary(c, ref i, Op.And);
    private static void Or(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Or);
    private static void Xor(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Xor);
    private static void Cmp(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Cmp);
    private static void Test(Cpu c, ref Instruction i) => Binary(c, ref i, Op.Test);

    private enum UOp { Inc, Dec, Neg, Not }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong ComputeU(UOp op, ulong a) => op switch
    {
        UOp.Inc => a + 1,
        UOp.Dec => a - 1,
        UOp.Neg => 0 - a,
        _ => ~a,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Unary(Cpu c, ref Instruction i, UOp op)
    {
        ulong a, res;
        int size;
        if (i.Op0Kind == OpKind.Register)
        {
            Register r = i.Op0Register;
            size = Cpu.RegSize(r);
            a = c.GetReg(r);
            res = ComputeU(op, a);
            c.SetReg(r, res);
        }
        else
        {
            size = Cpu.MemSize(ref i);
            ulong la = c.MemLinear(ref i, size, true);
            if (i.HasLockPrefix)
            {
                // Reuse the binary atomic path: INC/DEC/NEG/NOT are ADD 1 / SUB 1 / (0 - a) / XOR all-ones.
                a = op switch
                {
                    UOp.Inc => AtomicRmw(c, la, size, Op.Add, 1, false, out res),
                    UOp.Dec => AtomicRmw(c, la, size, Op.Sub, 1, false, out res),
                    UOp.Not => AtomicRmw(c, la, size, Op.Xor, Cpu.SizeMask(size), false, out res),
                    _ => AtomicRmw(c, la, size, Op.ReverseSub, 0, false, out res),
                };
            }
            else
            {
                a = c.ReadLinear(la, size);
                res = ComputeU(op, a);
                c.WriteLinear(la, size, res);
            }
        }
        switch (op)
        {
            case UOp.Inc: c.SetLazyIncDec(true, size, res, a); break;
            case UOp.Dec: c.SetLazyIncDec(false, size, res, a); break;
            case UOp.Neg: c.SetLazyFlags(LazyOp.Neg, size, res, 0, a); break;
        }
    }

    private static void Inc(Cpu c, ref Instruction i) => Unary(c, ref i, UOp.Inc);
    private static void Dec(Cpu c, ref Instruction i) => Unary(c, ref i, UOp.Dec);
    private static void Neg(Cpu c, ref Instruction i) => Unary(c, ref i, UOp.Neg);
    private static void Not(Cpu c, ref Instruction i) => Unary(c, ref i, UOp.Not);
}
