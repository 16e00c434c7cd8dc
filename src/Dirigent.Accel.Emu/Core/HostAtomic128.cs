using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// A 16-byte compare-exchange that is atomic against every other host access to the same memory: other vCPUs'
/// plain loads and stores, their LOCKed operations, and device DMA. .NET has no 128-bit Interlocked, so on an
/// x86-64 Linux host a tiny native function (<c>lock cmpxchg16b [rdi]</c>) is assembled once with Iced into an
/// executable mapping and called through an unmanaged function pointer.
/// </summary>
internal static unsafe partial class HostAtomic128
{
    // (ptr, expectedLo, expectedHi, newLo, newHi, old) in rdi, rsi, rdx, rcx, r8, r9 (SysV); returns ZF as 0/1.
    // SuppressGCTransition: the function is a handful of instructions that never block or call back.
    private static readonly delegate* unmanaged[SuppressGCTransition]<ulong*, ulong, ulong, ulong, ulong, ulong*, int> s_cas =
        CreateNative();

    private static readonly object s_fallbackLock = new();

    /// <summary>True when the host instruction is used; false on the lock fallback.</summary>
    public static bool IsNative => s_cas != null;

    /// <summary>
    /// If the 16 bytes at <paramref name="p"/> (16-byte aligned) equal expected, stores the new pair. Returns whether
    /// it did; <paramref name="oldLo"/>/<paramref name="oldHi"/> receive the value found (equal to expected on success).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool CompareExchange(ulong* p, ulong expLo, ulong expHi, ulong newLo, ulong newHi,
        out ulong oldLo, out ulong oldHi)
    {
        var fn = s_cas;
        if (fn != null)
        {
            Pair old = default;
            bool ok = fn(p, expLo, expHi, newLo, newHi, old.V) != 0;
            oldLo = old.V[0];
            oldHi = old.V[1];
            return ok;
        }
        return CompareExchangeLocked(p, expLo, expHi, newLo, newHi, out oldLo, out oldHi);
    }

    /// <summary>The fallback; internal so tests can exercise it on any host.</summary>
    internal static bool CompareExchangeLocked(ulong* p, ulong expLo, ulong expHi, ulong newLo, ulong newHi,
        out ulong oldLo, out ulong oldHi)
    {
        // Only atomic against other CMPXCHG16Bs: plain accesses of other vCPUs or DMA may see or cause a torn pair.
        lock (s_fallbackLock)
        {
            oldLo = Volatile.Read(ref p[0]);
            oldHi = Volatile.Read(ref p[1]);
            if (oldLo != expLo || oldHi != expHi) return false;
            Volatile.Write(ref p[0], newLo);
            Volatile.Write(ref p[1], newHi);
            return true;
        }
    }

    private struct Pair
    {
        public fixed ulong V[2];
    }

    private static delegate* unmanaged[SuppressGCTransition]<ulong*, ulong, ulong, ulong, ulong, ulong*, int> CreateNative()
    {
        // mmap's flag values below are Linux's; CPUID.01H:ECX.CX16[bit 13] says the host has the instruction.
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return null;
        if (!X86Base.IsSupported || (X86Base.CpuId(1, 0).Ecx & (1 << 13)) == 0) return null;
        byte[] code = Assemble();
        const nuint size = 4096;
        nint m = Mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == -1) return null;
        code.CopyTo(new Span<byte>((void*)m, code.Length));
        // W^X: never writable and executable at once (and some hardened kernels refuse that mapping).
        if (Mprotect(m, size, PROT_READ | PROT_EXEC) != 0)
        {
            Munmap(m, size);
            return null;
        }
        // The mapping lives as long as the process: the function pointer is static.
        return (delegate* unmanaged[SuppressGCTransition]<ulong*, ulong, ulong, ulong, ulong, ulong*, int>)m;
    }

    private static byte[] Assemble()
    {
        var a = new Assembler(64);
        a.push(rbx);                    // callee-saved in SysV, and CMPXCHG16B takes the new low half in it
        a.mov(rax, rsi);                // RDX:RAX = expected (RDX already holds expectedHi)
        a.mov(rbx, rcx);                // RCX:RBX = new
        a.mov(rcx, r8);
        a.@lock.cmpxchg16b(__xmmword_ptr[rdi]);
        a.mov(__qword_ptr[r9], rax);    // RDX:RAX = the value found (unchanged = expected on success)
        a.mov(__qword_ptr[r9 + 8], rdx);
        a.sete(al);                     // MOV leaves ZF alone
        a.movzx(eax, al);
        a.pop(rbx);
        a.ret();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), 0);
        return ms.ToArray();
    }

    private const int PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20;

    [LibraryImport("libc", EntryPoint = "mmap")]
    private static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect")]
    private static partial int Mprotect(nint addr, nuint length, int prot);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int Munmap(nint addr, nuint length);
}
