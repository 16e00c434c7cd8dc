using Dirigent.Devices;
using Dirigent.Devices.Interrupts;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Time;
using static Dirigent.Devices.Interrupts.LocalApic;

namespace Dirigent.Tests.Devices.Interrupts;

public sealed class InterruptRouterTests : IDisposable
{
    private readonly VirtualClock _clock = new();
    private readonly InterruptRouter _router;
    private readonly LocalApic _bsp, _ap;

    public InterruptRouterTests()
    {
        _router = new InterruptRouter(_clock, 2, 2_000_000_000);
        _bsp = _router.LocalApics[0];
        _ap = _router.LocalApics[1];
    }

    public void Dispose() => _clock.Dispose();

    private static void W(LocalApic a, int reg, uint v) => a.Write((ulong)reg, 4, v);
    private static uint R(LocalApic a, int reg) => (uint)a.Read((ulong)reg, 4);

    private void ProgramIoApic(int pin, ulong entry)
    {
        _router.IoApic.Write(0, 4, (uint)(0x11 + 2 * pin));
        _router.IoApic.Write(0x10, 4, entry >> 32);
        _router.IoApic.Write(0, 4, (uint)(0x10 + 2 * pin));
        _router.IoApic.Write(0x10, 4, (uint)entry);
    }

    private void EnableBoth() { W(_bsp, RegSvr, 0x1FF); W(_ap, RegSvr, 0x1FF); }

    /// <summary>
    /// Coalescing as on hardware (SDM vol. 3 §11.8.4, 82093AA): edges on one IOAPIC pin that arrive while the vector
    /// is still pending in the local APIC's IRR become one interrupt; one edge more while the vector is in service
    /// sets IRR again and is taken after the EOI (at most one in service and one pending per vector).
    /// </summary>
    [Fact]
    public void EdgeInterruptsCoalesceInTheLocalApicIrr()
    {
        EnableBoth();
        ProgramIoApic(5, 0x0000_0000_0000_0045UL); // edge, fixed, physical dest 0 (the BSP), vector 0x45
        for (int i = 0; i < 3; i++) { _router.IoApic.SetPin(5, true); _router.IoApic.SetPin(5, false); }
        Assert.Equal(0x45, _bsp.AcknowledgeInterrupt());
        Assert.False(_bsp.HasPendingInterrupt); // three edges, one interrupt
        for (int i = 0; i < 3; i++) { _router.IoApic.SetPin(5, true); _router.IoApic.SetPin(5, false); }
        Assert.False(_bsp.HasPendingInterrupt); // pending in IRR, but 0x45 is in service: same priority class waits
        Assert.NotEqual(0u, R(_bsp, RegIrr + 0x20) & (1u << 5)); // IRR bit 0x45 (register 2, bit 5)
        W(_bsp, RegEoi, 0);
        Assert.Equal(0x45, _bsp.AcknowledgeInterrupt());
        W(_bsp, RegEoi, 0);
        Assert.False(_bsp.HasPendingInterrupt); // the three edges during service were one
    }

    /// <summary>
    /// A level-triggered pin raised again and again before the EOI sends one message (Remote IRR holds it); the EOI
    /// re-delivers only while the line is still asserted, once.
    /// </summary>
    [Fact]
    public void RepeatedLevelInterruptsCoalesceUntilTheEoi()
    {
        EnableBoth();
        ProgramIoApic(9, 0x0000_0000_0000_8049UL); // level, vector 0x49, dest 0
        for (int i = 0; i < 4; i++) { _router.IoApic.SetPin(9, true); _router.IoApic.SetPin(9, i == 3); }
        Assert.Equal(0x49, _bsp.AcknowledgeInterrupt());
        Assert.False(_bsp.HasPendingInterrupt);
        Assert.NotEqual(0u, R(_bsp, RegTmr + 0x20) & (1u << 9)); // TMR marks it level: the EOI is broadcast
        W(_bsp, RegEoi, 0); // line still asserted: one more
        Assert.Equal(0x49, _bsp.AcknowledgeInterrupt());
        _router.IoApic.SetPin(9, false);
        W(_bsp, RegEoi, 0);
        Assert.False(_bsp.HasPendingInterrupt);
        Assert.Equal(0ul, _router.IoApic.ReadRedirection(9) & (1UL << 14));
    }

