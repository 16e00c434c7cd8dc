using Dirigent.Devices.Interrupts;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;
using static Dirigent.Tests.Devices.Misc.SavedStates;

namespace Dirigent.Tests.Devices.Interrupts;

/// <summary>8259 pair and IOAPIC reset, save and restore through the accelerator-neutral records.</summary>
public sealed class PicIoApicStateTests
{
    private sealed class PicRig
    {
        public readonly Pic8259 Pic = new();
        public readonly IoBus Io = new();
        public PicRig() => Pic.RegisterPorts(Io);
        public void Out(ushort port, byte v) => Io.Write(port, 1, v);
        public byte In(ushort port) => (byte)Io.Read(port, 1);

        public void InitLikeLinux()
        {
            Out(0x21, 0xFF);
            Out(0x20, 0x11); Out(0x21, 0x30); Out(0x21, 0x04); Out(0x21, 0x01);
            Out(0xA0, 0x11); Out(0xA1, 0x38); Out(0xA1, 0x02); Out(0xA1, 0x01);
            Out(0x21, 0xE9); Out(0xA1, 0xFA);  // IRQ 1, 2, 4 and 8, 10 unmasked
        }

        public string Registers()
        {
            Out(0x20, 0x0A); byte irr = In(0x20); Out(0x20, 0x0B); byte isr = In(0x20);
            Out(0xA0, 0x0A); byte irr2 = In(0xA0); Out(0xA0, 0x0B); byte isr2 = In(0xA0);
            Out(0x20, 0x0A); Out(0xA0, 0x0A);
            return $"{irr:x2}/{isr:x2}/{In(0x21):x2} {irr2:x2}/{isr2:x2}/{In(0xA1):x2} elcr {In(0x4D0):x2}{In(0x4D1):x2} intr {Pic.Intr}";
        }
    }

    [Fact]
    public void PicResetGivesTheFreshState()
    {
        var r = new PicRig();
        r.InitLikeLinux();
        r.Out(0x4D1, 0x04);                   // IRQ 10 level
        r.Pic.SetIrq(1, true);
        r.Pic.SetIrq(10, true);
        Assert.Equal(0x31, r.Pic.Acknowledge());
        r.Pic.SetIrq(1, false);
        r.Pic.SetIrq(10, false);
        r.Out(0x20, 0xC3);                    // rotate priority
        r.Pic.Reset();
        Assert.Equal(Json(new Pic8259().Save()), Json(r.Pic.Save()));
    }

    [Fact]
    public void RouterPicResetDrivesLinesStillAsserted()
    {
        using var clock = new VirtualClock();
        var router = new InterruptRouter(clock, 1, 1_000_000_000);
        var io = new IoBus();
        router.Register(io, new MmioBus());
        var line = router.Line(10);
        io.Write(0x4D1, 1, 0x04);             // IRQ 10 level-triggered
        line.Set(true);
        router.Pics.Reset();                  // the ELCR goes back to edge; the line is still high
        var s = router.Pics.Save();
        Assert.Equal(0x04, s.Slave.LastIrr);  // the chip sees the asserted wire again
        Assert.Equal(0x04, s.Slave.Irr);      // and latched its edge, as a line rising after reset does
    }

