using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Iced.Intel;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Kvm;

/// <summary>`dirigent run --accel kvm` with the whole PC board: the in-kernel irqchip where KVM has it.</summary>
public sealed class KvmVmmTests(ITestOutputHelper output)
{
    private const uint LoadAddr = 0x10_0000;

    /// <summary>
    /// Multiboot guest: on the first boot it unmasks IOAPIC pin 4, leaves a mark in RAM and resets through 0xCF9; on
    /// the second (RAM survives a reset) it reads the redirection entry back, prints M when reset masked it again
    /// (U otherwise) and exits through the debug-exit port.
    /// </summary>
    private static byte[] RebootingGuest()
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        var second = a.CreateLabel();
        var unmasked = a.CreateLabel();
        a.cmp(__dword_ptr[0x500], 0x1234);
        a.je(second);
        a.mov(__dword_ptr[0x500], 0x1234);
        a.mov(__dword_ptr[0xFEC0_0000], 0x18);
        a.mov(__dword_ptr[0xFEC0_0010], 0x34);
        a.mov(dx, 0x3F8);
        a.mov(al, (byte)'R');
        a.@out(dx, al);
        a.mov(dx, 0xCF9);
        a.mov(al, 0x06);
        a.@out(dx, al);
        a.cli();
        a.hlt();
        a.Label(ref second);
        a.mov(__dword_ptr[0xFEC0_0000], 0x18);
        a.mov(eax, __dword_ptr[0xFEC0_0010]);
        a.mov(dx, 0x3F8);
        a.cmp(eax, 0x1_0000);
        a.jne(unmasked);
        a.mov(al, (byte)'M');
        a.@out(dx, al);
        a.mov(al, 3);
        a.@out(0xF4, al);
        a.Label(ref unmasked);
        a.mov(al, (byte)'U');
        a.@out(dx, al);
        a.mov(al, 4);
        a.@out(0xF4, al);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }

    internal static (int rc, string output, string errors) RunRebootingGuest(Dirigent.Vmm.AccelKind accel)
    {
        string path = Path.Combine(Path.GetTempPath(), $"dirigent-kvm-reboot-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(path, RebootingGuest());
        try
        {
            var r = new GuestRunner();
            int rc = r.Run(new VmSpec { Kernel = path, MemoryBytes = 32UL << 20, Accel = accel }, TimeSpan.FromSeconds(30));
            return (rc, r.Output, r.Errors);
        }
        finally { File.Delete(path); }
    }

    [SkippableFact]
    public void Reboot_resets_the_interrupt_controllers_on_both_accelerators()
    {
        Differential.RequireKvm();
        var emu = RunRebootingGuest(Dirigent.Vmm.AccelKind.Emu);
        var kvm = RunRebootingGuest(Dirigent.Vmm.AccelKind.Kvm);
        output.WriteLine($"emu: rc {emu.rc} '{emu.output}' {emu.errors}");
        output.WriteLine($"kvm: rc {kvm.rc} '{kvm.output}' {kvm.errors}");
        Assert.Equal("RM", emu.output);
        Assert.Equal((3 << 1) | 1, emu.rc);
        Assert.Equal(emu.output, kvm.output);
        Assert.Equal(emu.rc, kvm.rc);
        // The VMM used KVM's in-kernel irqchip (PVM has one), or says why not.
        Assert.Matches(@"kvm: interrupt controllers: (kvm in-kernel LAPIC/IOAPIC/PIC \+ PIT|.*emulated interrupt controllers)", kvm.errors);
    }
}

/// <summary>The userspace fallback through the whole VMM, forced with DIRIGENT_KVM_IRQCHIP=user (process-wide, so
/// alone).</summary>
[Collection(nameof(KvmProcessWide))]
public sealed class KvmUserspaceIrqChipVmmTests(ITestOutputHelper output)
{
    [SkippableFact]
    public void Emulated_controllers_serve_kvm_when_the_in_kernel_irqchip_is_not_used()
    {
        Differential.RequireKvm();
        Environment.SetEnvironmentVariable(Dirigent.Accel.Kvm.KvmAccelerator.UserspaceIrqChipVariable, "user");
        try
        {
            var kvm = KvmVmmTests.RunRebootingGuest(Dirigent.Vmm.AccelKind.Kvm);
            output.WriteLine($"kvm: rc {kvm.rc} '{kvm.output}' {kvm.errors}");
            Assert.Equal("RM", kvm.output);
            Assert.Equal((3 << 1) | 1, kvm.rc);
            Assert.Contains("kvm: interrupt controllers: DIRIGENT_KVM_IRQCHIP=user: emulated interrupt controllers", kvm.errors);
        }
        finally { Environment.SetEnvironmentVariable(Dirigent.Accel.Kvm.KvmAccelerator.UserspaceIrqChipVariable, null); }
    }
}
