using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>
/// The SSE2 forms that libc's string and memory routines live on (MOVDQA/MOVDQU/MOVAPS/MOVUPS, PXOR/POR/PAND/PANDN,
/// PCMPEQ*, PADD*/PSUB*, PMINUB, PMOVMSKB, MOVD/MOVQ) compiled inline: XMM registers stay in the CPU's array (the
/// .NET JIT keeps a Vector128 in a host XMM register within an instruction), 128-bit memory operands take the soft-TLB
/// hit path like integer ones. What the interpreter checks is checked here too: CR0.EM/TS and CR4.OSFXSR once per
/// block (and again after any handler, which could change them), the 16-byte alignment rule of the legacy forms
/// (a misaligned operand runs the instruction's own handler, which raises the fault the interpreter would).
/// </summary>
internal sealed partial class BlockCompiler
{
    private enum SseOp
    {
        None, Mov, MovStore, Xor, Or, And, AndNot, CmpEqB, CmpEqW, CmpEqD, AddB, AddW, AddD, AddQ, SubB, SubW, SubD, SubQ,
        MinUB, MoveMask, MovdTo, MovdFrom, MovqLoad, MovqStore,
    }

    private static (SseOp Op, bool Aligned) SseForm(Code c) => c switch
    {
        Code.Movaps_xmm_xmmm128 or Code.Movapd_xmm_xmmm128 or Code.Movdqa_xmm_xmmm128 => (SseOp.Mov, true),
        Code.Movups_xmm_xmmm128 or Code.Movupd_xmm_xmmm128 or Code.Movdqu_xmm_xmmm128 => (SseOp.Mov, false),
        Code.Movaps_xmmm128_xmm or Code.Movapd_xmmm128_xmm or Code.Movdqa_xmmm128_xmm => (SseOp.MovStore, true),
        Code.Movups_xmmm128_xmm or Code.Movupd_xmmm128_xmm or Code.Movdqu_xmmm128_xmm => (SseOp.MovStore, false),
        Code.Pxor_xmm_xmmm128 or Code.Xorps_xmm_xmmm128 or Code.Xorpd_xmm_xmmm128 => (SseOp.Xor, true),
        Code.Por_xmm_xmmm128 or Code.Orps_xmm_xmmm128 or Code.Orpd_xmm_xmmm128 => (SseOp.Or, true),
        Code.Pand_xmm_xmmm128 or Code.Andps_xmm_xmmm128 or Code.Andpd_xmm_xmmm128 => (SseOp.And, true),
        Code.Pandn_xmm_xmmm128 or Code.Andnps_xmm_xmmm128 or Code.Andnpd_xmm_xmmm128 => (SseOp.AndNot, true),
        Code.Pcmpeqb_xmm_xmmm128 => (SseOp.CmpEqB, true),
        Code.Pcmpeqw_xmm_xmmm128 => (SseOp.CmpEqW, true),
        Code.Pcmpeqd_xmm_xmmm128 => (SseOp.CmpEqD, true),
        Code.Paddb_xmm_xmmm128 => (SseOp.AddB, true),
        Code.Paddw_xmm_xmmm128 => (SseOp.AddW, true),
        Code.Paddd_xmm_xmmm128 => (SseOp.AddD, true),
        Code.Paddq_xmm_xmmm128 => (SseOp.AddQ, true),
        Code.Psubb_xmm_xmmm128 => (SseOp.SubB, true),
        Code.Psubw_xmm_xmmm128 => (SseOp.SubW, true),
        Code.Psubd_xmm_xmmm128 => (SseOp.SubD, true),
        Code.Psubq_xmm_xmmm128 => (SseOp.SubQ, true),
        Code.Pminub_xmm_xmmm128 => (SseOp.MinUB, true),
        Code.Pmovmskb_r32_xmm or Code.Pmovmskb_r64_xmm => (SseOp.MoveMask, false),
        Code.Movd_xmm_rm32 or Code.Movq_xmm_rm64 => (SseOp.MovdTo, false),
        Code.Movd_rm32_xmm or Code.Movq_rm64_xmm => (SseOp.MovdFrom, false),
        Code.Movq_xmm_xmmm64 => (SseOp.MovqLoad, false),
        Code.Movq_xmmm64_xmm => (SseOp.MovqStore, false),
        _ => (SseOp.None, false),
    };

