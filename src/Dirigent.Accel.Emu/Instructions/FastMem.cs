using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// 64-bit-mode forms with a memory or immediate operand at 32/64 bits (MOV loads and stores, MOVZX loads, the ALU
/// group with r/m and imm operands), chosen when a block is translated. In 64-bit mode ES/CS/SS/DS have no base or
/// limit, so the effective address is the linear address (FS/GS add their base); knowing the shape at translation
/// time skips the operand-kind, register-width, address-size and segment dispatch of the generic handlers.
/// Semantics match those handlers (32-bit register results zero-extend; flags go through the same lazy record).
/// A block decoded at 64 bits only ever runs with CS.L=1 (the block lookup checks the bitness), so these stay valid.
/// </summary>
internal static unsafe class FastMem
{
    public static delegate*<Cpu, ref Instruction, void> Select(ref Instruction i, int bits, delegate*<Cpu, ref Instruction, void> current)
    {
        if (bits != 64 || i.HasLockPrefix || i.OpCount != 2) return current;
        bool mem0 = i.Op0Kind == OpKind.Memory, mem1 = i.Op1Kind == OpKind.Memory;
        if ((mem0 || mem1) && !SimpleAddress(ref i)) return current;
        OpKind k1 = i.Op1Kind;
        bool imm1 = k1 is OpKind.Immediate8 or OpKind.Immediate8to32 or OpKind.Immediate8to64 or OpKind.Immediate32 or OpKind.Immediate32to64;
        bool reg0 = i.Op0Kind == OpKind.Register, reg1 = k1 == OpKind.Register;
        if (reg0 && mem1)
        {
            return i.Code switch
            {
                Code.Mov_r64_rm64 => &Load64,
                Code.Lea_r64_m => &Lea64,
                Code.Lea_r32_m => &Lea32,
                Code.Mov_r32_rm32 => &Load32,
                Code.Movzx_r32_rm8 or Code.Movzx_r64_rm8 => &Load8,
                Code.Movzx_r32_rm16 or Code.Movzx_r64_rm16 => &Load16,
                Code.Add_r64_rm64 => &AddRM64,
                Code.Add_r32_rm32 => &AddRM32,
                Code.Sub_r64_rm64 => &SubRM64,
                Code.Sub_r32_rm32 => &SubRM32,
                Code.Cmp_r64_rm64 => &CmpRM64,
                Code.Cmp_r32_rm32 => &CmpRM32,
                Code.And_r64_rm64 => &AndRM64,
                Code.And_r32_rm32 => &AndRM32,
                Code.Or_r64_rm64 => &OrRM64,
                Code.Or_r32_rm32 => &OrRM32,
                Code.Xor_r64_rm64 => &XorRM64,
                Code.Xor_r32_rm32 => &XorRM32,
                _ => current,
            };
        }
        if (mem0 && reg1)
        {
            return i.Code switch
            {
                Code.Mov_rm64_r64 => &Store64,
                Code.Mov_rm32_r32 => &Store32,
                Code.Cmp_rm64_r64 => &CmpMR64,
                Code.Cmp_rm32_r32 => &CmpMR32,
                Code.Test_rm64_r64 => &TestMR64,
                Code.Test_rm32_r32 => &TestMR32,
                _ => current,
            };
        }
        if (mem0 && imm1)
        {
            return i.Code switch
            {
                Code.Mov_rm64_imm32 => &StoreImm64,
                Code.Mov_rm32_imm32 => &StoreImm32,
                Code.Mov_rm8_imm8 => &StoreImm8,
                Code.Cmp_rm8_imm8 => &CmpMI8,
                Code.Test_rm8_imm8 => &TestMI8,
                Code.Test_rm32_imm32 => &TestMI32,
                Code.Cmp_rm64_imm8 or Code.Cmp_rm64_imm32 => &CmpMI64,
                Code.Cmp_rm32_imm8 or Code.Cmp_rm32_imm32 => &CmpMI32,
                _ => current,
            };
        }
        if (reg0 && imm1)
        {
            // Only full-width destinations: 8/16-bit forms merge into the register and keep the generic path.
            int size = Cpu.RegSize(i.Op0Register);
            if (size != 8 && size != 4) return current;
            bool w = size == 8;
            return i.Code switch
            {
                Code.Add_rm64_imm8 or Code.Add_rm64_imm32 or Code.Add_RAX_imm32 => &AddRI64,
                Code.Add_rm32_imm8 or Code.Add_rm32_imm32 or Code.Add_EAX_imm32 => &AddRI32,
                Code.Sub_rm64_imm8 or Code.Sub_rm64_imm32 or Code.Sub_RAX_imm32 => &SubRI64,
                Code.Sub_rm32_imm8 or Code.Sub_rm32_imm32 or Code.Sub_EAX_imm32 => &SubRI32,
                Code.Cmp_rm64_imm8 or Code.Cmp_rm64_imm32 or Code.Cmp_RAX_imm32 => &CmpRI64,
                Code.Cmp_rm32_imm8 or Code.Cmp_rm32_imm32 or Code.Cmp_EAX_imm32 => &CmpRI32,
                Code.And_rm64_imm8 or Code.And_rm64_imm32 or Code.And_RAX_imm32 => &AndRI64,
                Code.And_rm32_imm8 or Code.And_rm32_imm32 or Code.And_EAX_imm32 => &AndRI32,
                Code.Or_rm64_imm8 or Code.Or_rm64_imm32 or Code.Or_RAX_imm32 => &OrRI64,
                Code.Or_rm32_imm8 or Code.Or_rm32_imm32 or Code.Or_EAX_imm32 => &OrRI32,
                Code.Xor_rm64_imm8 or Code.Xor_rm64_imm32 or Code.Xor_RAX_imm32 => &XorRI64,
                Code.Xor_rm32_imm8 or Code.Xor_rm32_imm32 or Code.Xor_EAX_imm32 => &XorRI32,
                Code.Test_rm64_imm32 or Code.Test_RAX_imm32 => &TestRI64,
                Code.Test_rm32_imm32 or Code.Test_EAX_imm32 => &TestRI32,
                _ => current,
            };
        }
        return current;
    }

