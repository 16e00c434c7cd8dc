using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;

namespace Dirigent.Devices.Interrupts;

/// <summary>
/// The PC's interrupt wiring: ISA IRQs to both the 8259 pair and the IOAPIC (IRQ0 on IOAPIC pin 2, matching the
/// MADT's interrupt source override), PCI GSIs 16..23 to the IOAPIC only, the 8259's INTR to the BSP's LINT0 (and
/// to IOAPIC pin 0, as on PIIX boards), and the APIC bus that carries IOAPIC messages, IPIs and MSIs to the local
/// APICs and EOI broadcasts back to the IOAPIC.
/// </summary>
public sealed class InterruptRouter : IApicBus, IInterruptSink
{
    public Pic8259 Pic { get; }
    public IoApic IoApic { get; }
    public IReadOnlyList<LocalApic> LocalApics { get; }

    /// <summary>
    /// The 8259 pair as a machine component (register it as "pic"; the IOAPIC as "ioapic", LocalApics[i] as
    /// "lapic/i"): saves and restores <see cref="Pic"/>, and its reset drives the lines that sources still assert
    /// into the freshly reset chips, as <see cref="Reset"/> does.
    /// </summary>
    public IStateful<PicPairState> Pics { get; }

    /// <summary>Devices sharing a pin (0..23) form a wired OR.</summary>
    private readonly WiredOrLines _lines;

    public InterruptRouter(VirtualClock clock, int cpuCount, ulong tscHz)
    {
        if (cpuCount < 1 || cpuCount > 255) throw new ArgumentOutOfRangeException(nameof(cpuCount));
        _lines = new WiredOrLines(PcPlatform.IoApicPins, Drive);
        Pic = new Pic8259();
        Pics = new PicPairUnit(this);
        IoApic = new IoApic(this);
        var apics = new LocalApic[cpuCount];
        for (int i = 0; i < cpuCount; i++)
        {
            apics[i] = new LocalApic(i, clock, tscHz, this);
            apics[i].ExtIntAcknowledge = Pic.Acknowledge;
        }
        LocalApics = apics;
        Pic.IntrChanged += level =>
        {
            apics[0].SetLint(0, level);
            IoApic.SetPin(0, level);
        };
    }

    /// <summary>
    /// Claims the 8259 ports (0x20-0x21, 0xA0-0xA1, ELCR 0x4D0-0x4D1) and the IOAPIC page at
    /// <see cref="PcPlatform.IoApicBase"/>. The local APIC pages are not on the shared bus: each vCPU reaches its
    /// own APIC through the CPU (Cpu.AttachInterruptController(apic, apic)).
    /// </summary>
    public void Register(IoBus io, MmioBus mmio)
    {
        Pic.RegisterPorts(io);
        mmio.Register(PcPlatform.IoApicBase, 0x1000, IoApic);
    }

    /// <summary>System reset: controllers back to their power-on state (lines keep their levels).</summary>
    public void Reset()
    {
        Pic.Reset();
        IoApic.Reset();
        foreach (var a in LocalApics) a.Reset();
        _lines.ReassertAll();
    }

    private sealed class PicPairUnit(InterruptRouter router) : IStateful<PicPairState>
    {
        public void Reset()
        {
            router.Pic.Reset();
            router._lines.ReassertAll();
        }

        public PicPairState Save() => router.Pic.Save();
        public void Restore(PicPairState state) => router.Pic.Restore(state);
    }

    /// <summary>
    /// A new interrupt source on ISA IRQ 0..15 (not 2, the cascade) or PCI GSI 16..23. Each call returns its own
    /// source; sources on the same line are ORed. Set(true) means asserted.
    /// </summary>
    public IIrqLine Line(int isaIrqOrGsi)
    {
        if (isaIrqOrGsi < 0 || isaIrqOrGsi >= PcPlatform.IoApicPins || isaIrqOrGsi == 2)
            throw new ArgumentOutOfRangeException(nameof(isaIrqOrGsi), "ISA IRQ 0..15 except 2, or GSI 16..23");
        return _lines.NewSource(isaIrqOrGsi);
    }

    // Under the lines' lock, so the controllers see each line's edges in order.
    private void Drive(int line, bool level)
    {
        if (line < 16) Pic.SetIrq(line, level);
        IoApic.SetPin(line == PcPlatform.IrqPit ? PcPlatform.PitGsi : line, level);
    }

    /// <summary>
    /// A PCI MSI write: address 0xFEEx_xxxx (destination ID in bits 19:12, destination mode in bit 2), data with
    /// vector and delivery mode. MSIs are edge-triggered; writes outside the APIC window are dropped.
    /// </summary>
    public void SignalMsi(ulong address, uint data)
    {
        if ((address >> 20) != 0xFEE) return;
        var msg = new ApicMessage(
            Vector: (byte)data,
            Mode: (ApicDeliveryMode)((data >> 8) & 7),
            LogicalDestination: (address & 4) != 0,
            Destination: (byte)(address >> 12));
        Deliver(msg, null);
    }

    public bool Deliver(in ApicMessage message, LocalApic? source)
    {
        var m = message;
        bool accepted = false;
        switch (m.Shorthand)
        {
            case ApicShorthand.Self:
                return source?.Accept(m) ?? false;
            case ApicShorthand.AllIncludingSelf:
            case ApicShorthand.AllExcludingSelf:
                foreach (var a in LocalApics)
                    if (m.Shorthand == ApicShorthand.AllIncludingSelf || a != source) accepted |= a.Accept(m);
                return accepted;
        }
        if (m.Mode == ApicDeliveryMode.LowestPriority)
        {
            // Lowest arbitration priority wins; ties go to the lowest APIC ID.
            LocalApic? best = null;
            uint bestApr = uint.MaxValue;
            foreach (var a in LocalApics)
            {
                if (!a.MatchesDestination(m.LogicalDestination, m.Destination) || !a.SoftwareEnabled) continue;
                uint apr = a.ArbitrationPriority;
                if (apr < bestApr) { best = a; bestApr = apr; }
            }
            return best?.Accept(m) ?? false;
        }
        foreach (var a in LocalApics)
            if (a.MatchesDestination(m.LogicalDestination, m.Destination)) accepted |= a.Accept(m);
        return accepted;
    }

    public void BroadcastEoi(int vector) => IoApic.EndOfInterrupt(vector);
}
