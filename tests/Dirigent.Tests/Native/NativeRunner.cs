using System.Runtime.InteropServices;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Native;

/// <summary>
/// Machine state that a differential test loads before one instruction and compares after it: GPRs, RFLAGS and
/// the 512-byte FXSAVE image (x87, MXCSR, XMM0-15), plus a 256-byte memory buffer the instruction may address.
/// RSP is never part of it: the host keeps its own stack while the instruction runs.
/// </summary>
public sealed class MachineState
{
    public ulong[] Gpr = new ulong[16];
    public ulong Rflags = 0x2;
    public byte[] Fx = NewFx();
    public byte[] Mem = new byte[MemSize];
    public const int MemSize = 256;

    public static byte[] NewFx()
    {
        var fx = new byte[512];
        fx[0] = 0x7F; fx[1] = 0x03;         // FCW = 0x37F
        fx[24] = 0x80; fx[25] = 0x1F;       // MXCSR = 0x1F80
        return fx;
    }

    public MachineState Clone() => new()
    {
        Gpr = (ulong[])Gpr.Clone(), Rflags = Rflags, Fx = (byte[])Fx.Clone(), Mem = (byte[])Mem.Clone(),
    };

    public Span<byte> Xmm(int k) => Fx.AsSpan(160 + 16 * k, 16);
}

/// <summary>
/// Runs single instructions on the host CPU: an RWX page holds a stub (assembled with Iced) that loads a
/// <see cref="MachineState"/>, executes the instruction bytes and stores the state back. The oracle for the
/// software CPU's differential tests. Instructions must not fault, touch RSP, or branch.
/// </summary>
public sealed unsafe class NativeRunner : IDisposable
{
    [DllImport("libc", SetLastError = true)]
    private static extern nint mmap(nint addr, nuint len, int prot, int flags, int fd, nint off);
    [DllImport("libc")]
    private static extern int munmap(nint addr, nuint len);

    private const int PageBytes = 16384;
    private const int StateOff = 8192;      // GPRs (128) + RFLAGS (8) + saved RSP (8), then FXSAVE area at +256
    private const int FxOff = StateOff + 256;
    private const int MemOff = StateOff + 1024;
    private readonly byte* _page;

    /// <summary>Register that holds the address of the memory buffer (host or guest) in memory-operand tests.</summary>
    public const int MemBaseReg = 3; // RBX

    public NativeRunner()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            throw new PlatformNotSupportedException("native differential tests need an x86-64 Linux host");
        nint p = mmap(0, PageBytes, 7, 0x22, -1, 0); // RWX, MAP_PRIVATE|MAP_ANONYMOUS
        if (p == -1) throw new InvalidOperationException($"mmap failed: errno {Marshal.GetLastPInvokeError()}");
        _page = (byte*)p;
    }

    /// <summary>Host address of the memory buffer, to place in <see cref="MemBaseReg"/> for memory operands.</summary>
    public ulong HostMemAddress => (ulong)(_page + MemOff);

    public static bool Supported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    private static readonly AssemblerRegister64[] s_regs = [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];

    /// <summary>Executes the instruction bytes on the host with the given state; returns the resulting state.</summary>
    public MachineState Run(byte[] instruction, MachineState input)
    {
        ulong baseAddr = (ulong)_page;
        ulong state = baseAddr + StateOff;
        var a = new Assembler(64);
        a.push(rbx); a.push(rbp); a.push(r12); a.push(r13); a.push(r14); a.push(r15);
        a.mov(rax, state + 136);
        a.mov(__qword_ptr[rax], rsp);
        a.mov(rax, (ulong)(_page + FxOff));
        a.fxrstor(__[rax]);
        a.mov(rax, state + 128);
        a.push(__qword_ptr[rax]);
        a.popfq();
        // Load every GPR but RSP from the state; RAX last since it addresses the state.
        a.mov(rax, state);
        for (int k = 1; k < 16; k++) if (k != 4) a.mov(s_regs[k], __qword_ptr[rax + 8 * k]);
        a.mov(rax, __qword_ptr[rax]);
        a.db(instruction);
        // Store: RAX first through the stack, then the rest via RAX.
        a.push(rax);
        a.mov(rax, state);
        for (int k = 1; k < 16; k++) if (k != 4) a.mov(__qword_ptr[rax + 8 * k], s_regs[k]);
        a.pop(rcx);
        a.mov(__qword_ptr[rax], rcx);
        a.pushfq();
        a.pop(rcx);
        a.mov(__qword_ptr[rax + 128], rcx);
        a.cld(); // the ABI requires DF=0 on return; string-instruction tests run with DF=1
        a.mov(rax, (ulong)(_page + FxOff));
        a.fxsave(__[rax]);
        a.fninit();
        // Give the thread back .NET's default MXCSR: the test's RC/DAZ/FTZ would otherwise leak into managed code
        // (including an emulator that uses the host FPU) running next on this thread.
        a.mov(rax, state + 144);
        a.mov(__dword_ptr[rax], 0x1F80);
        a.ldmxcsr(__dword_ptr[rax]);
        a.mov(rax, state + 136);
        a.mov(rsp, __qword_ptr[rax]);
        a.pop(r15); a.pop(r14); a.pop(r13); a.pop(r12); a.pop(rbp); a.pop(rbx);
        a.ret();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), baseAddr);
        var code = ms.ToArray();
        if (code.Length > StateOff) throw new InvalidOperationException("stub too long");
        code.CopyTo(new Span<byte>(_page, code.Length));

        for (int k = 0; k < 16; k++) ((ulong*)(_page + StateOff))[k] = input.Gpr[k];
        // Only arithmetic flags and DF go to the host: TF/IF/IOPL there would break the test process.
        ((ulong*)(_page + StateOff))[16] = (input.Rflags & 0xCD5) | 0x202;
        input.Fx.CopyTo(new Span<byte>(_page + FxOff, 512));
        input.Mem.CopyTo(new Span<byte>(_page + MemOff, MachineState.MemSize));

        ((delegate* unmanaged<void>)_page)();

        var o = new MachineState();
        for (int k = 0; k < 16; k++) o.Gpr[k] = ((ulong*)(_page + StateOff))[k];
        o.Gpr[4] = input.Gpr[4];
        o.Rflags = ((ulong*)(_page + StateOff))[16] & ~0x200UL;
        new Span<byte>(_page + FxOff, 512).CopyTo(o.Fx);
        new Span<byte>(_page + MemOff, MachineState.MemSize).CopyTo(o.Mem);
        return o;
    }

    public void Dispose() => munmap((nint)_page, PageBytes);
}
