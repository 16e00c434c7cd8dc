using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Accel.Kvm;

// Saved state of the in-kernel chips through the accelerator-neutral records (ControllerStates.cs), so a snapshot
// taken here restores on the emulated PIC/IOAPIC/PIT and the reverse. Encodings shared with the emulated devices:
// - PIT Count 0: no count loaded (KVM's power-on mode 0xFF, "never programmed"); ReadState/WriteState are KVM's
//   RW_STATE values (1 LSB, 2 MSB, 3 word with LSB next, 4 word with MSB next); a latched count restores with its
//   first byte next (KVM's count_latched holds the access mode, the record only whether a latch is held).
// - PIT NsSinceLoad: KVM stamps count loads with host CLOCK_MONOTONIC; the record holds the age of the load. KVM_SET_PIT2
//   reloads every counter itself (kvm_pit_load_count stamps "now" and re-arms channel 0), so on KVM a restored counter
//   starts a fresh period: the phase within the period is lost, and a mode-0 count that had already expired fires once
//   more.
// - The speaker-data bit of port 0x61 is KVM_PIT_FLAGS_SPEAKER_DATA_ON in kvm_pit_state2.flags.
// Restore order that keeps interrupts consistent: the CPU state, then each local APIC, then the IOAPIC and PIC (their
// restore may deliver pending level-triggered pins into a local APIC), then the PIT.
public sealed unsafe partial class KvmIrqChip
{
    private const ulong IoApicDefaultBase = 0xFEC0_0000;
    private const byte RwStateLsb = 1, RwStateMsb = 2, RwStateWord0 = 3, RwStateWord1 = 4;
    /// <summary>KVM's channel mode before the guest programs it (kvm_pit_reset): no timer, nothing counts.</summary>
    private const byte KvmModeUnprogrammed = 0xFF;
    /// <summary>Upper bound for a restored NsSinceLoad (about 31 years), as the emulated PIT has it.</summary>
    private const long MaxNsSinceLoad = 1_000_000_000_000_000_000;

    // ---------------- PIC ----------------

    public PicPairState SavePic()
    {
        lock (_lock)
        {
            RequireOpen();
            var m = GetChip(KvmAbi.IRQCHIP_PIC_MASTER);
            var s = GetChip(KvmAbi.IRQCHIP_PIC_SLAVE);
            return new PicPairState { Master = FromKvm(*(KvmPicState*)m.Chip), Slave = FromKvm(*(KvmPicState*)s.Chip) };
        }
    }

    public void RestorePic(PicPairState state)
    {
        if (state?.Master == null || state.Slave == null) throw new StateRestoreException("pic: a chip's state is missing");
        lock (_lock)
        {
            RequireOpen();
            var m = GetChip(KvmAbi.IRQCHIP_PIC_MASTER);
            var s = GetChip(KvmAbi.IRQCHIP_PIC_SLAVE);
            // Both validated before either is set: nothing half-applied.
            *(KvmPicState*)m.Chip = ToKvm(state.Master, ((KvmPicState*)m.Chip)->ElcrMask, "master");
            *(KvmPicState*)s.Chip = ToKvm(state.Slave, ((KvmPicState*)s.Chip)->ElcrMask, "slave");
            SetChip(ref m);
            SetChip(ref s);
        }
    }

    internal static Pic8259State FromKvm(in KvmPicState k) => new()
    {
        LastIrr = k.LastIrr, Irr = k.Irr, Imr = k.Imr, Isr = k.Isr, PriorityAdd = k.PriorityAdd, IrqBase = k.IrqBase,
        ReadRegSelect = k.ReadRegSelect, Poll = k.Poll != 0, SpecialMask = k.SpecialMask != 0, InitState = k.InitState,
        AutoEoi = k.AutoEoi != 0, RotateOnAutoEoi = k.RotateOnAutoEoi != 0, SpecialFullyNestedMode = k.SpecialFullyNestedMode != 0,
        Init4 = k.Init4 != 0, Elcr = k.Elcr, ElcrMask = k.ElcrMask,
    };

    /// <summary>Validates one 8259 record against what the chip can hold (<paramref name="elcrMask"/>: this chipset's
    /// writable ELCR bits, KVM's as the emulated PIC's: 0xF8 master, 0xDE slave) and converts it.</summary>
    internal static KvmPicState ToKvm(Pic8259State s, byte elcrMask, string name)
    {
        if (s.PriorityAdd > 7) throw new StateRestoreException($"pic {name}: priority rotation {s.PriorityAdd} above 7");
        if ((s.IrqBase & 7) != 0) throw new StateRestoreException($"pic {name}: vector base {s.IrqBase:x2} not a multiple of 8");
        if (s.InitState > 3) throw new StateRestoreException($"pic {name}: initialization state {s.InitState} above 3");
        if (s.ReadRegSelect > 1) throw new StateRestoreException($"pic {name}: read register select {s.ReadRegSelect}");
        if (s.ElcrMask != elcrMask || (s.Elcr & ~elcrMask) != 0)
            throw new StateRestoreException($"pic {name}: ELCR {s.Elcr:x2} (mask {s.ElcrMask:x2}) does not fit this chipset's mask {elcrMask:x2}");
        static byte B(bool v) => v ? (byte)1 : (byte)0;
        return new KvmPicState
        {
            LastIrr = s.LastIrr, Irr = s.Irr, Imr = s.Imr, Isr = s.Isr, PriorityAdd = s.PriorityAdd, IrqBase = s.IrqBase,
            ReadRegSelect = s.ReadRegSelect, Poll = B(s.Poll), SpecialMask = B(s.SpecialMask), InitState = s.InitState,
            AutoEoi = B(s.AutoEoi), RotateOnAutoEoi = B(s.RotateOnAutoEoi), SpecialFullyNestedMode = B(s.SpecialFullyNestedMode),
            Init4 = B(s.Init4), Elcr = s.Elcr, ElcrMask = elcrMask,
        };
    }

