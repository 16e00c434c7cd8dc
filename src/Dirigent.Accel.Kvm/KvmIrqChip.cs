using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine.Interrupts;

namespace Dirigent.Accel.Kvm;

/// <summary>
/// KVM's in-kernel interrupt controllers (a local APIC per vCPU, the IOAPIC at 0xFEC00000, the 8259 pair) and 8254
/// PIT (with the dummy speaker port 0x61), seen by devices as an <see cref="IInterruptSink"/>: lines become
/// KVM_IRQ_LINE, MSIs KVM_SIGNAL_MSI. The GSI routing comes from the board's <see cref="InterruptWiring"/> (the PC's:
/// ISA IRQ0, the PIT, on PIC pin 0 and IOAPIC pin 2 as the MADT's interrupt source override says, IRQs 1..15 on their
/// PIC and IOAPIC pins, GSIs 16..23 on the IOAPIC only); KVM's own default (identity) would put the PIT on IOAPIC pin
/// 0, where the guest, told IRQ0 is on pin 2, never looks. Saved state goes through the accelerator-neutral records
/// (KvmIrqChip.State.cs).
/// </summary>
public sealed unsafe partial class KvmIrqChip : IInKernelIrqChip
{
    public const int Pins = 24;

    private readonly KvmAccelerator _accel;
    /// <summary>The VM fd, or -1 once the accelerator is gone: a device timer firing late must not hit a reused fd.
    /// Guarded by <see cref="_lock"/>.</summary>
    private int _vmFd;
    /// <summary>Devices sharing a GSI form a wired OR, and KVM sees only the OR; its lock also guards the fd.</summary>
    private readonly WiredOrLines _lines;
    private object _lock => _lines.Lock;

    private readonly InterruptWiring _wiring;
    private KvmIrqChipState _picMaster, _picSlave, _ioApic;
    private KvmPitState2 _pit;

    public string Description => "kvm in-kernel LAPIC/IOAPIC/PIC + PIT";

    /// <summary>errno of the last KVM_IRQ_LINE / KVM_SIGNAL_MSI that failed (0: none); devices cannot be told.</summary>
    public int LastError { get; private set; }

    private KvmIrqChip(KvmAccelerator accel, int vmFd, InterruptWiring wiring)
    {
        _accel = accel;
        _vmFd = vmFd;
        _wiring = wiring;
        _lines = new WiredOrLines(Pins, Drive);
    }

