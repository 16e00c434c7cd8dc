using Dirigent.Devices;
using Dirigent.Devices.Firmware;
using Dirigent.Devices.Interrupts;
using Dirigent.Devices.Serial;
using Dirigent.Devices.Timer;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;
using Dirigent.Machine.Time;
using Dirigent.Tests.Devices.Misc;
using Xunit.Abstractions;

namespace Dirigent.Tests.Fuzz;

/// <summary>
/// Random register traffic (any offset in the device's window, any width, boundary and random values, mixed with
/// the device's other inputs: IRQ lines, interrupt acknowledges, time) against each platform device. One case is a
/// fresh device, a burst of traffic, then the sequence a guest uses to (re)initialise the device and a check that
/// it then works: nothing escapes as an exception, and the device is not left wedged.
/// </summary>
public sealed class DeviceRegisterFuzzTests(ITestOutputHelper output) : IDisposable
{
    private const int OpsPerCase = 64;
    private readonly VirtualClock _clock = new();

    public void Dispose() => _clock.Dispose();

    // The widths a CPU produces: 1, 2 or 4 bytes for port I/O, up to 8 for MMIO.
    private static readonly int[] Sizes = [1, 2, 4, 8];

    /// <summary>Register values biased towards what changes behaviour: all-zeros, all-ones, single bits, small numbers.</summary>
    internal static ulong Value(Random r) => r.Next(8) switch
    {
        0 => 0,
        1 => ulong.MaxValue,
        2 => 1UL << r.Next(64),
        3 => (ulong)r.Next(256),
        4 => (ulong)r.Next(0x10000),
        _ => (ulong)r.NextInt64() ^ ((ulong)r.Next() << 33),
    };

    internal static int Size(Random r) => Sizes[r.Next(Sizes.Length)];
    internal static int PortSize(Random r) => Sizes[r.Next(3)];

    [Fact]
    public void LapicMmio()
    {
        using var kicks = new SemaphoreSlim(0);
        FuzzBudget.Run(GetType(), output, 4000, (i, rnd) =>
        {
            var apic = new LocalApic(0, _clock, 2_000_000_000) { Kick = () => kicks.Release() };
            try
            {
                for (int k = 0; k < OpsPerCase; k++)
                {
                    // Mostly real registers (offset 0x10*n + 0..3), sometimes anywhere in the 4 KiB page.
                    ulong off = rnd.Next(4) == 0 ? (ulong)rnd.Next(0x1000) : (ulong)(rnd.Next(0x40) * 0x10 + rnd.Next(4));
                    switch (rnd.Next(10))
                    {
                        case < 5: apic.Write(off, Size(rnd), Value(rnd)); break;
                        case < 8: apic.Read(off, Size(rnd)); break;
                        case 8: if (apic.HasPendingInterrupt) apic.AcknowledgeInterrupt(); break;
                        default:
                            if (rnd.Next(2) == 0) apic.SetLint(rnd.Next(-1, 3), rnd.Next(2) == 0);
                            else apic.WriteTscDeadline(Value(rnd), (long)Value(rnd));
                            break;
                    }
                }
                // Re-initialise as firmware does after INIT (the LINT wires are not the APIC's: lower them), and check
                // delivery and the timer.
                apic.SetLint(0, false);
                apic.SetLint(1, false);
                apic.Reset();
                apic.Write(LocalApic.RegSvr, 4, 0x1FF);
                FuzzBudget.Check(apic.Read(LocalApic.RegId, 4) == 0 && apic.Read(LocalApic.RegVersion, 4) == LocalApic.VersionValue,
                    "ID/version wrong after reset");
                FuzzBudget.Check(!apic.HasPendingInterrupt, "an interrupt survived the reset");
                apic.Write(LocalApic.RegIcrLow, 4, 0x0004_4000u | 0x40); // self IPI, fixed, vector 0x40
                FuzzBudget.Check(apic.HasPendingInterrupt && apic.AcknowledgeInterrupt() == 0x40, "self IPI not delivered");
                apic.Write(LocalApic.RegEoi, 4, 0);
                // One-shot timer, divide by 1, count 1: due after 1 ns of VM time; the Kick says it fired.
                while (kicks.CurrentCount > 0) kicks.Wait(0);
                apic.Write(LocalApic.RegTimerDivide, 4, 0xB);
                apic.Write(LocalApic.RegLvtTimer, 4, 0x41);
                apic.Write(LocalApic.RegTimerInitial, 4, 1);
                // A generous bound that only a wedged timer exceeds (not a timing assertion: the wait ends at the kick).
                while (!apic.HasPendingInterrupt) FuzzBudget.Check(kicks.Wait(30_000), "LAPIC timer never fired after re-init");
                FuzzBudget.Check(apic.AcknowledgeInterrupt() == 0x41, "timer vector wrong");
            }
            finally { apic.Reset(); } // stops a periodic timer the traffic may have left on the shared clock
        });
    }

