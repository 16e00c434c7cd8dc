using Dirigent.Devices;
using Dirigent.Devices.Timer;
using Dirigent.Machine;
using Dirigent.Tests.Devices.Misc;

namespace Dirigent.Tests.Devices.Timer;

public sealed class CmosRtcTests : IDisposable
{
    private readonly MachineModel _vm = new(1 << 20);
    private readonly ManualClock _clock = new();
    private readonly FakeIrqLine _irq8 = new();
    private readonly CmosRtc _rtc;
    private readonly DateTime _hostBefore;
    private readonly long _vmStartNs;

    public CmosRtcTests()
    {
        _hostBefore = DateTime.UtcNow;
        _vmStartNs = _clock.NowNs;
        _rtc = new CmosRtc(_clock, _irq8, ramBelow4G: 128UL << 20, ramAbove4G: 1UL << 30);
        _vm.Io.Register(PcPlatform.CmosPort, CmosRtc.PortCount, _rtc);
    }

    public void Dispose() => _vm.Dispose();

    private byte Cmos(int index)
    {
        _vm.Io.Write(0x70, 1, (uint)index);
        return (byte)_vm.Io.Read(0x71, 1);
    }

    private void SetCmos(int index, byte value)
    {
        _vm.Io.Write(0x70, 1, (uint)index);
        _vm.Io.Write(0x71, 1, value);
    }

    private static int Bcd(byte v) => (v >> 4) * 10 + (v & 0xF);

    /// <summary>Reads the time the way Linux's mc146818_get_time does: wait for UIP clear, then read the fields.</summary>
    private DateTime ReadTime()
    {
        while ((Cmos(0x0A) & 0x80) != 0) _clock.AdvanceUs(50);
        byte b = Cmos(0x0B);
        bool binary = (b & 0x04) != 0, h24 = (b & 0x02) != 0;
        Func<byte, int> dec = binary ? v => v : Bcd;
        int sec = dec(Cmos(0)), min = dec(Cmos(2));
        byte rawHour = Cmos(4);
        int hour = h24 ? dec(rawHour) : dec((byte)(rawHour & 0x7F)) % 12 + ((rawHour & 0x80) != 0 ? 12 : 0);
        int day = dec(Cmos(7)), month = dec(Cmos(8)), year = dec(Cmos(9)), century = dec(Cmos(0x32));
        return new DateTime(century * 100 + year, month, day, hour, min, sec, DateTimeKind.Utc);
    }

    /// <summary>
    /// The RTC starts at the host's time when it is made and then follows VM time: <paramref name="t"/> (whole
    /// seconds) lies between the host's clock before the RTC was made and now, each moved on by the VM time that
    /// passed. Ordering, not a window: a host that stalls between the reads cannot fail it.
    /// </summary>
    private void AssertFollowsHostClock(DateTime t)
    {
        var hostAfter = DateTime.UtcNow;
        var vm = TimeSpan.FromTicks((_clock.NowNs - _vmStartNs) / 100);
        var lo = _hostBefore + vm - TimeSpan.FromSeconds(1); // the RTC shows whole seconds
        var hi = hostAfter + vm;
        Assert.True(t >= lo && t <= hi, $"RTC {t:O} outside [{lo:O}, {hi:O}]");
    }

    [Fact]
    public void BcdTimeMatchesHostClock()
    {
        Assert.Equal(0x02, Cmos(0x0B) & 0x06); // BCD, 24 h by default
        var t = ReadTime();
        AssertFollowsHostClock(t);
        Assert.Equal((int)t.DayOfWeek + 1, Bcd(Cmos(6)));
    }

    [Fact]
    public void BinaryAnd12HourModes()
    {
        SetCmos(0x0B, 0x06); // binary, 24 h
        var t = ReadTime();
        AssertFollowsHostClock(t);
        SetCmos(0x0B, 0x04); // binary, 12 h
        var t12 = ReadTime();
        AssertFollowsHostClock(t12);
        byte hour = Cmos(4);
        Assert.InRange(hour & 0x7F, 1, 12);
    }

    [Fact]
    public void UipIsSetFor244UsBeforeEachSecondChange()
    {
        int steps = 0;
        while ((Cmos(0x0A) & 0x80) == 0)
        {
            _clock.AdvanceUs(10);
            Assert.True(++steps < 110_000, "UIP never set");
        }
        long uipAt = _clock.NowNs;
        byte sec = Cmos(0);
        while ((Cmos(0x0A) & 0x80) != 0) _clock.AdvanceUs(10);
        long clearAt = _clock.NowNs;
        Assert.InRange(clearAt - uipAt, 230_000, 260_000);
        Assert.Equal((Bcd(sec) + 1) % 60, Bcd(Cmos(0)));
        Assert.Equal(0x26, Cmos(0x0A));
        // A whole second later UIP comes back once.
        _clock.AdvanceMs(999.85);
        Assert.Equal(0x80, Cmos(0x0A) & 0x80);
    }

