using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;

namespace Dirigent.Tests.Native;

/// <summary>Runs one instruction (followed by HLT) on the software CPU in 64-bit mode from a <see cref="MachineState"/>.</summary>
public sealed class EmuRunner : IDisposable
{
    private readonly TestVm _vm;

    /// <param name="jit">Off: the interpreter alone; Always: every block compiled before it runs.</param>
    /// <param name="native">The native first tier: 0 off, 1 every block's native code made before it runs.</param>
    public EmuRunner(Dirigent.Accel.Emu.Jit.JitMode jit = Dirigent.Accel.Emu.Jit.JitMode.Off, int native = 0) => _vm = new TestVm(jit: jit, native: native);
    public const ulong CodeAddr = 0x10_0000;
    /// <summary>Guest address of the memory buffer, to place in <see cref="NativeRunner.MemBaseReg"/>.</summary>
    public const ulong GuestMemAddress = 0x30_0000;

    public TestVm Vm => _vm;

    public MachineState Run(byte[] instruction, MachineState input)
    {
        var code = new byte[instruction.Length + 1];
        instruction.CopyTo(code, 0);
        code[^1] = 0xF4; // HLT
        _vm.Vm.Memory.Write(CodeAddr, code);
        _vm.Vm.Memory.Write(GuestMemAddress, input.Mem);
        var s = BootState.Long64(_vm.Vm.Memory, CodeAddr, TestVm.StackTop);
        for (int k = 0; k < 16; k++) if (k != 4) s.Gpr[k] = input.Gpr[k];
        s.Rflags = (input.Rflags & 0xCD5) | 2;
        s.Fxsave = (byte[])input.Fx.Clone();
        _vm.Cpu.SetState(s);
        var exit = _vm.Run(5000);
        if (exit.Reason != VcpuExitReason.HaltedForever)
            throw new InvalidOperationException($"emulated instruction did not reach HLT: {exit.Reason} {exit.Detail} {string.Join(";", _vm.Log)}");
        if (_vm.Cpu.Rip != CodeAddr + (ulong)code.Length)
            throw new InvalidOperationException($"emulated instruction faulted or branched: RIP={_vm.Cpu.Rip:x} (log: {string.Join(";", _vm.Log)})");
        var st = _vm.Cpu.GetState();
        var o = new MachineState();
        for (int k = 0; k < 16; k++) o.Gpr[k] = st.Gpr[k];
        o.Gpr[4] = input.Gpr[4];
        o.Rflags = st.Rflags & ~0x200UL;
        o.Fx = st.Fxsave;
        _vm.Vm.Memory.Read(GuestMemAddress, o.Mem);
        return o;
    }

    public void Dispose() => _vm.Dispose();
}
