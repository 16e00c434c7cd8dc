using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Interrupts;

/// <summary>
/// The PC's cascaded pair of Intel 8259A programmable interrupt controllers (master at 0x20/0x21, slave at
/// 0xA0/0xA1 on master IR2) plus the PIIX edge/level control registers (ELCR) at 0x4D0/0x4D1.
/// The master's INT output is <see cref="Intr"/>; the CPU's INTA cycle is <see cref="Acknowledge"/>.
/// Inputs are ISA IRQ 0..15 through <see cref="SetIrq"/>. Special mask mode and LTIM (ICW1 bit 3) are not
/// modelled; the ELCR gives per-line level triggering the way PC chipsets do.
/// </summary>
public sealed partial class Pic8259 : IStateful<PicPairState>
{
    /// <summary>One 8259A. Field names follow the datasheet's registers.</summary>
    private sealed class Chip(byte elcrMask)
    {
        public byte Irr, Isr, Imr;
        /// <summary>Input line levels as last driven (edge detection and level re-evaluation).</summary>
        public byte Lines;
        /// <summary>Edge-sense latch: a line must go low again after ICW1 or a latched edge before it latches anew.</summary>
        public byte EdgeSense;
        public byte Elcr;
        public readonly byte ElcrMask = elcrMask;
        /// <summary>The IR level that currently has the highest priority (rotation moves it).</summary>
        public int LowestPriorityAdd;
        public byte VectorBase;
        public int InitState; // 0 = operational, 1..3 = expecting ICW2..ICW4
        public bool Icw4Needed, SingleMode, AutoEoi, RotateOnAutoEoi, SpecialFullyNested;
        public bool ReadIsr, Poll;

        /// <summary>Priority (0 = highest) of the highest-priority bit in mask, or 8 if none.</summary>
        public int Priority(byte mask)
        {
            if (mask == 0) return 8;
            int p = 0;
            while ((mask & (1 << ((p + LowestPriorityAdd) & 7))) == 0) p++;
            return p;
        }

        /// <summary>The IR this chip would signal to the CPU now, or -1.</summary>
        public int PendingIrq(bool isMaster)
        {
            int p = Priority((byte)(Irr & ~Imr));
            if (p == 8) return -1;
            byte inService = Isr;
            // In special fully nested mode the master lets a slave interrupt nest above one already in service
            // from the same slave, so the cascade input does not block itself.
            if (SpecialFullyNested && isMaster) inService &= unchecked((byte)~(1 << 2));
            return p < Priority(inService) ? (p + LowestPriorityAdd) & 7 : -1;
        }

        /// <summary>INTA for the given IR: in service (unless auto-EOI) and, for edge inputs, out of the IRR.</summary>
        public void Intack(int irq)
        {
            if (AutoEoi)
            {
                if (RotateOnAutoEoi) LowestPriorityAdd = (irq + 1) & 7;
            }
            else Isr |= (byte)(1 << irq);
            if ((Elcr & (1 << irq)) == 0) Irr &= (byte)~(1 << irq);
        }

        public void SetLine(int irq, bool level)
        {
            byte bit = (byte)(1 << irq);
            if ((Elcr & bit) != 0)
            {
                // Level: the request follows the line.
                if (level) Irr |= bit; else Irr &= (byte)~bit;
            }
            else if (level)
            {
                if ((EdgeSense & bit) == 0) Irr |= bit;
                EdgeSense |= bit;
            }
            else EdgeSense &= (byte)~bit;
            if (level) Lines |= bit; else Lines &= (byte)~bit;
        }

        public void Icw1(byte value)
        {
            // ICW1 clears the mask and in-service state, resets the edge-sense circuit (an edge input that is high
            // must go low and high again) and the priority order; asserted level inputs stay requested. The ELCR
            // belongs to the chipset and survives.
            Imr = 0; Isr = 0; EdgeSense = Lines;
            Irr = (byte)(Lines & Elcr);
            LowestPriorityAdd = 0; VectorBase = 0;
            ReadIsr = false; Poll = false;
            AutoEoi = false; RotateOnAutoEoi = false; SpecialFullyNested = false;
            Icw4Needed = (value & 1) != 0;
            SingleMode = (value & 2) != 0;
            InitState = 1;
        }

