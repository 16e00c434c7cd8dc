using Dirigent.Devices;
using Dirigent.Devices.Serial;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;

namespace Dirigent.Tests.Devices.Serial;

public sealed class Uart16550Tests : IDisposable
{
    private const ushort Com1 = PcPlatform.Com1Port;
    private readonly MachineModel _vm = new(1 << 20);
    private readonly ManualClock _clock = new();
    private readonly FakeIrqLine _irq4 = new();
    private readonly Backend _backend = new();
    private readonly Uart16550 _uart;

    private sealed class Backend : ISerialBackend
    {
        public readonly List<byte> Bytes = new();
        public void Write(byte b) { lock (Bytes) Bytes.Add(b); }
    }

    public Uart16550Tests()
    {
        _uart = new Uart16550(_backend, _irq4, _clock);
        _vm.Io.Register(Com1, Uart16550.PortCount, _uart);
    }

    public void Dispose() => _vm.Dispose();

    private byte In(int reg) => (byte)_vm.Io.Read((ushort)(Com1 + reg), 1);
    private void Out(int reg, byte v) => _vm.Io.Write((ushort)(Com1 + reg), 1, v);

    [Fact]
    public void ProbeLikeLinuxAutoconfig()
    {
        // Scratch register.
        Out(7, 0xA5);
        Assert.Equal(0xA5, In(7));
        // IER keeps only its four bits (no UUE bit 6 as on XScale parts).
        Out(1, 0x4F);
        Assert.Equal(0x0F, In(1));
        Out(1, 0);
        // Loopback modem-status test: RTS -> CTS, OUT2 -> DCD.
        Out(4, 0x10 | 0x0A);
        Assert.Equal(0x90, In(6) & 0xF0);
        Out(4, 0);
        // FIFO detection: 16550A reports both FIFO bits, and no 64-byte FIFO bit.
        Out(2, 0x01);
        Assert.Equal(0xC0, In(2) & 0xE0);
        Out(2, 0x21);
        Assert.Equal(0, In(2) & 0x20);
        // Divisor latch is a plain register pair under DLAB.
        Out(3, 0x80);
        Out(0, 0x01);
        Out(1, 0x00);
        Assert.Equal(0x01, In(0));
        Assert.Equal(0x00, In(1));
        Out(3, 0x03);
    }

    [Fact]
    public void TransmitGoesToBackendInOrder()
    {
        Out(3, 0x03);
        foreach (byte b in "hello\n"u8.ToArray()) { Assert.NotEqual(0, In(5) & 0x20); Out(0, b); }
        lock (_backend.Bytes) Assert.Equal("hello\n"u8.ToArray(), _backend.Bytes.ToArray());
        Assert.Equal(0x60, In(5) & 0x61); // THRE, TEMT, no data
    }

    [Fact]
    public void LoopbackRoundTrip()
    {
        Out(2, 0x07);        // FIFO on and cleared
        Out(4, 0x10);        // loopback
        Out(0, 0x41);
        Out(0, 0x42);
        Assert.Equal(1, In(5) & 0x01);
        Assert.Equal(0x41, In(0));
        Assert.Equal(0x42, In(0));
        Assert.Equal(0, In(5) & 0x01);
        lock (_backend.Bytes) Assert.Empty(_backend.Bytes);
    }

    [Fact]
    public void ThreInterruptOnIerWriteAndIirReadClears()
    {
        Out(4, 0x08);   // OUT2: IRQ routed
        Out(2, 0x01);
        Out(1, 0x02);   // ETBEI while THR empty
        Assert.True(_irq4.Level);
        Assert.Equal(0xC2, In(2));
        Assert.False(_irq4.Level);
        Assert.Equal(0xC1, In(2));
        // Linux re-arms by toggling IER.
        Out(1, 0x00);
        Out(1, 0x02);
        Assert.Equal(0xC2, In(2));
        // Transmitting re-raises THRE once the byte has left.
        Out(0, (byte)'x');
        Assert.True(_irq4.Level);
        Assert.Equal(0xC2, In(2));
        Assert.Equal(3, _irq4.RisingEdges);
    }