    [Fact]
    public void FixedIpiByPhysicalDestination()
    {
        EnableBoth();
        W(_bsp, RegIcrHigh, 0x0100_0000);
        W(_bsp, RegIcrLow, 0x4055);
        Assert.True(_ap.HasPendingInterrupt);
        Assert.False(_bsp.HasPendingInterrupt);
        Assert.Equal(0x55, _ap.AcknowledgeInterrupt());
        Assert.Equal(0u, R(_bsp, RegIcrLow) & (1u << 12)); // delivery status idle
    }

    [Fact]
    public void FixedIpiByLogicalFlatDestinationAndShorthands()
    {
        EnableBoth();
        W(_bsp, RegLdr, 0x0100_0000);
        W(_ap, RegLdr, 0x0200_0000);
        W(_bsp, RegIcrHigh, 0x0200_0000);
        W(_bsp, RegIcrLow, 0x4861); // logical destination 0x02
        Assert.True(_ap.HasPendingInterrupt);
        Assert.False(_bsp.HasPendingInterrupt);
        Assert.Equal(0x61, _ap.AcknowledgeInterrupt());

        W(_ap, RegIcrLow, 0x000C_4062); // all excluding self
        Assert.True(_bsp.HasPendingInterrupt);
        Assert.False(_ap.HasPendingInterrupt);
        Assert.Equal(0x62, _bsp.AcknowledgeInterrupt());

        W(_ap, RegIcrLow, 0x0008_4073); // all including self (above 0x61, still in service on the AP)
        Assert.True(_bsp.HasPendingInterrupt && _ap.HasPendingInterrupt);
    }

    [Fact]
    public void LogicalClusterDestination()
    {
        EnableBoth();
        W(_bsp, RegDfr, 0x0FFF_FFFF);
        W(_ap, RegDfr, 0x0FFF_FFFF);
        W(_bsp, RegLdr, 0x1100_0000); // cluster 1, member 1
        W(_ap, RegLdr, 0x2100_0000);  // cluster 2, member 1
        W(_bsp, RegIcrHigh, 0x2100_0000);
        W(_bsp, RegIcrLow, 0x4870);
        Assert.True(_ap.HasPendingInterrupt);
        Assert.False(_bsp.HasPendingInterrupt);
    }

    [Fact]
    public void InitStartupAndNmiIpisReachTheTarget()
    {
        EnableBoth();
        var inits = new List<(int, int)>();
        var sipis = new List<(int, int)>();
        int nmis = 0;
        _ap.OnInitIpi = (id, v) => inits.Add((id, v));
        _ap.OnStartupIpi = (id, v) => sipis.Add((id, v));
        _ap.OnNmi = () => nmis++;
        W(_ap, RegTpr, 0x20);
        // Linux's wakeup_secondary_cpu_via_init: INIT assert, INIT de-assert, then STARTUP twice.
        W(_bsp, RegIcrHigh, 0x0100_0000);
        W(_bsp, RegIcrLow, 0x0000_C500);
        W(_bsp, RegIcrLow, 0x0000_8500);
        W(_bsp, RegIcrLow, 0x0000_0608);
        W(_bsp, RegIcrLow, 0x0000_0608);
        Assert.Equal(new[] { (1, 0) }, inits);
        Assert.Equal(new[] { (1, 8), (1, 8) }, sipis);
        Assert.Equal(0u, R(_ap, RegTpr));   // INIT reset the AP's APIC
        Assert.Equal(0xFFu, R(_ap, RegSvr));
        Assert.Equal(0x0100_0000u, R(_ap, RegId));
        W(_bsp, RegIcrLow, 0x0000_4400);
        Assert.Equal(1, nmis);
    }