    // ---------------- IOAPIC ----------------

    public IoApicState SaveIoApic()
    {
        lock (_lock)
        {
            RequireOpen();
            var c = GetChip(KvmAbi.IRQCHIP_IOAPIC);
            return FromKvm(*(KvmIoApicState*)c.Chip);
        }
    }

    public void RestoreIoApic(IoApicState state)
    {
        if (state == null) throw new StateRestoreException("ioapic: state missing");
        var k = ToKvm(state);
        lock (_lock)
        {
            RequireOpen();
            var c = new KvmIrqChipState { ChipId = KvmAbi.IRQCHIP_IOAPIC };
            *(KvmIoApicState*)c.Chip = k;
            // KVM re-delivers the IRR's pins itself (kvm_ioapic_inject_all).
            SetChip(ref c);
        }
    }

    internal static IoApicState FromKvm(KvmIoApicState k)
    {
        var s = new IoApicState { BaseAddress = k.BaseAddress, IoRegSel = k.IoRegSel, Id = k.Id, Irr = k.Irr };
        for (int i = 0; i < Pins; i++) s.Redirection[i] = k.Redirtbl[i];
        return s;
    }

    internal static KvmIoApicState ToKvm(IoApicState s)
    {
        if (s.Redirection is not { Length: Pins })
            throw new StateRestoreException($"ioapic: {s.Redirection?.Length ?? 0} redirection entries, expected {Pins}");
        if (s.BaseAddress != IoApicDefaultBase)
            throw new StateRestoreException($"ioapic: base address {s.BaseAddress:x} (this machine's is {IoApicDefaultBase:x})");
        if (s.IoRegSel > 0xFF) throw new StateRestoreException($"ioapic: IOREGSEL {s.IoRegSel:x} above 0xFF");
        if (s.Id > 0xF) throw new StateRestoreException($"ioapic: ID {s.Id} above 15");
        if ((s.Irr >> Pins) != 0) throw new StateRestoreException($"ioapic: pins above {Pins - 1} asserted");
        var k = new KvmIoApicState { BaseAddress = s.BaseAddress, IoRegSel = s.IoRegSel, Id = s.Id, Irr = s.Irr };
        for (int i = 0; i < Pins; i++) k.Redirtbl[i] = s.Redirection[i];
        return k;
    }

    // ---------------- PIT ----------------

    public PitState SavePit()
    {
        lock (_lock)
        {
            RequireOpen();
            KvmPitState2 k;
            KvmAccelerator.Check(Libc.Ioctl(_vmFd, KvmAbi.GET_PIT2, &k), "KVM_GET_PIT2");
            long now = Libc.MonotonicNs();
            return FromKvm(k, now, now - _pitCreatedNs);
        }
    }

    public void RestorePit(PitState state)
    {
        if (state == null) throw new StateRestoreException("pit: state missing");
        lock (_lock)
        {
            RequireOpen();
            var k = ToKvm(state, Libc.MonotonicNs());
            KvmAccelerator.Check(Libc.Ioctl(_vmFd, KvmAbi.SET_PIT2, &k), "KVM_SET_PIT2");
            // A restored count may be older than this PIT: the bound SavePit applies moves back with it.
            for (int i = 0; i < 3; i++) _pitCreatedNs = Math.Min(_pitCreatedNs, k.Channel(i).CountLoadTime);
        }
    }

    /// <summary>When KVM_CREATE_PIT2 made the in-kernel PIT (host CLOCK_MONOTONIC): no count can be older.</summary>
    private long _pitCreatedNs;

