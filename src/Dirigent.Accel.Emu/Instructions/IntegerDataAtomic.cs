using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B. Memory XCHG is atomic with or without LOCK; the others are atomic
/// on RAM when LOCKed (CMPXCHG8B/16B always, which costs nothing extra and is what guests rely on).
/// </summary>
internal static unsafe class IntegerDataAtomic
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Xchg, Code.Xchg_rm8_r8, Code.Xchg_rm16_r16, Code.Xchg_rm32_r32, Code.Xchg_rm64_r64,
            Code.Xchg_r16_AX, Code.Xchg_r32_EAX, Code.Xchg_r64_RAX);
        r.Add(&Xadd, Code.Xadd_rm8_r8, Code.Xadd_rm16_r16, Code.Xadd_rm32_r32, Code.Xadd_rm64_r64);
        r.Add(&Cmpxchg, Code.Cmpxchg_rm8_r8, Code.Cmpxchg_rm16_r16, Code.Cmpxchg_rm32_r32, Code.Cmpxchg_rm64_r64);
        r.Add(&Cmpxchg8b, Code.Cmpxchg8b_m64);
        r.Add(&Cmpxchg16b, Code.Cmpxchg16b_m128);
    }

    /// <summary>
    /// Atomic compare-exchange of size bytes at a linear address; returns the old value (stored value equals
    /// <paramref name="value"/> iff old == <paramref name="expected"/>). Falls back to SplitLock for MMIO/split.
    /// </summary>
    internal static ulong CompareExchange(Cpu c, ulong la, int size, ulong value, ulong expected)
    {
        byte* p = c.HostPointerForRmw(la, size);
        if (p == null)
        {
            lock (Cpu.SplitLock)
            {
                ulong old = c.ReadLinear(la, size);
                // A locked operation always writes its destination, even when the comparison fails.
                c.WriteLinear(la, size, old == expected ? value : old);
                return old;
            }
        }
        return size switch
        {
            1 => Interlocked.CompareExchange(ref *p, (byte)value, (byte)expected),
            2 => Interlocked.CompareExchange(ref *(ushort*)p, (ushort)value, (ushort)expected),
            4 => Interlocked.CompareExchange(ref *(uint*)p, (uint)value, (uint)expected),
            _ => Interlocked.CompareExchange(ref *(ulong*)p, value, expected),
        };
    }

    /// <summary>Atomically replaces size bytes with f(old); returns old.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong AtomicUpdate(Cpu c, ulong la, int size, delegate*<ulong, ulong, ulong> f, ulong arg)
    {
        byte* p = c.HostPointerForRmw(la, size);
        if (p == null)
        {
            lock (Cpu.SplitLock)
            {
                ulong old = c.ReadLinear(la, size);
                c.WriteLinear(la, size, f(old, arg));
                return old;
            }
        }
        while (true)
        {
            ulong old = size switch
            {
                1 => Volatile.Read(ref *p),
                2 => Volatile.Read(ref *(ushort*)p),
                4 => Volatile.Read(ref *(uint*)p),
                _ => Volatile.Read(ref *(ulong*)p),
            };
            ulong nv = f(old, arg);
            bool ok = size switch
            {
                1 => Interlocked.CompareExchange(ref *p, (byte)nv, (byte)old) == (byte)old,
                2 => Interlocked.CompareExchange(ref *(ushort*)p, (ushort)nv, (ushort)old) == (ushort)old,
                4 => Interlocked.CompareExchange(ref *(uint*)p, (uint)nv, (uint)old) == (uint)old,
                _ => Interlocked.CompareExchange(ref *(ulong*)p, nv, old) == old,
            };
            if (ok) return old;
        }
    }

    private static ulong Exchange(Cpu c, ulong la, int size, ulong v)
    {
        byte* p = c.HostPointerForRmw(la, size);
        if (p == null)
        {
            lock (Cpu.SplitLock)
            {
                ulong old = c.ReadLinear(la, size);
                c.WriteLinear(la, size, v);
                return old;
            }
        }
        return size switch
        {
            1 => Interlocked.Exchange(ref *p, (byte)v),
            2 => Interlocked.Exchange(ref *(ushort*)p, (ushort)v),
            4 => Interlocked.Exchange(ref *(uint*)p, (uint)v),
            _ => Interlocked.Exchange(ref *(ulong*)p, v),
        };
    }

    private static void Xchg(Cpu c, ref Instruction i)
    {
        Register src = i.Op1Register;
        if (i.Op0Kind == OpKind.Register)
        {
            // The decoder runs without Iced's invalid checks, so LOCK with a register destination is caught here.
            if (i.HasLockPrefix) throw Cpu.UD();
            Register dst = i.Op0Register;
            ulong a = c.GetReg(dst), b = c.GetReg(src);
            c.SetReg(dst, b);
            c.SetReg(src, a);
            return;
        }
        int size = Cpu.RegSize(src);
        ulong la = c.MemLinear(ref i, size, true);
        c.SetReg(src, Exchange(c, la, size, c.GetReg(src)));
    }

    private static ulong AddOp(ulong a, ulong b) => a + b;

    private static void Xadd(Cpu c, ref Instruction i)
    {
        Register src = i.Op1Register;
        int size = Cpu.RegSize(src);
        ulong b = c.GetReg(src), a;
        if (i.Op0Kind == OpKind.Register)
        {
            if (i.HasLockPrefix) throw Cpu.UD();
            Register dst = i.Op0Register;
            a = c.GetReg(dst);
            c.SetReg(src, a);
            c.SetReg(dst, a + b);
        }
        else
        {
            ulong la = c.MemLinear(ref i, size, true);
            if (i.HasLockPrefix) a = AtomicUpdate(c, la, size, &AddOp, b);
            else
            {
                a = c.ReadLinear(la, size);
                c.WriteLinear(la, size, a + b);
            }
            c.SetReg(src, a);
        }
        c.SetLazyFlags(LazyOp.Add, size, a + b, a, b);
    }

    private static void Cmpxchg(Cpu c, ref Instruction i)
    {
        Register src = i.Op1Register;
        int size = Cpu.RegSize(src);
        ulong mask = Cpu.SizeMask(size);
        ulong acc = c.Gpr[Cpu.RAX] & mask, v = c.GetReg(src), old;
        if (i.Op0Kind == OpKind.Register)
        {
            if (i.HasLockPrefix) throw Cpu.UD();
            Register dst = i.Op0Register;
            old = c.GetReg(dst);
            // A register destination is written only on success: a failing 32-bit CMPXCHG keeps its upper half
            // (AMD and Bochs agree; the SDM's "written back" holds for memory only).
            if (old == acc) c.SetReg(dst, v);
        }
        else
        {
            ulong la = c.MemLinear(ref i, size, true);
            if (i.HasLockPrefix) old = CompareExchange(c, la, size, v, acc);
            else
            {
                old = c.ReadLinear(la, size);
                c.WriteLinear(la, size, old == acc ? v : old);
            }
        }
        if (old != acc) c.SetReg(AccumulatorOf(size), old);
        c.SetLazyFlags(LazyOp.Sub, size, acc - old, acc, old);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Register AccumulatorOf(int size) => size switch
    {
        1 => Register.AL,
        2 => Register.AX,
        4 => Register.EAX,
        _ => Register.RAX,
    };

    private static void Cmpxchg8b(Cpu c, ref Instruction i)
    {
        ulong la = c.MemLinear(ref i, 8, true);
        ulong expected = (uint)c.Gpr[Cpu.RAX] | (c.Gpr[Cpu.RDX] << 32);
        ulong value = (uint)c.Gpr[Cpu.RBX] | (c.Gpr[Cpu.RCX] << 32);
        ulong old = CompareExchange(c, la, 8, value, expected);
        bool eq = old == expected;
        if (!eq)
        {
            c.Gpr[Cpu.RAX] = (uint)old;
            c.Gpr[Cpu.RDX] = old >> 32;
        }
        c.SetFlag(Cpu.ZF, eq);
    }

    private static void Cmpxchg16b(Cpu c, ref Instruction i)
    {
        ulong la = c.MemLinear(ref i, 16, true);
        // The alignment check is on the linear address (as Bochs does): an FS/GS base counts.
        if ((la & 15) != 0) throw new CpuException(Vec.GP, 0);
        ulong eLo = c.Gpr[Cpu.RAX], eHi = c.Gpr[Cpu.RDX];
        ulong oLo, oHi;
        bool eq;
        byte* p = c.HostPointerForRmw(la, 16);
        // RAM is mapped page-aligned, so a 16-aligned linear address gives a 16-aligned host pointer; the test
        // only keeps a misaligned host pointer (which would fault the host) away from the native instruction.
        if (p != null && ((nuint)p & 15) == 0)
            eq = HostAtomic128.CompareExchange((ulong*)p, eLo, eHi, c.Gpr[Cpu.RBX], c.Gpr[Cpu.RCX], out oLo, out oHi);
        else
        {
            // MMIO (or the impossible misaligned RAM case): serialized with the other locked fallbacks only.
            lock (Cpu.SplitLock)
            {
                oLo = c.Read64(la);
                oHi = c.Read64(la + 8);
                eq = oLo == eLo && oHi == eHi;
                // A locked operation always writes its destination, even when the comparison fails.
                c.Write64(la, eq ? c.Gpr[Cpu.RBX] : oLo);
                c.Write64(la + 8, eq ? c.Gpr[Cpu.RCX] : oHi);
            }
        }
        if (!eq)
        {
            c.Gpr[Cpu.RAX] = oLo;
            c.Gpr[Cpu.RDX] = oHi;
        }
        c.SetFlag(Cpu.ZF, eq);
    }
}
