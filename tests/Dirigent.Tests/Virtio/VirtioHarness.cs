using System.Buffers.Binary;
using Dirigent.Devices.Pci;
using Dirigent.Devices.Virtio;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;
using Dirigent.Storage;
using Dirigent.Tests.Pci;
using static Dirigent.Devices.Virtio.VirtioConstants;

namespace Dirigent.Tests.Virtio;

/// <summary>
/// Plays the driver side of a virtio PCI device through the real buses: config space over port I/O, the BAR over
/// MMIO, one split queue laid out at fixed addresses in a small guest RAM.
/// </summary>
public sealed class VirtioHarness : IDisposable
{
    public const ulong DescBase = 0x1000, AvailBase = 0x2000, UsedBase = 0x3000, DataBase = 0x8000;
    public const ulong RamSize = 0x4_0000;
    public const int Slot = 1;

    public readonly GuestMemory Mem;
    public readonly IoBus Io = new();
    public readonly MmioBus Mmio = new();
    public readonly FakeInterruptSink Sink = new();
    public readonly PciBus Bus;
    public readonly VirtioPciDevice Dev;
    public readonly ulong Bar;
    public ushort QueueSize { get; set; }
    private ushort _availIdx;

    /// <param name="memory">Guest RAM to share (a machine restored over the memory of the one saved); new RAM if null.</param>
    public VirtioHarness(IVirtioDevice device, ulong ramSize = RamSize, GuestMemory? memory = null)
    {
        Mem = memory ?? new GuestMemory(ramSize);
        Bus = new PciBus(Mmio, Sink, 0xE000_0000, 0x1000_0000);
        Bus.Register(Io);
        Bus.Attach(new PciHostBridge(), 0);
        Dev = new VirtioPciDevice(device, Mem);
        Bus.Attach(Dev, Slot);
        Bar = Dev.BarAddress(0);
        ConfigWrite(PciConfig.Command, PciConfig.CommandMemory | PciConfig.CommandBusMaster, 2);
    }

    public void Dispose() => Mem.Dispose();

    public uint ConfigRead(int reg, int size = 4)
    {
        Io.Write(0xCF8, 4, 0x8000_0000u | (Slot << 11) | (uint)(reg & 0xFC));
        return Io.Read((ushort)(0xCFC + (reg & 3)), size);
    }

    public void ConfigWrite(int reg, uint value, int size = 4)
    {
        Io.Write(0xCF8, 4, 0x8000_0000u | (Slot << 11) | (uint)(reg & 0xFC));
        Io.Write((ushort)(0xCFC + (reg & 3)), size, value);
    }

    public ulong Common(int offset, int size) => Mmio.Read(Bar + VirtioPciDevice.CommonOffset + (ulong)offset, size);
    public void Common(int offset, int size, ulong value) => Mmio.Write(Bar + VirtioPciDevice.CommonOffset + (ulong)offset, size, value);
    public byte Status => (byte)Common(0x14, 1);
    public byte ReadIsr() => (byte)Mmio.Read(Bar + VirtioPciDevice.IsrOffset, 1);
    public uint DeviceConfig(int offset, int size) => (uint)Mmio.Read(Bar + VirtioPciDevice.DeviceCfgOffset + (ulong)offset, size);
    public void Kick(int queue) => Mmio.Write(Bar + VirtioPciDevice.NotifyOffset + 4UL * (ulong)queue, 2, (ulong)queue);

    public ulong DeviceFeatures()
    {
        Common(0x00, 4, 0);
        ulong lo = Common(0x04, 4);
        Common(0x00, 4, 1);
        return lo | Common(0x04, 4) << 32;
    }

    /// <summary>Status ACKNOWLEDGE|DRIVER, the given features, FEATURES_OK; returns whether the device kept FEATURES_OK.</summary>
    public bool Negotiate(ulong features)
    {
        Common(0x14, 1, StatusAcknowledge | StatusDriver);
        Common(0x08, 4, 0);
        Common(0x0C, 4, (uint)features);
        Common(0x08, 4, 1);
        Common(0x0C, 4, features >> 32);
        Common(0x14, 1, StatusAcknowledge | StatusDriver | StatusFeaturesOk);
        return (Status & StatusFeaturesOk) != 0;
    }

