using System.Text.Json;
using Dirigent.Devices;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Iced.Intel;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Kvm;

/// <summary>
/// Pause, save and restore under KVM: a vCPU's state with what it has in flight (HLT, an NMI) moved to a fresh VM,
/// the in-kernel irqchip's records, a guest run part-way on one accelerator and finished on the other, and KVM's
/// dirty-page log. Guests stay tiny (the KVM here may emulate every instruction).
/// </summary>
public sealed class KvmLifecycleTests(ITestOutputHelper output)
{
    private const ulong Idt = 0x9000, Idtr = 0x9F00, Handler = GuestMachine.CodeBase + 0x800, NmiHandler = GuestMachine.CodeBase + 0xA00;
    private const ulong LapicBase = 0xFEE0_0000;
    private const int LapicEoi = 0xB0, LapicSvr = 0xF0, LapicTpr = 0x80, LapicLvt0 = 0x350;
    private const int LapicLvtTimer = 0x320, LapicTimerDivide = 0x3E0;
    /// <summary>A guest write here calls the test back on the vCPU thread (to stop it, or to act at a known point).</summary>
    private const byte CheckpointPort = 0xE1;

    private static void Print(Assembler a, char c)
    {
        a.mov(al, (byte)c);
        a.@out(0xE9, al);
    }

    private static void Exit(Assembler a, byte value)
    {
        a.mov(al, value);
        a.@out(0xF4, al);
        a.hlt();
    }

    private static void Checkpoint(Assembler a) => a.@out(CheckpointPort, al);

    private sealed class CheckpointDevice(Action? onWrite) : IPortDevice
    {
        public uint Read(ushort offset, int size) => 0;
        public void Write(ushort offset, int size, uint value) => onWrite?.Invoke();
    }

    /// <summary>A 64-bit interrupt gate for <paramref name="vector"/> to <paramref name="handler"/>, and the IDTR image.</summary>
    private static void Gate(GuestMachine m, byte vector, ulong handler)
    {
        ulong e = Idt + vector * 16UL;
        m.Vm.Memory.WriteU16(e, unchecked((ushort)handler));
        m.Vm.Memory.WriteU16(e + 2, 0x10);
        m.Vm.Memory.WriteU16(e + 4, 0x8E00);
        m.Vm.Memory.WriteU16(e + 6, (ushort)(handler >> 16));
        m.Vm.Memory.WriteU32(e + 8, (uint)(handler >> 32));
        m.Vm.Memory.WriteU16(Idtr, 0xFFF);
        m.Vm.Memory.WriteU64(Idtr + 2, Idt);
    }

    /// <summary>Whether the machine got KVM's in-kernel irqchip; says so in the output when it did not.</summary>
    private bool InKernel(GuestMachine m)
    {
        if (m.EmulatedInterrupts == null) return true;
        output.WriteLine($"KVM has no in-kernel irqchip here ({m.InterruptModel})");
        return false;
    }

    /// <summary>Runs the vCPU on its own thread, asking it to stop every few ms until Run returns (a request made
    /// before Run started is not lost that way).</summary>
    private static VcpuExit RunAndStop(GuestMachine m)
    {
        VcpuExit exit = default;
        Exception? error = null;
        var t = new Thread(() => { try { exit = m.Vcpu.Run(); } catch (Exception e) { error = e; } }, 16 << 20) { IsBackground = true };
        t.Start();
        for (int k = 0; !t.Join(20); k++)
        {
            if (k > 500) throw new TimeoutException($"{m.Kind} vCPU did not stop");
            m.Vcpu.RequestStop();
        }
        if (error != null) throw new Exception($"{m.Kind} Run threw", error);
        return exit;
    }

    /// <summary>Guest RAM of <paramref name="from"/> into <paramref name="to"/> (same size), as a snapshot carries it.</summary>
    private static unsafe void CopyRam(GuestMachine from, GuestMachine to)
    {
        var src = from.Vm.Memory.Regions;
        var dst = to.Vm.Memory.Regions;
        Assert.Equal(src.Count, dst.Count);
        for (int i = 0; i < src.Count; i++)
        {
            Assert.Equal((src[i].GuestBase, src[i].Size), (dst[i].GuestBase, dst[i].Size));
            Buffer.MemoryCopy(src[i].Host, dst[i].Host, (long)dst[i].Size, (long)src[i].Size);
        }
    }

