using System.Text;
using Dirigent.Devices.Serial;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Serial;

/// <summary>UART reset, save and restore: registers, FIFO contents, pending interrupts, the receive timeout.</summary>
public sealed class Uart16550StateTests
{
    private sealed class Capture : ISerialBackend
    {
        public readonly List<byte> Bytes = new();
        public void Write(byte b) => Bytes.Add(b);
    }

    private sealed class Rig
    {
        public readonly ManualClock Clock;
        public readonly FakeIrqLine Irq = new();
        public readonly Capture Out = new();
        public readonly Uart16550 Uart;

        public Rig(ManualClock? clock = null)
        {
            Clock = clock ?? new ManualClock();
            Uart = new Uart16550(Out, Irq, Clock);
        }

        public byte In(int reg) => (byte)Uart.Read((ushort)reg, 1);
        public void Set(int reg, byte v) => Uart.Write((ushort)reg, 1, v);

        /// <summary>What Linux's 8250 driver leaves: 115200 8N1, FIFO on with an 8-byte trigger, RX and THRE interrupts, OUT2.</summary>
        public void Program()
        {
            Set(3, 0x80); Set(0, 1); Set(1, 0); Set(3, 0x03);
            Set(2, 0x87);
            Set(4, 0x0B);
            Set(1, 0x03);
        }
    }

    [Fact]
    public void ResetGivesTheFreshDevicesState()
    {
        var r = new Rig();
        r.Program();
        r.Set(7, 0x42);
        r.Set(4, 0x1B);                    // loopback
        foreach (byte b in "abc"u8) r.Set(0, b);
        Assert.True(r.Irq.Level);
        r.Uart.Reset();
        Assert.False(r.Irq.Level);
        Assert.Equal(Json(new Uart16550(new Capture(), null, r.Clock).Save()), Json(r.Uart.Save()));
        Assert.Equal(0x01, r.In(2));        // no interrupt, FIFO off
        Assert.Equal(0x60, r.In(5));        // transmitter empty, nothing received
    }

    [Fact]
    public void RestoredUartReadsTheSameBytesAndInterrupts()
    {
        var a = new Rig();
        a.Program();
        _ = a.In(2);                        // acknowledge the THRE interrupt
        a.Uart.EnqueueInput(Encoding.ASCII.GetBytes("hello, restored world"));
        a.Clock.AdvanceUs(10);
        Assert.Equal(16, 21 - a.Uart.PendingHostInput);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Uart, b.Uart);
        Assert.Equal(Json(a.Uart.Save()), Json(b.Uart.Save()));
        Assert.True(b.Irq.Level);
        var readA = new List<byte>();
        var readB = new List<byte>();
        for (int i = 0; i < 40; i++)
        {
            Assert.Equal(a.In(2), b.In(2));
            byte lsrA = a.In(5), lsrB = b.In(5);
            Assert.Equal(lsrA, lsrB);
            Assert.Equal(a.Irq.Level, b.Irq.Level);
            if ((lsrA & 1) != 0) { readA.Add(a.In(0)); readB.Add(b.In(0)); }
            a.Clock.AdvanceUs(50); b.Clock.AdvanceUs(50);
        }
        Assert.Equal("hello, restored world", Encoding.ASCII.GetString(readB.ToArray()));
        Assert.Equal(readA, readB);
        b.Set(0, (byte)'!');
        Assert.Equal("!"u8.ToArray(), b.Out.Bytes);
    }

    [Fact]
    public void ReceiveTimeoutFiresAtTheSameTimeAfterRestore()
    {
        var a = new Rig();
        a.Program();
        _ = a.In(2);
        a.Uart.EnqueueInput("xyz"u8);        // below the trigger level: only the timeout reports it
        a.Clock.AdvanceUs(100);
        Assert.False(a.Irq.Level);
        var b = new Rig(ClockAt(a.Clock.NowNs));
        Transfer(a.Uart, b.Uart);
        Assert.False(b.Irq.Level);
        long firedA = -1, firedB = -1;
        for (int i = 0; i < 2000 && (firedA < 0 || firedB < 0); i++)
        {
            a.Clock.AdvanceUs(1); b.Clock.AdvanceUs(1);
            if (firedA < 0 && a.Irq.Level) firedA = a.Clock.NowNs;
            if (firedB < 0 && b.Irq.Level) firedB = b.Clock.NowNs;
        }
        Assert.True(firedB > 0);
        Assert.Equal(firedA, firedB);
        Assert.Equal(0xCC, b.In(2));        // character timeout, FIFOs enabled
    }

    [Fact]
    public void RestoreLowersALineTheRecordDoesNotAssert()
    {
        var quiet = new Rig();
        var r = new Rig();
        r.Program();                            // THRE pending: line high
        Assert.True(r.Irq.Level);
        Transfer(quiet.Uart, r.Uart);
        Assert.False(r.Irq.Level);
    }

    [Fact]
    public void HostileRecordsAreRefused()
    {
        var r = new Rig();
        r.Program();
        var good = r.Uart.Save();
        Uart16550State Edit(Action<Uart16550State> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(r.Uart, Edit(s => s.RxFifo = new byte[17]));
        AssertRefused(r.Uart, Edit(s => { s.FifoEnabled = false; s.RxTrigger = 1; s.RxFifo = new byte[2]; }));
        AssertRefused(r.Uart, Edit(s => s.RxTrigger = 3));
        AssertRefused(r.Uart, Edit(s => s.Ier = 0xF1));
        AssertRefused(r.Uart, Edit(s => s.LsrErrors = 0x01));
        AssertRefused(r.Uart, Edit(s => s.HostInput = null!));
        AssertRefused(r.Uart, Edit(s => s.NsSinceRxActivity = -1));
    }
}
