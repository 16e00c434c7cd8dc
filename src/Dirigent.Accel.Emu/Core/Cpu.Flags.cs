using System.Numerics;
using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>Operations whose arithmetic flags are computed lazily from (result, operands) when something reads them.</summary>
public enum LazyOp : byte { None, Add, Adc, Sub, Sbb, Logic, Inc, Dec, Neg }

public sealed partial class Cpu
{
    public const ulong CF = 1 << 0, PF = 1 << 2, AF = 1 << 4, ZF = 1 << 6, SF = 1 << 7, TF = 1 << 8, IF = 1 << 9,
        DF = 1 << 10, OF = 1 << 11, IOPL = 3 << 12, NT = 1 << 14, RF = 1 << 16, VM = 1 << 17, AC = 1 << 18,
        VIF = 1 << 19, VIP = 1 << 20, ID = 1 << 21;
    public const ulong ArithFlags = CF | PF | AF | ZF | SF | OF;

    // Flags live in two parts: the system/control bits (and the arithmetic bits while _lazyOp is None) in _flags,
    // and a pending arithmetic operation whose CF/PF/AF/ZF/SF/OF are derived only when read. Most results are
    // overwritten before anyone reads them, so this saves the flag computation on nearly every ALU instruction.
    private ulong _flags = 0x2;
    private LazyOp _lazyOp;
    private byte _lazySize;
    private bool _lazyCarryIn;
    private ulong _lazyRes, _lazyA, _lazyB;

    /// <summary>Records the flags of an ALU result lazily. size is the operand size in bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetLazyFlags(LazyOp op, int size, ulong result, ulong a, ulong b)
    {
        _lazyOp = op;
        _lazySize = (byte)size;
        _lazyRes = result;
        _lazyA = a;
        _lazyB = b;
    }

    /// <summary>ADC/SBB: carry-in is needed to derive CF/OF/AF later.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetLazyFlagsWithCarry(LazyOp op, int size, ulong result, ulong a, ulong b, bool carryIn)
    {
        SetLazyFlags(op, size, result, a, b);
        _lazyCarryIn = carryIn;
    }

    /// <summary>INC/DEC leave CF alone: capture it before recording the lazy op.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetLazyIncDec(bool inc, int size, ulong result, ulong a)
    {
        bool cf = GetCF();
        SetLazyFlags(inc ? LazyOp.Inc : LazyOp.Dec, size, result, a, 1);
        _lazyCarryIn = cf;
    }

    /// <summary>The full RFLAGS value.</summary>
    public ulong Rflags
    {
        get
        {
            if (_lazyOp != LazyOp.None) Materialize();
            return _flags | 2;
        }
        set
        {
            _lazyOp = LazyOp.None;
            _flags = (value | 2) & ~(1UL << 3 | 1UL << 5 | 1UL << 15) & 0x3F_FFFF;
        }
    }

    /// <summary>Replaces just the six arithmetic flags (bits given in <see cref="ArithFlags"/> positions).</summary>
    public void SetArithFlags(ulong arith)
    {
        if (_lazyOp != LazyOp.None) _lazyOp = LazyOp.None;
        _flags = (_flags & ~ArithFlags) | (arith & ArithFlags);
    }

    /// <summary>Rotates: replaces CF and OF (given as 0/1) and keeps the other arithmetic flags.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetCfOf(ulong cf, ulong of)
    {
        if (_lazyOp != LazyOp.None) Materialize();
        _flags = (_flags & ~(CF | OF)) | cf | (of << 11);
    }

    /// <summary>Sets or clears the given flag bit(s), materializing pending lazy flags first.</summary>
    public void SetFlag(ulong bit, bool on)
    {
        if (_lazyOp != LazyOp.None && (bit & ArithFlags) != 0) Materialize();
        _flags = on ? _flags | bit : _flags & ~bit;
    }

    /// <summary>Control flags (IF, DF, TF, ...) never go through the lazy path, so reading them is one load.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool GetControlFlag(ulong bit) => (_flags & bit) != 0;

    public bool InterruptsEnabled => (_flags & IF) != 0;
    public bool DirectionFlag => (_flags & DF) != 0;

    private void Materialize()
    {
        _flags = (_flags & ~ArithFlags) | ComputeArith();
        _lazyOp = LazyOp.None;
    }

    private static bool Parity(ulong res) => (BitOperations.PopCount(res & 0xFF) & 1) == 0;

