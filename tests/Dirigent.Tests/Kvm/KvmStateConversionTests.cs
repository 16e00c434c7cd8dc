using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json;
using Dirigent.Accel.Kvm;
using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Tests.Kvm;

/// <summary>
/// The translations between KVM's saved-state structures and the accelerator-neutral records, the interrupt wiring
/// and the state validation: pure code, no /dev/kvm needed.
/// </summary>
public sealed class KvmStateConversionTests
{
    private static int IoctlSize(nuint ioctl) => (int)((ioctl >> 16) & 0x3FFF);

    [SkippableFact]
    public void New_structs_match_the_kernel_abi()
    {
        Assert.Equal(16, Unsafe.SizeOf<KvmPicState>());
        Assert.Equal(216, Unsafe.SizeOf<KvmIoApicState>());
        Assert.Equal(24, Unsafe.SizeOf<KvmPitChannelState>());
        Assert.Equal(112, Unsafe.SizeOf<KvmPitState2>());
        Assert.Equal(64, Unsafe.SizeOf<KvmVcpuEvents>());
        Assert.Equal(16, Unsafe.SizeOf<KvmDirtyLog>());
        Assert.Equal(15, (int)Marshal.OffsetOf<KvmPicState>(nameof(KvmPicState.ElcrMask)));
        Assert.Equal(24, (int)Marshal.OffsetOf<KvmIoApicState>(nameof(KvmIoApicState.Redirtbl)));
        Assert.Equal(16, (int)Marshal.OffsetOf<KvmPitChannelState>(nameof(KvmPitChannelState.CountLoadTime)));
        Assert.Equal(72, (int)Marshal.OffsetOf<KvmPitState2>(nameof(KvmPitState2.Flags)));
        Assert.Equal(16, (int)Marshal.OffsetOf<KvmVcpuEvents>(nameof(KvmVcpuEvents.SipiVector)));
        Assert.Equal(20, (int)Marshal.OffsetOf<KvmVcpuEvents>(nameof(KvmVcpuEvents.Flags)));
        Assert.Equal(56, (int)Marshal.OffsetOf<KvmVcpuEvents>(nameof(KvmVcpuEvents.ExceptionPayload)));
        Assert.Equal(64, IoctlSize(KvmAbi.GET_VCPU_EVENTS));
        Assert.Equal(64, IoctlSize(KvmAbi.SET_VCPU_EVENTS));
        Assert.Equal(16, IoctlSize(KvmAbi.GET_DIRTY_LOG));
        Assert.Equal(4, IoctlSize(KvmAbi.GET_MP_STATE));
        // Same ioctl nr as the VM's KVM_GET/SET_PIT2 (0x9F/0xA0), told apart by the fd and the size.
        Assert.Equal(KvmAbi.GET_PIT2 & 0xFFFF, KvmAbi.GET_VCPU_EVENTS & 0xFFFF);
        Assert.Equal(KvmAbi.SET_PIT2 & 0xFFFF, KvmAbi.SET_VCPU_EVENTS & 0xFFFF);
    }

    [SkippableFact]
    public void Pc_wiring_routes_as_the_madt_says()
    {
        var entries = KvmIrqChip.RoutingEntries(InterruptWiring.Pc);
        // Lines 0,1,3..15 on a PIC input and an IOAPIC pin, 16..23 on the IOAPIC only, line 2 nowhere.
        Assert.Equal(15 * 2 + 8, entries.Count);
        Assert.DoesNotContain(entries, e => e.Gsi == 2);
        string Routes(uint gsi) => string.Join(",", entries.Where(e => e.Gsi == gsi).Select(e => $"{e.IrqChip}:{e.Pin}"));
        Assert.Equal($"{KvmAbi.IRQCHIP_PIC_MASTER}:0,{KvmAbi.IRQCHIP_IOAPIC}:2", Routes(0));
        Assert.Equal($"{KvmAbi.IRQCHIP_PIC_MASTER}:4,{KvmAbi.IRQCHIP_IOAPIC}:4", Routes(4));
        Assert.Equal($"{KvmAbi.IRQCHIP_PIC_SLAVE}:1,{KvmAbi.IRQCHIP_IOAPIC}:9", Routes(9));
        Assert.Equal($"{KvmAbi.IRQCHIP_PIC_SLAVE}:7,{KvmAbi.IRQCHIP_IOAPIC}:15", Routes(15));
        Assert.Equal($"{KvmAbi.IRQCHIP_IOAPIC}:19", Routes(19));
        Assert.All(entries, e => Assert.Equal(KvmAbi.IRQ_ROUTING_IRQCHIP, e.Type));
        Assert.False(InterruptWiring.Pc[2].Connected);
        Assert.True(InterruptWiring.Pc[23].Connected);
    }

