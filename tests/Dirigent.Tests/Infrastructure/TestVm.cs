using System.Text;
using Dirigent.Accel.Emu;
using Dirigent.Accel.Emu.Core;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Loaders;
using Iced.Intel;

namespace Dirigent.Tests.Infrastructure;

/// <summary>
/// A bare machine for CPU tests: RAM, a console port (0xE9, Bochs-style) that collects bytes, and an exit port
/// (0xF4, isa-debug-exit style: writing v stops the VM with exit code v).
/// </summary>
public sealed class TestVm : IDisposable
{
    public MachineModel Vm { get; }
    public EmuAccelerator Accel { get; }
    public Cpu Cpu { get; }
    public StringBuilder Console { get; } = new();
    public List<string> Log { get; } = new();
    public int? ExitValue { get; private set; }

    public const ulong CodeBase = 0x10_0000;   // 1 MiB: where test code goes
    public const ulong StackTop = 0x8_0000;    // stacks grow down from 512 KiB
    public const ulong DataBase = 0x20_0000;   // 2 MiB: scratch data

    /// <param name="jit">The software CPU's compiled tier; null: DIRIGENT_JIT (on by default).</param>
    /// <param name="native">The native first tier's threshold (0: off, 1: every block before it first runs); null: DIRIGENT_NATIVE.</param>
    public TestVm(ulong ramSize = 16 << 20, Dirigent.Accel.Emu.Jit.JitMode? jit = null, int? native = null)
    {
        Vm = new MachineModel(ramSize);
        Accel = new EmuAccelerator(Vm, jit, native);
        Cpu = (Cpu)Accel.CreateVcpu(0);
        Cpu.Log = Log.Add;
        Vm.Io.Register(0xE9, 1, new ConsolePort(this));
        Vm.Io.Register(0xF4, 1, new ExitPort(this));
        Vm.PowerEventRequested += _ => Cpu.RequestStop();
    }

    private sealed class ConsolePort(TestVm vm) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0xE9;
        public void Write(ushort offset, int size, uint value) { lock (vm.Console) vm.Console.Append((char)(byte)value); }
    }

    private sealed class ExitPort(TestVm vm) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0xFF;
        public void Write(ushort offset, int size, uint value)
        {
            vm.ExitValue = (int)value;
            vm.Vm.RequestPowerEvent(PowerEventKind.DebugExit, (int)value);
        }
    }

    /// <summary>Assembles code at an address and copies it into guest RAM; returns the code bytes.</summary>
    public byte[] Load(ulong addr, int bitness, Action<Assembler> build) => GuestSetup.Load(Vm.Memory, addr, bitness, build);

    /// <summary>Loads 64-bit code at <see cref="CodeBase"/> and starts the CPU there in long mode.</summary>
    public void Start64(Action<Assembler> build)
    {
        Load(CodeBase, 64, build);
        Cpu.SetState(BootState.Long64(Vm.Memory, CodeBase, StackTop));
    }

    public void Start32(Action<Assembler> build)
    {
        Load(CodeBase, 32, build);
        Cpu.SetState(GuestSetup.Protected32(Vm.Memory, CodeBase, StackTop));
    }

    /// <summary>Loads 16-bit code at physical 0x7C00 and starts at 0000:7C00 in real mode, like a boot sector.</summary>
    public void Start16(Action<Assembler> build, ulong addr = 0x7C00)
    {
        Load(addr, 16, build);
        Cpu.SetState(GuestSetup.Real16(addr));
    }

    /// <summary>Runs until the guest exits; a watchdog stops a guest that runs longer than the timeout.</summary>
    public VcpuExit Run(int timeoutMs = 10_000)
    {
        VcpuExit exit = default;
        var t = new Thread(() => exit = Cpu.Run(), 16 << 20) { IsBackground = true };
        t.Start();
        if (!t.Join(timeoutMs))
        {
            Cpu.RequestStop();
            if (!t.Join(5000)) throw new TimeoutException("vCPU did not stop");
            throw new TimeoutException($"guest ran longer than {timeoutMs} ms; RIP={Cpu.Rip:x} console='{Console}' log={string.Join(";", Log)}");
        }
        return exit;
    }

    /// <summary>Runs and asserts the guest ended with HLT (interrupts off): the usual end of a test guest.</summary>
    public void RunToHlt(int timeoutMs = 10_000)
    {
        var e = Run(timeoutMs);
        if (e.Reason != VcpuExitReason.HaltedForever)
            throw new Xunit.Sdk.XunitException($"expected HLT, got {e.Reason} {e.Detail}; RIP={Cpu.Rip:x}; log={string.Join(";", Log)}");
    }

    public void Dispose()
    {
        Accel.Dispose();
        Vm.Dispose();
    }
}
