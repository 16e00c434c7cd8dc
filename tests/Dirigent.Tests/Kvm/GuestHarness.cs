using Dirigent.Tests.Infrastructure;
using System.Diagnostics;
using System.Text;
using Dirigent.Accel.Emu;
using Dirigent.Accel.Emu.Core;
using Dirigent.Devices;
using Dirigent.Devices.Interrupts;
using Dirigent.Devices.Timer;
using Dirigent.Accel.Kvm;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.Loaders;
using Iced.Intel;

namespace Dirigent.Tests.Kvm;

public enum AccelKind { Emu, Kvm }

/// <summary>What a test guest did, as far as anyone outside the CPU can tell.</summary>
public sealed record GuestResult(AccelKind Kind, VcpuExitReason Reason, string Detail, int? ExitValue, string Console,
    ulong[] Gpr, ulong Rip, IReadOnlyList<string> MmioLog, TimeSpan Elapsed)
{
    public override string ToString() =>
        $"{Kind}: {Reason} ({Detail}) exit={ExitValue} console='{Console}' rip={Rip:x} gpr=[{string.Join(",", Gpr.Select(g => g.ToString("x")))}] mmio=[{string.Join(";", MmioLog)}]";
}

/// <summary>
/// A bare machine like <see cref="Infrastructure.TestVm"/> (console port 0xE9, exit port 0xF4), plus a recording
/// MMIO device at <see cref="MmioBase"/>, over either accelerator: the same guest code and initial state run on
/// both, and their <see cref="GuestResult"/>s are compared.
/// </summary>
public sealed class GuestMachine : IDisposable
{
    public const ulong CodeBase = 0x10_0000, StackTop = 0x8_0000, DataBase = 0x20_0000;
    /// <summary>Outside RAM (16 MiB) but inside the 4 GiB identity map of <see cref="BootState.Long64"/>.</summary>
    public const ulong MmioBase = 0xD000_0000;

    public AccelKind Kind { get; }
    public MachineModel Vm { get; }
    public IAccelerator Accel { get; }
    public IVcpu Vcpu { get; }
    private readonly StringBuilder _console = new();
    private readonly List<string> _mmioLog = new();
    public int? ExitValue { get; private set; }

    public string Console { get { lock (_console) return _console.ToString(); } }

    /// <summary>Where devices raise lines and send MSIs, when built with interrupt controllers.</summary>
    public IInterruptSink? Interrupts { get; }
    /// <summary>The emulated PIC/IOAPIC/LAPIC, when those serve (software CPU, or KVM without an in-kernel irqchip).</summary>
    public InterruptRouter? EmulatedInterrupts { get; }
    /// <summary>Which interrupt controllers this machine has, in words.</summary>
    public string InterruptModel { get; } = "none";

    /// <param name="interruptControllers">Give the machine a PC's interrupt controllers and PIT, as the VMM would:
    /// KVM's in-kernel irqchip when KVM offers it, else the emulated 8259s, IOAPIC, local APIC and 8254.</param>
    public GuestMachine(AccelKind kind, ulong ramSize = 16 << 20, bool interruptControllers = false)
    {
        Kind = kind;
        Vm = new MachineModel(ramSize);
        Accel = kind == AccelKind.Emu ? new EmuAccelerator(Vm) : new KvmAccelerator(Vm);
        if (interruptControllers)
        {
            var chip = Accel.CreateInKernelIrqChip(out string reason);
            if (chip != null)
            {
                Interrupts = chip;
                InterruptModel = reason;
            }
            else
            {
                var router = new InterruptRouter(Vm.Clock, 1, Cpu.TscHz);
                router.Register(Vm.Io, Vm.Mmio);
                Vm.Io.Register(PcPlatform.PitPort, Pit8254.PortCount, new Pit8254(Vm.Clock, router.Line(PcPlatform.IrqPit)));
                Interrupts = EmulatedInterrupts = router;
                InterruptModel = kind == AccelKind.Emu ? "emulated PIC/IOAPIC/LAPIC/PIT" : $"emulated PIC/IOAPIC/LAPIC/PIT ({reason})";
            }
        }
        Vcpu = Accel.CreateVcpu(0);
        if (EmulatedInterrupts != null)
        {
            var apic = EmulatedInterrupts.LocalApics[0];
            Vcpu.AttachInterruptController(apic, apic);
            apic.OnNmi = Vcpu.InjectNmi;
        }
        Vm.Io.Register(0xE9, 1, new ConsolePort(this));
        Vm.Io.Register(0xF4, 1, new ExitPort(this));
        Vm.Mmio.Register(MmioBase, 0x1000, new RecordingMmio(this));
        Vm.PowerEventRequested += _ => Vcpu.RequestStop();
    }

