using Dirigent.Devices;
using Dirigent.Devices.Acpi;
using Dirigent.Devices.Input;
using Dirigent.Devices.Misc;
using Dirigent.Devices.Serial;
using Dirigent.Devices.Timer;
using Dirigent.Machine;

namespace Dirigent.Tests.Devices.Misc;

/// <summary>Random port traffic (any offset, any width, any value) must never throw or wedge a device.</summary>
public sealed class GarbageInputTests
{
    private sealed class NullBackend : Dirigent.Devices.Serial.ISerialBackend { public void Write(byte b) { } }

    [Fact]
    public void RandomPortTrafficNeverThrows()
    {
        using var vm = new MachineModel(1 << 20);
        var clock = new ManualClock();
        var irq = new FakeIrqLine();
        var pit = new Pit8254(clock, irq);
        var uart = new Uart16550(new NullBackend(), irq, clock);
        var kbc = new I8042(vm, irq);
        vm.Io.Register(PcPlatform.PitPort, Pit8254.PortCount, pit);
        vm.Io.Register(PcPlatform.SystemControlPortB, 1, new SystemControlPortB(pit));
        vm.Io.Register(PcPlatform.CmosPort, CmosRtc.PortCount, new CmosRtc(clock, irq, 64UL << 20));
        vm.Io.Register(PcPlatform.Com1Port, Uart16550.PortCount, uart);
        vm.Io.Register(PcPlatform.I8042DataPort, 1, kbc.DataPort);
        vm.Io.Register(PcPlatform.I8042CmdPort, 1, kbc.CommandPort);
        vm.Io.Register(PcPlatform.AcpiPmBase, AcpiPm.PortCount, new AcpiPm(vm, clock, irq));
        vm.Io.Register(PcPlatform.DebugExitPort, DebugExit.PortCount, new DebugExit(vm));
        vm.Io.Register(PcPlatform.ResetControlPort, 1, new ResetControl(vm));
        vm.Io.Register(PcPlatform.SystemControlPortA, 1, new SystemControlPortA(vm));
        vm.Io.Register(PcPlatform.PostPort, 1, new PostCodePort());
        ushort[] bases = [0x40, 0x60, 0x70, 0x3F8, 0x600, 0xF4, 0xCF9, 0x92, 0x80];
        int[] spans = [4, 5, 2, 8, 0x40, 4, 1, 1, 1];
        var rng = new Random(1234);
        int[] sizes = [1, 2, 4, 3, 0];
        for (int i = 0; i < 200_000; i++)
        {
            int d = rng.Next(bases.Length);
            ushort port = (ushort)(bases[d] + rng.Next(spans[d]));
            int size = sizes[rng.Next(sizes.Length)];
            if (rng.Next(2) == 0) vm.Io.Write(port, size, (uint)rng.Next());
            else vm.Io.Read(port, size);
            if (i % 64 == 0) clock.AdvanceNs(rng.Next(5_000_000));
            if (i % 512 == 0) uart.EnqueueInput([(byte)i, (byte)(i >> 8)]);
            if (i % 4096 == 0) vm.ClearPowerEvent();
        }
        clock.AdvanceMs(5000);
    }
}