        public void Reset(byte vectorBase, byte imr)
        {
            Elcr = 0;
            Lines = 0;
            Icw1(0);
            InitState = 0;
            VectorBase = vectorBase;
            Imr = imr;
        }

        public void WriteCommand(byte value)
        {
            if ((value & 0x10) != 0) { Icw1(value); return; }
            if ((value & 0x08) != 0)
            {
                // OCW3
                if ((value & 0x04) != 0) Poll = true;
                if ((value & 0x02) != 0) ReadIsr = (value & 1) != 0;
                return;
            }
            // OCW2: R, SL, EOI in bits 7..5, level in 2..0
            int level = value & 7;
            switch (value >> 5)
            {
                case 0: RotateOnAutoEoi = false; break;
                case 4: RotateOnAutoEoi = true; break;
                case 1: // non-specific EOI
                case 5: // rotate on non-specific EOI
                {
                    int p = Priority(Isr);
                    if (p == 8) break;
                    int irq = (p + LowestPriorityAdd) & 7;
                    Isr &= (byte)~(1 << irq);
                    if (value >> 5 == 5) LowestPriorityAdd = (irq + 1) & 7;
                    break;
                }
                case 3: // specific EOI
                    Isr &= (byte)~(1 << level);
                    break;
                case 7: // rotate on specific EOI
                    Isr &= (byte)~(1 << level);
                    LowestPriorityAdd = (level + 1) & 7;
                    break;
                case 6: // set priority: the given level becomes the lowest
                    LowestPriorityAdd = (level + 1) & 7;
                    break;
            }
        }

        public void WriteData(byte value)
        {
            switch (InitState)
            {
                case 0: Imr = value; break;
                case 1:
                    VectorBase = (byte)(value & 0xF8);
                    InitState = SingleMode ? (Icw4Needed ? 3 : 0) : 2;
                    break;
                case 2: // ICW3: the cascade wiring is fixed on a PC
                    InitState = Icw4Needed ? 3 : 0;
                    break;
                case 3:
                    AutoEoi = (value & 0x02) != 0;
                    SpecialFullyNested = (value & 0x10) != 0;
                    InitState = 0;
                    break;
            }
        }
    }

    private readonly object _lock = new();
    private readonly object _publishLock = new();
    private readonly Chip _master = new(0xF8), _slave = new(0xDE); // IRQ0-2, 8 and 13 cannot be level on PIIX
    private bool _intr, _published;

    /// <summary>Raised when the master's INT output changes (in order, never under the PIC's own lock).</summary>
    public event Action<bool>? IntrChanged;

    /// <summary>The master's INT output: an interrupt is waiting for INTA.</summary>
    public bool Intr { get { lock (_lock) return _intr; } }

    public Pic8259() => Reset();

    /// <summary>
    /// Power-on state as PC firmware leaves it (there is no BIOS to run the ICWs): vectors 0x08/0x70, every
    /// input masked except the cascade, so a guest that enables interrupts before programming the PIC does not take
    /// stray exceptions.
    /// </summary>
    public void Reset()
    {
        lock (_lock)
        {
            _master.Reset(0x08, 0xFB);
            _slave.Reset(0x70, 0xFF);
            Update();
        }
        Publish();
    }

    /// <summary>Drives ISA IRQ line 0..15 (the cascade input IR2 is internal and ignored here).</summary>
    public void SetIrq(int irq, bool level)
    {
        if ((uint)irq >= 16 || irq == 2) return;
        lock (_lock)
        {
            if (irq < 8) _master.SetLine(irq, level); else _slave.SetLine(irq - 8, level);
            Update();
        }
        Publish();
    }

