using System.Runtime.CompilerServices;
using Dirigent.Accel.Kvm;
using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Kvm;

/// <summary>The P/Invoke layouts against linux/kvm.h's sizes, and the pure translations, without running a guest.</summary>
public sealed class KvmAbiTests
{
    [SkippableFact]
    public void Struct_sizes_match_the_kernel_abi()
    {
        Assert.Equal(144, Unsafe.SizeOf<KvmRegs>());
        Assert.Equal(24, Unsafe.SizeOf<KvmSegment>());
        Assert.Equal(16, Unsafe.SizeOf<KvmDtable>());
        Assert.Equal(312, Unsafe.SizeOf<KvmSregs>());
        Assert.Equal(416, Unsafe.SizeOf<KvmFpu>());
        Assert.Equal(128, Unsafe.SizeOf<KvmDebugRegs>());
        Assert.Equal(40, Unsafe.SizeOf<KvmCpuidEntry2>());
        Assert.Equal(32, Unsafe.SizeOf<KvmUserspaceMemoryRegion>());
        Assert.Equal(24, Unsafe.SizeOf<KvmOneMsr>());
        Assert.Equal(12, Unsafe.SizeOf<KvmSignalMask>());
        Assert.Equal(4096, Unsafe.SizeOf<KvmXsave>());
        Assert.Equal(8, Unsafe.SizeOf<KvmIrqLevel>());
        Assert.Equal(32, Unsafe.SizeOf<KvmMsi>());
        Assert.Equal(64, Unsafe.SizeOf<KvmPitConfig>());
        Assert.Equal(48, Unsafe.SizeOf<KvmIrqRoutingEntry>());
        Assert.Equal(520, Unsafe.SizeOf<KvmIrqChipState>());
        Assert.Equal(112, Unsafe.SizeOf<KvmPitState2>());
        Assert.Equal(1024, Unsafe.SizeOf<KvmLapicState>());
    }

    /// <summary>_IOC(dir, 0xAE, nr, size): bits 16..29 of each number are the size of the struct it carries.</summary>
    [SkippableFact]
    public void Irqchip_ioctl_numbers_encode_their_struct_sizes()
    {
        static int Size(nuint ioctl) => (int)((ioctl >> 16) & 0x3FFF);
        Assert.Equal(Unsafe.SizeOf<KvmIrqLevel>(), Size(KvmAbi.IRQ_LINE));
        Assert.Equal(Unsafe.SizeOf<KvmIrqLevel>(), Size(KvmAbi.IRQ_LINE_STATUS));
        Assert.Equal(Unsafe.SizeOf<KvmMsi>(), Size(KvmAbi.SIGNAL_MSI));
        Assert.Equal(Unsafe.SizeOf<KvmPitConfig>(), Size(KvmAbi.CREATE_PIT2));
        Assert.Equal(Unsafe.SizeOf<KvmPitState2>(), Size(KvmAbi.GET_PIT2));
        Assert.Equal(Unsafe.SizeOf<KvmPitState2>(), Size(KvmAbi.SET_PIT2));
        Assert.Equal(Unsafe.SizeOf<KvmIrqChipState>(), Size(KvmAbi.GET_IRQCHIP));
        Assert.Equal(Unsafe.SizeOf<KvmIrqChipState>(), Size(KvmAbi.SET_IRQCHIP));
        Assert.Equal(Unsafe.SizeOf<KvmLapicState>(), Size(KvmAbi.GET_LAPIC));
        Assert.Equal(Unsafe.SizeOf<KvmLapicState>(), Size(KvmAbi.SET_LAPIC));
        Assert.Equal(8, Size(KvmAbi.SET_GSI_ROUTING)); // struct kvm_irq_routing header: nr, flags
        Assert.Equal(4, Size(KvmAbi.SET_MP_STATE));
        Assert.Equal(0, Size(KvmAbi.CREATE_IRQCHIP));
    }

