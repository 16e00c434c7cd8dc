using Dirigent.Devices.Firmware;
using Dirigent.Devices.Pci;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;
using Dirigent.Machine.State;
using Dirigent.Tests.Pci;

namespace Dirigent.Tests.Firmware;

/// <summary>
/// The i440FX PAM registers steering 0xC0000-0xFFFFF between the BIOS ROM and shadow RAM, as SeaBIOS's
/// make_bios_writable / make_bios_readonly use them, and the PIIX3's PIRQ routing of PCI INTx to ISA IRQs.
/// </summary>
public class ShadowAndPirqTests : IDisposable
{
    private readonly GuestMemory _mem = new(32 << 20);
    private readonly IoBus _io = new();
    private readonly MmioBus _mmio = new();
    private readonly FakeInterruptSink _sink = new();
    private readonly PciBus _bus;
    private readonly BiosShadow _shadow;
    private readonly Piix3IsaBridge _isa;
    private readonly byte[] _rom;

    public ShadowAndPirqTests()
    {
        // A 256 KiB "ROM" with a seeded pattern (seed 14), so every offset is recognisable.
        _rom = new byte[256 * 1024];
        new Random(14).NextBytes(_rom);
        _shadow = new BiosShadow(_mem, _rom);
        _bus = new PciBus(_mmio, _sink, 0xE000_0000, 0x1000_0000);
        _bus.Register(_io);
        _bus.Attach(new PciHostBridge(_shadow.SetPam), 0);
        _isa = new Piix3IsaBridge(_sink);
        _bus.Attach(_isa, 1);
        _bus.IntxRouter = _isa.Wrap;
    }

    public void Dispose() => _mem.Dispose();

    private void ConfigWrite(int slot, int reg, uint value, int size)
    {
        _io.Write(0xCF8, 4, 0x8000_0000u | (uint)(slot << 11) | (uint)(reg & 0xFC));
        _io.Write((ushort)(0xCFC + (reg & 3)), size, value);
    }

    private uint ConfigRead(int slot, int reg, int size)
    {
        _io.Write(0xCF8, 4, 0x8000_0000u | (uint)(slot << 11) | (uint)(reg & 0xFC));
        return _io.Read((ushort)(0xCFC + (reg & 3)), size);
    }

    private byte[] Mem(ulong at, int n) { var b = new byte[n]; _mem.Read(at, b); return b; }

    [Fact]
    public void AtPowerOnTheRomIsBelow4GiBAndItsLast128KiBAtE0000()
    {
        Assert.Equal(_rom, Mem(0xFFFC_0000, _rom.Length));
        Assert.Equal(_rom.AsSpan(_rom.Length - 0x2_0000).ToArray(), Mem(0xE_0000, 0x2_0000));
        Assert.Equal(new byte[0x2_0000], Mem(0xC_0000, 0x2_0000)); // expansion ROM space: empty
    }

