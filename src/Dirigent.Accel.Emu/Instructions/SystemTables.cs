using Dirigent.Machine.Accel;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>LGDT/LIDT/SGDT/SIDT, LLDT/SLDT, LTR/STR, LAR/LSL/VERR/VERW (SDM vol. 2 and 3 ch. 3, 7).</summary>
internal static unsafe class SystemTables
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Lgdt, true, Code.Lgdt_m1632_16, Code.Lgdt_m1632, Code.Lgdt_m1664);
        r.Add(&Lidt, Code.Lidt_m1632_16, Code.Lidt_m1632, Code.Lidt_m1664);
        r.Add(&Sgdt, Code.Sgdt_m1632_16, Code.Sgdt_m1632, Code.Sgdt_m1664);
        r.Add(&Sidt, Code.Sidt_m1632_16, Code.Sidt_m1632, Code.Sidt_m1664);
        r.Add(&Lldt, Code.Lldt_rm16, Code.Lldt_r32m16, Code.Lldt_r64m16);
        r.Add(&Sldt, Code.Sldt_rm16, Code.Sldt_r32m16, Code.Sldt_r64m16);
        r.Add(&Ltr, Code.Ltr_rm16, Code.Ltr_r32m16, Code.Ltr_r64m16);
        r.Add(&Str, Code.Str_rm16, Code.Str_r32m16, Code.Str_r64m16);
        r.Add(&Lar, Code.Lar_r16_rm16, Code.Lar_r32_r32m16, Code.Lar_r64_r64m16);
        r.Add(&Lsl, Code.Lsl_r16_rm16, Code.Lsl_r32_r32m16, Code.Lsl_r64_r64m16);
        r.Add(&Verr, Code.Verr_rm16, Code.Verr_r32m16, Code.Verr_r64m16);
        r.Add(&Verw, Code.Verw_rm16, Code.Verw_r32m16, Code.Verw_r64m16);
    }

    /// <summary>Reads the pseudo-descriptor: 16-bit limit then a 24-bit (o16), 32-bit or 64-bit (64-bit mode) base.</summary>
    private static TableRegister ReadPseudo(Cpu c, ref Instruction i)
    {
        c.RequireCpl0();
        int baseSize = c.Is64BitMode ? 8 : 4;
        ulong la = c.MemLinear(ref i, 2 + baseSize, false);
        ushort limit = (ushort)c.ReadLinear(la, 2);
        ulong bas = c.ReadLinear(c.Is64BitMode ? la + 2 : (uint)(la + 2), baseSize);
        if (i.Code is Code.Lgdt_m1632_16 or Code.Lidt_m1632_16) bas &= 0xFF_FFFF;
        if (c.Is64BitMode && !Cpu.IsCanonical(bas)) throw Cpu.GP0();
        return new TableRegister { Base = bas, Limit = limit };
    }

    private static void Lgdt(Cpu c, ref Instruction i) => c.Gdtr = ReadPseudo(c, ref i);
    private static void Lidt(Cpu c, ref Instruction i) => c.Idtr = ReadPseudo(c, ref i);

    /// <summary>SGDT/SIDT are not privileged (no UMIP). Outside 64-bit mode all 32 base bits are stored.</summary>
    private static void StorePseudo(Cpu c, ref Instruction i, TableRegister t)
    {
        int baseSize = c.Is64BitMode ? 8 : 4;
        ulong la = c.MemLinear(ref i, 2 + baseSize, true);
        c.WriteLinear(la, 2, t.Limit);
        c.WriteLinear(c.Is64BitMode ? la + 2 : (uint)(la + 2), baseSize, c.Is64BitMode ? t.Base : (uint)t.Base);
    }

    private static void Sgdt(Cpu c, ref Instruction i) => StorePseudo(c, ref i, c.Gdtr);
    private static void Sidt(Cpu c, ref Instruction i) => StorePseudo(c, ref i, c.Idtr);

    private static void RequireProtected(Cpu c)
    {
        if (!c.ProtectedMode || c.IsV86Mode) throw Cpu.UD();
    }

    /// <summary>A system descriptor from the GDT; 16 bytes in long mode (base bits 63:32 in the upper half).</summary>
    private static SegmentState ReadSystemDescriptor(Cpu c, ushort sel, out ulong lowDesc)
    {
        if ((sel & 4) != 0) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
        ulong la = c.DescriptorAddress(sel, c.LongModeActive ? 16 : 8);
        lowDesc = c.ReadSystem(la, 8);
        var s = Cpu.DescriptorToCache(sel, lowDesc);
        if (c.LongModeActive)
        {
            ulong hi = c.ReadSystem(la + 8, 8);
            if (((hi >> 40) & 0x1F) != 0) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
            s.Base |= (hi & 0xFFFF_FFFF) << 32;
        }
        return s;
    }

    private static void Lldt(Cpu c, ref Instruction i)
    {
        RequireProtected(c);
        c.RequireCpl0();
        ushort sel = (ushort)c.ReadOp(ref i, 0, 2);
        if ((sel & 0xFFFC) == 0)
        {
            c.Ldtr = new SegmentState { Selector = sel };
            return;
        }
        var s = ReadSystemDescriptor(c, sel, out _);
        if (s.S || s.Type != 2) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
        if (!s.Present) throw new CpuException(Vec.NP, (uint)(sel & 0xFFFC));
        c.Ldtr = s;
    }

    private static void Ltr(Cpu c, ref Instruction i)
    {
        RequireProtected(c);
        c.RequireCpl0();
        ushort sel = (ushort)c.ReadOp(ref i, 0, 2);
        if ((sel & 0xFFFC) == 0) throw Cpu.GP0();
        var s = ReadSystemDescriptor(c, sel, out ulong low);
        // Only an available TSS: 32/64-bit (9), or 16-bit (1) outside long mode.
        bool ok = !s.S && (s.Type == 9 || (s.Type == 1 && !c.LongModeActive));
        if (!ok) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
        if (!s.Present) throw new CpuException(Vec.NP, (uint)(sel & 0xFFFC));
        c.WriteSystem(c.DescriptorAddress(sel) + 5, 1, (byte)((low >> 40) | 2));
        s.Attributes |= 2;
        c.Tr = s;
    }

    /// <summary>SLDT/STR: a 32/64-bit register destination gets the selector zero-extended; memory is 16 bits.</summary>
    private static void StoreSelector(Cpu c, ref Instruction i, ushort sel)
    {
        RequireProtected(c);
        if (i.Op0Kind == OpKind.Register)
        {
            Register reg = i.Op0Register;
            if (Cpu.RegSize(reg) == 2) c.SetReg(reg, sel);
            else c.Gpr[Cpu.RegIndex(reg)] = sel;
        }
        else c.WriteLinear(c.MemLinear(ref i, 2, true), 2, sel);
    }

    private static void Sldt(Cpu c, ref Instruction i) => StoreSelector(c, ref i, c.Ldtr.Selector);
    private static void Str(Cpu c, ref Instruction i) => StoreSelector(c, ref i, c.Tr.Selector);

    /// <summary>
    /// Reads the descriptor LAR/LSL/VERR/VERW examine. These never fault on a bad selector: they report ZF=0.
    /// Returns false when the selector is null, outside the table, or not visible at CPL/RPL.
    /// </summary>
    private static bool Probe(Cpu c, ushort sel, bool forLar, bool forLsl, out ulong desc)
    {
        desc = 0;
        if ((sel & 0xFFFC) == 0) return false;
        uint idx = (uint)(sel & ~7);
        if ((sel & 4) != 0)
        {
            if (!c.Ldtr.Present || idx + 7 > c.Ldtr.Limit) return false;
        }
        else if (idx + 7 > c.Gdtr.Limit) return false;
        desc = c.ReadDescriptor(sel);
        var s = Cpu.DescriptorToCache(sel, desc);
        if (s.S)
        {
            bool conformingCode = (s.Type & 0xC) == 0xC;
            if (conformingCode) return true;
        }
        else
        {
            int t = s.Type;
            bool valid = c.LongModeActive
                ? t is 2 or 9 or 0xB || (forLar && t == 0xC)
                : forLsl ? t is 1 or 2 or 3 or 9 or 0xB
                : forLar && t is 1 or 2 or 3 or 4 or 5 or 9 or 0xB or 0xC;
            if (!valid) return false;
        }
        return s.Dpl >= c.Cpl && s.Dpl >= (sel & 3);
    }

    private static void Lar(Cpu c, ref Instruction i)
    {
        RequireProtected(c);
        ushort sel = (ushort)c.ReadOp(ref i, 1, 2);
        if (!Probe(c, sel, true, false, out ulong d)) { c.SetFlag(Cpu.ZF, false); return; }
        ulong ar = (d >> 32) & 0x00F0_FF00;
        Register dst = i.Op0Register;
        if (Cpu.RegSize(dst) == 2) c.SetReg(dst, ar & 0xFF00);
        else c.Gpr[Cpu.RegIndex(dst)] = ar;
        c.SetFlag(Cpu.ZF, true);
    }

    private static void Lsl(Cpu c, ref Instruction i)
    {
        RequireProtected(c);
        ushort sel = (ushort)c.ReadOp(ref i, 1, 2);
        if (!Probe(c, sel, false, true, out ulong d)) { c.SetFlag(Cpu.ZF, false); return; }
        uint limit = Cpu.DescriptorToCache(sel, d).Limit;
        Register dst = i.Op0Register;
        if (Cpu.RegSize(dst) == 2) c.SetReg(dst, limit);
        else c.Gpr[Cpu.RegIndex(dst)] = limit;
        c.SetFlag(Cpu.ZF, true);
    }

    private static void Verify(Cpu c, ref Instruction i, bool write)
    {
        RequireProtected(c);
        ushort sel = (ushort)c.ReadOp(ref i, 0, 2);
        bool ok = Probe(c, sel, false, false, out ulong d);
        if (ok)
        {
            var s = Cpu.DescriptorToCache(sel, d);
            bool code = (s.Type & 8) != 0;
            ok = s.S && (write ? !code && (s.Type & 2) != 0 : !code || (s.Type & 2) != 0);
        }
        c.SetFlag(Cpu.ZF, ok);
    }

    private static void Verr(Cpu c, ref Instruction i) => Verify(c, ref i, false);
    private static void Verw(Cpu c, ref Instruction i) => Verify(c, ref i, true);
}