    private sealed class ConsolePort(GuestMachine m) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0xE9;
        public void Write(ushort offset, int size, uint value) { lock (m._console) m._console.Append((char)(byte)value); }
    }

    private sealed class ExitPort(GuestMachine m) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0xFF;
        public void Write(ushort offset, int size, uint value)
        {
            m.ExitValue = (int)value;
            m.Vm.RequestPowerEvent(PowerEventKind.DebugExit, (int)value);
        }
    }

    /// <summary>Reads return a pattern made of the offset, so a wrong address or size shows in the guest's registers.</summary>
    private sealed class RecordingMmio(GuestMachine m) : IMmioDevice
    {
        public ulong Read(ulong offset, int size)
        {
            lock (m._mmioLog) m._mmioLog.Add($"R{size}@{offset:x}");
            ulong v = 0xA5A5_0000_0000_0000UL | (offset * 0x0101_0101UL);
            return size >= 8 ? v : v & ((1UL << (size * 8)) - 1);
        }

        public void Write(ulong offset, int size, ulong value)
        {
            lock (m._mmioLog) m._mmioLog.Add($"W{size}@{offset:x}={value:x}");
        }
    }

    /// <summary>Attaches a vCPU-local interrupt controller and APIC page, on whichever accelerator this is.</summary>
    public void AttachController(IInterruptController ctrl, IMmioDevice? apicMmio)
    {
        Vcpu.AttachInterruptController(ctrl, apicMmio);
    }

    /// <summary>Assembles code at an address and copies it into guest RAM; returns the code bytes.</summary>
    public byte[] Load(ulong addr, int bitness, Action<Assembler> build) => GuestSetup.Load(Vm.Memory, addr, bitness, build);

    /// <summary>Loads 64-bit code at <see cref="CodeBase"/> and starts the CPU there in long mode.</summary>
    public void Start64(Action<Assembler> build)
    {
        Load(CodeBase, 64, build);
        Vcpu.SetState(BootState.Long64(Vm.Memory, CodeBase, StackTop));
    }

    public void Start32(Action<Assembler> build)
    {
        Load(CodeBase, 32, build);
        Vcpu.SetState(GuestSetup.Protected32(Vm.Memory, CodeBase, StackTop));
    }

    /// <summary>Loads 16-bit code at physical 0x7C00 and starts at 0000:7C00 in real mode, like a boot sector.</summary>
    public void Start16(Action<Assembler> build, ulong addr = 0x7C00)
    {
        Load(addr, 16, build);
        Vcpu.SetState(GuestSetup.Real16(addr));
    }

    /// <summary>
    /// Runs the vCPU on its own thread until it exits; <paramref name="whileRunning"/> runs meanwhile on the calling
    /// thread (to inject interrupts, request a stop). A watchdog stops a guest that runs too long.
    /// </summary>
    public GuestResult Run(int timeoutMs = 5000, Action<GuestMachine>? whileRunning = null)
    {
        VcpuExit exit = default;
        Exception? error = null;
        var sw = Stopwatch.StartNew();
        var t = new Thread(() => { try { exit = Vcpu.Run(); } catch (Exception e) { error = e; } }, 16 << 20) { IsBackground = true };
        t.Start();
        whileRunning?.Invoke(this);
        if (!t.Join(timeoutMs))
        {
            Vcpu.RequestStop();
            if (!t.Join(5000)) throw new TimeoutException($"{Kind} vCPU did not stop");
            throw new TimeoutException($"{Kind} guest ran longer than {timeoutMs} ms; console='{Console}'");
        }
        sw.Stop();
        if (error != null) throw new Exception($"{Kind} Run threw", error);
        var st = Vcpu.GetState();
        List<string> log;
        lock (_mmioLog) log = _mmioLog.ToList();
        return new GuestResult(Kind, exit.Reason, exit.Detail, ExitValue, Console, st.Gpr, st.Rip, log, sw.Elapsed);
    }

    /// <summary>Waits until the guest printed <paramref name="text"/> (for tests that act while it runs). The
    /// timeout is a hang guard: generous, since a loaded host can hold a vCPU thread back for seconds.</summary>
    public void WaitForConsole(string text, int timeoutMs = 60_000)
    {
        if (!SpinWait.SpinUntil(() => Console.Contains(text), timeoutMs))
            throw new TimeoutException($"{Kind} guest never printed '{text}' (hang guard {timeoutMs} ms); console='{Console}'");
    }

    /// <summary>
    /// After the guest printed its last mark before STI;HLT (or CLI;HLT): gives the vCPU a moment to get into HLT, so
    /// that what comes next usually wakes (or stops) a halted vCPU. Coverage, not synchronisation: an interrupt or
    /// stop that arrives before the HLT stays pending and is taken at the HLT, with the same result, so no outcome
    /// depends on this pause (a KVM vCPU's halt cannot be observed from outside while it is in KVM_RUN).
    /// </summary>
    public static void LetItReachHlt() => Thread.Sleep(50);

    public void Dispose()
    {
        Accel.Dispose();
        Vm.Dispose();
    }
}