    [Fact]
    public void PamSwitchesSegmentsBetweenRomAndShadowRamAsSeaBiosDoes()
    {
        // make_bios_writable: PAM1..6 = 0x33 (RAM read/write), PAM0 = 0x30: the RAM behind the ROM is empty.
        ConfigWrite(0, 0x58, 0x0000_3000, 4);
        ConfigWrite(0, 0x5C, 0x3333_3333, 4);
        ConfigWrite(0, 0x5A, 0x3333, 2);
        Assert.Equal(0x30u, ConfigRead(0, 0x59, 1));
        Assert.Equal(new byte[0x1_0000], Mem(0xF_0000, 0x1_0000));
        Assert.Equal(new byte[0x1_0000], Mem(0xE_0000, 0x1_0000));
        // ... then copies the BIOS from the high ROM into it.
        var code = Mem(0xFFFE_0000, 0x2_0000);
        _mem.Write(0xE_0000, code);
        _mem.Write(0xF_FF00, new byte[] { 1, 2, 3 }); // a variable written in the F segment
        // make_bios_readonly: 0x10/0x11 keep RAM reads: nothing moves.
        ConfigWrite(0, 0x59, 0x10, 1);
        Assert.Equal(new byte[] { 1, 2, 3 }, Mem(0xF_FF00, 3));
        // Turning RAM reads off shows the ROM again, and back on brings the RAM's bytes back.
        ConfigWrite(0, 0x59, 0x00, 1);
        Assert.Equal(_rom.AsSpan(_rom.Length - 0x100, 3).ToArray(), Mem(0xF_FF00, 3));
        var saved = _shadow.Save();
        ConfigWrite(0, 0x59, 0x30, 1);
        Assert.Equal(new byte[] { 1, 2, 3 }, Mem(0xF_FF00, 3));
        // A snapshot taken with ROM showing keeps the hidden RAM; restoring it brings it back later.
        _shadow.Restore(saved);
        Assert.Equal(0x00, _shadow.Pam(0));
        // Reset: the ROM everywhere again, PAM cleared.
        _shadow.Reset();
        Assert.Equal(_rom.AsSpan(_rom.Length - 0x2_0000).ToArray(), Mem(0xE_0000, 0x2_0000));
        Assert.Equal(0, _shadow.Pam(0));
    }

    [Fact]
    public void ASavedStateWithHiddenRamThatDoesNotMatchPamIsRefused()
    {
        var s = _shadow.Save();
        var bad = s with { Pam = [0x30, 0, 0, 0, 0, 0, 0] }; // F segment RAM, but its hidden bytes are still there
        Assert.Throws<StateRestoreException>(() => _shadow.Restore(bad));
        Assert.Throws<StateRestoreException>(() => _shadow.Restore(s with { Pam = [0xC0, 0, 0, 0, 0, 0, 0] }));
        Assert.Equal(0, _shadow.Pam(0));
    }

    [Fact]
    public void PirqRegistersRouteAFunctionsIntxToTheIsaIrqTheFirmwareChose()
    {
        var fn = new PciBusTests.TestFunction(); // INTA
        _bus.Attach(fn, 3);
        Assert.Equal(0x7000u, ConfigRead(1, 2, 2));
        int pirq = Piix3IsaBridge.Pirq(3, 1);     // slot 3 INTA → PIRQ (3 + 1 - 2) & 3 = C
        Assert.Equal(2, pirq);
        Assert.Equal(0x80u, ConfigRead(1, 0x60 + pirq, 1)); // not routed at power-on
        fn.RaiseIntx(true);
        Assert.True(_sink.Lines[PciBus.IntxGsi(3, 1)].Level); // the IOAPIC GSI line as before
        // SeaBIOS's piix_isa_bridge_setup: PIRQA..D = 10, 10, 11, 11.
        ConfigWrite(1, 0x60, 0x0B0B_0A0A, 4);
        Assert.True(_sink.Lines[11].Level);
        fn.RaiseIntx(false);
        Assert.False(_sink.Lines[11].Level);
        fn.RaiseIntx(true);
        // Re-routing moves the level; disabling drops it; a reserved IRQ (2) is not routed.
        ConfigWrite(1, 0x60 + pirq, 5, 1);
        Assert.False(_sink.Lines[11].Level);
        Assert.True(_sink.Lines[5].Level);
        ConfigWrite(1, 0x60 + pirq, 0x82, 1);
        Assert.False(_sink.Lines[5].Level);
        Assert.Equal(-1, _isa.RoutedIrq(pirq));
        ConfigWrite(1, 0x60 + pirq, 2, 1);
        Assert.Equal(-1, _isa.RoutedIrq(pirq));
        // Reset: all PIRQs disabled again.
        ConfigWrite(1, 0x60 + pirq, 11, 1);
        Assert.True(_sink.Lines[11].Level);
        _isa.Reset();
        Assert.Equal(0x80u, ConfigRead(1, 0x60 + pirq, 1));
    }
}