    [Fact]
    public void Out2GatesTheIrqLine()
    {
        Out(2, 0x01);
        Out(1, 0x02);
        Assert.False(_irq4.Level);       // pending, but OUT2 low
        Assert.Equal(0xC2, In(2) & 0xCF); // ... and visible in IIR
        Out(1, 0x00);
        Out(4, 0x08);
        Out(1, 0x02);
        Assert.True(_irq4.Level);
    }

    [Fact]
    public void ReceiveInterruptAtTriggerLevelInFifoOrder()
    {
        Out(3, 0x80); Out(0, 0xFF); Out(1, 0xFF); Out(3, 0x03); // slowest rate: long character timeout
        Out(2, 0x87);   // FIFO on, cleared, trigger 8
        Out(4, 0x08);
        Out(1, 0x01);   // ERBFI
        _uart.EnqueueInput("abcdefg"u8);
        Assert.Equal(0xC1, In(2)); // 7 bytes: below the trigger level, timeout not reached
        _uart.EnqueueInput("h"u8);
        Assert.True(_irq4.Level);
        Assert.Equal(0xC4, In(2));
        var got = new List<byte>();
        while ((In(5) & 1) != 0) got.Add(In(0));
        Assert.Equal("abcdefgh"u8.ToArray(), got.ToArray());
        Assert.False(_irq4.Level);
        Assert.Equal(0xC1, In(2));
    }

    [Fact]
    public void CharacterTimeoutDeliversDataBelowTrigger()
    {
        Out(3, 0x80); Out(0, 0x01); Out(1, 0x00); Out(3, 0x03); // 115200 baud
        Out(2, 0xC7);   // trigger 14
        Out(4, 0x08);
        Out(1, 0x01);
        _uart.EnqueueInput("ls\n"u8);
        _clock.AdvanceUs(300); // four characters at 115200 baud take ~347 us
        Assert.False(_irq4.Level);
        Assert.Equal(0xC1, In(2));
        _clock.AdvanceUs(100);
        Assert.True(_irq4.Level, "no timeout interrupt");
        Assert.Equal(0xCC, In(2));
        Assert.Equal((byte)'l', In(0));
        Assert.Equal((byte)'s', In(0));
        Assert.Equal((byte)'\n', In(0));
        Assert.Equal(0xC1, In(2));
    }

    [Fact]
    public void CharacterTimeoutOnTheRealClock()
    {
        var irq = new FakeIrqLine();
        var uart = new Uart16550(_backend, irq, _vm.Clock);
        uart.Write(2, 1, 0xC7); // FIFO, trigger 14
        uart.Write(4, 1, 0x08);
        uart.Write(1, 1, 0x01);
        uart.EnqueueInput("x"u8);
        Assert.True(FakeIrqLine.WaitFor(() => irq.Level), "hang guard: no character-timeout interrupt");
        Assert.Equal(0xCCu, uart.Read(2, 1));
    }

    [Fact]
    public void NoByteLostWhenHostSendsMoreThanTheFifoHolds()
    {
        Out(2, 0x07);
        var data = Enumerable.Range(0, 200).Select(i => (byte)i).ToArray();
        _uart.EnqueueInput(data);
        Assert.Equal(200 - 16, _uart.PendingHostInput);
        var got = new List<byte>();
        for (int guard = 0; guard < 1000 && (In(5) & 1) != 0; guard++) got.Add(In(0));
        Assert.Equal(data, got.ToArray());
        Assert.Equal(0, In(5) & 0x02); // no overrun
    }

    [Fact]
    public void CharacterModeHoldsOneByte()
    {
        Out(2, 0x00);
        Out(4, 0x08);
        Out(1, 0x01);
        _uart.EnqueueInput("xy"u8);
        Assert.Equal(1, _uart.PendingHostInput);
        Assert.True(_irq4.Level);
        Assert.Equal(0x04, In(2));
        Assert.Equal((byte)'x', In(0));
        Assert.Equal((byte)'y', In(0));
        Assert.Equal(0x01, In(2));
    }

    [Fact]
    public void ModemStatusDeltasInLoopback()
    {
        Out(4, 0x10);
        In(6);                  // clear deltas from entering loopback
        Out(4, 0x10 | 0x02);    // RTS -> CTS
        byte msr = In(6);
        Assert.Equal(0x11, msr & 0x11); // CTS and DCTS
        Assert.Equal(0, In(6) & 0x0F);  // deltas clear on read
    }
}
