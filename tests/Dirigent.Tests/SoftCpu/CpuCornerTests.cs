using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Corners found by x86 conformance suites (issue #15 item 6): VMX/SVM instructions on a CPU that offers neither,
/// and CPUID.1:EDX.APIC following IA32_APIC_BASE.EN.
/// </summary>
public class CpuCornerTests
{
    // Encodings written as bytes: the assembler has no forms for some of these (SVM's implicit-rAX ones).
    private static readonly (string Name, byte[] Bytes)[] VmxSvm =
    {
        ("VMCALL", [0x0F, 0x01, 0xC1]),
        ("VMLAUNCH", [0x0F, 0x01, 0xC2]),
        ("VMRESUME", [0x0F, 0x01, 0xC3]),
        ("VMXOFF", [0x0F, 0x01, 0xC4]),
        ("VMFUNC", [0x0F, 0x01, 0xD4]),
        ("VMXON [rax]", [0xF3, 0x0F, 0xC7, 0x30]),
        ("VMCLEAR [rax]", [0x66, 0x0F, 0xC7, 0x30]),
        ("VMPTRLD [rax]", [0x0F, 0xC7, 0x30]),
        ("VMREAD rax,rcx", [0x0F, 0x78, 0xC8]),
        ("VMWRITE rcx,rax", [0x0F, 0x79, 0xC8]),
        ("INVEPT rcx,[rax]", [0x66, 0x0F, 0x38, 0x80, 0x08]),
        ("INVVPID rcx,[rax]", [0x66, 0x0F, 0x38, 0x81, 0x08]),
        ("VMRUN", [0x0F, 0x01, 0xD8]),
        ("VMMCALL", [0x0F, 0x01, 0xD9]),
        ("VMLOAD", [0x0F, 0x01, 0xDA]),
        ("VMSAVE", [0x0F, 0x01, 0xDB]),
        ("STGI", [0x0F, 0x01, 0xDC]),
        ("CLGI", [0x0F, 0x01, 0xDD]),
        ("SKINIT", [0x0F, 0x01, 0xDE]),
        ("INVLPGA", [0x0F, 0x01, 0xDF]),
    };

    [Fact]
    public void VmxAndSvmInstructionsRaiseUdWhenCpuidOffersNeither()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        Label hUd = a.CreateLabel(), cpuidDone = a.CreateLabel();
        var at = new Label[VmxSvm.Length];
        var after = new Label[VmxSvm.Length];
        a.mov(rbx, Results);
        a.mov(eax, (uint)Flag); // a valid memory operand for the forms that take one
        a.xor(ecx, ecx);
        for (int k = 0; k < VmxSvm.Length; k++)
        {
            at[k] = a.CreateLabel();
            after[k] = a.CreateLabel();
            a.lea(r15, __[after[k]]);
            a.mov(eax, (uint)Flag);
            a.Label(ref at[k]);
            a.db(VmxSvm[k].Bytes);
            a.Label(ref after[k]);
        }
        // What CPUID says: VMX (leaf 1 ECX bit 5) and SVM (0x80000001 ECX bit 2) absent.
        a.mov(eax, 1);
        a.cpuid();
        a.mov(__dword_ptr[Flag + 0x100], ecx);
        a.mov(eax, 0x8000_0001u);
        a.cpuid();
        a.mov(__dword_ptr[Flag + 0x104], ecx);
        a.Label(ref cpuidDone);
        a.hlt();
        RecordingHandler64(a, ref hUd, 6, false);
        var l = Emit(vm, a, TestVm.CodeBase, [hUd, .. at]);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 6, l[0]);
        vm.RunToHlt();
        for (int k = 0; k < VmxSvm.Length; k++)
        {
            var r = ReadRec(vm, k);
            Assert.True(r.Tag == 6 && r.Rip == l[1 + k], $"{VmxSvm[k].Name}: expected #UD at {l[1 + k]:x}, got vector {r.Tag} at {r.Rip:x}");
        }
        Assert.Equal(0u, vm.Vm.Memory.ReadU32(Flag + 0x100) & (1u << 5));
        Assert.Equal(0u, vm.Vm.Memory.ReadU32(Flag + 0x104) & (1u << 2));
        // Deliberate #UDs, not the "unimplemented instruction" path that logs.
        Assert.DoesNotContain(vm.Log, m => m.Contains("Vm", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public void CpuidApicBitFollowsTheApicGlobalEnable()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            // Leaf 1 EDX with IA32_APIC_BASE.EN set (reset), cleared, and set again.
            a.mov(eax, 1);
            a.cpuid();
            a.mov(__dword_ptr[Results], edx);
            a.mov(ecx, 0x1Bu);
            a.rdmsr();
            a.mov(esi, eax);
            a.and(eax, ~0x800);
            a.wrmsr();
            a.mov(eax, 1);
            a.cpuid();
            a.mov(__dword_ptr[Results + 4], edx);
            a.mov(ecx, 0x1Bu);
            a.mov(eax, esi);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(eax, 1);
            a.cpuid();
            a.mov(__dword_ptr[Results + 8], edx);
            a.hlt();
        });
        vm.RunToHlt();
        const uint apic = 1u << 9;
        Assert.Equal(apic, vm.Vm.Memory.ReadU32(Results) & apic);
        Assert.Equal(0u, vm.Vm.Memory.ReadU32(Results + 4) & apic);
        Assert.Equal(apic, vm.Vm.Memory.ReadU32(Results + 8) & apic);
        // Only the APIC bit changes.
        Assert.Equal(vm.Vm.Memory.ReadU32(Results) & ~apic, vm.Vm.Memory.ReadU32(Results + 4));
    }
}
