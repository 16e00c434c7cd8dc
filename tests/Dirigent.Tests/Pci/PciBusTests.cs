using Dirigent.Devices.Pci;
using Dirigent.Machine.Bus;

namespace Dirigent.Tests.Pci;

public class PciBusTests
{
    private const ulong Window = 0xE000_0000;

    /// <summary>A function with one 16 KiB memory BAR whose registers echo writes, and 4 MSI-X vectors in it.</summary>
    internal sealed class TestFunction : PciDevice
    {
        public readonly Dictionary<ulong, ulong> Regs = new();
        public PciMsix MsixCap { get; }

        public TestFunction() : base(0x1234, 0x5678, 0x0C_03_30, 7, 0x1AF4, 0x1100, 1)
        {
            AddMemoryBar(0, 0x4000, new Echo(this));
            MsixCap = AddMsix(4, 0, 0x2000, 0x3000);
        }

        private sealed class Echo(TestFunction f) : IMmioDevice
        {
            public ulong Read(ulong offset, int size) =>
                offset >= 0x2000 && offset < 0x2040 ? f.MsixCap.ReadTable(offset - 0x2000, size)
                : offset >= 0x3000 && offset < 0x3008 ? f.MsixCap.ReadPba(offset - 0x3000, size)
                : f.Regs.GetValueOrDefault(offset, 0xABCDUL);
            public void Write(ulong offset, int size, ulong value)
            {
                if (offset >= 0x2000 && offset < 0x2040) f.MsixCap.WriteTable(offset - 0x2000, size, value);
                else f.Regs[offset] = value;
            }
        }

        public void RaiseIntx(bool level) => SetIntx(level);
    }

    internal sealed class Rig
    {
        public readonly IoBus Io = new();
        public readonly MmioBus Mmio = new();
        public readonly FakeInterruptSink Sink = new();
        public readonly PciBus Bus;
        public readonly TestFunction Fn = new();

        public Rig()
        {
            Bus = new PciBus(Mmio, Sink, Window, 0x1000_0000);
            Bus.Register(Io);
            Bus.Attach(new PciHostBridge(), 0);
            Bus.Attach(Fn, 3);
        }

        public uint Read(int slot, int reg, int size = 4)
        {
            Io.Write(0xCF8, 4, 0x8000_0000u | (uint)(slot << 11) | (uint)(reg & 0xFC));
            return Io.Read((ushort)(0xCFC + (reg & 3)), size);
        }

        public void Write(int slot, int reg, uint value, int size = 4)
        {
            Io.Write(0xCF8, 4, 0x8000_0000u | (uint)(slot << 11) | (uint)(reg & 0xFC));
            Io.Write((ushort)(0xCFC + (reg & 3)), size, value);
        }
    }

    [Fact]
    public void HostBridgeAndFunctionAreVisibleThroughMechanism1WithByteWordAndDwordAccess()
    {
        var r = new Rig();
        Assert.Equal(0x1237_8086u, r.Read(0, 0));
        Assert.Equal(0x06u, r.Read(0, 0x0B, 1));          // base class: bridge
        Assert.Equal(0x0600u, r.Read(0, 0x0A, 2));        // host bridge
        Assert.Equal(0x5678_1234u, r.Read(3, 0));
        Assert.Equal(0x56u, r.Read(3, 3, 1));
        Assert.Equal(0x0C03_3007u, r.Read(3, 8));         // class code + revision
        // CONFIG_ADDRESS reads back (reserved low bits clear) and is only latched by dword writes.
        r.Io.Write(0xCF8, 4, 0x8000_1803);
        Assert.Equal(0x8000_1800u, r.Io.Read(0xCF8, 4));
        r.Io.Write(0xCF8, 1, 0);
        Assert.Equal(0x8000_1800u, r.Io.Read(0xCF8, 4));
        // Empty slots, other buses, other functions and a disabled address read as all ones.
        Assert.Equal(0xFFFF_FFFFu, r.Read(5, 0));
        r.Io.Write(0xCF8, 4, 0x8001_0000);
        Assert.Equal(0xFFFF_FFFFu, r.Io.Read(0xCFC, 4));
        r.Io.Write(0xCF8, 4, 0x8000_1900);
        Assert.Equal(0xFFFF_FFFFu, r.Io.Read(0xCFC, 4));
        r.Io.Write(0xCF8, 4, 0x0000_1800);
        Assert.Equal(0xFFFFu, r.Io.Read(0xCFC, 2));
    }