    private static bool IsSseInline(ref Instruction i)
    {
        SseOp op = SseForm(i.Code).Op;
        if (op == SseOp.None) return false;
        // GPR operands: full-width ones only (what MOVD/MOVQ/PMOVMSKB take anyway).
        if (op == SseOp.MoveMask) return DestGpr(i.Op0Register, out _, out _);
        if (op == SseOp.MovdTo) return i.Op1Kind == OpKind.Memory || DestGpr(i.Op1Register, out _, out _);
        if (op == SseOp.MovdFrom) return i.Op0Kind == OpKind.Memory || DestGpr(i.Op0Register, out _, out _);
        return true;
    }

    private static readonly MethodInfo MSseUsable = typeof(JitSse).GetMethod(nameof(JitSse.Usable))!,
        MSseRead = typeof(JitSse).GetMethod(nameof(JitSse.Read128))!, MSseWrite = typeof(JitSse).GetMethod(nameof(JitSse.Write128))!;
    private static readonly FieldInfo FXmm = Field(nameof(Cpu.Xmm));
    private static readonly Type V128 = typeof(Vector128<byte>);

    private LocalBuilder? _xmmArr, _v;
    /// <summary>CR0/CR4 were checked for SSE on this path of the block (cleared after a handler call).</summary>
    private bool _sseChecked;

    private LocalBuilder Vec => _v ??= _il.DeclareLocal(V128);

    /// <summary>Pushes the address of XMM register r (the array is loaded once per block).</summary>
    private void XmmAddr(Register r)
    {
        // Loaded at the method's entry (LoadXmmArray) when the block has inline SSE, so every path sees it.
        _il.Emit(OpCodes.Ldloc, _xmmArr ?? throw new InvalidOperationException("XMM array not loaded"));
        _il.Emit(OpCodes.Ldc_I4, r - Register.XMM0);
        _il.Emit(OpCodes.Ldelema, V128);
    }

    private void XmmLoad(Register r) { XmmAddr(r); _il.Emit(OpCodes.Ldobj, V128); }

