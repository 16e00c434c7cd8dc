using Dirigent.Devices;
using Dirigent.Devices.Misc;
using Dirigent.Machine;

namespace Dirigent.Tests.Devices.Misc;

public sealed class MiscPortTests : IDisposable
{
    private readonly MachineModel _vm = new(1 << 20);

    public void Dispose() => _vm.Dispose();

    [Fact]
    public void DebugExitReportsShiftedCode()
    {
        _vm.Io.Register(PcPlatform.DebugExitPort, 4, new DebugExit(_vm));
        _vm.Io.Write(PcPlatform.DebugExitPort, 1, 0x10);
        Assert.Equal(PowerEventKind.DebugExit, _vm.PowerEvent);
        Assert.Equal(0x21, _vm.ExitCode);
        _vm.ClearPowerEvent();
        _vm.Io.Write(PcPlatform.DebugExitPort, 4, 0x1234);
        Assert.Equal(0x2469, _vm.ExitCode);
    }

    [Fact]
    public void PostPortKeepsLastValue()
    {
        var post = new PostCodePort();
        _vm.Io.Register(PcPlatform.PostPort, 1, post);
        _vm.Io.Write(PcPlatform.PostPort, 1, 0x42);
        _vm.Io.Write(PcPlatform.PostPort, 1, 0x99);
        Assert.Equal(0x99, post.LastValue);
    }

    [Fact]
    public void ResetControlResetsOnRstCpu()
    {
        _vm.Io.Register(PcPlatform.ResetControlPort, 1, new ResetControl(_vm));
        _vm.Io.Write(PcPlatform.ResetControlPort, 1, 0x02); // select hard reset, as Linux does first
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        Assert.Equal(0x02u, _vm.Io.Read(PcPlatform.ResetControlPort, 1));
        _vm.Io.Write(PcPlatform.ResetControlPort, 1, 0x06);
        Assert.Equal(PowerEventKind.Reset, _vm.PowerEvent);
    }

    [Fact]
    public void ResetControlSoftResetOnlyInitsTheProcessors()
    {
        _vm.Io.Register(PcPlatform.ResetControlPort, 1, new ResetControl(_vm));
        int inits = 0;
        _vm.CpuInitRequested += () => inits++;
        _vm.Io.Write(PcPlatform.ResetControlPort, 1, 0x04); // RST_CPU with SYS_RST clear: soft reset (INIT)
        Assert.Equal(1, inits);
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        _vm.Io.Write(PcPlatform.ResetControlPort, 1, 0x0C); // full reset selected: the machine resets
        Assert.Equal(1, inits);
        Assert.Equal(PowerEventKind.Reset, _vm.PowerEvent);
    }

    [Fact]
    public void PortAStoresA20AndBit0Resets()
    {
        var a = new SystemControlPortA(_vm);
        _vm.Io.Register(PcPlatform.SystemControlPortA, 1, a);
        _vm.Io.Write(PcPlatform.SystemControlPortA, 1, 0x00);
        Assert.False(a.A20Enabled);
        _vm.Io.Write(PcPlatform.SystemControlPortA, 1, 0x02);
        Assert.True(a.A20Enabled);
        Assert.Equal(0x02u, _vm.Io.Read(PcPlatform.SystemControlPortA, 1));
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        _vm.Io.Write(PcPlatform.SystemControlPortA, 1, 0x03);
        Assert.Equal(PowerEventKind.Reset, _vm.PowerEvent);
    }
}
