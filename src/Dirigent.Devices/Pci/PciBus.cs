using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Pci;

/// <summary>
/// PCI bus 0 behind the host bridge: configuration mechanism #1 (CONFIG_ADDRESS at 0xCF8, dword access only;
/// CONFIG_DATA at 0xCFC-0xCFF, byte/word/dword), up to 32 single-function devices, BAR placement in the 32-bit
/// MMIO window the way firmware would do it, BAR decoding on the MMIO bus while Command.Memory is set, and INTx
/// routing with the usual swizzle: slot s, pin p (1 = INTA) drives GSI 16 + ((s + p - 1) mod 8).
/// </summary>
public sealed class PciBus
{
    public const int Slots = 32;
    public const ushort ConfigAddressPort = 0xCF8, ConfigDataPort = 0xCFC;
    public const int FirstIntxGsi = PcPlatform.PciFirstGsi, IntxGsiCount = PcPlatform.PciGsiCount;

    private readonly PciDevice?[] _slots = new PciDevice?[Slots];
    private readonly MmioBus _mmio;
    private readonly IInterruptSink? _irq;
    private readonly ulong _windowEnd;
    private ulong _nextMmio;
    private uint _configAddress;
    private readonly object _mapLock = new();
    private readonly Dictionary<(PciDevice, int), BarWindow> _mapped = new();

    /// <summary>
    /// Where functions attached from now on get their INTx line: given the slot, pin and the GSI line, the line the
    /// function drives (the PIIX3's PIRQ routing wraps it). Null: the GSI line itself.
    /// </summary>
    public Func<int, int, IIrqLine, IIrqLine>? IntxRouter { get; set; }

    public ulong MmioWindowBase { get; }
    public ulong MmioWindowSize { get; }

    public PciBus(MmioBus mmio, IInterruptSink? irq, ulong mmioWindowBase, ulong mmioWindowSize)
    {
        _mmio = mmio;
        _irq = irq;
        MmioWindowBase = mmioWindowBase;
        MmioWindowSize = mmioWindowSize;
        _nextMmio = mmioWindowBase;
        _windowEnd = mmioWindowBase + mmioWindowSize;
    }

    public static int IntxGsi(int slot, int pin) => FirstIntxGsi + ((slot + pin - 1) & (IntxGsiCount - 1));

    /// <summary>
    /// Claims 0xCF8 (only that byte, so 0xCF9 stays the reset control register; a dword access at 0xCF8 still
    /// lands here), 0xCFA-0xCFB and the data ports 0xCFC-0xCFF.
    /// </summary>
    public void Register(IoBus io)
    {
        var addr = new AddressPort(this);
        io.Register(ConfigAddressPort, 1, addr);
        io.Register(ConfigAddressPort + 2, 2, new AddressHighPort());
        io.Register(ConfigDataPort, 4, new DataPort(this));
    }

    public PciDevice? Device(int slot) => (uint)slot < Slots ? _slots[slot] : null;

    /// <summary>
    /// Every function on the bus with its slot and function number (as lspci prints them: 00:SS.F), in slot order;
    /// the VM registers each one's saved state under that name.
    /// </summary>
    public IEnumerable<(int Slot, int Function, PciDevice Device)> Functions
    {
        get
        {
            for (int s = 0; s < Slots; s++)
                if (_slots[s] is { } d) yield return (s, d.DevFn & 7, d);
        }
    }

    /// <summary>The name a function's state is registered under: <c>pci/00:SS.F</c>, as lspci prints its address.</summary>
    public static string StateName(int slot, int function) => $"pci/00:{slot:x2}.{function:x}";

    /// <summary>
    /// Registers every function's lifecycle and saved state (each with its own record type) under
    /// <see cref="StateName"/>, in slot order, so a reboot resets them and a snapshot holds them.
    /// </summary>
    public void RegisterState(StateRegistry registry)
    {
        foreach (var (slot, fn, dev) in Functions) dev.RegisterState(registry, StateName(slot, fn));
    }

    /// <summary>
    /// Puts <paramref name="device"/> in <paramref name="slot"/> (or the first free one), places its BARs in the
    /// MMIO window (naturally aligned), sets its interrupt line to the swizzled GSI and connects INTx and MSI.
    /// Returns the slot.
    /// </summary>
    public int Attach(PciDevice device, int slot = -1)
    {
        if (device.Bus != null) throw new InvalidOperationException("device already attached");
        if (slot < 0) slot = Array.IndexOf(_slots, null);
        if (slot < 0 || slot >= Slots) throw new InvalidOperationException("no free PCI slot");
        if (_slots[slot] != null) throw new InvalidOperationException($"PCI slot {slot} is taken");
        for (int i = 0; i < PciConfig.BarCount; i++)
        {
            uint size = device.BarSize(i);
            if (size == 0) continue;
            ulong at = (_nextMmio + size - 1) & ~((ulong)size - 1);
            if (at + size > _windowEnd) throw new InvalidOperationException("PCI MMIO window exhausted");
            device.AssignBar(i, (uint)at);
            _nextMmio = at + size;
        }
        device.Bus = this;
        device.DevFn = slot << 3;
        device.InterruptSink = _irq;
        if (device.InterruptPin != 0 && _irq != null)
        {
            int gsi = IntxGsi(slot, device.InterruptPin);
            var line = _irq.Line(gsi);
            device.IntxLine = IntxRouter?.Invoke(slot, device.InterruptPin, line) ?? line;
            device.SetInterruptLine((byte)gsi);
        }
        device.CaptureInitialState();
        _slots[slot] = device;
        return slot;
    }