    /// <summary>Emitted at the start of the method when the block has inline SSE: the CPU's XMM array in a local.</summary>
    private void LoadXmmArray()
    {
        _xmmArr ??= _il.DeclareLocal(typeof(Vector128<byte>[]));
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, FXmm);
        _il.Emit(OpCodes.Stloc, _xmmArr);
    }

    /// <summary>Runs instruction i's own handler (state synced first) and leaves the block after it: for a path that faults.</summary>
    private void HandlerAndLeave(ref Instruction i)
    {
        Sync(ref i);
        EmitCallHandler(ref i);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Call, MJitExit);
        AddInstret(_k + 1);
        EmitReturn();
    }

    /// <summary>Reads the 128-bit memory operand 1 (or 0 for a store's address) into Vec; _la holds its address.</summary>
    private void EmitRead128(ref Instruction i, bool aligned)
    {
        Label miss = _il.DefineLabel(), done = _il.DefineLabel();
        Probe128(ref i, aligned, FTlbR, miss);
        _il.Emit(OpCodes.Unaligned, (byte)1);
        _il.Emit(OpCodes.Ldobj, V128);
        _il.Emit(OpCodes.Stloc, Vec);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(miss);
        Sync(ref i);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _la);
        _il.Emit(OpCodes.Call, MSseRead);
        _il.Emit(OpCodes.Stloc, Vec);
        _il.MarkLabel(done);
    }

    /// <summary>Writes Vec to the 128-bit memory operand 0.</summary>
    private void EmitWrite128(ref Instruction i, bool aligned)
    {
        Label miss = _il.DefineLabel(), done = _il.DefineLabel();
        Probe128(ref i, aligned, FTlbW, miss);
        _il.Emit(OpCodes.Ldloc, Vec);
        _il.Emit(OpCodes.Unaligned, (byte)1);
        _il.Emit(OpCodes.Stobj, V128);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(miss);
        Sync(ref i);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _la);
        _il.Emit(OpCodes.Ldloc, Vec);
        _il.Emit(OpCodes.Call, MSseWrite);
        ExitIfBlockExit(i.NextIP);
        _il.MarkLabel(done);
    }

    /// <summary>The memory operand's address into _la, the alignment rule, then the TLB probe (host address pushed, or to miss).</summary>
    private void Probe128(ref Instruction i, bool aligned, FieldInfo table, Label miss)
    {
        PushAddress(ref i);
        _il.Emit(OpCodes.Stloc, _la);
        if (aligned) EmitAlignmentCheck(ref i);
        EmitTlbProbe(table, 16, miss);
    }

    /// <summary>A misaligned legacy-SSE 128-bit operand faults: the handler raises exactly what the interpreter raises.</summary>
    private void EmitAlignmentCheck(ref Instruction i)
    {
        Label ok = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _la);
        _il.Emit(OpCodes.Ldc_I8, 15L);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Brfalse, ok);
        HandlerAndLeave(ref i);
        _il.MarkLabel(ok);
    }

    private void EmitSse(ref Instruction i)
    {
        var (op, aligned) = SseForm(i.Code);
        if (!_sseChecked)
        {
            // #UD/#NM conditions: the handler raises them.
            Label ok = _il.DefineLabel();
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Call, MSseUsable);
            _il.Emit(OpCodes.Brtrue, ok);
            HandlerAndLeave(ref i);
            _il.MarkLabel(ok);
            _sseChecked = true;
        }
        switch (op)
        {
            case SseOp.Mov:
                if (i.Op1Kind == OpKind.Register) { XmmLoad(i.Op1Register); _il.Emit(OpCodes.Stloc, Vec); }
                else EmitRead128(ref i, aligned);
                XmmAddr(i.Op0Register);
                _il.Emit(OpCodes.Ldloc, Vec);
                _il.Emit(OpCodes.Stobj, V128);
                return;
            case SseOp.MovStore:
                XmmLoad(i.Op1Register);
                _il.Emit(OpCodes.Stloc, Vec);
                if (i.Op0Kind == OpKind.Register)
                {
                    XmmAddr(i.Op0Register);
                    _il.Emit(OpCodes.Ldloc, Vec);
                    _il.Emit(OpCodes.Stobj, V128);
                }
                else EmitWrite128(ref i, aligned);
                return;
            case SseOp.MoveMask:
                {
                    DestGpr(i.Op0Register, out int d, out _);
                    XmmLoad(i.Op1Register);
                    _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.MoveMask)));
                    _il.Emit(OpCodes.Conv_U8);
                    StoreReg(d);
                    return;
                }
            case SseOp.MovdTo:
                {
                    int size = i.Code == Code.Movd_xmm_rm32 ? 4 : 8;
                    if (i.Op1Kind == OpKind.Memory) { ReadMemSource(ref i, size); _il.Emit(OpCodes.Ldloc, _val); }
                    else { DestGpr(i.Op1Register, out int s, out _); PushReg(s); ZeroExtend(size); }
                    _il.Emit(OpCodes.Stloc, _tmp);
                    XmmAddr(i.Op0Register);
                    _il.Emit(OpCodes.Ldloc, _tmp);
                    _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.FromScalar)));
                    _il.Emit(OpCodes.Stobj, V128);
                    return;
                }
            case SseOp.MovdFrom:
                {
                    int size = i.Code == Code.Movd_rm32_xmm ? 4 : 8;
                    XmmLoad(i.Op1Register);
                    _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.ToScalar)));
                    ZeroExtend(size);
                    if (i.Op0Kind == OpKind.Register) { DestGpr(i.Op0Register, out int d, out _); StoreReg(d); return; }
                    _il.Emit(OpCodes.Stloc, _val);
                    PushAddress(ref i);
                    _il.Emit(OpCodes.Stloc, _la);
                    EmitWrite(ref i, size, i.NextIP);
                    return;
                }
            case SseOp.MovqLoad:
                if (i.Op1Kind == OpKind.Memory) { ReadMemSource(ref i, 8); _il.Emit(OpCodes.Ldloc, _val); }
                else { XmmLoad(i.Op1Register); _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.ToScalar))); }
                _il.Emit(OpCodes.Stloc, _tmp);
                XmmAddr(i.Op0Register);
                _il.Emit(OpCodes.Ldloc, _tmp);
                _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.FromScalar)));
                _il.Emit(OpCodes.Stobj, V128);
                return;
            case SseOp.MovqStore:
                XmmLoad(i.Op1Register);
                _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.ToScalar)));
                if (i.Op0Kind == OpKind.Register)
                {
                    _il.Emit(OpCodes.Stloc, _tmp);
                    XmmAddr(i.Op0Register);
                    _il.Emit(OpCodes.Ldloc, _tmp);
                    _il.Emit(OpCodes.Call, JitSse.Method(nameof(JitSse.FromScalar)));
                    _il.Emit(OpCodes.Stobj, V128);
                    return;
                }
                _il.Emit(OpCodes.Stloc, _val);
                PushAddress(ref i);
                _il.Emit(OpCodes.Stloc, _la);
                EmitWrite(ref i, 8, i.NextIP);
                return;
            default:
                // dst = op(dst, src): the source (register or aligned m128) first, as the interpreter reads it.
                if (i.Op1Kind == OpKind.Register) { XmmLoad(i.Op1Register); _il.Emit(OpCodes.Stloc, Vec); }
                else EmitRead128(ref i, aligned);
                XmmAddr(i.Op0Register);
                _il.Emit(OpCodes.Dup);
                _il.Emit(OpCodes.Ldobj, V128);
                _il.Emit(OpCodes.Ldloc, Vec);
                _il.Emit(OpCodes.Call, JitSse.Method(op.ToString()));
                _il.Emit(OpCodes.Stobj, V128);
                return;
        }
    }
}