    [Fact]
    public void RestoredPicDeliversTheSameVectors()
    {
        var a = new PicRig();
        a.InitLikeLinux();
        a.Out(0x4D1, 0x04);
        a.Pic.SetIrq(10, true);               // level, stays asserted
        a.Pic.SetIrq(4, true);                // edge, held high
        a.Pic.SetIrq(1, true); a.Pic.SetIrq(1, false);
        Assert.Equal(0x31, a.Pic.Acknowledge()); // IRQ 1 in service
        var b = new PicRig();
        Transfer(a.Pic, b.Pic);
        Assert.Equal(a.Registers(), b.Registers());
        // The devices drive their lines again on the restored machine: no second edge for the held IRQ 4.
        b.Pic.SetIrq(10, true); b.Pic.SetIrq(4, true);
        Assert.Equal(a.Registers(), b.Registers());
        foreach (var r in new[] { a, b })
        {
            r.Out(0x20, 0x20);                // EOI for IRQ 1
        }
        var vectorsA = new List<int>();
        var vectorsB = new List<int>();
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(a.Pic.Intr, b.Pic.Intr);
            int va = a.Pic.Acknowledge(), vb = b.Pic.Acknowledge();
            vectorsA.Add(va); vectorsB.Add(vb);
            Assert.Equal(a.Registers(), b.Registers());
            foreach (var r in new[] { a, b })
            {
                // The handler quiets the level source, then EOIs the slave (if it was a slave IRQ) and the master.
                if (va >= 0x38) { r.Pic.SetIrq(10, false); r.Out(0xA0, 0x20); }
                r.Out(0x20, 0x20);
            }
        }
        Assert.Equal(vectorsA, vectorsB);
        Assert.Equal([0x3A, 0x34, 0x37], vectorsB);   // slave IRQ 10 (via IR2) beats IRQ 4; then spurious IR7
    }

    [Fact]
    public void HostilePicRecordsAreRefused()
    {
        var pic = new Pic8259();
        var good = pic.Save();
        PicPairState Edit(Action<PicPairState> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(pic, Edit(s => s.Master.PriorityAdd = 8));
        AssertRefused(pic, Edit(s => s.Slave.IrqBase = 0x71));
        AssertRefused(pic, Edit(s => s.Master.InitState = 4));
        AssertRefused(pic, Edit(s => s.Master.Elcr = 0x01));        // IRQ 0 cannot be level on PIIX
        AssertRefused(pic, Edit(s => s.Slave.ElcrMask = 0xFF));
        AssertRefused(pic, Edit(s => s.Slave = null!));
    }

    private sealed class RecordingBus : IApicBus
    {
        public readonly List<ApicMessage> Messages = new();
        public bool Deliver(in ApicMessage message, LocalApic? source) { Messages.Add(message); return true; }
        public void BroadcastEoi(int vector) { }
    }

    private static void Program(IoApic io, int pin, ulong entry)
    {
        io.Write(0, 4, (uint)(0x11 + 2 * pin)); io.Write(0x10, 4, entry >> 32);
        io.Write(0, 4, (uint)(0x10 + 2 * pin)); io.Write(0x10, 4, (uint)entry);
    }

    [Fact]
    public void IoApicResetGivesTheFreshState()
    {
        var bus = new RecordingBus();
        var io = new IoApic(bus, 0);
        io.Write(0, 4, 0); io.Write(0x10, 4, 0x0500_0000);   // ID 5
        Program(io, 5, 0x0100_0000_0000_8035);                // level, vector 0x35
        io.SetPin(5, true);
        io.SetPin(5, false);
        io.Write(0, 4, 0x21);
        io.Reset();
        Assert.Equal(Json(new IoApic(bus, 0).Save()), Json(io.Save()));
    }

    [Fact]
    public void RestoredIoApicRedeliversAndKeepsEdges()
    {
        var busA = new RecordingBus();
        var a = new IoApic(busA, 0);
        Program(a, 5, 0x0100_0000_0000_8035);                 // level
        Program(a, 3, 0x0100_0000_0000_0033);                 // edge
        a.SetPin(5, true);
        a.SetPin(3, true);
        Assert.Equal(2, busA.Messages.Count);
        var busB = new RecordingBus();
        var b = new IoApic(busB, 0);
        Transfer(a, b);
        Assert.Equal(a.ReadRedirection(5), b.ReadRedirection(5)); // Remote IRR set on both
        Assert.NotEqual(0UL, b.ReadRedirection(5) & (1UL << 14));
        b.SetPin(3, true);                                     // the device drives its line again: no new edge
        Assert.Empty(busB.Messages);
        foreach (var io in new[] { a, b }) { io.EndOfInterrupt(0x35); io.SetPin(3, false); io.SetPin(3, true); }
        Assert.Equal(busA.Messages.Skip(2), busB.Messages);
        Assert.Equal([0x35, 0x33], busB.Messages.Select(m => (int)m.Vector));
    }

    [Fact]
    public void HostileIoApicRecordsAreRefused()
    {
        var io = new IoApic(new RecordingBus(), 0);
        var good = io.Save();
        IoApicState Edit(Action<IoApicState> f) { var s = Copy(good); f(s); return s; }
        AssertRefused(io, Edit(s => s.Redirection = new ulong[23]));
        AssertRefused(io, Edit(s => s.Redirection = null!));
        AssertRefused(io, Edit(s => s.Id = 16));
        AssertRefused(io, Edit(s => s.IoRegSel = 0x100));
        AssertRefused(io, Edit(s => s.BaseAddress = 0xFEC0_1000));
        AssertRefused(io, Edit(s => s.Irr = 1u << 24));
    }
}