    /// <param name="nowNs">Host CLOCK_MONOTONIC now, the clock of count_load_time.</param>
    /// <param name="maxAgeNs">The PIT's own age: a load time before it (PVM, for one, reports count_load_time 0, which
    /// would make a count hours old) is taken as a load when the PIT was made.</param>
    internal static PitState FromKvm(in KvmPitState2 k, long nowNs, long maxAgeNs = long.MaxValue)
    {
        var s = new PitState { SpeakerDataOn = (k.Flags & KvmAbi.PIT_FLAGS_SPEAKER_DATA_ON) != 0 };
        var copy = k;
        for (int i = 0; i < 3; i++)
        {
            var c = copy.Channel(i);
            bool programmed = c.Mode != KvmModeUnprogrammed;
            // Before the first control word KVM leaves the access mode 0; the record's power-on state is "word".
            byte rw = c.RwMode is >= 1 and <= 3 ? c.RwMode : (byte)3;
            byte State(byte st) => rw == 3 ? (st == RwStateWord1 ? RwStateWord1 : RwStateWord0) : rw;
            s.Channels[i] = new PitChannelState
            {
                Count = programmed ? Math.Clamp(c.Count, 1u, 0x10000u) : 0,
                LatchedCount = c.LatchedCount,
                CountLatched = c.CountLatched != 0,
                StatusLatched = c.StatusLatched != 0,
                Status = c.Status,
                ReadState = State(c.ReadState),
                WriteState = State(c.WriteState),
                WriteLatch = c.WriteLatch,
                RwMode = rw,
                Mode = programmed ? (byte)(c.Mode <= 5 ? c.Mode : c.Mode & 3) : (byte)0,
                Bcd = c.Bcd != 0,
                Gate = c.Gate != 0,
                NsSinceLoad = programmed ? Math.Clamp(nowNs - c.CountLoadTime, 0, Math.Max(maxAgeNs, 0)) : 0,
            };
        }
        return s;
    }

    internal static KvmPitState2 ToKvm(PitState s, long nowNs)
    {
        if (s.Channels is not { Length: 3 }) throw new StateRestoreException($"pit: {s.Channels?.Length ?? 0} channels, expected 3");
        var k = new KvmPitState2 { Flags = s.SpeakerDataOn ? KvmAbi.PIT_FLAGS_SPEAKER_DATA_ON : 0 };
        for (int i = 0; i < 3; i++)
        {
            var c = s.Channels[i] ?? throw new StateRestoreException($"pit: channel {i} missing");
            string where = $"pit: channel {i}";
            if (c.Count > 0x10000) throw new StateRestoreException($"{where}: count {c.Count} above 0x10000");
            if (c.Mode > 5) throw new StateRestoreException($"{where}: mode {c.Mode} is not 0..5");
            if (c.RwMode is < 1 or > 3) throw new StateRestoreException($"{where}: access mode {c.RwMode} is not 1..3");
            bool Fits(byte st) => c.RwMode == 3 ? st is RwStateWord0 or RwStateWord1 : st == c.RwMode;
            if (!Fits(c.ReadState) || !Fits(c.WriteState))
                throw new StateRestoreException($"{where}: read/write state {c.ReadState}/{c.WriteState} does not fit access mode {c.RwMode}");
            if (i < 2 && !c.Gate) throw new StateRestoreException($"{where}: GATE is tied high on this counter");
            if (c.NsSinceLoad is < -1 or > MaxNsSinceLoad) throw new StateRestoreException($"{where}: time since load {c.NsSinceLoad} ns out of range");
            bool loaded = c.Count != 0;
            ref var d = ref k.Channel(i);
            d = new KvmPitChannelState
            {
                // No count loaded: KVM's "unprogrammed" mode keeps channel 0's timer off (a count of 0 would arm it
                // for 0x10000 ticks); the guest's next control word sets a real mode.
                Count = c.Count,
                Mode = loaded ? c.Mode : KvmModeUnprogrammed,
                LatchedCount = c.LatchedCount,
                CountLatched = c.CountLatched ? c.RwMode : (byte)0,
                StatusLatched = c.StatusLatched ? (byte)1 : (byte)0,
                Status = c.Status,
                ReadState = c.ReadState,
                WriteState = c.WriteState,
                WriteLatch = c.WriteLatch,
                RwMode = c.RwMode,
                Bcd = c.Bcd ? (byte)1 : (byte)0,
                Gate = c.Gate ? (byte)1 : (byte)0,
                CountLoadTime = nowNs - Math.Max(c.NsSinceLoad, 0),
            };
        }
        return k;
    }

    // ---------------- local APICs ----------------

    public LocalApicState SaveLocalApic(int vcpu)
    {
        lock (_lock)
        {
            RequireOpen();
            return _accel.FindVcpu(vcpu).SaveLocalApic();
        }
    }

    public void RestoreLocalApic(int vcpu, LocalApicState state)
    {
        if (state == null) throw new StateRestoreException($"lapic/{vcpu}: state missing");
        lock (_lock)
        {
            RequireOpen();
            _accel.FindVcpu(vcpu).RestoreLocalApic(state);
        }
    }

    // ---------------- helpers ----------------

    private void RequireOpen()
    {
        if (_vmFd < 0) throw new ObjectDisposedException(nameof(KvmIrqChip), "the KVM VM is closed");
    }

    private void SetChip(ref KvmIrqChipState s)
    {
        fixed (KvmIrqChipState* p = &s)
            if (Libc.Ioctl(_vmFd, KvmAbi.SET_IRQCHIP, p) < 0)
                throw new StateRestoreException($"KVM_SET_IRQCHIP {s.ChipId} refused the state: {Libc.ErrorText(Libc.LastErrno)}");
    }
}