    [SkippableFact]
    public void Wiring_rejects_what_no_board_has()
    {
        var lines = InterruptWiring.Pc.Lines.ToArray();
        Assert.Throws<ArgumentException>(() => new InterruptWiring(lines[..23]));
        var bad = (LineWiring[])lines.Clone();
        bad[5] = new LineWiring(new PicInput(2, 0), 5);
        Assert.Throws<ArgumentException>(() => new InterruptWiring(bad));
        bad[5] = new LineWiring(null, 24);
        Assert.Throws<ArgumentException>(() => new InterruptWiring(bad));
        // A wiring without the cascade quirk routes its line 2 too.
        var custom = (LineWiring[])lines.Clone();
        custom[2] = new LineWiring(null, 2);
        Assert.Contains(KvmIrqChip.RoutingEntries(new InterruptWiring(custom)), e => e.Gsi == 2 && e.Pin == 2);
    }

    private static KvmPicState SamplePic() => new()
    {
        LastIrr = 0x11, Irr = 0x01, Imr = 0xFA, Isr = 0x04, PriorityAdd = 3, IrqBase = 0x20, ReadRegSelect = 1, Poll = 0,
        SpecialMask = 1, InitState = 2, AutoEoi = 1, RotateOnAutoEoi = 0, SpecialFullyNestedMode = 1, Init4 = 1,
        Elcr = 0x08, ElcrMask = 0xF8,
    };

    [SkippableFact]
    public void Pic_state_round_trips_through_the_neutral_record()
    {
        var k = SamplePic();
        var rec = KvmIrqChip.FromKvm(k);
        Assert.Equal(((byte)0x11, (byte)0x01, (byte)0xFA, (byte)0x04), (rec.LastIrr, rec.Irr, rec.Imr, rec.Isr));
        Assert.True(rec.SpecialMask && rec.AutoEoi && rec.SpecialFullyNestedMode && rec.Init4);
        Assert.False(rec.Poll || rec.RotateOnAutoEoi);
        // Through JSON as a snapshot stores it.
        var pair = new PicPairState { Master = rec, Slave = rec with { Elcr = 0x02, ElcrMask = 0xDE } };
        var back = JsonSerializer.Deserialize<PicPairState>(JsonSerializer.Serialize(pair, StateRegistry.Json), StateRegistry.Json)!;
        var k2 = KvmIrqChip.ToKvm(back.Master, 0xF8, "master");
        Assert.Equal(MemoryMarshal.AsBytes(new[] { k }.AsSpan()).ToArray(), MemoryMarshal.AsBytes(new[] { k2 }.AsSpan()).ToArray());
        Assert.Equal(0xDE, KvmIrqChip.ToKvm(back.Slave, 0xDE, "slave").ElcrMask);
    }