    /// <summary>
    /// The INTA cycle: returns the vector of the highest-priority request and puts it in service. With nothing
    /// left to deliver (the request went away) the chip answers with IR7's vector without setting ISR, as the
    /// 8259A does for spurious interrupts.
    /// </summary>
    public int Acknowledge()
    {
        int vector;
        lock (_lock)
        {
            int irq = _master.PendingIrq(true);
            if (irq < 0) vector = _master.VectorBase + 7;
            else
            {
                _master.Intack(irq);
                if (irq == 2)
                {
                    int irq2 = _slave.PendingIrq(false);
                    if (irq2 >= 0) { _slave.Intack(irq2); vector = _slave.VectorBase + irq2; }
                    else vector = _slave.VectorBase + 7;
                }
                else vector = _master.VectorBase + irq;
            }
            Update();
        }
        Publish();
        return vector;
    }

    // Must hold _lock. The slave's INT drives master IR2 as a level, so the master re-requests as long as the
    // slave has something to say.
    private void Update()
    {
        _master.SetLine(2, _slave.PendingIrq(false) >= 0);
        _master.Irr = (byte)((_master.Irr & ~4) | (_master.Lines & 4));
        _intr = _master.PendingIrq(true) >= 0;
    }

    private void Publish()
    {
        // The publish lock orders notifications so the receiver always ends up with the latest level.
        lock (_publishLock)
        {
            bool level;
            lock (_lock) level = _intr;
            if (level == _published) return;
            _published = level;
            IntrChanged?.Invoke(level);
        }
    }

    private byte Read(Chip chip, bool isMaster, int port)
    {
        if (chip.Poll)
        {
            // Poll command: the next read acknowledges and returns I (bit 7) plus the highest request level.
            chip.Poll = false;
            int irq = chip.PendingIrq(isMaster);
            if (irq < 0) return 0;
            chip.Intack(irq);
            return (byte)(0x80 | irq);
        }
        if (port == 1) return chip.Imr;
        return chip.ReadIsr ? chip.Isr : chip.Irr;
    }

    private byte PortRead(int which, int port)
    {
        byte v;
        lock (_lock)
        {
            v = which switch
            {
                0 => Read(_master, true, port),
                1 => Read(_slave, false, port),
                _ => port == 0 ? _master.Elcr : _slave.Elcr,
            };
            Update();
        }
        Publish();
        return v;
    }

    private void PortWrite(int which, int port, byte value)
    {
        lock (_lock)
        {
            switch (which)
            {
                case 0 or 1:
                    var chip = which == 0 ? _master : _slave;
                    if (port == 0) chip.WriteCommand(value); else chip.WriteData(value);
                    break;
                default:
                    var c = port == 0 ? _master : _slave;
                    c.Elcr = (byte)(value & c.ElcrMask);
                    // Inputs switched to level now request exactly while asserted.
                    c.Irr = (byte)((c.Irr & ~c.Elcr) | (c.Lines & c.Elcr));
                    break;
            }
            Update();
        }
        Publish();
    }

    /// <summary>A two-port window (command/data or ELCR0/ELCR1); wider accesses are split into byte accesses.</summary>
    private sealed class Ports(Pic8259 pic, int which) : IPortDevice
    {
        public uint Read(ushort offset, int size)
        {
            uint v = 0;
            for (int i = 0; i < size; i++)
            {
                int port = offset + i;
                v |= (port < 2 ? pic.PortRead(which, port) : 0xFFu) << (8 * i);
            }
            return v;
        }

        public void Write(ushort offset, int size, uint value)
        {
            for (int i = 0; i < size; i++)
                if (offset + i < 2) pic.PortWrite(which, offset + i, (byte)(value >> (8 * i)));
        }
    }

    public IPortDevice MasterPorts => new Ports(this, 0);
    public IPortDevice SlavePorts => new Ports(this, 1);
    public IPortDevice ElcrPorts => new Ports(this, 2);

    /// <summary>Claims 0x20-0x21, 0xA0-0xA1 and the ELCR at 0x4D0-0x4D1.</summary>
    public void RegisterPorts(IoBus io)
    {
        io.Register(PcPlatform.PicMasterPort, 2, MasterPorts);
        io.Register(PcPlatform.PicSlavePort, 2, SlavePorts);
        io.Register(PcPlatform.ElcrPort, 2, ElcrPorts);
    }
}