public static class Differential
{
    /// <summary>
    /// Tests that need KVM are reported skipped, with the probe's reason, on a host where /dev/kvm is missing or
    /// unusable (they must be [SkippableFact]/[SkippableTheory]).
    /// </summary>
    public static void RequireKvm()
    {
        Skip.IfNot(KvmAccelerator.Probe(out var reason), $"KVM is not usable here: {reason}");
    }

    /// <summary>Runs one guest on each accelerator (same setup, fresh machine each) and returns both results.</summary>
    public static (GuestResult Emu, GuestResult Kvm) RunBoth(Action<GuestMachine> setup, Action<GuestMachine>? whileRunning = null,
        int timeoutMs = 5000, bool interruptControllers = false, Action<GuestMachine>? describe = null)
    {
        RequireKvm();
        GuestResult RunOn(AccelKind kind)
        {
            using var m = new GuestMachine(kind, interruptControllers: interruptControllers);
            describe?.Invoke(m);
            setup(m);
            return m.Run(timeoutMs, whileRunning);
        }
        return (RunOn(AccelKind.Emu), RunOn(AccelKind.Kvm));
    }

    /// <summary>Asserts the observable results agree: exit reason and value, console bytes, MMIO accesses, GPRs and,
    /// unless told otherwise, RIP.</summary>
    public static void AssertSame(GuestResult emu, GuestResult kvm, bool compareRip = true, bool compareGprs = true)
    {
        string both = $"\n emu: {emu}\n kvm: {kvm}";
        Assert.True(emu.Reason == kvm.Reason, $"exit reasons differ{both}");
        Assert.True(emu.ExitValue == kvm.ExitValue, $"exit values differ{both}");
        Assert.True(emu.Console == kvm.Console, $"console output differs{both}");
        Assert.True(emu.MmioLog.SequenceEqual(kvm.MmioLog), $"MMIO accesses differ{both}");
        if (compareGprs) Assert.True(emu.Gpr.SequenceEqual(kvm.Gpr), $"GPRs differ{both}");
        if (compareRip) Assert.True(emu.Rip == kvm.Rip, $"RIP differs{both}");
    }
}
