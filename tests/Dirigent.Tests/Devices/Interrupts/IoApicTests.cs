using Dirigent.Devices.Interrupts;

namespace Dirigent.Tests.Devices.Interrupts;

public class IoApicTests
{
    private sealed class RecordingBus : IApicBus
    {
        public readonly List<ApicMessage> Messages = new();
        public bool Accepting = true;
        public bool Deliver(in ApicMessage message, LocalApic? source) { Messages.Add(message); return Accepting; }
        public void BroadcastEoi(int vector) { }
    }

    private readonly RecordingBus _bus = new();
    private readonly IoApic _ioapic;

    public IoApicTests() => _ioapic = new IoApic(_bus, id: 0);

    private uint ReadReg(byte index) { _ioapic.Write(0x00, 4, index); return (uint)_ioapic.Read(0x10, 4); }
    private void WriteReg(byte index, uint v) { _ioapic.Write(0x00, 4, index); _ioapic.Write(0x10, 4, v); }

    /// <summary>Linux's ioapic_write_entry order: high dword (destination) first, then low.</summary>
    private void Program(int pin, ulong entry)
    {
        WriteReg((byte)(0x11 + 2 * pin), (uint)(entry >> 32));
        WriteReg((byte)(0x10 + 2 * pin), (uint)entry);
    }

    [Fact]
    public void IdentificationRegisters()
    {
        Assert.Equal(0x0017_0011u, ReadReg(0x01)); // version 0x11, max redirection entry 23
        WriteReg(0x00, 0x0200_0000);
        Assert.Equal(0x0200_0000u, ReadReg(0x00));
        Assert.Equal(0x0200_0000u, ReadReg(0x02));
        Assert.Equal(0x10000u, ReadReg(0x10 + 2 * 23)); // reset: masked
        Assert.Equal(0u, ReadReg(0x10 + 2 * 24));        // beyond the table
        _ioapic.Write(0x00, 1, 0x01);
        Assert.Equal(0x01u, (uint)_ioapic.Read(0x00, 4));
    }

    [Fact]
    public void EdgeEntryDeliversOncePerRisingEdge()
    {
        Program(4, 0x0300_0000_0000_0841UL); // vector 0x41, fixed, logical, dest 3
        _ioapic.SetPin(4, true);
        _ioapic.SetPin(4, true);
        var m = Assert.Single(_bus.Messages);
        Assert.Equal(new ApicMessage(0x41, ApicDeliveryMode.Fixed, true, 3), m);
        _ioapic.SetPin(4, false);
        _ioapic.SetPin(4, true);
        Assert.Equal(2, _bus.Messages.Count);
    }

    [Fact]
    public void EdgeOnMaskedPinIsLost()
    {
        Program(4, 0x0000_0000_0001_0041UL);
        _ioapic.SetPin(4, true);
        _ioapic.SetPin(4, false);
        Program(4, 0x41);
        Assert.Empty(_bus.Messages);
    }

    [Fact]
    public void LevelEntryHoldsRemoteIrrUntilEoi()
    {
        Program(10, 0x0000_0000_0000_8052UL); // level, vector 0x52, dest 0
        _ioapic.SetPin(10, true);
        Assert.Single(_bus.Messages);
        Assert.True(_bus.Messages[0].LevelTriggered);
        Assert.NotEqual(0u, ReadReg(0x10 + 20) & (1u << 14)); // Remote IRR
        _ioapic.SetPin(10, false);
        _ioapic.SetPin(10, true);
        Assert.Single(_bus.Messages); // no new message while Remote IRR is set
        _ioapic.EndOfInterrupt(0x53); // other vector: no effect
        Assert.NotEqual(0u, ReadReg(0x10 + 20) & (1u << 14));
        _ioapic.EndOfInterrupt(0x52); // still asserted: delivered again
        Assert.Equal(2, _bus.Messages.Count);
        _ioapic.SetPin(10, false);
        _ioapic.EndOfInterrupt(0x52);
        Assert.Equal(0u, ReadReg(0x10 + 20) & (1u << 14));
        Assert.Equal(2, _bus.Messages.Count);
    }

    [Fact]
    public void UnmaskingAssertedLevelPinDelivers()
    {
        Program(11, 0x0000_0000_0001_8060UL);
        _ioapic.SetPin(11, true);
        Assert.Empty(_bus.Messages);
        Program(11, 0x8060);
        Assert.Single(_bus.Messages);
    }

    [Fact]
    public void SwitchingToEdgeClearsRemoteIrr()
    {
        // Linux clears a stuck Remote IRR on version 0x11 IOAPICs by masking and toggling the trigger mode.
        Program(10, 0x8052);
        _ioapic.SetPin(10, true);
        _ioapic.SetPin(10, false);
        Assert.NotEqual(0u, ReadReg(0x10 + 20) & (1u << 14));
        Program(10, 0x1_0052);
        Assert.Equal(0u, ReadReg(0x10 + 20) & (1u << 14));
        Program(10, 0x8052);
        Assert.Equal(0u, ReadReg(0x10 + 20) & (1u << 14));
    }

    [Fact]
    public void LevelMessageNobodyAcceptedLeavesNoRemoteIrr()
    {
        _bus.Accepting = false;
        Program(10, 0x8052);
        _ioapic.SetPin(10, true);
        Assert.Single(_bus.Messages);
        Assert.Equal(0u, ReadReg(0x10 + 20) & (1u << 14));
    }

    [Fact]
    public void ReadOnlyBitsIgnoreWrites()
    {
        Program(3, 0x5041); // Remote IRR (bit 14) and delivery status (bit 12) are read-only
        Assert.Equal(0x41u, ReadReg(0x10 + 6));
    }

    [Fact]
    public void DeliveryModesAndOddAccessesAreHandled()
    {
        Program(5, 0x0100_0000_0000_0400UL); // NMI, dest 1
        _ioapic.SetPin(5, true);
        Assert.Equal(ApicDeliveryMode.Nmi, Assert.Single(_bus.Messages).Mode);
        _ioapic.SetPin(99, true);
        _ioapic.Write(0x10, 1, 0xFF);
        _ioapic.Write(0x20, 4, 0xFF);
        Assert.Equal(0ul, _ioapic.Read(0x40, 4));
    }
}