    [Fact]
    public void BarSizingReturnsTheSizeMaskAndReadOnlyRegistersIgnoreWrites()
    {
        var r = new Rig();
        Assert.Equal((uint)Window, r.Read(3, 0x10));      // placed by the VMM at the window start, 32-bit memory
        r.Write(3, 0x10, 0xFFFF_FFFF);
        Assert.Equal(~(0x4000u - 1), r.Read(3, 0x10));
        r.Write(3, 0x14, 0xFFFF_FFFF);
        Assert.Equal(0u, r.Read(3, 0x14));                // unimplemented BAR
        r.Write(3, 0x10, (uint)Window);
        Assert.Equal((uint)Window, r.Read(3, 0x10));
        r.Write(3, 0, 0xFFFF_FFFF);
        Assert.Equal(0x5678_1234u, r.Read(3, 0));         // IDs are read-only
        r.Write(3, 0x3C, 0x55, 1);
        Assert.Equal(0x55u, r.Read(3, 0x3C, 1));          // interrupt line is scratch for the OS
        Assert.Equal(1u, r.Read(3, 0x3D, 1));             // INTA
    }

    [Fact]
    public void BarDecodesOnlyWhileMemorySpaceIsEnabledAndFollowsBarWrites()
    {
        var r = new Rig();
        r.Fn.Regs[0x10] = 0x42;
        Assert.Equal(0xFFFF_FFFFUL, r.Mmio.Read(Window + 0x10, 4)); // not decoding yet
        r.Write(3, 4, PciConfig.CommandMemory, 2);
        Assert.Equal(0x42UL, r.Mmio.Read(Window + 0x10, 4));
        r.Mmio.Write(Window + 0x18, 4, 7);
        Assert.Equal(7UL, r.Fn.Regs[0x18]);
        // Moving the BAR moves the decode.
        r.Write(3, 0x10, (uint)Window + 0x10_0000);
        Assert.Equal(0xFFFF_FFFFUL, r.Mmio.Read(Window + 0x10, 4));
        Assert.Equal(0x42UL, r.Mmio.Read(Window + 0x10_0010, 4));
        r.Write(3, 0x10, (uint)Window);
        r.Write(3, 4, 0, 2);
        Assert.Equal(0UL, r.Bus.MappedBase(r.Fn, 0));
        Assert.Equal(0xFFFF_FFFFUL, r.Mmio.Read(Window + 0x10, 4));
    }

    [Fact]
    public void BarOverAnotherDeviceDoesNotDecodeInsteadOfCrashing()
    {
        var r = new Rig();
        var other = new TestFunction();
        r.Bus.Attach(other, 4);
        r.Write(3, 4, PciConfig.CommandMemory, 2);
        r.Write(4, 4, PciConfig.CommandMemory, 2);
        r.Write(4, 0x10, (uint)Window); // same address as slot 3's BAR
        Assert.Equal(Window, r.Bus.MappedBase(r.Fn, 0));
        Assert.Equal(0UL, r.Bus.MappedBase(other, 0));
        r.Write(4, 0x10, (uint)Window + 0x8000);
        Assert.Equal(Window + 0x8000, r.Bus.MappedBase(other, 0));
    }

    [Fact]
    public void CapabilityListStartsAt0x40AndEndsInZero()
    {
        var r = new Rig();
        Assert.NotEqual(0u, r.Read(3, 6, 2) & PciConfig.StatusCapabilitiesList);
        int p = (int)r.Read(3, 0x34, 1);
        Assert.Equal(0x40, p);
        Assert.Equal(PciConfig.CapIdMsix, (byte)r.Read(3, p, 1));
        Assert.Equal(0u, r.Read(3, p + 1, 1));              // last capability
        Assert.Equal(3u, r.Read(3, p + 2, 2) & 0x7FF);     // table size - 1
        Assert.Equal(0x2000u, r.Read(3, p + 4));            // table offset, BIR 0
        Assert.Equal(0x3000u, r.Read(3, p + 8));            // PBA offset, BIR 0
        Assert.Equal(0u, r.Read(0, 6, 2) & PciConfig.StatusCapabilitiesList); // the host bridge has none
    }

    [Fact]
    public void IntxUsesTheSwizzledGsiAndHonoursInterruptDisable()
    {
        var r = new Rig();
        int gsi = PciBus.IntxGsi(3, 1);
        Assert.Equal(19, gsi);
        Assert.Equal(20, PciBus.IntxGsi(3, 2));
        Assert.Equal(16, PciBus.IntxGsi(7, 2));
        Assert.Equal((uint)gsi, r.Read(3, 0x3C, 1));
        // The firmware's _PRT and MP entries describe the same wiring.
        for (int s = 0; s < 32; s++)
            for (int p = 1; p <= 4; p++)
                Assert.Equal(PciBus.IntxGsi(s, p), Dirigent.Devices.Firmware.PciRootAml.Gsi(s, p));
        var line = r.Sink.Lines[gsi];
        r.Fn.RaiseIntx(true);
        Assert.True(line.Level);
        Assert.NotEqual(0u, r.Read(3, 6, 2) & PciConfig.StatusInterrupt);
        r.Write(3, 4, PciConfig.CommandIntxDisable, 2);
        Assert.False(line.Level);
        Assert.NotEqual(0u, r.Read(3, 6, 2) & PciConfig.StatusInterrupt); // status still shows it
        r.Write(3, 4, 0, 2);
        Assert.True(line.Level);
        r.Fn.RaiseIntx(false);
        Assert.False(line.Level);
        Assert.Equal(0u, r.Read(3, 6, 2) & PciConfig.StatusInterrupt);
    }

