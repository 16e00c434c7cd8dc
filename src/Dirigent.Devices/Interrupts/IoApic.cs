using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Interrupts;

/// <summary>
/// An Intel 82093AA-compatible I/O APIC: 24 input pins, each with a 64-bit redirection entry, reached through
/// the indirect IOREGSEL (+0x00) / IOWIN (+0x10) window. Interrupt messages go to the local APICs through the
/// <see cref="IApicBus"/>; level-triggered entries hold Remote IRR until a local APIC broadcasts the EOI.
/// </summary>
/// <remarks>
/// Pin inputs carry the asserted state (as QEMU's and KVM's IOAPICs take them), so the polarity bit is stored
/// for the guest but not applied: the firmware tables and the devices agree on what "asserted" means. Delivery is
/// synchronous, so the delivery-status bit always reads idle. Version 0x11 has no EOI register; guests clear a
/// stuck Remote IRR by switching the entry to edge, which this model honours like the 82093AA.
/// </remarks>
public sealed class IoApic : IMmioDevice, IStateful<IoApicState>
{
    public const int Pins = PcPlatform.IoApicPins;
    public const uint Version = 0x11;

    private const ulong RedirVectorMask = 0xFF, RedirMask = 1UL << 16, RedirLevel = 1UL << 15,
        RedirRemoteIrr = 1UL << 14, RedirDeliveryStatus = 1UL << 12, RedirLogical = 1UL << 11;
    /// <summary>Guest-writable bits: vector, delivery mode, destination mode, polarity, trigger, mask, destination.</summary>
    private const ulong RedirWritable = 0xFF00_0000_0001_AFFFUL;

    private readonly object _lock = new();
    private readonly IApicBus _bus;

    // Register state (82093AA names)
    private byte _ioRegSel;
    private uint _id;
    private readonly ulong[] _redir = new ulong[Pins];
    /// <summary>Asserted pins (bit n = pin n).</summary>
    private uint _pinLevels;

    private readonly uint _powerOnId;

    public IoApic(IApicBus bus, byte id = PcPlatform.IoApicId)
    {
        _bus = bus;
        _powerOnId = (uint)id << 24;
        Reset();
    }