    /// <summary>Sets queue 0 up at the fixed ring addresses with <paramref name="size"/> entries and enables it.</summary>
    public void SetupQueue(ushort size, ushort msixVector = NoVector)
    {
        // A fresh driver starts from zeroed rings.
        Mem.Write(AvailBase, new byte[0x1000]);
        Mem.Write(UsedBase, new byte[0x1000]);
        Common(0x16, 2, 0);
        Common(0x18, 2, size);
        Common(0x1A, 2, msixVector);
        // 64-bit addresses as two dword writes, as Linux does.
        Common(0x20, 4, DescBase); Common(0x24, 4, 0);
        Common(0x28, 4, AvailBase); Common(0x2C, 4, 0);
        Common(0x30, 4, UsedBase); Common(0x34, 4, 0);
        Common(0x1C, 2, 1);
        QueueSize = size;
        _availIdx = 0;
    }

    /// <summary>The whole driver start-up: features, one queue, DRIVER_OK.</summary>
    public void Start(ulong features, ushort queueSize = 16, ushort msixVector = NoVector)
    {
        Assert.True(Negotiate(features), "device refused the features");
        SetupQueue(queueSize, msixVector);
        Common(0x14, 1, StatusAcknowledge | StatusDriver | StatusFeaturesOk | StatusDriverOk);
    }

    public void EnableMsix() => ConfigWrite(Dev.Msix!.CapabilityOffset + 2, 0x8000, 2);

    public void ProgramMsixVector(int v, uint data)
    {
        ulong e = Bar + VirtioPciDevice.MsixTableOffset + (ulong)(16 * v);
        Mmio.Write(e, 4, 0xFEE0_0000);
        Mmio.Write(e + 8, 4, data);
        Mmio.Write(e + 12, 4, 0);
    }

    public void Desc(ulong table, int i, ulong addr, uint len, ushort flags, ushort next = 0)
    {
        ulong d = table + 16UL * (ulong)i;
        Mem.WriteU64(d, addr);
        Mem.WriteU32(d + 8, len);
        Mem.WriteU16(d + 12, flags);
        Mem.WriteU16(d + 14, next);
    }

    public void Desc(int i, ulong addr, uint len, ushort flags, ushort next = 0) => Desc(DescBase, i, addr, len, flags, next);

    /// <summary>Makes <paramref name="head"/> available and kicks queue 0.</summary>
    public void Publish(ushort head, bool kick = true)
    {
        Mem.WriteU16(AvailBase + 4 + 2UL * (ulong)(_availIdx % QueueSize), head);
        _availIdx++;
        Mem.WriteU16(AvailBase + 2, _availIdx);
        if (kick) Kick(0);
    }

    public void SetAvailFlags(ushort flags) => Mem.WriteU16(AvailBase, flags);
    public void SetUsedEvent(ushort v) => Mem.WriteU16(AvailBase + 4 + 2UL * QueueSize, v);
    public ushort AvailEvent => Mem.ReadU16(UsedBase + 4 + 8UL * QueueSize);
    public ushort UsedIdx => Mem.ReadU16(UsedBase + 2);
    public (uint Id, uint Len) Used(int i) =>
        (Mem.ReadU32(UsedBase + 4 + 8UL * (ulong)(i % QueueSize)), Mem.ReadU32(UsedBase + 8 + 8UL * (ulong)(i % QueueSize)));
}

/// <summary>An in-memory disk image for device tests.</summary>
public sealed class MemoryDisk(int size, bool readOnly = false) : IBlockDevice
{
    public readonly byte[] Data = new byte[size];
    public int Flushes;
    public long Size => Data.Length;
    public bool ReadOnly => readOnly;

    public void Read(long offset, Span<byte> buffer) => Data.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        if (readOnly) throw new BlockDeviceException("read-only");
        data.CopyTo(Data.AsSpan((int)offset));
    }
    public void Flush() => Flushes++;
    public void Discard(long offset, long length) => Data.AsSpan((int)offset, (int)length).Clear();
    public void WriteZeroes(long offset, long length) => Data.AsSpan((int)offset, (int)length).Clear();
    public void Dispose() { }

    public static uint Le32(ReadOnlySpan<byte> b) => BinaryPrimitives.ReadUInt32LittleEndian(b);
}