    private sealed class RecordingBus : IApicBus
    {
        public readonly List<ApicMessage> Messages = new();
        public bool Deliver(in ApicMessage message, LocalApic? source) { Messages.Add(message); return true; }
        public void BroadcastEoi(int vector) { }
    }

    [Fact]
    public void IoApicMmio()
    {
        FuzzBudget.Run(GetType(), output, 6000, (i, rnd) =>
        {
            var bus = new RecordingBus();
            var io = new IoApic(bus, 0);
            for (int k = 0; k < OpsPerCase; k++)
            {
                ulong off = rnd.Next(3) switch { 0 => 0x00, 1 => 0x10, _ => (ulong)rnd.Next(0x100) };
                switch (rnd.Next(8))
                {
                    case < 4:
                        // The index register gets real register numbers (0..0x3F) most of the time.
                        ulong v = off == 0 && rnd.Next(2) == 0 ? (ulong)rnd.Next(0x40) : Value(rnd);
                        io.Write(off, Size(rnd), v);
                        break;
                    case < 6: io.Read(off, Size(rnd)); break;
                    case 6: io.SetPin(rnd.Next(-2, 30), rnd.Next(2) == 0); break;
                    default: io.EndOfInterrupt(rnd.Next(-1, 257)); break;
                }
            }
            io.Reset();
            uint Reg(int index) { io.Write(0, 4, (ulong)index); return (uint)io.Read(0x10, 4); }
            FuzzBudget.Check(Reg(1) == 0x0017_0011, $"version register 0x{Reg(1):x} after reset");
            io.Write(0, 4, 0x11 + 2 * 5); io.Write(0x10, 4, 0);        // pin 5: destination 0
            io.Write(0, 4, 0x10 + 2 * 5); io.Write(0x10, 4, 0x55);     // fixed, edge, unmasked, vector 0x55
            FuzzBudget.Check(Reg(0x10 + 2 * 5) == 0x55, "redirection entry does not read back");
            bus.Messages.Clear();
            io.SetPin(5, false);
            io.SetPin(5, true);
            FuzzBudget.Check(bus.Messages.Count == 1 && bus.Messages[0].Vector == 0x55, "edge on pin 5 not delivered");
        });
    }

