using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Native;

/// <summary>
/// CMPXCHG and XADD to memory, with or without LOCK (the kernel's spinlocks, reference counts and atomics). A hit in
/// the write TLB is plain guest RAM that is not code, not watched and already dirty-logged, which is exactly where the
/// interpreter uses a host atomic too (Cpu.HostPointerForRmw, IntegerDataAtomic): the template's LOCK CMPXCHG or
/// LOCK XADD on the host address is the same operation, with the same ordering against other vCPUs. (Without LOCK the
/// interpreter reads and writes; the locked host form gives a result that plain form can also give.) A miss (split,
/// MMIO, code page, first write) leaves the instruction to the interpreter with nothing done.
/// </summary>
internal sealed partial class NativeCompiler
{
    private bool EmitCmpxchgXadd(ref Instruction i, int k)
    {
        if (i.OpCount != 2 || i.Op0Kind != OpKind.Memory || i.Op1Kind != OpKind.Register) return false;
        var (sd, size) = Gpr(i.Op1Register);
        if (size == 0 || MemSize(ref i) != size || !Address(ref i)) return false;
        Probe(size, true, k);
        LoadReg(R9, sd, size);
        if (i.Mnemonic == Mnemonic.Xadd)
        {
            // r9 = the old value, the host's flags those of old + b (the interpreter's Add record: a = old).
            _a.Mov(Rcx, R9);
            _a.LockRmw(true, size, Rax, R9);
            StoreReg(sd, size, R9);
            _a.Lea(R10, R9, Rcx, 1, 0);
            RecordFlags(LazyOp.Add, size, R10, R9, Rcx);
            return true;
        }
        // CMPXCHG: the host's RAX is the accumulator, so the address moves to r11. Afterwards rax holds the old value
        // (on success it equals the accumulator), and the host's flags are those of CMP accumulator, old.
        _a.Mov(R11, Rax);
        LoadReg(Rax, Cpu.RAX * 8, size);
        _a.Mov(Rcx, Rax);
        _a.LockRmw(false, size, R11, R9);
        int equal = _a.NewLabel();
        _a.Jcc(X64Emitter.CcE, equal);
        // On failure the accumulator gets the old value (a 32-bit one zero-extended), as the interpreter's SetReg does.
        StoreReg(Cpu.RAX * 8, size, Rax);
        _a.Bind(equal);
        // The interpreter's Sub record: a = the accumulator, b = the old value, the result a - b in r10 (= a + ~b + 1:
        // NOT and LEA leave the host's flags).
        _a.Mov(R10, Rax);
        _a.Not(true, R10);
        _a.Lea(R10, Rcx, R10, 1, 1);
        RecordFlags(LazyOp.Sub, size, R10, Rcx, Rax);
        return true;
    }
}
