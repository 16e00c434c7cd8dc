using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Pci;

/// <summary>
/// The PIIX3 PCI-to-ISA bridge function (8086:7000, class 06/01/00) at 00:01.0, as on QEMU's i440FX PC, for the PCI
/// interrupt routing firmware programs: PIRQRC[A:D] (config 0x60-0x63) each send one of the PIRQ lines to an ISA IRQ
/// (3-7, 9-12, 14, 15; bit 7 set or any other value: not routed). PCI slot s, pin p (1 = INTA) is on PIRQ
/// (s + p - 2) mod 4, the i440FX board's rotation that SeaBIOS's piix_pci_slot_get_irq and its $PIR table assume.
/// A routed PIRQ drives its ISA IRQ (PIC and IOAPIC pin) in addition to the GSI 16-23 line that the ACPI _PRT
/// gives the guest, so both a PIC-mode guest (DOS, a BIOS) and an APIC-mode one see the device's interrupt.
/// </summary>
public sealed class Piix3IsaBridge : PciDevice
{
    public const ushort Piix3DeviceId = 0x7000;
    public const int PirqFirst = 0x60, PirqCount = 4;
    public const byte PirqDisabled = 0x80;

    private readonly IInterruptSink? _irq;
    private readonly object _lock = new();
    private readonly List<PirqLine> _lines = new();
    /// <summary>Per (PIRQ, ISA IRQ) the source this bridge drives; made when first routed.</summary>
    private readonly Dictionary<(int, int), IIrqLine> _isaSources = new();
    private readonly (int Irq, bool Level)[] _driven = new (int, bool)[PirqCount];

    public Piix3IsaBridge(IInterruptSink? irq)
        : base(PciHostBridge.IntelVendorId, Piix3DeviceId, 0x06_01_00, 0, 0x1AF4, 0x1100, 0)
    {
        _irq = irq;
        for (int k = 0; k < PirqCount; k++)
        {
            ConfigBytes[PirqFirst + k] = PirqDisabled;
            _driven[k] = (-1, false);
        }
        SetWritable(PirqFirst, PirqCount, 0x8F);
    }

    /// <summary>The PIRQ (0 = A) that slot <paramref name="slot"/>'s pin <paramref name="pin"/> (1 = INTA) is wired to.</summary>
    public static int Pirq(int slot, int pin) => (slot + pin - 2) & 3;

    /// <summary>The ISA IRQ PIRQ <paramref name="pirq"/> is routed to, or -1.</summary>
    public int RoutedIrq(int pirq)
    {
        byte v = ConfigBytes[PirqFirst + pirq];
        return (v & PirqDisabled) == 0 && v is 3 or 4 or 5 or 6 or 7 or 9 or 10 or 11 or 12 or 14 or 15 ? v : -1;
    }

    /// <summary>For <see cref="PciBus.IntxRouter"/>: the function's INTx line, also feeding its PIRQ.</summary>
    public IIrqLine Wrap(int slot, int pin, IIrqLine gsiLine)
    {
        var line = new PirqLine(this, Pirq(slot, pin), gsiLine);
        lock (_lock) _lines.Add(line);
        return line;
    }

    protected override void OnConfigWritten(int offset, int size, uint value)
    {
        if (offset < PirqFirst + PirqCount && offset + size > PirqFirst) Update();
    }

    public override void ResetConfig()
    {
        base.ResetConfig();
        Update();
    }

    /// <summary>Drives each PIRQ's ISA IRQ from the levels of the functions on it and the routing registers.</summary>
    private void Update()
    {
        if (_irq == null) return;
        lock (_lock)
        {
            for (int k = 0; k < PirqCount; k++)
            {
                bool level = false;
                foreach (var l in _lines) if (l.Pirq == k && l.Level) level = true;
                int irq = RoutedIrq(k);
                var (oldIrq, oldLevel) = _driven[k];
                if (oldIrq == irq && oldLevel == level) continue;
                if (oldIrq >= 0 && oldIrq != irq && oldLevel) Source(k, oldIrq).Set(false);
                // A source is made on the first assertion: routing alone does not claim an ISA line.
                if (irq >= 0 && (level || _isaSources.ContainsKey((k, irq)))) Source(k, irq).Set(level);
                _driven[k] = (irq, level);
            }
        }
    }

    private IIrqLine Source(int pirq, int irq)
    {
        if (!_isaSources.TryGetValue((pirq, irq), out var s)) _isaSources[(pirq, irq)] = s = _irq!.Line(irq);
        return s;
    }

    public override void RegisterState(StateRegistry registry, string name) => registry.Add(name, new Unit(this));

    /// <summary>The function's config space (with the routing registers) as its saved state; routing follows it.</summary>
    private sealed class Unit(Piix3IsaBridge f) : IStateful<PciFunctionState>
    {
        public void Reset() => f.Reset();
        public PciFunctionState Save() => f.SaveFunction();
        public void Restore(PciFunctionState state)
        {
            f.CheckFunction(state);
            f.RestoreFunction(state);
            f.Update();
        }
    }

    private sealed class PirqLine(Piix3IsaBridge bridge, int pirq, IIrqLine gsi) : IIrqLine
    {
        public int Pirq => pirq;
        public volatile bool Level;

        public void Set(bool level)
        {
            gsi.Set(level);
            Level = level;
            bridge.Update();
        }
    }
}