    [SkippableFact]
    public void Segment_attributes_round_trip_through_kvm_segment()
    {
        for (int a = 0; a < 0x10000; a++)
        {
            if ((a & 0x0F00) != 0) continue; // bits 8..11 are the limit's top nibble in a descriptor, not attributes
            var s = new SegmentState { Selector = 0x2B, Base = 0x1234_5000, Limit = 0xFFFFF, Attributes = (ushort)a };
            var k = KvmVcpu.ToKvm(s);
            Assert.Equal(k.Present == 0, k.Unusable != 0);
            var back = KvmVcpu.FromKvm(k);
            Assert.Equal(s.Attributes, back.Attributes);
            Assert.Equal((s.Selector, s.Base, s.Limit), (back.Selector, back.Base, back.Limit));
        }
        var cs64 = KvmVcpu.ToKvm(new SegmentState { Attributes = 0xA09B });
        Assert.Equal((11, 1, 0, 1, 1, 0, 1), (cs64.Type, cs64.S, cs64.Dpl, cs64.Present, cs64.L, cs64.Db, cs64.G));
    }

    [SkippableFact]
    public void Fxsave_image_round_trips_through_kvm_fpu()
    {
        var fx = new byte[512];
        new Random(4).NextBytes(fx.AsSpan(0, 416));
        fx[5] = 0; // reserved byte after the abridged tag word
        fx.AsSpan(28, 4).Clear(); // MXCSR_MASK is not in kvm_fpu
        var back = new byte[512];
        KvmVcpu.FpuToFxsave(KvmVcpu.FxsaveToFpu(fx), back);
        back.AsSpan(28, 4).Clear();
        Assert.Equal(fx, back);
    }

    [SkippableFact]
    public void Cpuid_filter_hides_xsave_and_avx()
    {
        var filtered = KvmAccelerator.FilterCpuid(
        [
            new KvmCpuidEntry2 { Function = 1, Ecx = 0xFFFF_FFFF, Edx = 0xFFFF_FFFF },
            new KvmCpuidEntry2 { Function = 7, Index = 0, Ebx = 0xFFFF_FFFF },
            new KvmCpuidEntry2 { Function = 0xD, Index = 0, Eax = 7 },
        ]);
        Assert.Equal(2, filtered.Length);
        Assert.Equal(0u, filtered[0].Ecx & ((1u << 26) | (1u << 27) | (1u << 28)));
        Assert.NotEqual(0u, filtered[0].Ecx & (1u << 19)); // SSE4.1 stays
        Assert.Equal(0u, filtered[1].Ebx & ((1u << 5) | (1u << 16)));
        Assert.Equal(0u, filtered[0].Ecx & ((1u << 21) | (1u << 24))); // x2APIC, TSC-deadline: the emulated LAPIC has neither
        var inKernel = KvmAccelerator.FilterCpuid([new KvmCpuidEntry2 { Function = 1, Ecx = 0xFFFF_FFFF }], inKernelIrqChip: true);
        Assert.Equal((1u << 21) | (1u << 24), inKernel[0].Ecx & ((1u << 21) | (1u << 24))); // KVM's LAPIC has both
        Assert.Equal(0u, inKernel[0].Ecx & (1u << 26));
    }

    [SkippableFact]
    public void Vcpu_runs_again_after_a_power_event()
    {
        Differential.RequireKvm();
        using var m = new GuestMachine(AccelKind.Kvm);
        m.Start64(a =>
        {
            a.inc(rbx);
            a.mov(al, 1);
            a.@out(0xF4, al);
            a.inc(rbx);
            a.mov(al, 2);
            a.@out(0xF4, al);
            a.hlt();
        });
        var r1 = m.Run();
        Assert.Equal((VcpuExitReason.PowerEvent, 1, 1UL), (r1.Reason, r1.ExitValue, r1.Gpr[3]));
        // As a VMM does after a debug-exit it chose to ignore: clear the event and resume where the guest stopped.
        m.Vm.ClearPowerEvent();
        var r2 = m.Run();
        Assert.Equal((VcpuExitReason.PowerEvent, 2, 2UL), (r2.Reason, r2.ExitValue, r2.Gpr[3]));
        // And after a fresh state (a reset), from the top.
        m.Vm.ClearPowerEvent();
        m.Vcpu.SetState(BootState.Long64(m.Vm.Memory, GuestMachine.CodeBase, GuestMachine.StackTop));
        var r3 = m.Run();
        Assert.Equal((VcpuExitReason.PowerEvent, 1, 1UL), (r3.Reason, r3.ExitValue, r3.Gpr[3]));
    }
}