    [Fact]
    public void GuestCanSetTheClockWithTheSetBit()
    {
        byte b = Cmos(0x0B);
        SetCmos(0x0B, (byte)(b | 0x80));
        SetCmos(0, 0x30); SetCmos(2, 0x15); SetCmos(4, 0x10);
        SetCmos(7, 0x24); SetCmos(8, 0x12); SetCmos(9, 0x31); SetCmos(0x32, 0x20);
        // While SET is held the clock stands still and the registers read what was written.
        _clock.AdvanceMs(3000);
        Assert.Equal(0x30, Cmos(0));
        Assert.Equal(0, Cmos(0x0A) & 0x80);
        SetCmos(0x0B, b);
        Assert.Equal(new DateTime(2031, 12, 24, 10, 15, 30, DateTimeKind.Utc), ReadTime());
        _clock.AdvanceMs(1500);
        Assert.Equal(new DateTime(2031, 12, 24, 10, 15, 31, DateTimeKind.Utc), ReadTime());
        // Writing one field of the running clock changes just that field.
        SetCmos(2, 0x59);
        Assert.Equal(new DateTime(2031, 12, 24, 10, 59, 31, DateTimeKind.Utc), ReadTime());
    }

    [Fact]
    public void PeriodicInterruptSetsPfAndReadingRegisterCClears()
    {
        SetCmos(0x0A, 0x2B); // rate 11: 31.25 ms
        Assert.Equal(0, Cmos(0x0C) & 0x80);
        SetCmos(0x0B, 0x42); // PIE
        _clock.AdvanceMs(31.25);
        Assert.True(_irq8.Level);
        Assert.Equal(0xC0, Cmos(0x0C) & 0xC0); // IRQF | PF
        Assert.False(_irq8.Level);
        Assert.Equal(0, Cmos(0x0C));           // read-to-clear
        // Each serviced period raises the line again.
        for (int i = 0; i < 10; i++)
        {
            _clock.AdvanceMs(31.25);
            Assert.True(_irq8.Level);
            Cmos(0x0C);
        }
        Assert.Equal(11, _irq8.RisingEdges);
        // An unserviced line stays high: one edge however long the guest waits.
        _clock.AdvanceMs(500);
        Assert.Equal(12, _irq8.RisingEdges);
        SetCmos(0x0B, 0x02);
        Cmos(0x0C);
        _clock.AdvanceMs(500);
        Assert.False(_irq8.Level);
        Assert.Equal(0, _clock.PendingTimers);
    }

    [Fact]
    public void UpdateEndedInterruptOncePerSecond()
    {
        SetCmos(0x0B, 0x12); // UIE
        _clock.AdvanceMs(1000);
        Assert.True(_irq8.Level);
        Assert.Equal(0x90, Cmos(0x0C) & 0x90); // IRQF | UF (PF runs too at the default rate)
        Assert.Equal(0, Cmos(0x0C) & 0x90);
        _clock.AdvanceMs(1000);
        Assert.Equal(2, _irq8.RisingEdges);
    }

    [Fact]
    public void AlarmInterruptFiresOnMatch()
    {
        SetCmos(0x0B, 0x26); // binary, 24 h, AIE
        var now = ReadTime();
        int target = (now.Second + 3) % 60;
        SetCmos(0x05, 0xC0); SetCmos(0x03, 0xC0); SetCmos(0x01, (byte)target); // hh:mm don't care
        _clock.AdvanceMs(1000);
        Assert.False(_irq8.Level);
        _clock.AdvanceMs(2000);
        Assert.True(_irq8.Level);
        Assert.Equal(0xA0, Cmos(0x0C) & 0xA0);
        Assert.Equal(target, Cmos(0));
    }

    [Fact]
    public void MemorySizeBytesAreQemuStyle()
    {
        Assert.Equal(640, Cmos(0x15) | (Cmos(0x16) << 8));
        Assert.Equal(0xFFFF, Cmos(0x17) | (Cmos(0x18) << 8));   // (128 MiB - 1 MiB) / 1 KiB capped
        Assert.Equal(0xFFFF, Cmos(0x30) | (Cmos(0x31) << 8));
        Assert.Equal((128 - 16) * 16, Cmos(0x34) | (Cmos(0x35) << 8));
        Assert.Equal(0x4000, Cmos(0x5B) | (Cmos(0x5C) << 8) | (Cmos(0x5D) << 16));
        var small = new CmosRtc(_vm.Clock, null, 32UL << 20);
        small.Write(0, 1, 0x30);
        uint lo = small.Read(1, 1);
        small.Write(0, 1, 0x31);
        uint hi = small.Read(1, 1);
        Assert.Equal((32u - 1) * 1024, lo | (hi << 8));
    }

    [Fact]
    public void ChecksumCoversConfigurationBytes()
    {
        _rtc.SetCmosByte(0x10, 0x40);
        int sum = 0;
        for (int i = 0x10; i <= 0x2D; i++) sum += Cmos(i);
        Assert.Equal(sum, (Cmos(0x2E) << 8) | Cmos(0x2F));
        Assert.Equal(0x40, Cmos(0x10));
    }

    [Fact]
    public void IndexPortStoresNmiDisableAndRamIsReadWrite()
    {
        _vm.Io.Write(0x70, 1, 0x80 | 0x40);
        Assert.True(_rtc.NmiDisabled);
        _vm.Io.Write(0x71, 1, 0x5A);
        SetCmos(0x40, 0x5A);
        Assert.Equal(0x5A, Cmos(0x40));
        Assert.False(_rtc.NmiDisabled);
        Assert.Equal(0x80, Cmos(0x0D)); // VRT
    }
}