    [Fact]
    public void LevelTriggeredIoApicInterruptIsRedeliveredAfterEoiWhileAsserted()
    {
        EnableBoth();
        var line = _router.Line(10);
        ProgramIoApic(10, 0x0000_0000_0000_8060UL); // level, fixed, physical dest 0
        line.Set(true);
        Assert.True(_bsp.HasPendingInterrupt);
        Assert.Equal(0x60, _bsp.AcknowledgeInterrupt());
        Assert.True(((uint)_bsp.Read(RegTmr + 0x30, 4) & 1) != 0); // TMR bit for vector 0x60
        W(_bsp, RegEoi, 0);
        Assert.True(_bsp.HasPendingInterrupt); // EOI broadcast cleared Remote IRR; line still high
        Assert.Equal(0x60, _bsp.AcknowledgeInterrupt());
        line.Set(false);
        W(_bsp, RegEoi, 0);
        Assert.False(_bsp.HasPendingInterrupt);
        Assert.Equal(0ul, _router.IoApic.ReadRedirection(10) & (1UL << 14));
    }

    [Fact]
    public void Irq0ReachesIoApicPin2AndPic()
    {
        EnableBoth();
        ProgramIoApic(PcPlatform.PitGsi, 0x0000_0000_0000_0030UL);
        ProgramIoApic(0, 0x0000_0000_0000_0031UL);
        _router.Line(PcPlatform.IrqPit).Pulse();
        Assert.Equal(0x30, _bsp.AcknowledgeInterrupt());
        Assert.False(_bsp.HasPendingInterrupt);
    }

    [Fact]
    public void PicReachesBspThroughLint0VirtualWire()
    {
        var io = new IoBus();
        _router.Pic.RegisterPorts(io);
        // Linux's init_8259A with only IRQ1 (and the cascade) unmasked
        foreach (var (port, v) in new (ushort, byte)[] {
            (0x21, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
            (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0xF9), (0xA1, 0xFF) })
            io.Write(port, 1, v);
        var kbd = _router.Line(PcPlatform.IrqKeyboard);
        kbd.Set(true);
        Assert.True(_bsp.HasPendingInterrupt); // APIC still software-disabled: LINT0 ExtINT works anyway
        Assert.False(_ap.HasPendingInterrupt);
        Assert.Equal(0x31, _bsp.AcknowledgeInterrupt());
        Assert.False(_bsp.HasPendingInterrupt);
        kbd.Set(false);
        io.Write(0x20, 1, 0x20);
        Assert.False(_bsp.HasPendingInterrupt);
    }

    [Fact]
    public void SharedLineIsWiredOr()
    {
        EnableBoth();
        ProgramIoApic(16, 0x8070);
        var a = _router.Line(16);
        var b = _router.Line(16);
        a.Set(true);
        b.Set(true);
        a.Set(false);
        Assert.Equal(0x70, _bsp.AcknowledgeInterrupt());
        W(_bsp, RegEoi, 0);
        Assert.True(_bsp.HasPendingInterrupt); // b still holds the line
        Assert.Equal(0x70, _bsp.AcknowledgeInterrupt());
        b.Set(false);
        W(_bsp, RegEoi, 0);
        Assert.False(_bsp.HasPendingInterrupt);
    }

    [Fact]
    public void MsiDeliversByAddressAndData()
    {
        EnableBoth();
        _router.SignalMsi(0xFEE0_1000, 0x4065);
        Assert.False(_bsp.HasPendingInterrupt);
        Assert.Equal(0x65, _ap.AcknowledgeInterrupt());
        _router.SignalMsi(0xFED0_0000, 0x4066); // not an MSI address
        Assert.False(_bsp.HasPendingInterrupt || _ap.HasPendingInterrupt);
    }

    [Fact]
    public void LowestPriorityPicksLowestArbitrationPriority()
    {
        EnableBoth();
        W(_bsp, RegLdr, 0x0100_0000);
        W(_ap, RegLdr, 0x0200_0000);
        W(_bsp, RegTpr, 0x80);
        _router.Deliver(new ApicMessage(0x44, ApicDeliveryMode.LowestPriority, true, 0x03), null);
        Assert.True(Bit(_ap, 0x44));
        Assert.False(Bit(_bsp, 0x44));
    }

    private static bool Bit(LocalApic a, int v) => ((uint)a.Read((ulong)(RegIrr + v / 32 * 0x10), 4) & (1u << (v % 32))) != 0;

    [Fact]
    public void RegisterPutsPicPortsAndIoApicPageOnTheBuses()
    {
        var io = new IoBus();
        var mmio = new MmioBus();
        _router.Register(io, mmio);
        io.Write(0x21, 1, 0xA5);
        Assert.Equal(0xA5u, io.Read(0x21, 1));
        mmio.Write(PcPlatform.IoApicBase, 4, 1);
        Assert.Equal(0x0017_0011ul, mmio.Read(PcPlatform.IoApicBase + 0x10, 4));
    }

    [Fact]
    public void InvalidLinesAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _router.Line(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => _router.Line(24));
    }
}

