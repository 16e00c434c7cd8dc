using Dirigent.Devices;
using Dirigent.Devices.Input;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;

namespace Dirigent.Tests.Devices.Input;

public sealed class I8042Tests : IDisposable
{
    private readonly MachineModel _vm = new(1 << 20);
    private readonly FakeIrqLine _irq1 = new();
    private readonly I8042 _kbc;

    public I8042Tests()
    {
        _kbc = new I8042(_vm, _irq1);
        _vm.Io.Register(PcPlatform.I8042DataPort, 1, _kbc.DataPort);
        _vm.Io.Register(PcPlatform.I8042CmdPort, 1, _kbc.CommandPort);
    }

    public void Dispose() => _vm.Dispose();

    private byte Status => (byte)_vm.Io.Read(0x64, 1);
    private void Command(byte c) => _vm.Io.Write(0x64, 1, c);
    private void Data(byte d) => _vm.Io.Write(0x60, 1, d);

    /// <summary>i8042_wait_read + read: fails when nothing arrives.</summary>
    private byte ReadReply()
    {
        Assert.True((Status & 0x01) != 0, "output buffer empty");
        return (byte)_vm.Io.Read(0x60, 1);
    }

    private void AssertEmpty() => Assert.Equal(0, Status & 0x01);

    [Fact]
    public void ControllerSelfTestAndInterfaceTest()
    {
        Command(0xAA);
        Assert.Equal(0x55, ReadReply());
        Assert.NotEqual(0, Status & 0x04); // system flag
        Command(0xAB);
        Assert.Equal(0x00, ReadReply());
        AssertEmpty();
    }

    [Fact]
    public void ConfigurationByteReadWrite()
    {
        Command(0x20);
        byte ctr = ReadReply();
        Assert.Equal(0x01, ctr & 0x01);
        Command(0x60);
        Assert.NotEqual(0, Status & 0x08); // last write was a command
        Data(0x74);
        Command(0x20);
        Assert.Equal(0x74, ReadReply());
    }

    [Fact]
    public void KeyboardResetAndIdentifyLikeAtkbd()
    {
        Command(0x60); Data(0x45); // translate, keyboard interrupts on
        Data(0xFF);
        Assert.True(_irq1.Level);
        Assert.Equal(0xFA, ReadReply());
        Assert.Equal(0xAA, ReadReply());
        Assert.False(_irq1.Level);
        Assert.Equal(2, _irq1.RisingEdges);
        Data(0xF2);
        Assert.Equal(0xFA, ReadReply());
        Assert.Equal(0xAB, ReadReply());
        Assert.Equal(0x41, ReadReply()); // translated MF2 id
        Data(0xED);
        Assert.Equal(0xFA, ReadReply());
        Data(0x07);
        Assert.Equal(0xFA, ReadReply());
        Data(0xF4);
        Assert.Equal(0xFA, ReadReply());
        AssertEmpty();
    }

    [Fact]
    public void NoInterruptWhenKeyboardInterruptDisabled()
    {
        Command(0x60); Data(0x64);
        Command(0x20);
        Assert.Equal(0x64, ReadReply());
        Assert.Equal(0, _irq1.RisingEdges);
    }

    [Fact]
    public void AuxPortReportsAbsentToLinuxCheck()
    {
        // Controller loopback echoes with the AUX-data status bit.
        Command(0xD3); Data(0x5A);
        Assert.NotEqual(0, Status & 0x20);
        Assert.Equal(0x5A, ReadReply());
        // Bit assignment test: AUX disable sets AUXDIS, AUX enable cannot clear it.
        Command(0xA7);
        Command(0x20);
        Assert.NotEqual(0, ReadReply() & 0x20);
        Command(0xA8);
        Command(0x20);
        Assert.NotEqual(0, ReadReply() & 0x20);
        Command(0xA9);
        Assert.NotEqual(0, ReadReply());
        AssertEmpty();
    }

    [Fact]
    public void PulseResetLineRequestsReset()
    {
        Command(0xFF); // pulse nothing
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        Command(0xFE);
        Assert.Equal(PowerEventKind.Reset, _vm.PowerEvent);
    }

    [Fact]
    public void OutputPortKeepsA20AndResetsWhenBit0Clear()
    {
        Command(0xD1); Data(0x03);
        Command(0xD0);
        Assert.Equal(0x03, ReadReply() & 0x03);
        Assert.True(_kbc.A20Enabled);
        Command(0xD1); Data(0x01);
        Assert.False(_kbc.A20Enabled);
        Assert.Equal(PowerEventKind.None, _vm.PowerEvent);
        Command(0xD1); Data(0x00);
        Assert.Equal(PowerEventKind.Reset, _vm.PowerEvent);
    }
}