    [SkippableTheory]
    [InlineData("priority")]
    [InlineData("base")]
    [InlineData("init")]
    [InlineData("select")]
    [InlineData("elcr")]
    [InlineData("mask")]
    public void Pic_record_the_chip_cannot_hold_is_refused(string what)
    {
        var rec = KvmIrqChip.FromKvm(SamplePic());
        rec = what switch
        {
            "priority" => rec with { PriorityAdd = 8 },
            "base" => rec with { IrqBase = 0x21 },
            "init" => rec with { InitState = 4 },
            "select" => rec with { ReadRegSelect = 2 },
            "elcr" => rec with { Elcr = 0x01 },
            _ => rec with { ElcrMask = 0xFF },
        };
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec, 0xF8, "master"));
    }

    [SkippableFact]
    public void Ioapic_state_round_trips_and_bad_records_are_refused()
    {
        var k = new KvmIoApicState { BaseAddress = 0xFEC0_0000, IoRegSel = 0x13, Id = 1, Irr = 1u << 19 };
        unsafe { for (int i = 0; i < 24; i++) k.Redirtbl[i] = 0x1_0000UL | (ulong)(0x30 + i) | ((ulong)i << 56); }
        var rec = KvmIrqChip.FromKvm(k);
        Assert.Equal(0x33UL | (3UL << 56) | 0x1_0000, rec.Redirection[3]);
        var k2 = KvmIrqChip.ToKvm(rec);
        Assert.Equal(MemoryMarshal.AsBytes(new[] { k }.AsSpan()).ToArray(), MemoryMarshal.AsBytes(new[] { k2 }.AsSpan()).ToArray());

        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec with { Redirection = new ulong[23] }));
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec with { Redirection = null! }));
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec with { BaseAddress = 0xFEC0_1000 }));
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec with { IoRegSel = 0x100 }));
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec with { Id = 16 }));
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec with { Irr = 1u << 24 }));
    }

    [SkippableFact]
    public void Pit_state_keeps_the_age_of_each_load_across_clocks()
    {
        const long hostNow = 5_000_000_000_000;
        var k = new KvmPitState2 { Flags = KvmAbi.PIT_FLAGS_SPEAKER_DATA_ON };
        // Channel 0: periodic, word access, count 0x1234 loaded 3 ms ago, a latched count with its MSB next.
        k.Channel0 = new KvmPitChannelState
        {
            Count = 0x1234, LatchedCount = 0x1000, CountLatched = 2, RwMode = 3, ReadState = 4, WriteState = 3, Mode = 2,
            Gate = 1, CountLoadTime = hostNow - 3_000_000,
        };
        // Channel 1: never programmed (KVM's reset state: mode 0xFF, access mode 0, count 0x10000).
        k.Channel1 = new KvmPitChannelState { Count = 0x10000, Mode = 0xFF, Gate = 1, CountLoadTime = 17 };
        // Channel 2: mode 0, LSB only, a written 0 (0x10000), GATE low, status latched.
        k.Channel2 = new KvmPitChannelState
        {
            Count = 0x10000, RwMode = 1, ReadState = 1, WriteState = 1, Mode = 0, Bcd = 1, StatusLatched = 1, Status = 0x52,
            CountLoadTime = hostNow - 10,
        };
        var rec = KvmIrqChip.FromKvm(k, hostNow);
        Assert.True(rec.SpeakerDataOn);
        var c0 = rec.Channels[0];
        Assert.Equal((0x1234u, (byte)2, (byte)3, 3_000_000L), (c0.Count, c0.Mode, c0.RwMode, c0.NsSinceLoad));
        Assert.True(c0.CountLatched);
        Assert.Equal((byte)4, c0.ReadState);
        var c1 = rec.Channels[1];
        Assert.Equal((0u, (byte)0, (byte)3, (byte)3, (byte)3, 0L), (c1.Count, c1.Mode, c1.RwMode, c1.ReadState, c1.WriteState, c1.NsSinceLoad));
        var c2 = rec.Channels[2];
        Assert.Equal((0x10000u, (byte)1, false, true), (c2.Count, c2.RwMode, c2.Gate, c2.Bcd));
        Assert.True(c2.StatusLatched);
        Assert.Equal(0x52, c2.Status);

        // Restored under another host clock: each load is as old as it was.
        const long later = 9_000_000_000_000;
        var back = KvmIrqChip.ToKvm(JsonSerializer.Deserialize<PitState>(JsonSerializer.Serialize(rec, StateRegistry.Json), StateRegistry.Json)!, later);
        Assert.Equal(KvmAbi.PIT_FLAGS_SPEAKER_DATA_ON, back.Flags);
        Assert.Equal(later - 3_000_000, back.Channel0.CountLoadTime);
        Assert.Equal((0x1234u, (byte)2, (byte)3, (byte)4, (byte)3), (back.Channel0.Count, back.Channel0.Mode, back.Channel0.RwMode, back.Channel0.ReadState, back.Channel0.WriteState));
        Assert.Equal(3, back.Channel0.CountLatched); // the latch restores with its first byte next
        Assert.Equal(0x1000, back.Channel0.LatchedCount);
        // Nothing loaded: KVM's unprogrammed mode, so no channel-0 timer is armed for a count nobody wrote.
        Assert.Equal(0xFF, back.Channel1.Mode);
        Assert.Equal(0u, back.Channel1.Count);
        Assert.Equal((0x10000u, (byte)0, (byte)1, (byte)0x52), (back.Channel2.Count, back.Channel2.Gate, back.Channel2.Bcd, back.Channel2.Status));
        Assert.Equal(0u, KvmIrqChip.ToKvm(rec with { SpeakerDataOn = false }, later).Flags);
    }

    [SkippableTheory]
    [InlineData("channels")]
    [InlineData("null channel")]
    [InlineData("count")]
    [InlineData("mode")]
    [InlineData("rw")]
    [InlineData("state")]
    [InlineData("gate")]
    [InlineData("age")]
    public void Pit_record_the_chip_cannot_hold_is_refused(string what)
    {
        var rec = KvmIrqChip.FromKvm(new KvmPitState2
        {
            Channel0 = new KvmPitChannelState { Count = 100, RwMode = 3, ReadState = 3, WriteState = 3, Mode = 2, Gate = 1 },
            Channel1 = new KvmPitChannelState { Count = 100, RwMode = 3, ReadState = 3, WriteState = 3, Mode = 2, Gate = 1 },
            Channel2 = new KvmPitChannelState { Count = 100, RwMode = 3, ReadState = 3, WriteState = 3, Mode = 2 },
        }, 1000);
        KvmIrqChip.ToKvm(rec, 2000); // valid as it is
        var c = rec.Channels[0];
        rec = what switch
        {
            "channels" => rec with { Channels = [c, c] },
            "null channel" => rec with { Channels = [c, null!, c] },
            _ => rec with
            {
                Channels =
                [
                    what switch
                    {
                        "count" => c with { Count = 0x10001 },
                        "mode" => c with { Mode = 6 },
                        "rw" => c with { RwMode = 0 },
                        "state" => c with { ReadState = 1 },
                        "gate" => c with { Gate = false },
                        _ => c with { NsSinceLoad = -2 },
                    },
                    rec.Channels[1], rec.Channels[2],
                ],
            },
        };
        Assert.Throws<StateRestoreException>(() => KvmIrqChip.ToKvm(rec, 2000));
    }

    [SkippableFact]
    public void Vcpu_events_round_trip_through_cpu_state()
    {
        var ev = new KvmVcpuEvents
        {
            ExceptionInjected = 1, ExceptionNr = 14, ExceptionHasErrorCode = 1, ExceptionErrorCode = 0x6,
            InterruptInjected = 1, InterruptNr = 0x41, InterruptShadow = KvmAbi.SHADOW_INT_STI,
            NmiPending = 1, NmiMasked = 1, SipiVector = 0x9A,
        };
        var s = CpuState.Reset();
        s.Rflags |= 0x200;
        var pending = new SortedSet<byte>();
        KvmVcpu.EventsToState(ev, s, pending);
        Assert.Equal(new PendingException { Vector = 14, HasErrorCode = true, ErrorCode = 6 }, s.PendingException);
        Assert.Equal(new byte[] { 0x41 }, pending.ToArray());
        Assert.True(s.InterruptShadow && s.NmiPending && s.NmiMasked);
        Assert.Equal(0x9A, s.SipiVector);

        var back = KvmVcpu.StateToEvents(s, 0x41, nmiPending: true);
        Assert.Equal(KvmAbi.VCPUEVENT_VALID_NMI_PENDING | KvmAbi.VCPUEVENT_VALID_SHADOW | KvmAbi.VCPUEVENT_VALID_SIPI_VECTOR, back.Flags);
        Assert.Equal(((byte)1, (byte)14, (byte)1, 6u), (back.ExceptionInjected, back.ExceptionNr, back.ExceptionHasErrorCode, back.ExceptionErrorCode));
        Assert.Equal(((byte)1, (byte)0x41, (byte)0), (back.InterruptInjected, back.InterruptNr, back.InterruptSoft));
        Assert.Equal(((byte)1, (byte)1, KvmAbi.SHADOW_INT_STI), (back.NmiPending, back.NmiMasked, back.InterruptShadow));
        Assert.Equal(0x9Au, back.SipiVector);

        // VMX refuses STI blocking with IF clear: the shadow goes in as MOV SS blocking then.
        s.Rflags &= ~0x200UL;
        Assert.Equal(KvmAbi.SHADOW_INT_MOV_SS, KvmVcpu.StateToEvents(s, -1, false).InterruptShadow);
        Assert.Equal(0, KvmVcpu.StateToEvents(s, -1, false).InterruptInjected);
        s.InterruptShadow = false;
        s.PendingException = null;
        var quiet = KvmVcpu.StateToEvents(s, -1, false);
        Assert.Equal(((byte)0, (byte)0, (byte)0), (quiet.InterruptShadow, quiet.ExceptionInjected, quiet.NmiPending));
    }

    [SkippableFact]
    public void An_nmi_being_delivered_is_pending_and_not_masked()
    {
        // KVM masks NMIs while it injects one; after a restore that NMI is delivered again, so it must not stay masked.
        var s = CpuState.Reset();
        KvmVcpu.EventsToState(new KvmVcpuEvents { NmiInjected = 1, NmiMasked = 1 }, s, new SortedSet<byte>());
        Assert.True(s.NmiPending);
        Assert.False(s.NmiMasked);
        // A software interrupt being delivered is re-executed from its INT instruction, not pending.
        var pending = new SortedSet<byte>();
        KvmVcpu.EventsToState(new KvmVcpuEvents { InterruptInjected = 1, InterruptNr = 0x80, InterruptSoft = 1 }, s, pending);
        Assert.Empty(pending);
    }

    [SkippableFact]
    public void Mp_states_map_to_activities()
    {
        Assert.Equal((VcpuActivity.Running, false), KvmVcpu.FromMpState(KvmAbi.MP_STATE_RUNNABLE));
        Assert.Equal((VcpuActivity.Halted, false), KvmVcpu.FromMpState(KvmAbi.MP_STATE_HALTED));
        Assert.Equal((VcpuActivity.WaitForSipi, false), KvmVcpu.FromMpState(KvmAbi.MP_STATE_INIT_RECEIVED));
        Assert.Equal((VcpuActivity.WaitForSipi, false), KvmVcpu.FromMpState(KvmAbi.MP_STATE_UNINITIALIZED));
        Assert.Equal((VcpuActivity.WaitForSipi, true), KvmVcpu.FromMpState(KvmAbi.MP_STATE_SIPI_RECEIVED));
        Assert.Equal(KvmAbi.MP_STATE_RUNNABLE, KvmVcpu.ToMpState(VcpuActivity.Running, -1));
        Assert.Equal(KvmAbi.MP_STATE_HALTED, KvmVcpu.ToMpState(VcpuActivity.Halted, -1));
        Assert.Equal(KvmAbi.MP_STATE_INIT_RECEIVED, KvmVcpu.ToMpState(VcpuActivity.WaitForSipi, -1));
        Assert.Equal(KvmAbi.MP_STATE_SIPI_RECEIVED, KvmVcpu.ToMpState(VcpuActivity.WaitForSipi, 0x10));
    }

    [SkippableTheory]
    [InlineData("gpr")]
    [InlineData("segments")]
    [InlineData("dr")]
    [InlineData("fx")]
    [InlineData("xsave")]
    [InlineData("activity")]
    [InlineData("sipi")]
    [InlineData("pending")]
    [InlineData("exception")]
    [InlineData("nmi vector")]
    public void Impossible_cpu_states_are_refused(string what)
    {
        var s = CpuState.Reset();
        KvmVcpu.Validate(s, inKernelLapic: false);
        switch (what)
        {
            case "gpr": s.Gpr = new ulong[15]; break;
            case "segments": s.Segments = null!; break;
            case "dr": s.Dr = new ulong[4]; break;
            case "fx": s.Fxsave = new byte[100]; break;
            case "xsave": s.Xsave = new byte[8192]; break;
            case "activity": s.Activity = (VcpuActivity)7; break;
            case "sipi": s.SipiVector = 256; break;
            case "pending": s.PendingInterrupts = null!; break;
            case "exception": s.PendingException = new PendingException { Vector = 32 }; break;
            default: s.PendingException = new PendingException { Vector = 2 }; break;
        }
        Assert.Throws<StateRestoreException>(() => KvmVcpu.Validate(s, inKernelLapic: true));
    }

    [SkippableFact]
    public void Waiting_for_sipi_needs_the_in_kernel_lapic_and_xsave_alone_is_enough()
    {
        var s = CpuState.Reset();
        s.Activity = VcpuActivity.WaitForSipi;
        KvmVcpu.Validate(s, inKernelLapic: true);
        Assert.Throws<StateRestoreException>(() => KvmVcpu.Validate(s, inKernelLapic: false));
        var x = CpuState.Reset();
        x.Fxsave = null!;
        x.Xsave = new byte[4096];
        KvmVcpu.Validate(x, inKernelLapic: false);
    }
}