    /// <summary>Capabilities the in-kernel path needs, in the order checked; null when all are there.</summary>
    internal static string? MissingCapability(int kvmFd)
    {
        foreach (var (cap, name) in new[] { (KvmAbi.CAP_IRQCHIP, "KVM_CAP_IRQCHIP"), (KvmAbi.CAP_PIT2, "KVM_CAP_PIT2"),
                     (KvmAbi.CAP_PIT_STATE2, "KVM_CAP_PIT_STATE2"), (KvmAbi.CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING"),
                     (KvmAbi.CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI") })
            if (Libc.Ioctl(kvmFd, KvmAbi.CHECK_EXTENSION, cap) <= 0) return name;
        return null;
    }

    /// <summary>
    /// KVM_CREATE_IRQCHIP, the routing of <paramref name="wiring"/>, KVM_CREATE_PIT2; then the power-on state of each chip is kept for
    /// <see cref="Reset"/>. Returns null with <paramref name="error"/> when KVM_CREATE_IRQCHIP itself fails (the VM is
    /// unchanged, the emulated controllers can still serve); a failure after that leaves a half-made irqchip that
    /// cannot be removed, so it throws.
    /// </summary>
    internal static KvmIrqChip? Create(KvmAccelerator accel, int vmFd, InterruptWiring wiring, out string? error)
    {
        if (Libc.Ioctl(vmFd, KvmAbi.CREATE_IRQCHIP, 0) < 0)
        {
            error = $"KVM_CREATE_IRQCHIP failed: {Libc.ErrorText(Libc.LastErrno)}";
            return null;
        }
        error = null;
        SetRouting(vmFd, wiring);
        var cfg = new KvmPitConfig { Flags = KvmAbi.PIT_SPEAKER_DUMMY };
        KvmAccelerator.Check(Libc.Ioctl(vmFd, KvmAbi.CREATE_PIT2, &cfg), "KVM_CREATE_PIT2");
        var chip = new KvmIrqChip(accel, vmFd, wiring);
        chip._pitCreatedNs = Libc.MonotonicNs();
        chip._picMaster = chip.GetChip(KvmAbi.IRQCHIP_PIC_MASTER);
        chip._picSlave = chip.GetChip(KvmAbi.IRQCHIP_PIC_SLAVE);
        chip._ioApic = chip.GetChip(KvmAbi.IRQCHIP_IOAPIC);
        KvmPitState2 pit;
        KvmAccelerator.Check(Libc.Ioctl(vmFd, KvmAbi.GET_PIT2, &pit), "KVM_GET_PIT2");
        chip._pit = pit;
        return chip;
    }

    /// <summary>KVM_SET_GSI_ROUTING entries for <paramref name="wiring"/>: one per PIC input and one per IOAPIC pin a line reaches.</summary>
    internal static List<KvmIrqRoutingEntry> RoutingEntries(InterruptWiring wiring)
    {
        var entries = new List<KvmIrqRoutingEntry>(2 * InterruptWiring.LineCount);
        for (int line = 0; line < InterruptWiring.LineCount; line++)
        {
            var w = wiring[line];
            if (w.Pic is { } pic)
                entries.Add(new KvmIrqRoutingEntry { Gsi = (uint)line, Type = KvmAbi.IRQ_ROUTING_IRQCHIP,
                    IrqChip = pic.Chip == 0 ? KvmAbi.IRQCHIP_PIC_MASTER : KvmAbi.IRQCHIP_PIC_SLAVE, Pin = (uint)pic.Pin });
            if (w.IoApicPin is { } pin)
                entries.Add(new KvmIrqRoutingEntry { Gsi = (uint)line, Type = KvmAbi.IRQ_ROUTING_IRQCHIP,
                    IrqChip = KvmAbi.IRQCHIP_IOAPIC, Pin = (uint)pin });
        }
        return entries;
    }

    private static void SetRouting(int vmFd, InterruptWiring wiring)
    {
        var entries = RoutingEntries(wiring);
        var buf = new byte[8 + entries.Count * sizeof(KvmIrqRoutingEntry)];
        fixed (byte* p = buf)
        {
            *(uint*)p = (uint)entries.Count;
            var dst = new Span<KvmIrqRoutingEntry>(p + 8, entries.Count);
            entries.CopyTo(dst);
            KvmAccelerator.Check(Libc.Ioctl(vmFd, KvmAbi.SET_GSI_ROUTING, p), "KVM_SET_GSI_ROUTING");
        }
    }

    private KvmIrqChipState GetChip(uint id)
    {
        var s = new KvmIrqChipState { ChipId = id };
        KvmAccelerator.Check(Libc.Ioctl(_vmFd, KvmAbi.GET_IRQCHIP, &s), $"KVM_GET_IRQCHIP {id}");
        return s;
    }

    /// <summary>Same contract as the emulated router: a line the wiring connects (on the PC ISA IRQ 0..15 except 2, or
    /// PCI GSI 16..23); sources are ORed.</summary>
    public IIrqLine Line(int isaIrqOrGsi)
    {
        if (isaIrqOrGsi < 0 || isaIrqOrGsi >= Pins || !_wiring[isaIrqOrGsi].Connected)
            throw new ArgumentOutOfRangeException(nameof(isaIrqOrGsi), "ISA IRQ 0..15 except 2, or GSI 16..23");
        return _lines.NewSource(isaIrqOrGsi);
    }

    // Under _lock, so KVM sees each line's edges in the order the devices made them.
    private void Drive(int gsi, bool level)
    {
        if (_vmFd < 0) return;
        var l = new KvmIrqLevel { IrqOrStatus = gsi, Level = level ? 1u : 0u };
        if (Libc.Ioctl(_vmFd, KvmAbi.IRQ_LINE, &l) < 0) LastError = Libc.LastErrno;
    }

    /// <summary>An MSI write; as with the emulated router, anything outside the 0xFEEx_xxxx window is dropped.</summary>
    public void SignalMsi(ulong address, uint data)
    {
        if ((address >> 20) != 0xFEE) return;
        var msi = new KvmMsi { AddressLo = (uint)address, AddressHi = (uint)(address >> 32), Data = data };
        lock (_lock)
        {
            if (_vmFd < 0) return;
            // 0: the interrupt was blocked (e.g. APIC disabled), as a real MSI to nowhere would be: not an error.
            if (Libc.Ioctl(_vmFd, KvmAbi.SIGNAL_MSI, &msi) < 0) LastError = Libc.LastErrno;
        }
    }

    /// <summary>A fixed, edge-triggered interrupt to one local APIC (physical destination), for IVcpu.InjectInterrupt.</summary>
    internal void SendFixed(int apicId, byte vector) => SignalMsi(0xFEE0_0000UL | ((ulong)(byte)apicId << 12), vector);

    public void Reset()
    {
        lock (_lock)
        {
            if (_vmFd < 0) return;
            foreach (var saved in new[] { _picMaster, _picSlave, _ioApic })
            {
                var s = saved;
                KvmAccelerator.Check(Libc.Ioctl(_vmFd, KvmAbi.SET_IRQCHIP, &s), $"KVM_SET_IRQCHIP {s.ChipId}");
            }
            var pit = _pit;
            KvmAccelerator.Check(Libc.Ioctl(_vmFd, KvmAbi.SET_PIT2, &pit), "KVM_SET_PIT2");
            _accel.ResetLocalApics();
            // The power-on chip state has every pin low; lines still asserted must be seen again.
            _lines.ReassertAll();
        }
    }

    /// <summary>Called by the accelerator before it closes the VM fd.</summary>
    internal void Detach()
    {
        lock (_lock) _vmFd = -1;
    }
}
