using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// FNSTENV/FLDENV, FNSAVE/FRSTOR (protected-mode layouts, 14/94 bytes with a 16-bit operand size, 28/108 bytes
/// otherwise; real-mode layouts are not distinguished) and FXSAVE/FXRSTOR (FXSAVE64/FXRSTOR64 with REX.W).
/// </summary>
internal static unsafe class X87Env
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Fnstenv, Code.Fnstenv_m14byte, Code.Fnstenv_m28byte);
        r.Add(&Fldenv, Code.Fldenv_m14byte, Code.Fldenv_m28byte);
        r.Add(&Fnsave, Code.Fnsave_m94byte, Code.Fnsave_m108byte);
        r.Add(&Frstor, Code.Frstor_m94byte, Code.Frstor_m108byte);
        r.Add(&Fxsave, Code.Fxsave_m512byte, Code.Fxsave64_m512byte);
        r.Add(&Fxrstor, Code.Fxrstor_m512byte, Code.Fxrstor64_m512byte);
    }

    /// <summary>FSTENV/FSAVE after their WAIT part.</summary>
    internal static void StoreEnvOrSave(Cpu c, ref Instruction i)
    {
        if (i.Code is Code.Fstenv_m14byte or Code.Fstenv_m28byte) Fnstenv(c, ref i);
        else Fnsave(c, ref i);
    }

    private static bool Is16(Code code) => code is Code.Fnstenv_m14byte or Code.Fstenv_m14byte or Code.Fldenv_m14byte or
        Code.Fnsave_m94byte or Code.Fsave_m94byte or Code.Frstor_m94byte;

    /// <summary>Writes the environment at la; returns its size.</summary>
    private static int StoreEnv(Cpu c, ulong la, bool is16)
    {
        if (is16)
        {
            c.Write16(la + 12, c.Fds);
            c.Write16(la, c.Fcw);
            c.Write16(la + 2, c.Fsw);
            c.Write16(la + 4, c.FullTagWord());
            c.Write16(la + 6, (ushort)c.Fip);
            c.Write16(la + 8, c.Fcs);
            c.Write16(la + 10, (ushort)c.Fdp);
            return 14;
        }
        // Reserved upper halves read as ones, as on Intel and AMD processors.
        c.Write32(la + 24, 0xFFFF_0000u | c.Fds);
        c.Write32(la, 0xFFFF_0000u | c.Fcw);
        c.Write32(la + 4, 0xFFFF_0000u | c.Fsw);
        c.Write32(la + 8, 0xFFFF_0000u | c.FullTagWord());
        c.Write32(la + 12, (uint)c.Fip);
        c.Write32(la + 16, c.Fcs | (uint)(c.Fop & 0x7FF) << 16);
        c.Write32(la + 20, (uint)c.Fdp);
        return 28;
    }

    private static int LoadEnv(Cpu c, ulong la, bool is16)
    {
        ushort fcw, fsw, ftw;
        if (is16)
        {
            fcw = c.Read16(la); fsw = c.Read16(la + 2); ftw = c.Read16(la + 4);
            ulong fip = c.Read16(la + 6), fcs = c.Read16(la + 8), fdp = c.Read16(la + 10), fds = c.Read16(la + 12);
            c.Fip = fip; c.Fcs = (ushort)fcs; c.Fdp = fdp; c.Fds = (ushort)fds; c.Fop = 0;
        }
        else
        {
            fcw = c.Read16(la); fsw = c.Read16(la + 4); ftw = c.Read16(la + 8);
            ulong fip = c.Read32(la + 12), cs = c.Read32(la + 16), fdp = c.Read32(la + 20), fds = c.Read16(la + 24);
            c.Fip = fip; c.Fcs = (ushort)cs; c.Fop = (ushort)((cs >> 16) & 0x7FF); c.Fdp = fdp; c.Fds = (ushort)fds;
        }
        c.Fcw = Cpu.FcwValue(fcw);
        c.Fsw = fsw;
        c.SetFullTagWord(ftw);
        c.FpuUpdateSummary();
        return is16 ? 14 : 28;
    }

    private static void Fnstenv(Cpu c, ref Instruction i)
    {
        X87.CheckNm(c);
        bool is16 = Is16(i.Code);
        StoreEnv(c, c.MemLinear(ref i, is16 ? 14 : 28, true), is16);
        c.Fcw |= 0x3F;
    }

    private static void Fldenv(Cpu c, ref Instruction i)
    {
        X87.CheckNm(c);
        bool is16 = Is16(i.Code);
        LoadEnv(c, c.MemLinear(ref i, is16 ? 14 : 28, false), is16);
    }

    private static void Fnsave(Cpu c, ref Instruction i)
    {
        X87.CheckNm(c);
        bool is16 = Is16(i.Code);
        ulong la = c.MemLinear(ref i, is16 ? 94 : 108, true);
        int off = is16 ? 14 : 28;
        X87.Write80(c, la + (ulong)off + 70, c.St(7)); // the end first: a fault leaves the state intact
        StoreEnv(c, la, is16);
        for (int k = 0; k < 7; k++) X87.Write80(c, la + (ulong)(off + 10 * k), c.St(k));
        c.FpuInit();
    }

    private static void Frstor(Cpu c, ref Instruction i)
    {
        X87.CheckNm(c);
        bool is16 = Is16(i.Code);
        ulong la = c.MemLinear(ref i, is16 ? 94 : 108, false);
        int off = is16 ? 14 : 28;
        Span<F80> regs = stackalloc F80[8];
        for (int k = 0; k < 8; k++) regs[k] = X87.Read80(c, la + (ulong)(off + 10 * k));
        LoadEnv(c, la, is16);
        for (int k = 0; k < 8; k++) c.St(k) = regs[k];
    }

    /// <summary>Linear address of a 512-byte FXSAVE area: 16-byte aligned or #GP(0).</summary>
    private static ulong FxArea(Cpu c, ref Instruction i, bool write)
    {
        ulong la = c.MemLinear(ref i, 512, write);
        if ((la & 15) != 0) throw Cpu.GP0();
        return la;
    }

    private static void Fxsave(Cpu c, ref Instruction i)
    {
        X87.CheckNm(c);
        ulong la = FxArea(c, ref i, true);
        Span<byte> buf = stackalloc byte[512];
        c.SaveFxsave(buf);
        if (i.Code == Code.Fxsave_m512byte)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(buf[8..], (uint)c.Fip);
            BinaryPrimitives.WriteUInt32LittleEndian(buf[12..], c.Fcs);
            BinaryPrimitives.WriteUInt32LittleEndian(buf[16..], (uint)c.Fdp);
            BinaryPrimitives.WriteUInt32LittleEndian(buf[20..], c.Fds);
        }
        // Outside 64-bit mode XMM8-15 do not exist and their slots (and the rest) are left untouched.
        int len = c.Is64BitMode ? 512 : 288;
        c.Write64(la + (ulong)len - 8, BinaryPrimitives.ReadUInt64LittleEndian(buf[(len - 8)..]));
        for (int k = 0; k < len - 8; k += 8) c.Write64(la + (ulong)k, BinaryPrimitives.ReadUInt64LittleEndian(buf[k..]));
    }

    private static void Fxrstor(Cpu c, ref Instruction i)
    {
        X87.CheckNm(c);
        ulong la = FxArea(c, ref i, false);
        Span<byte> buf = stackalloc byte[512];
        int len = c.Is64BitMode ? 512 : 288;
        for (int k = 0; k < len; k += 8) BinaryPrimitives.WriteUInt64LittleEndian(buf[k..], c.Read64(la + (ulong)k));
        uint mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(buf[24..]);
        if ((mxcsr & ~Cpu.MxcsrMask) != 0) throw Cpu.GP0();
        ushort fcs = 0, fds = 0;
        if (i.Code == Code.Fxrstor_m512byte)
        {
            uint fip = BinaryPrimitives.ReadUInt32LittleEndian(buf[8..]);
            fcs = BinaryPrimitives.ReadUInt16LittleEndian(buf[12..]);
            uint fdp = BinaryPrimitives.ReadUInt32LittleEndian(buf[16..]);
            fds = BinaryPrimitives.ReadUInt16LittleEndian(buf[20..]);
            BinaryPrimitives.WriteUInt64LittleEndian(buf[8..], fip);
            BinaryPrimitives.WriteUInt64LittleEndian(buf[16..], fdp);
        }
        if (c.Is64BitMode) c.LoadFxsave(buf);
        else
        {
            Span<Vector128<byte>> hi = stackalloc Vector128<byte>[8];
            for (int k = 0; k < 8; k++) hi[k] = c.Xmm[8 + k];
            c.LoadFxsave(buf);
            for (int k = 0; k < 8; k++) c.Xmm[8 + k] = hi[k];
        }
        c.Fcs = fcs;
        c.Fds = fds;
    }
}
