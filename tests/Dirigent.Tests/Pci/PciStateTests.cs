using System.Text.Json;
using Dirigent.Devices.Pci;
using Dirigent.Machine.State;
using static Dirigent.Tests.Pci.PciBusTests;

namespace Dirigent.Tests.Pci;

/// <summary>Saved state of PCI functions and the host bridge: round trip through JSON, hostile records, reset.</summary>
public class PciStateTests
{
    private const int Slot = 3;
    private const uint Moved = 0xE010_0000; // where the "guest" moves BAR 0 (16 KiB aligned)

    private static T RoundTrip<T>(T state) where T : class =>
        JsonSerializer.Deserialize<T>(JsonSerializer.Serialize(state, StateRegistry.Json), StateRegistry.Json)!;

    /// <summary>A guest that moved BAR 0, enabled memory and bus mastering, programmed vector 2 and MSI-X with the function masked, raised vector 2 and INTx.</summary>
    private static Rig Programmed()
    {
        var r = new Rig();
        r.Write(Slot, PciConfig.Bar0, Moved);
        r.Write(Slot, PciConfig.Command, PciConfig.CommandMemory | PciConfig.CommandBusMaster, 2);
        r.Mmio.Write(Moved + 0x2000 + 32, 4, 0xFEE0_1000);
        r.Mmio.Write(Moved + 0x2000 + 40, 4, 0x4041);
        r.Mmio.Write(Moved + 0x2000 + 44, 4, 0);
        r.Write(Slot, r.Fn.MsixCap.CapabilityOffset + 2, 0xC000, 2); // enable + function mask
        r.Fn.MsixCap.Notify(2);
        r.Fn.RaiseIntx(true);
        r.Io.Write(0xCF8, 4, 0x8000_1808);
        return r;
    }

    [Fact]
    public void ConfigSpaceBarsAndMsixRoundTripAndDecodeAtTheRestoredAddress()
    {
        var a = Programmed();
        Assert.True(a.Fn.MsixCap.IsPending(2));
        Assert.Equal(0, a.Sink.MsiCount);
        var fn = RoundTrip(a.Fn.SaveFunction());
        var bridge = RoundTrip(((PciHostBridge)a.Bus.Device(0)!).Save());

        var b = new Rig();
        Assert.Equal(0UL, b.Bus.MappedBase(b.Fn, 0)); // memory space off on a fresh machine
        ((PciHostBridge)b.Bus.Device(0)!).Restore(bridge);
        b.Fn.CheckFunction(fn);
        b.Fn.RestoreFunction(fn);

        Assert.Equal(0x8000_1808u, b.Bus.ConfigAddress);
        Assert.Equal(Moved, b.Fn.BarAddress(0));
        Assert.Equal(Moved, b.Bus.MappedBase(b.Fn, 0));
        Assert.Equal(0x4041UL, b.Mmio.Read(Moved + 0x2000 + 40, 4));   // MSI-X table where the BAR now decodes
        Assert.Equal(1UL << 2, b.Mmio.Read(Moved + 0x3000, 8));        // PBA: vector 2 pending
        Assert.True(b.Fn.MsixCap.FunctionMasked);
        Assert.True(b.Sink.Lines[PciBus.IntxGsi(Slot, 1)].Level);      // INTx asserted again
        Assert.Equal(0, b.Sink.MsiCount);                               // restoring sends nothing
        // Unmasking the function delivers the pending vector with the restored message.
        b.Write(Slot, b.Fn.MsixCap.CapabilityOffset + 2, 0x8000, 2);
        Assert.Equal(new[] { (0xFEE0_1000UL, 0x4041u) }, b.Sink.Msis);
        Assert.Equal(a.Fn.SaveFunction().Config, fn.Config);
    }

    [Fact]
    public void RestoreWithMemoryDisabledStopsDecoding()
    {
        var a = new Rig();
        var off = a.Fn.SaveFunction();
        var b = Programmed();
        Assert.Equal(Moved, b.Bus.MappedBase(b.Fn, 0));
        b.Fn.RestoreFunction(off);
        Assert.Equal(0UL, b.Bus.MappedBase(b.Fn, 0));
        Assert.False(b.Sink.Lines[PciBus.IntxGsi(Slot, 1)].Level);
    }

    public static TheoryData<string> HostileCases() => new() { "short", "vendor", "misaligned bar", "bar type", "table length",
        "no pba", "reserved table bits", "pba beyond vectors", "pending unmasked" };