/// <summary>The compiled tier's SSE helpers: small enough that the .NET JIT inlines them into the compiled block.</summary>
internal static class JitSse
{
    public static MethodInfo Method(string name) => typeof(JitSse).GetMethod(name) ?? throw new MissingMethodException(nameof(JitSse), name);

    /// <summary>SSE instructions may run: CR0.EM=0, CR0.TS=0, CR4.OSFXSR=1 (Sse.Check's condition).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static bool Usable(Cpu c) => Instructions.Sse.Available(c);

    /// <summary>TLB-miss paths: the interpreter's 128-bit accesses (fault order and page-crossing rules included).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static Vector128<byte> Read128(Cpu c, ulong la) => Instructions.Sse.Read128(c, la);
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Write128(Cpu c, ulong la, Vector128<byte> v) => Instructions.Sse.Write128(c, la, v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> Xor(Vector128<byte> d, Vector128<byte> s) => d ^ s;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> Or(Vector128<byte> d, Vector128<byte> s) => d | s;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> And(Vector128<byte> d, Vector128<byte> s) => d & s;
    /// <summary>PANDN: (NOT dst) AND src.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> AndNot(Vector128<byte> d, Vector128<byte> s) => Vector128.AndNot(s, d);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> CmpEqB(Vector128<byte> d, Vector128<byte> s) => Vector128.Equals(d, s);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> CmpEqW(Vector128<byte> d, Vector128<byte> s) => Vector128.Equals(d.AsUInt16(), s.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> CmpEqD(Vector128<byte> d, Vector128<byte> s) => Vector128.Equals(d.AsUInt32(), s.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> AddB(Vector128<byte> d, Vector128<byte> s) => d + s;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> AddW(Vector128<byte> d, Vector128<byte> s) => (d.AsUInt16() + s.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> AddD(Vector128<byte> d, Vector128<byte> s) => (d.AsUInt32() + s.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> AddQ(Vector128<byte> d, Vector128<byte> s) => (d.AsUInt64() + s.AsUInt64()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> SubB(Vector128<byte> d, Vector128<byte> s) => d - s;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> SubW(Vector128<byte> d, Vector128<byte> s) => (d.AsUInt16() - s.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> SubD(Vector128<byte> d, Vector128<byte> s) => (d.AsUInt32() - s.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> SubQ(Vector128<byte> d, Vector128<byte> s) => (d.AsUInt64() - s.AsUInt64()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> MinUB(Vector128<byte> d, Vector128<byte> s) => Vector128.Min(d, s);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static uint MoveMask(Vector128<byte> v) => v.ExtractMostSignificantBits();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<byte> FromScalar(ulong v) => Vector128.CreateScalar(v).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong ToScalar(Vector128<byte> v) => v.AsUInt64().ToScalar();
}
