using System.Reflection;
using System.Reflection.Emit;
using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>Memory operands: the linear address, the inline soft-TLB probe and the slow paths of a miss.</summary>
internal sealed partial class BlockCompiler
{
    /// <summary>Pushes the linear address of a 64-bit-addressed memory operand (registers it needs are loaded first).</summary>
    private void PushAddress(ref Instruction i, bool lea = false)
    {
        Register b = i.MemoryBase, x = i.MemoryIndex;
        int bi = b is Register.None or Register.RIP ? -1 : Cpu.RegIndex(b), xi = x == Register.None ? -1 : Cpu.RegIndex(x);
        if (bi >= 0) Load(bi);
        if (xi >= 0) Load(xi);
        _il.Emit(OpCodes.Ldc_I8, (long)i.MemoryDisplacement64);
        if (bi >= 0) { EmitLdReg(bi); _il.Emit(OpCodes.Add); }
        if (xi >= 0)
        {
            EmitLdReg(xi);
            int sh = i.MemoryIndexScale switch { 1 => 0, 2 => 1, 4 => 2, _ => 3 };
            if (sh != 0) { _il.Emit(OpCodes.Ldc_I4, sh); _il.Emit(OpCodes.Shl); }
            _il.Emit(OpCodes.Add);
        }
        int seg = Cpu.SegIndex(i.MemorySegment);
        if (!lea && seg >= Cpu.FS)
        {
            // FS/GS base (TLS, the stack protector's canary at fs:0x28 in every protected function): Sreg[seg].Base,
            // read inline (as a call it was ~0.6 % of a shell loop's samples).
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldfld, FSreg);
            _il.Emit(OpCodes.Ldc_I4, seg);
            _il.Emit(OpCodes.Ldelema, typeof(SegmentState));
            _il.Emit(OpCodes.Ldfld, FSegBase);
            _il.Emit(OpCodes.Add);
        }
    }

    /// <summary>
    /// Soft-TLB probe of _la for an access of <paramref name="size"/> bytes: leaves the host address in _ent's place
    /// and branches to <paramref name="miss"/> when the entry does not cover it.
    /// </summary>
    private unsafe void EmitTlbProbe(FieldInfo table, int size, Label miss)
    {
        // page = la >> 12
        _il.Emit(OpCodes.Ldloc, _la);
        EmitTlbEntry(table);
        // ent->Tag == page of the access's last byte: one compare is both the tag check and the page-crossing check
        // (an access that crosses into page+1 compares with the tag at page's slot, which never holds page+1).
        _il.Emit(OpCodes.Ldloc, _ent);
        _il.Emit(OpCodes.Ldind_I8);
        if (size > 1)
        {
            _il.Emit(OpCodes.Ldloc, _la);
            _il.Emit(OpCodes.Ldc_I8, (long)(size - 1));
            _il.Emit(OpCodes.Add);
            _il.Emit(OpCodes.Ldc_I4, 12);
            _il.Emit(OpCodes.Shr_Un);
        }
        else _il.Emit(OpCodes.Ldloc, _page);
        _il.Emit(OpCodes.Bne_Un, miss);
        // host = la + ent->Addend (Addend is the second field)
        _il.Emit(OpCodes.Ldloc, _la);
        _il.Emit(OpCodes.Ldloc, _ent);
        _il.Emit(OpCodes.Ldc_I4_8);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Ldind_I8);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Conv_I);
    }

    /// <summary>
    /// With a linear address on the stack: _page = its page number, _ent = the address of <paramref name="table"/>'s
    /// entry for that page (table + (page &amp; mask) * sizeof(TlbEntry)); nothing is compared yet.
    /// </summary>
    private unsafe void EmitTlbEntry(FieldInfo table)
    {
        _il.Emit(OpCodes.Ldc_I4, 12);
        _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Stloc, _page);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, table);
        _il.Emit(OpCodes.Ldloc, _page);
        _il.Emit(OpCodes.Ldc_I8, (long)Cpu.TlbIndexMask);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldc_I8, (long)sizeof(TlbEntry));
        _il.Emit(OpCodes.Mul);
        _il.Emit(OpCodes.Conv_I);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stloc, _ent);
    }

    /// <summary>The TLB-miss path: state synced for a fault, then (cpu, la, size) pushed for ReadSlow/WriteSlow.</summary>
    private void SlowPathArgs(ref Instruction i, Label miss, int size)
    {
        _il.MarkLabel(miss);
        SpillRegs();
        SpillFlags();
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldloc, _la);
        _il.Emit(OpCodes.Ldc_I4, size);
    }

    /// <summary>The slow path's last arguments: this block and the instruction's index (Cpu.JitReadSlow sets RIP from them).</summary>
    private void SlowPathSite()
    {
        EmitLdBlock();
        _il.Emit(OpCodes.Ldc_I4, _k);
    }

    /// <summary>Reads size bytes at the address in _la into _val (zero-extended).</summary>
    private void EmitRead(ref Instruction i, int size)
    {
        Label miss = _il.DefineLabel(), done = _il.DefineLabel();
        EmitTlbProbe(FTlbR, size, miss);
        _il.Emit(size switch { 1 => OpCodes.Ldind_U1, 2 => OpCodes.Ldind_U2, 4 => OpCodes.Ldind_U4, _ => OpCodes.Ldind_I8 });
        if (size < 8) _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _val);
        _il.Emit(OpCodes.Br, done);
        SlowPathArgs(ref i, miss, size);
        SlowPathSite();
        _il.Emit(OpCodes.Call, MReadSlow);
        _il.Emit(OpCodes.Stloc, _val);
        _il.MarkLabel(done);
    }

    /// <summary>Writes the low size bytes of _val at the address in _la; a slow-path store may end the block after it.</summary>
    private void EmitWrite(ref Instruction i, int size, ulong ripAfter, Action? beforeExit = null, int finishReg = -1)
    {
        Label miss = _il.DefineLabel(), done = _il.DefineLabel();
        EmitTlbProbe(FTlbW, size, miss);
        _il.Emit(OpCodes.Ldloc, _val);
        _il.Emit(size switch { 1 => OpCodes.Stind_I1, 2 => OpCodes.Stind_I2, 4 => OpCodes.Stind_I4, _ => OpCodes.Stind_I8 });
        _il.Emit(OpCodes.Br, done);
        SlowPathArgs(ref i, miss, size);
        _il.Emit(OpCodes.Ldloc, _val);
        SlowPathSite();
        _il.Emit(OpCodes.Call, MWriteSlow);
        // A store into this block's own code (or an MMIO write that ends the block) stops it after this instruction.
        // The slow path wrote the registers and flags back before the call; what beforeExit changes (a register:
        // finishReg; the flags: it writes them itself) is all that is left to store.
        _il.Emit(OpCodes.Brfalse, done);
        beforeExit?.Invoke();
        if (finishReg >= 0 && !_inMemory[finishReg]) EmitLocalToGpr(finishReg);
        LeaveSynced(ripAfter, _k + 1);
        _il.MarkLabel(done);
    }
}