    [Theory]
    [MemberData(nameof(HostileCases))]
    public void HostileRecordsAreRefusedWithoutChangingTheFunction(string what)
    {
        var s = Programmed().Fn.SaveFunction();
        var cfg = (byte[])s.Config.Clone();
        var table = (byte[])s.MsixTable!.Clone();
        var pba = (byte[])s.MsixPba!.Clone();
        int cap = new Rig().Fn.MsixCap.CapabilityOffset;
        PciFunctionState bad = what switch
        {
            "short" => s with { Config = cfg[..255] },
            "vendor" => s with { Config = Set(cfg, PciConfig.VendorId, 0x86) },
            "misaligned bar" => s with { Config = Set(cfg, PciConfig.Bar0 + 1, 0x01) }, // BAR 0 = 0xE0100100, not 16 KiB aligned
            "bar type" => s with { Config = Set(cfg, PciConfig.Bar0, 0x08) },           // prefetchable bit
            "table length" => s with { MsixTable = table[..48] },
            "no pba" => s with { MsixPba = null },
            "reserved table bits" => s with { MsixTable = Set(table, 16 + 13, 1) },
            "pba beyond vectors" => s with { MsixPba = Set(pba, 0, 0x10 | 0x04) },
            "pending unmasked" => s with { Config = Set(cfg, cap + 3, 0x80) },        // function mask cleared, vector 2 pending and unmasked
            _ => throw new ArgumentException(what),
        };
        var r = new Rig();
        var before = JsonSerializer.Serialize(r.Fn.SaveFunction(), StateRegistry.Json);
        Assert.Throws<StateRestoreException>(() => r.Fn.CheckFunction(bad));
        Assert.Equal(before, JsonSerializer.Serialize(r.Fn.SaveFunction(), StateRegistry.Json));
        r.Fn.CheckFunction(s); // the untouched record passes
    }

    private static byte[] Set(byte[] a, int at, byte v) { a[at] = v; return a; }

    [Fact]
    public void HostBridgeRefusesReservedConfigAddressBits()
    {
        var r = new Rig();
        var bridge = (PciHostBridge)r.Bus.Device(0)!;
        var s = bridge.Save() with { ConfigAddress = 0x8000_0003 };
        Assert.Throws<StateRestoreException>(() => bridge.Restore(s));
        Assert.Throws<StateRestoreException>(() => bridge.Restore(bridge.Save() with { Function = null! }));
    }

    [Fact]
    public void ResetReturnsToTheStateOfAFreshFunctionAndBusListsFunctions()
    {
        var a = Programmed();
        ((ILifecycle)a.Fn).Reset();
        ((ILifecycle)a.Bus.Device(0)!).Reset();
        var fresh = new Rig();
        Assert.Equal(JsonSerializer.Serialize(fresh.Fn.SaveFunction(), StateRegistry.Json),
            JsonSerializer.Serialize(a.Fn.SaveFunction(), StateRegistry.Json));
        Assert.Equal(0u, a.Bus.ConfigAddress);
        Assert.Equal(0UL, a.Bus.MappedBase(a.Fn, 0));
        Assert.Equal(new[] { (0, 0, a.Bus.Device(0)!), (Slot, 0, (PciDevice)a.Fn) }, a.Bus.Functions.ToList());
    }

    [Fact]
    public void BusRegistersEveryFunctionUnderItsAddressWithItsRecordType()
    {
        var a = Programmed();
        var reg = new StateRegistry();
        a.Bus.RegisterState(reg);
        Assert.Equal(new[] { "pci/00:00.0", "pci/00:03.0" }, reg.Names);
        var saved = reg.SaveAll();
        Assert.Equal(nameof(PciHostBridgeState), saved["pci/00:00.0"].Type);
        Assert.Equal(nameof(PciFunctionState), saved["pci/00:03.0"].Type);
        saved = JsonSerializer.Deserialize<Dictionary<string, SavedUnit>>(JsonSerializer.Serialize(saved, StateRegistry.Json), StateRegistry.Json)!;

        var b = new Rig();
        var reg2 = new StateRegistry();
        b.Bus.RegisterState(reg2);
        reg2.RestoreAll(saved);
        Assert.Equal(Moved, b.Bus.MappedBase(b.Fn, 0));
        Assert.Equal(0x8000_1808u, b.Bus.ConfigAddress);
        reg2.ResetAll();
        Assert.Equal(0UL, b.Bus.MappedBase(b.Fn, 0));
        Assert.Equal(0u, b.Bus.ConfigAddress);
    }
}