    private static void ProgramVector(Rig r, int v, uint address, uint data, bool masked)
    {
        ulong e = Window + 0x2000 + (ulong)(16 * v);
        r.Mmio.Write(e, 4, address);
        r.Mmio.Write(e + 4, 4, 0);
        r.Mmio.Write(e + 8, 4, data);
        r.Mmio.Write(e + 12, 4, masked ? 1u : 0u);
    }

    [Fact]
    public void MsixDeliversUnmaskedVectorsAndHoldsMaskedOnesPending()
    {
        var r = new Rig();
        const int cap = 0x40;
        r.Write(3, 4, PciConfig.CommandMemory | PciConfig.CommandBusMaster, 2);
        Assert.Equal(1UL, r.Mmio.Read(Window + 0x2000 + 12, 4)); // vectors start masked
        ProgramVector(r, 0, 0xFEE0_0000, 0x41, masked: false);
        ProgramVector(r, 2, 0xFEE0_1000, 0x43, masked: true);

        r.Fn.MsixCap.Notify(0);
        Assert.Equal(0, r.Sink.MsiCount);                      // MSI-X not enabled yet: nothing
        r.Write(3, cap + 2, 0x8000, 2);                          // enable
        Assert.True(r.Fn.MsixCap.Enabled);
        r.Fn.MsixCap.Notify(0);
        Assert.Equal([(0xFEE0_0000UL, 0x41u)], r.Sink.Msis);

        r.Fn.MsixCap.Notify(2);                                  // masked: pending
        Assert.Single(r.Sink.Msis);
        Assert.Equal(1UL << 2, r.Mmio.Read(Window + 0x3000, 8));
        r.Mmio.Write(Window + 0x2000 + 32 + 12, 4, 0);           // unmask vector 2
        Assert.Equal((0xFEE0_1000UL, 0x43u), r.Sink.Msis[^1]);
        Assert.Equal(0UL, r.Mmio.Read(Window + 0x3000, 8));

        r.Write(3, cap + 2, 0xC000, 2);                          // function mask
        r.Fn.MsixCap.Notify(0);
        Assert.Equal(2, r.Sink.MsiCount);
        Assert.True(r.Fn.MsixCap.IsPending(0));
        r.Write(3, cap + 2, 0x8000, 2);                          // function unmask delivers it
        Assert.Equal(3, r.Sink.MsiCount);
        Assert.False(r.Fn.MsixCap.IsPending(0));

        r.Fn.MsixCap.Notify(7);                                  // no such vector: ignored
        r.Write(3, 4, PciConfig.CommandMemory, 2);               // bus mastering off: MSIs cannot be sent
        r.Fn.MsixCap.Notify(0);
        Assert.Equal(3, r.Sink.MsiCount);
        // Table size is read-only; reserved bits of Vector Control and the address's low bits read as zero.
        r.Write(3, cap + 2, 0x87FF, 2);
        Assert.Equal(0x8003u, r.Read(3, cap + 2, 2));
        r.Mmio.Write(Window + 0x2000, 4, 0xFEE0_0003);
        Assert.Equal(0xFEE0_0000UL, r.Mmio.Read(Window + 0x2000, 4));
    }

    [Fact]
    public void ResetRestoresPowerOnConfigAndAssignedBars()
    {
        var r = new Rig();
        r.Write(3, 4, PciConfig.CommandMemory | PciConfig.CommandBusMaster, 2);
        r.Write(3, 0x10, (uint)Window + 0x20_0000);
        r.Write(3, 0x42, 0x8000, 2);
        r.Bus.Reset();
        Assert.Equal(0u, r.Read(3, 4, 2));
        Assert.Equal((uint)Window, r.Read(3, 0x10));
        Assert.False(r.Fn.MsixCap.Enabled);
        Assert.Equal(0UL, r.Bus.MappedBase(r.Fn, 0));
        Assert.Equal(19u, r.Read(3, 0x3C, 1));
    }
}