    /// <summary>Through JSON as a snapshot file holds it.</summary>
    private static T ViaJson<T>(T value) =>
        JsonSerializer.Deserialize<T>(JsonSerializer.Serialize(value, StateRegistry.Json), StateRegistry.Json)!;

    // ---------------- (a) the vCPU's own state ----------------

    [SkippableTheory]
    [InlineData(true)]
    [InlineData(false)]
    public void Halted_vcpu_moves_to_a_new_vm_stays_halted_and_wakes_on_an_interrupt(bool inKernelIrqChip)
    {
        const byte vector = 0x66;
        Differential.RequireKvm();
        using var a = new GuestMachine(AccelKind.Kvm, interruptControllers: inKernelIrqChip);
        Skip.If(inKernelIrqChip && !InKernel(a), "KVM offers no in-kernel irqchip on this host");
        void Program(GuestMachine m)
        {
            Gate(m, vector, Handler);
            m.Load(Handler, 64, g =>
            {
                Print(g, 'I');
                g.inc(r15);
                if (inKernelIrqChip) g.mov(__dword_ptr[rbx + LapicEoi], 0);
                g.iretq();
            });
        }
        Program(a);
        a.Start64(g =>
        {
            g.lidt(__[Idtr]);
            if (inKernelIrqChip)
            {
                // Both 8259s masked, the local APIC software-enabled with LINT0 masked: vectors come only as fixed
                // interrupts to the LAPIC (what InjectInterrupt sends with the in-kernel irqchip).
                g.mov(al, 0xFF);
                g.@out(0x21, al);
                g.@out(0xA1, al);
                g.mov(rbx, LapicBase);
                g.mov(__dword_ptr[rbx + LapicSvr], 0x1FF);
                g.mov(__dword_ptr[rbx + LapicLvt0], 0x1_0000);
                g.mov(__dword_ptr[rbx + LapicTpr], 0);
            }
            g.xor(r15, r15);
            Print(g, 'H');
            g.sti();
            g.hlt();
            g.cli();
            Print(g, 'W');
            Exit(g, 0x31);
        });

        CpuState st;
        for (int k = 0; ; k++)
        {
            Assert.Equal(VcpuExitReason.Stopped, RunAndStop(a).Reason);
            st = a.Vcpu.GetState();
            if (st.Activity == VcpuActivity.Halted) break;
            Assert.True(k < 50, $"the guest never reached its HLT; console '{a.Console}', rip {st.Rip:x}");
        }
        Assert.Equal("H", a.Console);
        Assert.Equal(0xF4, a.Vm.Memory.ReadU8(st.Rip - 1)); // stopped after the HLT, as the software CPU reports it
        Assert.NotEqual(0UL, st.Rflags & 0x200);
        Assert.False(st.NmiPending);
        Assert.Empty(st.PendingInterrupts);
        Assert.NotNull(st.Xsave);
        Assert.Equal(st.Fxsave, st.Xsave![..512]);

        LocalApicState? lapic = null;
        IoApicState? ioapic = null;
        PicPairState? pic = null;
        if (inKernelIrqChip)
        {
            var chip = (IInKernelIrqChip)a.Interrupts!;
            lapic = ViaJson(chip.SaveLocalApic(0));
            ioapic = ViaJson(chip.SaveIoApic());
            pic = ViaJson(chip.SavePic());
            Assert.Equal(0x1FFu, BitConverter.ToUInt32(lapic.Page, LapicSvr));
            Assert.Equal(0xFF, pic.Master.Imr);
        }

        using var b = new GuestMachine(AccelKind.Kvm, interruptControllers: inKernelIrqChip);
        // Without interrupt controllers the test injects vectors itself; with them, KVM's in-kernel irqchip.
        Assert.Equal(inKernelIrqChip, b.Interrupts is IInKernelIrqChip);
        CopyRam(a, b);
        b.Vcpu.SetState(ViaJson(st));
        if (inKernelIrqChip)
        {
            // The restore order of KvmIrqChip.State.cs: CPU state, local APIC, IOAPIC and PIC.
            var chip = (IInKernelIrqChip)b.Interrupts!;
            chip.RestoreLocalApic(0, lapic!);
            chip.RestoreIoApic(ioapic!);
            chip.RestorePic(pic!);
        }
        var back = b.Vcpu.GetState();
        Assert.Equal(VcpuActivity.Halted, back.Activity);
        Assert.Equal(st.Rip, back.Rip);
        Assert.Equal(st.Gpr, back.Gpr);

        // Nothing pending: it stays in its HLT through a run and a stop.
        Assert.Equal(VcpuExitReason.Stopped, RunAndStop(b).Reason);
        Assert.Equal("", b.Console);
        var still = b.Vcpu.GetState();
        Assert.Equal(VcpuActivity.Halted, still.Activity);
        Assert.Equal(st.Rip, still.Rip);

        var r = b.Run(5000, g => g.Vcpu.InjectInterrupt(vector));
        output.WriteLine(r.ToString());
        Assert.Equal(VcpuExitReason.PowerEvent, r.Reason);
        Assert.Equal(0x31, r.ExitValue);
        Assert.Equal("IW", r.Console);
        Assert.Equal(1UL, r.Gpr[15]);
    }

