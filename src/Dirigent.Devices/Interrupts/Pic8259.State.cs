using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Interrupts;

// Save and restore through the accelerator-neutral PicPairState (kvm_pic_state). LastIrr carries the input
// line levels as the chip last saw them (KVM's last_irr), so a line a restored device drives high again makes no
// second edge. Single mode (ICW1 bit 1, never used on a PC) is not in the record and restores as cascade mode;
// special mask mode is not modelled.
public sealed partial class Pic8259
{
    public PicPairState Save()
    {
        lock (_lock)
            return new PicPairState { Master = SaveChip(_master), Slave = SaveChip(_slave) };
    }

    private static Pic8259State SaveChip(Chip c) => new()
    {
        LastIrr = c.Lines,
        Irr = c.Irr,
        Imr = c.Imr,
        Isr = c.Isr,
        PriorityAdd = (byte)c.LowestPriorityAdd,
        IrqBase = c.VectorBase,
        ReadRegSelect = (byte)(c.ReadIsr ? 1 : 0),
        Poll = c.Poll,
        SpecialMask = false,
        InitState = (byte)c.InitState,
        AutoEoi = c.AutoEoi,
        RotateOnAutoEoi = c.RotateOnAutoEoi,
        SpecialFullyNestedMode = c.SpecialFullyNested,
        Init4 = c.Icw4Needed,
        Elcr = c.Elcr,
        ElcrMask = c.ElcrMask,
    };

    public void Restore(PicPairState state)
    {
        if (state.Master == null || state.Slave == null) throw new StateRestoreException("pic: a chip's state is missing");
        Check(state.Master, _master, "master");
        Check(state.Slave, _slave, "slave");
        lock (_lock)
        {
            RestoreChip(state.Master, _master);
            RestoreChip(state.Slave, _slave);
            Update();
        }
        Publish();
    }

    private static void Check(Pic8259State s, Chip c, string name)
    {
        if (s.PriorityAdd > 7) throw new StateRestoreException($"pic {name}: priority rotation {s.PriorityAdd} above 7");
        if ((s.IrqBase & 7) != 0) throw new StateRestoreException($"pic {name}: vector base {s.IrqBase:x2} not a multiple of 8");
        if (s.InitState > 3) throw new StateRestoreException($"pic {name}: initialization state {s.InitState} above 3");
        if (s.ReadRegSelect > 1) throw new StateRestoreException($"pic {name}: read register select {s.ReadRegSelect}");
        if (s.ElcrMask != c.ElcrMask || (s.Elcr & ~c.ElcrMask) != 0)
            throw new StateRestoreException($"pic {name}: ELCR {s.Elcr:x2} (mask {s.ElcrMask:x2}) does not fit this chipset's mask {c.ElcrMask:x2}");
    }

    private static void RestoreChip(Pic8259State s, Chip c)
    {
        c.Lines = s.LastIrr;
        // The edge latch equals the line levels whenever the guest could observe it (ICW1 and every edge set it).
        c.EdgeSense = s.LastIrr;
        c.Irr = s.Irr;
        c.Imr = s.Imr;
        c.Isr = s.Isr;
        c.LowestPriorityAdd = s.PriorityAdd;
        c.VectorBase = s.IrqBase;
        c.ReadIsr = s.ReadRegSelect != 0;
        c.Poll = s.Poll;
        c.InitState = s.InitState;
        c.AutoEoi = s.AutoEoi;
        c.RotateOnAutoEoi = s.RotateOnAutoEoi;
        c.SpecialFullyNested = s.SpecialFullyNestedMode;
        c.Icw4Needed = s.Init4;
        c.SingleMode = false;
        c.Elcr = s.Elcr;
    }
}