    /// <summary>Power-on state: every entry masked, the firmware-assigned ID. Input pins keep their levels (wires).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _ioRegSel = 0;
            _id = _powerOnId;
            for (int i = 0; i < Pins; i++) _redir[i] = RedirMask;
        }
    }

    /// <summary>
    /// The accelerator-neutral record (kvm_ioapic_state): <see cref="IoApicState.Id"/> is the 4-bit ID number,
    /// <see cref="IoApicState.Irr"/> the asserted input pins (edge-triggered ones included: delivery here is
    /// synchronous, so an edge is never left pending, and the level lets a line that a restored device drives high
    /// again make no second edge).
    /// </summary>
    public IoApicState Save()
    {
        lock (_lock)
            return new IoApicState
            {
                BaseAddress = PcPlatform.IoApicBase,
                IoRegSel = _ioRegSel,
                Id = _id >> 24,
                Irr = _pinLevels,
                Redirection = (ulong[])_redir.Clone(),
            };
    }

    /// <summary>Restores registers and pin levels; nothing is delivered (pending level pins go out at the next EOI or unmask).</summary>
    public void Restore(IoApicState state)
    {
        if (state.BaseAddress != PcPlatform.IoApicBase)
            throw new StateRestoreException($"ioapic: base address {state.BaseAddress:x} (this machine's is {PcPlatform.IoApicBase:x})");
        if (state.Redirection is not { Length: Pins })
            throw new StateRestoreException($"ioapic: {state.Redirection?.Length ?? 0} redirection entries, expected {Pins}");
        if (state.IoRegSel > 0xFF) throw new StateRestoreException($"ioapic: IOREGSEL {state.IoRegSel:x} above 0xFF");
        if (state.Id > 0xF) throw new StateRestoreException($"ioapic: ID {state.Id} above 15");
        if ((state.Irr >> Pins) != 0) throw new StateRestoreException($"ioapic: pins above {Pins - 1} asserted");
        lock (_lock)
        {
            _ioRegSel = (byte)state.IoRegSel;
            _id = state.Id << 24;
            _pinLevels = state.Irr;
            for (int i = 0; i < Pins; i++)
            {
                // Only guest-writable bits and Remote IRR (of level entries) are state; delivery status is always idle.
                ulong e = state.Redirection[i];
                ulong v = e & RedirWritable;
                if ((e & RedirLevel) != 0) v |= e & RedirRemoteIrr;
                _redir[i] = v;
            }
        }
    }

    /// <summary>The guest-visible redirection entry of a pin (for tests and diagnostics).</summary>
    public ulong ReadRedirection(int pin) { lock (_lock) return (uint)pin < Pins ? _redir[pin] : 0; }

    /// <summary>Drives input pin 0..23; out-of-range pins are ignored.</summary>
    public void SetPin(int pin, bool level)
    {
        if ((uint)pin >= Pins) return;
        ApicMessage? msg = null;
        lock (_lock)
        {
            uint bit = 1u << pin;
            bool was = (_pinLevels & bit) != 0;
            if (level) _pinLevels |= bit; else _pinLevels &= ~bit;
            ulong e = _redir[pin];
            if ((e & RedirLevel) != 0)
            {
                if (level) msg = TryService(pin);
            }
            else if (level && !was && (e & RedirMask) == 0)
                msg = MessageFor(e); // edges on a masked pin are lost, as on the 82093AA
        }
        if (msg is { } m) Send(pin, m);
    }

    /// <summary>An EOI for a level-triggered vector: clear Remote IRR and re-deliver pins that are still asserted.</summary>
    public void EndOfInterrupt(int vector)
    {
        List<(int Pin, ApicMessage Message)>? msgs = null;
        lock (_lock)
        {
            for (int pin = 0; pin < Pins; pin++)
            {
                ulong e = _redir[pin];
                if ((e & RedirRemoteIrr) == 0 || (int)(e & RedirVectorMask) != vector) continue;
                _redir[pin] = e & ~RedirRemoteIrr;
                if ((_pinLevels & (1u << pin)) != 0 && TryService(pin) is { } m) (msgs ??= new()).Add((pin, m));
            }
        }
        if (msgs != null) foreach (var (pin, m) in msgs) Send(pin, m);
    }

    private void Send(int pin, in ApicMessage m)
    {
        if (_bus.Deliver(m, null) || !m.LevelTriggered) return;
        // No local APIC took it (all targets software-disabled, say): no EOI will come, so do not wait for one.
        lock (_lock) _redir[pin] &= ~RedirRemoteIrr;
    }

    // Must hold _lock. A level pin sends one message and then waits in Remote IRR for the EOI.
    private ApicMessage? TryService(int pin)
    {
        ulong e = _redir[pin];
        if ((e & (RedirMask | RedirRemoteIrr)) != 0 || (e & RedirLevel) == 0) return null;
        if ((_pinLevels & (1u << pin)) == 0) return null;
        // INIT, NMI, SMI and ExtINT are edge by definition: no Remote IRR to wait on.
        var mode = (ApicDeliveryMode)((e >> 8) & 7);
        if (mode is ApicDeliveryMode.Fixed or ApicDeliveryMode.LowestPriority) _redir[pin] = e | RedirRemoteIrr;
        return MessageFor(e);
    }

    private static ApicMessage MessageFor(ulong e) => new(
        Vector: (byte)e,
        Mode: (ApicDeliveryMode)((e >> 8) & 7),
        LogicalDestination: (e & RedirLogical) != 0,
        Destination: (byte)(e >> 56),
        LevelTriggered: (e & RedirLevel) != 0);

    private uint ReadRegister(byte index)
    {
        switch (index)
        {
            case 0x00: return _id;
            case 0x01: return ((uint)(Pins - 1) << 16) | Version;
            case 0x02: return _id; // arbitration ID: loaded from the APIC ID
        }
        int reg = index - 0x10;
        if (reg < 0 || reg >= 2 * Pins) return 0;
        ulong e = _redir[reg >> 1] & ~RedirDeliveryStatus;
        return (reg & 1) == 0 ? (uint)e : (uint)(e >> 32);
    }

    // Must hold _lock. Returns a message when the write unmasks an asserted level pin.
    private ApicMessage? WriteRegister(byte index, uint value)
    {
        if (index == 0x00) { _id = value & 0x0F00_0000; return null; }
        int reg = index - 0x10;
        if (reg < 0 || reg >= 2 * Pins) return null;
        int pin = reg >> 1;
        ulong e = _redir[pin];
        ulong v = (reg & 1) == 0 ? (e & 0xFFFF_FFFF_0000_0000UL) | value : (e & 0xFFFF_FFFFUL) | ((ulong)value << 32);
        v = (v & RedirWritable) | (e & RedirRemoteIrr);
        if ((v & RedirLevel) == 0) v &= ~RedirRemoteIrr;
        _redir[pin] = v;
        return TryService(pin);
    }

    public ulong Read(ulong offset, int size)
    {
        uint v;
        lock (_lock)
        {
            if (offset < 4) v = (uint)_ioRegSel >> (int)(8 * offset);
            else if (offset is >= 0x10 and < 0x14) v = ReadRegister(_ioRegSel) >> (int)(8 * (offset - 0x10));
            else v = 0;
        }
        return size >= 4 ? v : v & ((1u << (size * 8)) - 1);
    }

    public void Write(ulong offset, int size, ulong value)
    {
        ApicMessage? msg = null;
        int pin = 0;
        lock (_lock)
        {
            if (offset == 0) _ioRegSel = (byte)value;
            else if (offset == 0x10 && size >= 4)
            {
                msg = WriteRegister(_ioRegSel, (uint)value);
                pin = (_ioRegSel - 0x10) >> 1;
            }
        }
        if (msg is { } m) Send(pin, m);
    }
}
