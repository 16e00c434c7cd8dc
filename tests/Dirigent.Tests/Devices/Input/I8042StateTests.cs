using Dirigent.Devices.Input;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Input;

/// <summary>8042 reset, save and restore: configuration, queued output, half-sent commands.</summary>
public sealed class I8042StateTests : IDisposable
{
    private readonly MachineModel _vm = new(1 << 20);

    public void Dispose() => _vm.Dispose();

    private sealed class Rig
    {
        public readonly FakeIrqLine Irq1 = new();
        public readonly I8042 Kbc;

        public Rig(MachineModel vm) => Kbc = new I8042(vm, Irq1);

        public byte Status => (byte)Kbc.CommandPort.Read(0, 1);
        public void Command(byte c) => Kbc.CommandPort.Write(0, 1, c);
        public void Data(byte d) => Kbc.DataPort.Write(0, 1, d);
        public byte Read() => (byte)Kbc.DataPort.Read(0, 1);
    }

    [Fact]
    public void ResetGivesTheFreshDevicesState()
    {
        var r = new Rig(_vm);
        r.Command(0x60); r.Data(0x47);       // configuration byte: translation, SYS, both interrupts
        r.Data(0xF5);                        // keyboard: stop scanning
        r.Data(0xF0); r.Data(0x03);          // scan code set 3
        r.Command(0xDD);                     // A20 off
        r.Command(0xD2); r.Data(0x1C);       // a byte "from the keyboard"
        r.Data(0xED);                        // LED command waiting for its parameter
        r.Command(0xD1);                     // output port write waiting for its byte
        Assert.True(r.Irq1.Level);
        r.Kbc.Reset();
        Assert.False(r.Irq1.Level);
        Assert.Equal(Json(new I8042(_vm, null).Save()), Json(r.Kbc.Save()));
        Assert.True(r.Kbc.A20Enabled);
        Assert.Equal(0, r.Status & 0x01);
    }

    [Fact]
    public void RestoredControllerRepliesTheSame()
    {
        var a = new Rig(_vm);
        a.Kbc.EnqueueScancodes([0x1E, 0x9E, 0x30]);
        a.Data(0xF0);                        // scan code set command: the parameter is still to come
        a.Command(0x20);                     // read configuration byte: queued behind the scan codes
        var b = new Rig(_vm);
        Transfer(a.Kbc, b.Kbc);
        Assert.True(b.Irq1.Level);
        Assert.Equal(Json(a.Kbc.Save()), Json(b.Kbc.Save()));
        foreach (var r in new[] { a, b }) { r.Data(0x00); } // query the current set
        var outA = new List<byte>();
        var outB = new List<byte>();
        while ((a.Status & 1) != 0) { Assert.Equal(a.Status, b.Status); outA.Add(a.Read()); outB.Add(b.Read()); }
        Assert.Equal(0, b.Status & 1);
        Assert.False(b.Irq1.Level);
        Assert.Equal(outA, outB);
        Assert.Equal(new byte[] { 0x1E, 0x9E, 0x30, 0xFA, 0x65, 0xFA, 0x41 }, outB.ToArray());
    }

    [Fact]
    public void HostileRecordsAreRefused()
    {
        var r = new Rig(_vm);
        r.Kbc.EnqueueScancodes([0x1E]);
        var good = r.Kbc.Save();
        I8042State Edit(Action<I8042State> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(r.Kbc, Edit(s => s.OutputAux = []));
        AssertRefused(r.Kbc, Edit(s => { s.Output = new byte[100_000]; s.OutputAux = new bool[100_000]; }));
        AssertRefused(r.Kbc, Edit(s => s.ScancodeSet = 4));
        AssertRefused(r.Kbc, Edit(s => s.PendingControllerCommand = 0x20));
        AssertRefused(r.Kbc, Edit(s => s.PendingKeyboardCommand = 0xFF));
    }
}