    /// <summary>64-bit address size: base and index (if any) are 64-bit GPRs, or the base is RIP.</summary>
    internal static bool SimpleAddress(ref Instruction i)
    {
        Register b = i.MemoryBase, x = i.MemoryIndex;
        bool baseOk = b == Register.None || b == Register.RIP || (b >= Register.RAX && b <= Register.R15);
        bool indexOk = x == Register.None || (x >= Register.RAX && x <= Register.R15);
        return baseOk && indexOk;
    }

    /// <summary>Linear address of a memory operand whose shape <see cref="SimpleAddress"/> accepted.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Addr(Cpu c, ref Instruction i)
    {
        ulong ea = i.MemoryDisplacement64;
        Register b = i.MemoryBase, x = i.MemoryIndex;
        // Iced folds a RIP-relative displacement into an absolute address already.
        if (b != Register.None && b != Register.RIP) ea += c.GprRef(Cpu.RegInfo(b));
        if (x != Register.None) ea += c.GprRef(Cpu.RegInfo(x)) << Scale(i.MemoryIndexScale);
        int seg = Cpu.SegIndex(i.MemorySegment);
        return seg >= Cpu.FS ? c.Sreg[seg].Base + ea : ea;
    }

    /// <summary>LEA: the effective address alone, no segment base.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Ea(Cpu c, ref Instruction i)
    {
        ulong ea = i.MemoryDisplacement64;
        Register b = i.MemoryBase, x = i.MemoryIndex;
        if (b != Register.None && b != Register.RIP) ea += c.GprRef(Cpu.RegInfo(b));
        if (x != Register.None) ea += c.GprRef(Cpu.RegInfo(x)) << Scale(i.MemoryIndexScale);
        return ea;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Scale(int scale) => scale switch { 1 => 0, 2 => 1, 4 => 2, _ => 3 };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref ulong R0(Cpu c, ref Instruction i) => ref c.GprRef(Cpu.RegInfo(i.Op0Register));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong R1(Cpu c, ref Instruction i) => c.GprRef(Cpu.RegInfo(i.Op1Register));

    private static void Load64(Cpu c, ref Instruction i) { ulong la = Addr(c, ref i); R0(c, ref i) = c.Read64(la); }
    private static void Load32(Cpu c, ref Instruction i) { ulong la = Addr(c, ref i); R0(c, ref i) = c.Read32(la); }
    private static void Load8(Cpu c, ref Instruction i) { ulong la = Addr(c, ref i); R0(c, ref i) = c.Read8(la); }
    private static void Load16(Cpu c, ref Instruction i) { ulong la = Addr(c, ref i); R0(c, ref i) = c.Read16(la); }
    private static void Lea64(Cpu c, ref Instruction i) => R0(c, ref i) = Ea(c, ref i);
    private static void Lea32(Cpu c, ref Instruction i) => R0(c, ref i) = (uint)Ea(c, ref i);
    private static void StoreImm8(Cpu c, ref Instruction i) => c.Write8(Addr(c, ref i), i.Immediate8);
    private static void Store64(Cpu c, ref Instruction i) => c.Write64(Addr(c, ref i), R1(c, ref i));
    private static void Store32(Cpu c, ref Instruction i) => c.Write32(Addr(c, ref i), (uint)R1(c, ref i));
    private static void StoreImm64(Cpu c, ref Instruction i) => c.Write64(Addr(c, ref i), (ulong)(long)(int)i.Immediate32);
    private static void StoreImm32(Cpu c, ref Instruction i) => c.Write32(Addr(c, ref i), i.Immediate32);

    // ---- ALU: the lazy-flag record is the same the generic handlers make ----

    private enum Op { Add, Sub, Cmp, And, Or, Xor, Test }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Alu64(Cpu c, ref ulong d, ulong b, Op op)
    {
        ulong a = d;
        switch (op)
        {
            case Op.Add: { ulong r = a + b; d = r; c.SetLazyFlags(LazyOp.Add, 8, r, a, b); break; }
            case Op.Sub: { ulong r = a - b; d = r; c.SetLazyFlags(LazyOp.Sub, 8, r, a, b); break; }
            case Op.Cmp: c.SetLazyFlags(LazyOp.Sub, 8, a - b, a, b); break;
            case Op.And: { ulong r = a & b; d = r; c.SetLazyFlags(LazyOp.Logic, 8, r, a, b); break; }
            case Op.Or: { ulong r = a | b; d = r; c.SetLazyFlags(LazyOp.Logic, 8, r, a, b); break; }
            case Op.Xor: { ulong r = a ^ b; d = r; c.SetLazyFlags(LazyOp.Logic, 8, r, a, b); break; }
            default: c.SetLazyFlags(LazyOp.Logic, 8, a & b, a, b); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Alu32(Cpu c, ref ulong d, ulong b, Op op)
    {
        ulong a = (uint)d;
        b = (uint)b;
        switch (op)
        {
            case Op.Add: { ulong r = a + b; d = (uint)r; c.SetLazyFlags(LazyOp.Add, 4, r, a, b); break; }
            case Op.Sub: { ulong r = a - b; d = (uint)r; c.SetLazyFlags(LazyOp.Sub, 4, r, a, b); break; }
            case Op.Cmp: c.SetLazyFlags(LazyOp.Sub, 4, a - b, a, b); break;
            case Op.And: { ulong r = a & b; d = r; c.SetLazyFlags(LazyOp.Logic, 4, r, a, b); break; }
            case Op.Or: { ulong r = a | b; d = r; c.SetLazyFlags(LazyOp.Logic, 4, r, a, b); break; }
            case Op.Xor: { ulong r = a ^ b; d = r; c.SetLazyFlags(LazyOp.Logic, 4, r, a, b); break; }
            default: c.SetLazyFlags(LazyOp.Logic, 4, a & b, a, b); break;
        }
    }

    private static void AddRM64(Cpu c, ref Instruction i) { ulong v = c.Read64(Addr(c, ref i)); Alu64(c, ref R0(c, ref i), v, Op.Add); }
    private static void AddRM32(Cpu c, ref Instruction i) { ulong v = c.Read32(Addr(c, ref i)); Alu32(c, ref R0(c, ref i), v, Op.Add); }
    private static void SubRM64(Cpu c, ref Instruction i) { ulong v = c.Read64(Addr(c, ref i)); Alu64(c, ref R0(c, ref i), v, Op.Sub); }
    private static void SubRM32(Cpu c, ref Instruction i) { ulong v = c.Read32(Addr(c, ref i)); Alu32(c, ref R0(c, ref i), v, Op.Sub); }
    private static void CmpRM64(Cpu c, ref Instruction i) { ulong v = c.Read64(Addr(c, ref i)); Alu64(c, ref R0(c, ref i), v, Op.Cmp); }
    private static void CmpRM32(Cpu c, ref Instruction i) { ulong v = c.Read32(Addr(c, ref i)); Alu32(c, ref R0(c, ref i), v, Op.Cmp); }
    private static void AndRM64(Cpu c, ref Instruction i) { ulong v = c.Read64(Addr(c, ref i)); Alu64(c, ref R0(c, ref i), v, Op.And); }
    private static void AndRM32(Cpu c, ref Instruction i) { ulong v = c.Read32(Addr(c, ref i)); Alu32(c, ref R0(c, ref i), v, Op.And); }
    private static void OrRM64(Cpu c, ref Instruction i) { ulong v = c.Read64(Addr(c, ref i)); Alu64(c, ref R0(c, ref i), v, Op.Or); }
    private static void OrRM32(Cpu c, ref Instruction i) { ulong v = c.Read32(Addr(c, ref i)); Alu32(c, ref R0(c, ref i), v, Op.Or); }
    private static void XorRM64(Cpu c, ref Instruction i) { ulong v = c.Read64(Addr(c, ref i)); Alu64(c, ref R0(c, ref i), v, Op.Xor); }
    private static void XorRM32(Cpu c, ref Instruction i) { ulong v = c.Read32(Addr(c, ref i)); Alu32(c, ref R0(c, ref i), v, Op.Xor); }

    // CMP/TEST m, r: the memory operand is the first (a) operand.
    private static void CmpMR64(Cpu c, ref Instruction i) { ulong a = c.Read64(Addr(c, ref i)); Alu64(c, ref a, R1(c, ref i), Op.Cmp); }
    private static void CmpMR32(Cpu c, ref Instruction i) { ulong a = c.Read32(Addr(c, ref i)); Alu32(c, ref a, R1(c, ref i), Op.Cmp); }
    private static void TestMR64(Cpu c, ref Instruction i) { ulong a = c.Read64(Addr(c, ref i)); Alu64(c, ref a, R1(c, ref i), Op.Test); }
    private static void TestMR32(Cpu c, ref Instruction i) { ulong a = c.Read32(Addr(c, ref i)); Alu32(c, ref a, R1(c, ref i), Op.Test); }
    private static void CmpMI64(Cpu c, ref Instruction i) { ulong a = c.Read64(Addr(c, ref i)); Alu64(c, ref a, i.GetImmediate(1), Op.Cmp); }
    private static void CmpMI32(Cpu c, ref Instruction i) { ulong a = c.Read32(Addr(c, ref i)); Alu32(c, ref a, i.GetImmediate(1), Op.Cmp); }

    private static void TestMI32(Cpu c, ref Instruction i) { ulong a = c.Read32(Addr(c, ref i)); Alu32(c, ref a, i.Immediate32, Op.Test); }

    private static void CmpMI8(Cpu c, ref Instruction i)
    {
        ulong a = c.Read8(Addr(c, ref i)), b = i.Immediate8;
        c.SetLazyFlags(LazyOp.Sub, 1, a - b, a, b);
    }

    private static void TestMI8(Cpu c, ref Instruction i)
    {
        ulong a = c.Read8(Addr(c, ref i)), b = i.Immediate8;
        c.SetLazyFlags(LazyOp.Logic, 1, a & b, a, b);
    }

    // Iced's GetImmediate sign-extends imm8/imm32 to the operand size, as the generic handlers use it.
    private static void AddRI64(Cpu c, ref Instruction i) => Alu64(c, ref R0(c, ref i), i.GetImmediate(1), Op.Add);
    private static void AddRI32(Cpu c, ref Instruction i) => Alu32(c, ref R0(c, ref i), i.GetImmediate(1), Op.Add);
    private static void SubRI64(Cpu c, ref Instruction i) => Alu64(c, ref R0(c, ref i), i.GetImmediate(1), Op.Sub);
    private static void SubRI32(Cpu c, ref Instruction i) => Alu32(c, ref R0(c, ref i), i.GetImmediate(1), Op.Sub);
    private static void CmpRI64(Cpu c, ref Instruction i) => Alu64(c, ref R0(c, ref i), i.GetImmediate(1), Op.Cmp);
    private static void CmpRI32(Cpu c, ref Instruction i) => Alu32(c, ref R0(c, ref i), i.GetImmediate(1), Op.Cmp);
    private static void AndRI64(Cpu c, ref Instruction i) => Alu64(c, ref R0(c, ref i), i.GetImmediate(1), Op.And);
    private static void AndRI32(Cpu c, ref Instruction i) => Alu32(c, ref R0(c, ref i), i.GetImmediate(1), Op.And);
    private static void OrRI64(Cpu c, ref Instruction i) => Alu64(c, ref R0(c, ref i), i.GetImmediate(1), Op.Or);
    private static void OrRI32(Cpu c, ref Instruction i) => Alu32(c, ref R0(c, ref i), i.GetImmediate(1), Op.Or);
    private static void XorRI64(Cpu c, ref Instruction i) => Alu64(c, ref R0(c, ref i), i.GetImmediate(1), Op.Xor);
    private static void XorRI32(Cpu c, ref Instruction i) => Alu32(c, ref R0(c, ref i), i.GetImmediate(1), Op.Xor);
    private static void TestRI64(Cpu c, ref Instruction i) { ulong a = R0(c, ref i); Alu64(c, ref a, i.GetImmediate(1), Op.Test); }
    private static void TestRI32(Cpu c, ref Instruction i) { ulong a = R0(c, ref i); Alu32(c, ref a, i.GetImmediate(1), Op.Test); }
}