    [SkippableTheory]
    [InlineData(true, false)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    [InlineData(false, true)]
    public void Pending_nmi_round_trips_and_is_delivered_unless_masked(bool inKernelIrqChip, bool masked)
    {
        Differential.RequireKvm();
        using var m = new GuestMachine(AccelKind.Kvm, interruptControllers: inKernelIrqChip);
        Skip.If(inKernelIrqChip && !InKernel(m), "KVM offers no in-kernel irqchip on this host");
        m.Vm.Io.Register(CheckpointPort, 1, new CheckpointDevice(() => m.Vcpu.RequestStop()));
        Gate(m, 2, NmiHandler);
        m.Load(NmiHandler, 64, g =>
        {
            Print(g, 'N');
            g.inc(r15);
            g.iretq();
        });
        m.Start64(g =>
        {
            g.lidt(__[Idtr]);
            g.xor(r15, r15);
            Print(g, 'S');
            Checkpoint(g);
            Print(g, 'A');
            Exit(g, 0x32);
        });
        var stop = m.Run();
        Assert.Equal(VcpuExitReason.Stopped, stop.Reason);
        Assert.Equal("S", stop.Console);

        var st = m.Vcpu.GetState();
        Assert.False(st.NmiPending);
        Assert.False(st.NmiMasked);
        st.NmiPending = true;
        st.NmiMasked = masked;
        m.Vcpu.SetState(ViaJson(st));
        var back = m.Vcpu.GetState();
        Assert.True(back.NmiPending);
        Assert.Equal(masked, back.NmiMasked);

        var r = m.Run();
        output.WriteLine(r.ToString());
        Assert.Equal(0x32, r.ExitValue);
        // Unmasked, the NMI comes before the next instruction; masked (an NMI handler that has not executed IRET yet),
        // it stays latched.
        Assert.Equal(masked ? "SA" : "SNA", r.Console);
        Assert.Equal(masked ? 0UL : 1UL, r.Gpr[15]);
        Assert.Equal(masked, m.Vcpu.GetState().NmiPending);
    }

    // ---------------- (b) the in-kernel irqchip's records ----------------

    [SkippableFact]
    public void Irqchip_records_restore_what_the_guest_programmed()
    {
        Differential.RequireKvm();
        using var m = new GuestMachine(AccelKind.Kvm, interruptControllers: true);
        Skip.If(!InKernel(m), "KVM offers no in-kernel irqchip on this host"); // reported as skipped, never a pass
        var chip = (IInKernelIrqChip)m.Interrupts!;

        // State A: IOAPIC pin 5 (masked), the 8259 pair initialized at 0x20/0x28 with all but the cascade masked, PIT
        // counter 0 periodic (mode 2) with count 0x1234, and LAPIC registers. No interrupt can reach the CPU.
        m.Start64(g =>
        {
            g.mov(rdx, PcPlatform.IoApicBase);
            g.mov(__dword_ptr[rdx], 0x10 + 2 * 5);
            g.mov(__dword_ptr[rdx + 0x10], 0x1_0070);
            foreach (var (port, value) in new (byte, byte)[] { (0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFB),
                         (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0xA1, 0xFF),
                         (0x43, 0x34), (0x40, 0x34), (0x40, 0x12) })
            {
                g.mov(al, value);
                g.@out(port, al);
            }
            g.mov(rbx, LapicBase);
            g.mov(__dword_ptr[rbx + LapicTpr], 0x30);
            g.mov(__dword_ptr[rbx + LapicLvtTimer], 0x1_0042);
            g.mov(__dword_ptr[rbx + LapicTimerDivide], 0x3);
            Exit(g, 1);
        });
        Assert.Equal(1, m.Run().ExitValue);
        var pic = ViaJson(chip.SavePic());
        var ioapic = ViaJson(chip.SaveIoApic());
        var pit = ViaJson(chip.SavePit());
        var lapic = ViaJson(chip.SaveLocalApic(0));
        Assert.Equal((0xFB, 0x20, 0xFF, 0x28), (pic.Master.Imr, pic.Master.IrqBase, pic.Slave.Imr, pic.Slave.IrqBase));
        Assert.Equal(0x1_0070UL, ioapic.Redirection[5] & 0xFFFF_FFFF);
        Assert.Equal((0x1234u, (byte)2, (byte)3), (pit.Channels[0].Count, pit.Channels[0].Mode, pit.Channels[0].RwMode));
        Assert.InRange(pit.Channels[0].NsSinceLoad, 0, 60_000_000_000);
        Assert.Equal(0x30u, BitConverter.ToUInt32(lapic.Page, LapicTpr));
        Assert.Equal(0x1_0042u, BitConverter.ToUInt32(lapic.Page, LapicLvtTimer));
        Assert.Equal(0xFEE0_0000UL, lapic.ApicBase & ~0xFFFUL);
        output.WriteLine($"PIT channel 0 loaded {pit.Channels[0].NsSinceLoad} ns before the save");

        // State B: every one of them changed.
        m.Vm.ClearPowerEvent();
        m.Start64(g =>
        {
            g.mov(rdx, PcPlatform.IoApicBase);
            g.mov(__dword_ptr[rdx], 0x10 + 2 * 5);
            g.mov(__dword_ptr[rdx + 0x10], 0x1_0071);
            foreach (var (port, value) in new (byte, byte)[] { (0x21, 0xFF), (0x43, 0x36), (0x40, 0x21), (0x40, 0x43) })
            {
                g.mov(al, value);
                g.@out(port, al);
            }
            g.mov(rbx, LapicBase);
            g.mov(__dword_ptr[rbx + LapicTpr], 0x20);
            g.mov(__dword_ptr[rbx + LapicTimerDivide], 0xB);
            Exit(g, 2);
        });
        Assert.Equal(2, m.Run().ExitValue);
        Assert.Equal(0xFF, chip.SavePic().Master.Imr);

        // Back to A, then a guest reads the chips. Its CPU state is set first (SetState loads CR8, the TPR's view).
        m.Vm.ClearPowerEvent();
        m.Start64(g =>
        {
            g.mov(rdx, PcPlatform.IoApicBase);
            g.mov(__dword_ptr[rdx], 0x10 + 2 * 5);
            g.mov(r12d, __dword_ptr[rdx + 0x10]);
            g.xor(eax, eax);
            g.@in(al, 0x21);
            g.mov(r13d, eax);
            g.mov(al, 0xE2); // read-back: status of counter 0
            g.@out(0x43, al);
            g.@in(al, 0x40);
            g.mov(r14d, eax);
            g.mov(al, 0x00); // counter latch, counter 0
            g.@out(0x43, al);
            g.@in(al, 0x40);
            g.mov(esi, eax);
            g.@in(al, 0x40);
            g.shl(eax, 8);
            g.or(esi, eax);
            g.mov(rbx, LapicBase);
            g.mov(r8d, __dword_ptr[rbx + LapicTpr]);
            g.mov(r9d, __dword_ptr[rbx + LapicLvtTimer]);
            g.mov(r10d, __dword_ptr[rbx + LapicTimerDivide]);
            Exit(g, 3);
        });
        chip.RestoreLocalApic(0, lapic);
        chip.RestoreIoApic(ioapic);
        chip.RestorePic(pic);
        chip.RestorePit(pit);
        // IRQ0 (the PIT counting meanwhile) may have pulsed master input 0; the rest reads back as saved.
        static Pic8259State WithoutIrq0(Pic8259State p) => p with { Irr = (byte)(p.Irr & ~1), LastIrr = (byte)(p.LastIrr & ~1) };
        var picBack = chip.SavePic();
        Assert.Equal(pic.Slave, picBack.Slave);
        Assert.Equal(WithoutIrq0(pic.Master), WithoutIrq0(picBack.Master));
        Assert.Equal(ioapic.Redirection, chip.SaveIoApic().Redirection);
        var pitBack = chip.SavePit();
        Assert.Equal((0x1234u, (byte)2), (pitBack.Channels[0].Count, pitBack.Channels[0].Mode));

        var r = m.Run();
        output.WriteLine(r.ToString());
        Assert.Equal(3, r.ExitValue);
        Assert.Equal(0x1_0070UL, r.Gpr[12]);
        Assert.Equal(0xFBUL, r.Gpr[13] & 0xFF);
        Assert.Equal(0x34UL, r.Gpr[14] & 0x7F); // access mode word (3 << 4), mode 2 (2 << 1), binary
        Assert.InRange(r.Gpr[6], 1UL, 0x1234UL); // counting down from the restored count
        Assert.Equal(0x30UL, r.Gpr[8]);
        Assert.Equal(0x1_0042UL, r.Gpr[9]);
        Assert.Equal(0x3UL, r.Gpr[10] & 0xB);

        Assert.Throws<StateRestoreException>(() => chip.RestoreLocalApic(0, lapic with { Page = new byte[1000] }));
        Assert.Throws<StateRestoreException>(() => chip.RestoreIoApic(ioapic with { Redirection = new ulong[3] }));
        Assert.Throws<StateRestoreException>(() => chip.RestorePit(pit with { Channels = [] }));
    }

    // ---------------- (c) across accelerators ----------------

    /// <summary>
    /// Prints 'a'..'p' with some arithmetic in RBX between the letters and a delay loop (so a stop requested at the
    /// checkpoint after 'h' lands before the end on either accelerator), then exits with 0x33.
    /// </summary>
    private static void LetterLoop(GuestMachine m, Action? onCheckpoint)
    {
        m.Vm.Io.Register(CheckpointPort, 1, new CheckpointDevice(onCheckpoint));
        m.Start64(g =>
        {
            var loop = g.CreateLabel();
            var delay = g.CreateLabel();
            var skip = g.CreateLabel();
            g.mov(rbx, 0x1234_5678UL);
            g.mov(r12, 0x9E37_79B9_7F4A_7C15UL);
            g.xor(r13, r13);
            g.Label(ref loop);
            g.mov(al, (byte)'a');
            g.add(al, r13b);
            g.@out(0xE9, al);
            g.imul(rbx, r12);
            g.add(rbx, r13);
            g.rol(rbx, 5);
            g.mov(ecx, 300);
            g.Label(ref delay);
            g.dec(ecx);
            g.jnz(delay);
            g.cmp(r13, 7);
            g.jne(skip);
            Checkpoint(g);
            g.Label(ref skip);
            g.inc(r13);
            g.cmp(r13, 16);
            g.jne(loop);
            g.mov(rax, rbx);
            Exit(g, 0x33);
        });
    }

    /// <summary>The whole run on one accelerator, as the split runs must end.</summary>
    private static GuestResult WholeRun(AccelKind kind)
    {
        if (kind == AccelKind.Kvm) Differential.RequireKvm();
        using var m = new GuestMachine(kind);
        LetterLoop(m, null);
        return m.Run();
    }

    [SkippableTheory]
    [InlineData(AccelKind.Kvm, AccelKind.Emu)]
    [InlineData(AccelKind.Emu, AccelKind.Kvm)]
    [InlineData(AccelKind.Kvm, AccelKind.Kvm)]
    [InlineData(AccelKind.Emu, AccelKind.Emu)] // the test's own logic, where no KVM is at hand
    public void Guest_stopped_on_one_accelerator_finishes_on_the_other(AccelKind first, AccelKind second)
    {
        var refEmu = WholeRun(AccelKind.Emu);
        Assert.Equal("abcdefghijklmnop", refEmu.Console);
        if (first == AccelKind.Kvm || second == AccelKind.Kvm) Differential.AssertSame(refEmu, WholeRun(AccelKind.Kvm));

        using var a = new GuestMachine(first);
        LetterLoop(a, () => a.Vcpu.RequestStop());
        var part = a.Run();
        Assert.Equal(VcpuExitReason.Stopped, part.Reason);
        output.WriteLine($"{first} stopped after '{part.Console}'");
        Assert.StartsWith("abcdefgh", part.Console);
        Assert.True(part.Console.Length < 16, $"the stop came too late: '{part.Console}'");
        var st = ViaJson(a.Vcpu.GetState());
        Assert.Equal(VcpuActivity.Running, st.Activity);

        using var b = new GuestMachine(second);
        LetterLoop(b, null); // the same devices; the program's bytes come with the RAM copy
        CopyRam(a, b);
        b.Vcpu.SetState(st);
        var rest = b.Run();
        output.WriteLine($"{second} finished: {rest}");
        Assert.Equal(VcpuExitReason.PowerEvent, rest.Reason);
        Assert.Equal(refEmu.ExitValue, rest.ExitValue);
        Assert.Equal(refEmu.Console, part.Console + rest.Console);
        Assert.Equal(refEmu.Gpr, rest.Gpr);
        Assert.Equal(refEmu.Rip, rest.Rip);
    }

    // ---------------- (d) dirty log ----------------

    [SkippableFact]
    public void Dirty_log_reports_the_pages_the_guest_wrote()
    {
        const ulong pageA = GuestMachine.DataBase + 0x3000, pageB = GuestMachine.DataBase + 0x7000;
        const ulong pageC = 0x30_1000, untouched = GuestMachine.DataBase + 0x5000;
        Differential.RequireKvm();
        using var m = new GuestMachine(AccelKind.Kvm);
        List<ulong>? firstRound = null;
        m.Vm.Io.Register(CheckpointPort, 1, new CheckpointDevice(() =>
        {
            // On the vCPU thread, between the guest's writes: what it wrote so far.
            m.Accel.CollectDirtyPages();
            firstRound = m.Vm.Memory.DirtyLog.Harvest();
        }));
        m.Start64(g =>
        {
            g.mov(rdi, pageA + 0x10);
            g.mov(__qword_ptr[rdi], 1);
            g.mov(rdi, pageB + 0xFF8);
            g.mov(__qword_ptr[rdi], 2);
            Checkpoint(g);
            g.mov(rdi, pageC);
            g.mov(__qword_ptr[rdi], 3);
            Exit(g, 0x34);
        });
        try
        {
            m.Accel.SetDirtyLogging(true);
        }
        catch (InvalidOperationException e)
        {
            Assert.Fail($"KVM dirty logging is not available on this host: {e.Message}");
        }
        Assert.True(m.Vm.Memory.DirtyLog.Enabled);
        var r = m.Run();
        Assert.Equal(0x34, r.ExitValue);
        m.Accel.CollectDirtyPages();
        var secondRound = m.Vm.Memory.DirtyLog.Harvest();
        output.WriteLine($"first round: {string.Join(",", firstRound!.Select(p => p.ToString("x")))}");
        output.WriteLine($"second round: {string.Join(",", secondRound.Select(p => p.ToString("x")))}");

        Assert.NotNull(firstRound);
        Assert.Contains(pageA, firstRound);
        Assert.Contains(pageB, firstRound);
        Assert.DoesNotContain(pageC, firstRound);
        Assert.DoesNotContain(untouched, firstRound);
        Assert.Contains(pageC, secondRound);
        Assert.DoesNotContain(pageA, secondRound);
        Assert.DoesNotContain(pageB, secondRound);
        Assert.DoesNotContain(untouched, secondRound);
        Assert.Equal(1UL, m.Vm.Memory.ReadU64(pageA + 0x10));

        m.Accel.SetDirtyLogging(false);
        Assert.False(m.Vm.Memory.DirtyLog.Enabled);
        m.Accel.CollectDirtyPages(); // nothing to collect while off
        Assert.Empty(m.Vm.Memory.DirtyLog.Harvest());
    }
}