    [Fact]
    public void PicPorts()
    {
        FuzzBudget.Run(GetType(), output, 6000, (i, rnd) =>
        {
            var pic = new Pic8259();
            var io = new IoBus();
            pic.RegisterPorts(io);
            ushort[] ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1];
            for (int k = 0; k < OpsPerCase; k++)
            {
                ushort port = ports[rnd.Next(ports.Length)];
                switch (rnd.Next(8))
                {
                    case < 4: io.Write(port, PortSize(rnd), (uint)Value(rnd)); break;
                    case < 6: io.Read(port, PortSize(rnd)); break;
                    case 6: pic.SetIrq(rnd.Next(-1, 17), rnd.Next(2) == 0); break;
                    default: if (pic.Intr) pic.Acknowledge(); break;
                }
            }
            // Lower every line the traffic raised (a guest reboot does not change the wires), then the BIOS init.
            for (int irq = 0; irq < 16; irq++) pic.SetIrq(irq, false);
            io.Write(0x4D0, 1, 0); io.Write(0x4D1, 1, 0);
            byte[] master = [0x11, 0x20, 0x04, 0x01], slave = [0x11, 0x28, 0x02, 0x01];
            for (int k = 0; k < 4; k++) { io.Write((ushort)(0x20 + (k == 0 ? 0 : 1)), 1, master[k]); io.Write((ushort)(0xA0 + (k == 0 ? 0 : 1)), 1, slave[k]); }
            io.Write(0x21, 1, 0); io.Write(0xA1, 1, 0);
            FuzzBudget.Check(!pic.Intr, "INTR raised with no line up after init");
            pic.SetIrq(3, true);
            FuzzBudget.Check(pic.Intr && pic.Acknowledge() == 0x23, "IRQ3 not delivered as vector 0x23");
            io.Write(0x20, 1, 0x0B);                                   // OCW3: read ISR
            FuzzBudget.Check(io.Read(0x20, 1) == 0x08, "ISR does not show IRQ3 in service");
            io.Write(0x20, 1, 0x20);                                   // non-specific EOI
            FuzzBudget.Check(io.Read(0x20, 1) == 0, "EOI left IRQ3 in service");
            pic.SetIrq(3, false);
            pic.SetIrq(10, true);                                      // through the cascade
            FuzzBudget.Check(pic.Intr && pic.Acknowledge() == 0x2A, "IRQ10 not delivered through the slave");
        });
    }

    [Fact]
    public void PitPorts()
    {
        FuzzBudget.Run(GetType(), output, 6000, (i, rnd) =>
        {
            var clock = new ManualClock();
            var irq = new FakeIrqLine();
            var pit = new Pit8254(clock, irq);
            for (int k = 0; k < OpsPerCase; k++)
            {
                ushort off = (ushort)rnd.Next(Pit8254.PortCount);
                switch (rnd.Next(8))
                {
                    case < 4: pit.Write(off, PortSize(rnd), (uint)Value(rnd)); break;
                    case < 6: pit.Read(off, PortSize(rnd)); break;
                    case 6: pit.SetGate(rnd.Next(-1, 4), rnd.Next(2) == 0); break;
                    // At most 50 ms at a time: the test clock runs every due callback at its own deadline, so a long
                    // jump with a 1-tick period would replay millions of ticks (the real clock drops missed ones).
                    default: clock.AdvanceNs(rnd.Next(3) == 0 ? rnd.Next(50_000_000) : rnd.Next(100_000)); break;
                }
            }
            // Linux's PIT setup: channel 0, lobyte/hibyte, mode 2 (rate generator), count 1000.
            pit.SetGate(0, true);
            pit.Write(3, 1, 0x34);
            pit.Write(0, 1, 1000 & 0xFF);
            pit.Write(0, 1, 1000 >> 8);
            clock.AdvanceNs(Pit8254.TicksToNs(10));
            pit.Write(3, 1, 0x00);                                     // latch channel 0
            uint count = pit.Read(0, 1) | pit.Read(0, 1) << 8;
            FuzzBudget.Check(count is >= 985 and <= 995, $"counter reads {count} 10 ticks after loading 1000");
            int edges = irq.RisingEdges;
            clock.AdvanceNs(Pit8254.TicksToNs(3000));
            FuzzBudget.Check(irq.RisingEdges - edges is >= 2 and <= 4, $"{irq.RisingEdges - edges} IRQ0 edges in 3 periods");
        });
    }

    [Fact]
    public void RtcPorts()
    {
        FuzzBudget.Run(GetType(), output, 6000, (i, rnd) =>
        {
            var clock = new ManualClock();
            var rtc = new CmosRtc(clock, new FakeIrqLine(), 64UL << 20);
            for (int k = 0; k < OpsPerCase; k++)
            {
                ushort off = (ushort)rnd.Next(CmosRtc.PortCount);
                switch (rnd.Next(8))
                {
                    case < 4:
                        // The index port mostly gets real indices (with or without the NMI-disable bit).
                        uint v = off == 0 && rnd.Next(2) == 0 ? (uint)(rnd.Next(0x80) | (rnd.Next(2) << 7)) : (uint)Value(rnd);
                        rtc.Write(off, PortSize(rnd), v);
                        break;
                    case < 7: rtc.Read(off, PortSize(rnd)); break;
                    default: clock.AdvanceNs(rnd.Next(3) == 0 ? rnd.NextInt64(1L << 42) : rnd.Next(2_000_000)); break;
                }
            }
            // A guest's RTC driver: set the time with SET held (binary, 24h), let it run two seconds, read it back.
            byte Reg(int index) { rtc.Write(0, 1, (uint)index); return (byte)rtc.Read(1, 1); }
            void Set(int index, byte v) { rtc.Write(0, 1, (uint)index); rtc.Write(1, 1, v); }
            Set(0x0A, 0x26);                                           // 32.768 kHz divider running, 1024 Hz rate
            Set(0x0B, 0x86);                                           // SET, binary, 24h
            Set(0x00, 10); Set(0x02, 20); Set(0x04, 5);
            Set(0x0B, 0x06);
            FuzzBudget.Check((Reg(0x0B) & 0x7F) == 0x06, "status B does not read back");
            Set(0x40, 0xA5);
            FuzzBudget.Check(Reg(0x40) == 0xA5, "CMOS RAM does not read back");
            clock.AdvanceNs(2_000_000_000);
            int sec = Reg(0x00);
            FuzzBudget.Check(sec is >= 11 and <= 13 && Reg(0x02) == 20 && Reg(0x04) == 5, $"time reads {Reg(0x04)}:{Reg(0x02)}:{sec}, 2 s after 5:20:10");
        });
    }

    private sealed class Capture : ISerialBackend
    {
        public readonly List<byte> Bytes = new();
        public void Write(byte b) => Bytes.Add(b);
    }

    [Fact]
    public void UartPorts()
    {
        FuzzBudget.Run(GetType(), output, 6000, (i, rnd) =>
        {
            var clock = new ManualClock();
            var backend = new Capture();
            var uart = new Uart16550(backend, new FakeIrqLine(), clock);
            for (int k = 0; k < OpsPerCase; k++)
            {
                ushort off = (ushort)rnd.Next(Uart16550.PortCount);
                switch (rnd.Next(9))
                {
                    case < 4: uart.Write(off, PortSize(rnd), (uint)Value(rnd)); break;
                    case < 7: uart.Read(off, PortSize(rnd)); break;
                    case 7: uart.EnqueueInput(Enumerable.Range(0, rnd.Next(40)).Select(_ => (byte)rnd.Next(256)).ToArray()); break;
                    default: clock.AdvanceNs(rnd.Next(5_000_000)); break;
                }
            }
            // A driver's probe: 8N1, FIFOs on and cleared, loopback; a byte sent comes back; then out to the backend.
            uart.Write(3, 1, 0x03);
            uart.Write(1, 1, 0x00);
            uart.Write(2, 1, 0x07);
            uart.Write(4, 1, 0x10);
            for (int k = 0; k < 100 && (uart.Read(5, 1) & 1) != 0; k++) uart.Read(0, 1);
            FuzzBudget.Check((uart.Read(5, 1) & 1) == 0, "receive FIFO does not drain");
            uart.Write(0, 1, 0x5A);
            clock.AdvanceMs(1);
            FuzzBudget.Check((uart.Read(5, 1) & 1) != 0 && uart.Read(0, 1) == 0x5A, "loopback byte did not come back");
            uart.Write(4, 1, 0x03);
            int before = backend.Bytes.Count;
            uart.Write(0, 1, 0x42);
            clock.AdvanceMs(1);
            FuzzBudget.Check(backend.Bytes.Count == before + 1 && backend.Bytes[^1] == 0x42, "transmitted byte did not reach the backend");
        });
    }

    [Fact]
    public void FwCfgPorts()
    {
        const ulong Ram = 0x1_0000;
        using var mem = new GuestMemory(Ram);
        bool outside = false;
        mem.ExternalWrite += (gpa, len) => outside |= gpa + len > Ram || gpa + len < gpa;
        FuzzBudget.Run(GetType(), output, 6000, (i, rnd) =>
        {
            var fw = new FwCfg(mem);
            fw.AddFile("etc/test", Enumerable.Range(0, 300).Select(k => (byte)k).ToArray());
            for (int k = 0; k < OpsPerCase; k++)
            {
                ushort off = (ushort)rnd.Next(FwCfg.PortCount);
                switch (rnd.Next(8))
                {
                    case < 3: fw.Write(off, PortSize(rnd), (uint)Value(rnd)); break;
                    case < 6: fw.Read(off, PortSize(rnd)); break;
                    default:
                        // A DMA descriptor (big-endian control, length, address) somewhere, then its address written.
                        ulong at = rnd.Next(4) == 0 ? Value(rnd) : (ulong)rnd.Next((int)Ram - 16);
                        if (at <= Ram - 16)
                        {
                            var d = new byte[16].AsSpan();
                            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(d, (uint)(rnd.Next(0x40) | rnd.Next(0x40) << 16));
                            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(d[4..], rnd.Next(2) == 0 ? (uint)rnd.Next(0x2000) : (uint)Value(rnd));
                            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(d[8..], rnd.Next(2) == 0 ? (ulong)rnd.Next((int)Ram) : Value(rnd));
                            mem.Write(at, d);
                        }
                        fw.Write(4, 4, System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((uint)(at >> 32)));
                        fw.Write(8, 4, System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((uint)at));
                        break;
                }
            }
            FuzzBudget.Check(!outside, "fw_cfg DMA wrote outside guest RAM");
            // The firmware's probe: signature through the data port.
            fw.Write(0, 2, 0);
            uint sig = 0;
            for (int k = 0; k < 4; k++) sig |= fw.Read(1, 1) << (8 * k);
            FuzzBudget.Check(sig == 0x554D4551, $"signature 0x{sig:x8} after the traffic"); // "QEMU"
        });
    }
}