public sealed class InterruptRouterConcurrencyTests
{
    /// <summary>
    /// Devices, the timer thread and two "vCPUs" hammer the controllers at once: every path must finish (no lock
    /// cycle) and the level-triggered line must end fully serviced.
    /// </summary>
    [Fact]
    public void ConcurrentSourcesAndVcpusDoNotDeadlock()
    {
        using var clock = new VirtualClock();
        var router = new InterruptRouter(clock, 2, 2_000_000_000);
        var io = new IoBus();
        router.Pic.RegisterPorts(io);
        foreach (var (port, v) in new (ushort, byte)[] {
            (0x21, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
            (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0xF9), (0xA1, 0xFF) })
            io.Write(port, 1, v);
        LocalApic bsp = router.LocalApics[0], ap = router.LocalApics[1];
        bsp.Write(LocalApic.RegSvr, 4, 0x1FF);
        ap.Write(LocalApic.RegSvr, 4, 0x1FF);
        bsp.Write(LocalApic.RegLvtLint0, 4, 0x700);
        router.IoApic.Write(0, 4, 0x10 + 2 * 16);
        router.IoApic.Write(0x10, 4, 0x8050); // GSI 16: level, vector 0x50, to APIC 0
        ap.Write(LocalApic.RegTimerDivide, 4, 0xB);
        ap.Write(LocalApic.RegLvtTimer, 4, 0x20060);
        ap.Write(LocalApic.RegTimerInitial, 4, 200_000); // 200 us periodic

        var stop = new ManualResetEventSlim();
        var pci = router.Line(16);
        var kbd = router.Line(1);
        int serviced = 0;
        void Vcpu(LocalApic a)
        {
            while (!stop.IsSet || a.HasPendingInterrupt)
            {
                if (!a.HasPendingInterrupt) { Thread.Yield(); continue; }
                int v = a.AcknowledgeInterrupt();
                if (v is >= 0x30 and < 0x38) io.Write(0x20, 1, 0x20); // 8259 EOI
                else if (v >= 0) { a.Write(LocalApic.RegEoi, 4, 0); Interlocked.Increment(ref serviced); }
                if (stop.IsSet) { pci.Set(false); kbd.Set(false); }
            }
        }
        var threads = new[]
        {
            new Thread(() => { for (int i = 0; i < 20_000; i++) pci.Set(i % 2 == 0); }),
            new Thread(() => { for (int i = 0; i < 20_000; i++) kbd.Set(i % 2 == 0); }),
            new Thread(() =>
            {
                for (int i = 0; i < 20_000; i++) { ap.Write(LocalApic.RegIcrHigh, 4, 0); ap.Write(LocalApic.RegIcrLow, 4, 0x4090); }
            }),
            new Thread(() => Vcpu(bsp)),
            new Thread(() => Vcpu(ap)),
        };
        foreach (var t in threads) { t.IsBackground = true; t.Start(); }
        for (int i = 0; i < 3; i++) Assert.True(threads[i].Join(20_000), $"source thread {i} hung");
        ap.Write(LocalApic.RegTimerInitial, 4, 0);
        pci.Set(false);
        kbd.Set(false);
        stop.Set();
        Assert.True(threads[3].Join(20_000) && threads[4].Join(20_000), "vCPU thread hung");
        Assert.True(serviced > 0);
        Assert.False(bsp.HasPendingInterrupt || ap.HasPendingInterrupt);
        Assert.Equal(0ul, router.IoApic.ReadRedirection(16) & (1UL << 14)); // every level delivery got its EOI
    }
}