    /// <summary>System reset: every function's config space back to its power-on state (BARs as assigned).</summary>
    public void Reset()
    {
        _configAddress = 0;
        foreach (var d in _slots) d?.ResetConfig();
    }

    /// <summary>Maps or unmaps the device's BARs on the MMIO bus to match its command register and BAR values.</summary>
    internal void UpdateMappings(PciDevice device)
    {
        lock (_mapLock)
        {
            for (int i = 0; i < PciConfig.BarCount; i++)
            {
                uint size = device.BarSize(i);
                if (size == 0) continue;
                uint addr = device.BarAddress(i);
                // Address 0 means "unassigned"; a BAR that would wrap past 4 GiB cannot decode.
                bool want = device.MemorySpaceEnabled && addr != 0 && (ulong)addr + size <= 1UL << 32;
                _mapped.TryGetValue((device, i), out var cur);
                if (cur != null && want && cur.Base == addr) continue;
                if (cur != null)
                {
                    _mmio.Unregister(cur);
                    _mapped.Remove((device, i));
                }
                if (!want) continue;
                var win = new BarWindow(addr, device.BarHandler(i)!);
                try
                {
                    _mmio.Register(addr, size, win);
                    _mapped[(device, i)] = win;
                }
                catch (InvalidOperationException)
                {
                    // The guest placed the BAR over another device: on real hardware the decode conflict is
                    // undefined; here the BAR simply does not decode until it is moved somewhere free.
                }
            }
        }
    }

    /// <summary>Where a BAR decodes now (0 when it does not), for tests and diagnostics.</summary>
    public ulong MappedBase(PciDevice device, int bar)
    {
        lock (_mapLock) return _mapped.TryGetValue((device, bar), out var w) ? w.Base : 0;
    }

    private sealed class BarWindow(uint @base, IMmioDevice target) : IMmioDevice
    {
        public uint Base { get; } = @base;
        public ulong Read(ulong offset, int size) => target.Read(offset, size);
        public void Write(ulong offset, int size, ulong value) => target.Write(offset, size, value);
    }

    private bool Decode(int portOffset, int size, out PciDevice? dev, out int reg)
    {
        dev = null;
        reg = 0;
        uint a = _configAddress;
        if ((a & 0x8000_0000) == 0 || portOffset + size > 4) return false;
        int bus = (int)(a >> 16) & 0xFF, slot = (int)(a >> 11) & 0x1F, fn = (int)(a >> 8) & 7;
        if (bus != 0 || fn != 0) return false;
        dev = _slots[slot];
        reg = (int)(a & 0xFC) + portOffset;
        return dev != null;
    }

    internal uint ConfigRead(int portOffset, int size)
    {
        if (Decode(portOffset, size, out var dev, out int reg)) return dev!.ReadConfig(reg, size);
        return size == 4 ? 0xFFFF_FFFFu : (1u << (8 * size)) - 1;
    }

    internal void ConfigWrite(int portOffset, int size, uint value)
    {
        if (Decode(portOffset, size, out var dev, out int reg)) dev!.WriteConfig(reg, size, value);
    }

    /// <summary>The bits of CONFIG_ADDRESS that hold anything: enable, bus, device, function, dword register.</summary>
    public const uint ConfigAddressMask = 0x80FF_FFFC;

    public uint ConfigAddress { get => _configAddress; set => _configAddress = value & ConfigAddressMask; }

    private sealed class AddressPort(PciBus bus) : IPortDevice
    {
        // Only dword accesses reach CONFIG_ADDRESS; byte accesses at 0xCF8 are ordinary I/O (nothing here).
        public uint Read(ushort offset, int size) => size == 4 ? bus.ConfigAddress : (1u << (8 * size)) - 1;
        public void Write(ushort offset, int size, uint value) { if (size == 4) bus.ConfigAddress = value; }
    }

    private sealed class AddressHighPort : IPortDevice
    {
        // 0xCFA/0xCFB as byte or word I/O: no mechanism #2 here (Linux probes 0xCFB and 0xCFA for it).
        public uint Read(ushort offset, int size) => size == 4 ? 0xFFFF_FFFFu : (1u << (8 * size)) - 1;
        public void Write(ushort offset, int size, uint value) { }
    }

    private sealed class DataPort(PciBus bus) : IPortDevice
    {
        public uint Read(ushort offset, int size) => bus.ConfigRead(offset, size);
        public void Write(ushort offset, int size, uint value) => bus.ConfigWrite(offset, size, value);
    }
}