    private ulong ComputeArith()
    {
        int bits = _lazySize * 8;
        ulong mask = SizeMask(_lazySize);
        ulong res = _lazyRes & mask, a = _lazyA & mask, b = _lazyB & mask;
        ulong f = 0;
        if (res == 0) f |= ZF;
        if (((res >> (bits - 1)) & 1) != 0) f |= SF;
        if (Parity(res)) f |= PF;
        ulong signBit = 1UL << (bits - 1);
        switch (_lazyOp)
        {
            case LazyOp.Add:
                if (res < a) f |= CF;
                if (((a ^ res) & (b ^ res) & signBit) != 0) f |= OF;
                if (((a ^ b ^ res) & 0x10) != 0) f |= AF;
                break;
            case LazyOp.Adc:
                if (res < a || (_lazyCarryIn && res == a)) f |= CF;
                if (((a ^ res) & (b ^ res) & signBit) != 0) f |= OF;
                if (((a ^ b ^ res) & 0x10) != 0) f |= AF;
                break;
            case LazyOp.Sub:
                if (a < b) f |= CF;
                if (((a ^ b) & (a ^ res) & signBit) != 0) f |= OF;
                if (((a ^ b ^ res) & 0x10) != 0) f |= AF;
                break;
            case LazyOp.Sbb:
                if (a < b || (_lazyCarryIn && a == b)) f |= CF;
                if (((a ^ b) & (a ^ res) & signBit) != 0) f |= OF;
                if (((a ^ b ^ res) & 0x10) != 0) f |= AF;
                break;
            case LazyOp.Logic:
                break;
            case LazyOp.Inc:
                if (_lazyCarryIn) f |= CF;
                if (res == signBit) f |= OF;
                if ((res & 0xF) == 0) f |= AF;
                break;
            case LazyOp.Dec:
                if (_lazyCarryIn) f |= CF;
                if (res == signBit - 1) f |= OF;
                if ((res & 0xF) == 0xF) f |= AF;
                break;
            case LazyOp.Neg:
                if (res != 0) f |= CF;
                if (res == signBit) f |= OF;
                if ((res & 0xF) != 0) f |= AF;
                break;
        }
        return f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool GetCF()
    {
        switch (_lazyOp)
        {
            case LazyOp.None: return (_flags & CF) != 0;
            case LazyOp.Logic: return false;
            case LazyOp.Sub:
                {
                    ulong m = SizeMask(_lazySize);
                    return (_lazyA & m) < (_lazyB & m);
                }
            case LazyOp.Add:
                {
                    ulong m = SizeMask(_lazySize);
                    return (_lazyRes & m) < (_lazyA & m);
                }
            // ADC/SBB chains (checksums, multi-word arithmetic) read CF after every step: derive it alone.
            case LazyOp.Adc:
                {
                    ulong m = SizeMask(_lazySize);
                    ulong r = _lazyRes & m, a = _lazyA & m;
                    return r < a || (_lazyCarryIn && r == a);
                }
            case LazyOp.Sbb:
                {
                    ulong m = SizeMask(_lazySize);
                    ulong a = _lazyA & m, b = _lazyB & m;
                    return a < b || (_lazyCarryIn && a == b);
                }
            case LazyOp.Inc:
            case LazyOp.Dec:
                return _lazyCarryIn;
            default: return (ComputeArith() & CF) != 0;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool GetZF() => _lazyOp == LazyOp.None ? (_flags & ZF) != 0 : (_lazyRes & SizeMask(_lazySize)) == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool GetSF() => _lazyOp == LazyOp.None ? (_flags & SF) != 0 : ((_lazyRes >> (_lazySize * 8 - 1)) & 1) != 0;

    public bool GetOF() => _lazyOp == LazyOp.None ? (_flags & OF) != 0 : (ComputeArith() & OF) != 0;
    public bool GetPF() => _lazyOp == LazyOp.None ? (_flags & PF) != 0 : Parity(_lazyRes);
    public bool GetAF() => _lazyOp == LazyOp.None ? (_flags & AF) != 0 : (ComputeArith() & AF) != 0;

    /// <summary>Evaluates a Jcc/SETcc/CMOVcc condition, with a fast path for the common CMP/TEST-then-branch pair.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TestCondition(ConditionCode cc)
    {
        if (_lazyOp == LazyOp.Sub)
        {
            ulong m = SizeMask(_lazySize);
            ulong a = _lazyA & m, b = _lazyB & m;
            int sh = 64 - _lazySize * 8;
            switch (cc)
            {
                case ConditionCode.e: return a == b;
                case ConditionCode.ne: return a != b;
                case ConditionCode.b: return a < b;
                case ConditionCode.ae: return a >= b;
                case ConditionCode.be: return a <= b;
                case ConditionCode.a: return a > b;
                case ConditionCode.l: return (long)(a << sh) < (long)(b << sh);
                case ConditionCode.ge: return (long)(a << sh) >= (long)(b << sh);
                case ConditionCode.le: return (long)(a << sh) <= (long)(b << sh);
                case ConditionCode.g: return (long)(a << sh) > (long)(b << sh);
            }
        }
        if (_lazyOp == LazyOp.Logic)
        {
            // AND/OR/XOR/TEST clear CF and OF, so every condition reduces to ZF and SF of the result.
            ulong res = _lazyRes & SizeMask(_lazySize);
            bool zf = res == 0, sf = ((res >> (_lazySize * 8 - 1)) & 1) != 0;
            switch (cc)
            {
                case ConditionCode.e: case ConditionCode.be: return zf;
                case ConditionCode.ne: case ConditionCode.a: return !zf;
                case ConditionCode.s: case ConditionCode.l: return sf;
                case ConditionCode.ns: case ConditionCode.ge: return !sf;
                case ConditionCode.le: return zf || sf;
                case ConditionCode.g: return !zf && !sf;
                case ConditionCode.b: case ConditionCode.o: return false;
                case ConditionCode.ae: case ConditionCode.no: return true;
            }
        }
        return TestConditionSlow(cc);
    }

    private bool TestConditionSlow(ConditionCode cc) => cc switch
    {
        ConditionCode.o => GetOF(),
        ConditionCode.no => !GetOF(),
        ConditionCode.b => GetCF(),
        ConditionCode.ae => !GetCF(),
        ConditionCode.e => GetZF(),
        ConditionCode.ne => !GetZF(),
        ConditionCode.be => GetCF() || GetZF(),
        ConditionCode.a => !GetCF() && !GetZF(),
        ConditionCode.s => GetSF(),
        ConditionCode.ns => !GetSF(),
        ConditionCode.p => GetPF(),
        ConditionCode.np => !GetPF(),
        ConditionCode.l => GetSF() != GetOF(),
        ConditionCode.ge => GetSF() == GetOF(),
        ConditionCode.le => GetZF() || GetSF() != GetOF(),
        ConditionCode.g => !GetZF() && GetSF() == GetOF(),
        _ => throw new InvalidOperationException($"condition {cc}"),
    };
}
