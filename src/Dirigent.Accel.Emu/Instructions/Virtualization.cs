using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// VMX (VMCALL, VMLAUNCH, VMXON, ...) and SVM (VMRUN, VMMCALL, STGI, ...) instructions. This CPU offers neither:
/// CPUID.1:ECX.VMX (bit 5) and CPUID.80000001h:ECX.SVM (bit 2) are clear, and the SDM (VMX instruction reference,
/// "#UD if ... CPUID.1:ECX.VMX = 0" / CR4.VMXE = 0) and the APM (SVM instructions, "#UD if EFER.SVME = 0") make each
/// of them raise #UD. They are registered explicitly so that this is a decision, not the "unimplemented opcode" path
/// (which logs), and so that a guest probing for a hypervisor with VMCALL/VMMCALL gets a clean #UD.
/// </summary>
internal static unsafe class Virtualization
{
    private static readonly Mnemonic[] s_vmxSvm =
    {
        // VMX
        Mnemonic.Vmcall, Mnemonic.Vmlaunch, Mnemonic.Vmresume, Mnemonic.Vmxoff, Mnemonic.Vmxon, Mnemonic.Vmclear,
        Mnemonic.Vmptrld, Mnemonic.Vmptrst, Mnemonic.Vmread, Mnemonic.Vmwrite, Mnemonic.Invept, Mnemonic.Invvpid,
        Mnemonic.Vmfunc,
        // SVM
        Mnemonic.Vmrun, Mnemonic.Vmmcall, Mnemonic.Vmload, Mnemonic.Vmsave, Mnemonic.Stgi, Mnemonic.Clgi,
        Mnemonic.Skinit, Mnemonic.Invlpga,
    };

    public static void Install(HandlerRegistry r)
    {
        var codes = new List<Code>();
        for (int c = 0; c < IcedCounts.Codes; c++)
            if (Array.IndexOf(s_vmxSvm, ((Code)c).Mnemonic()) >= 0) codes.Add((Code)c);
        r.Add(&NotOffered, codes.ToArray());
    }

    private static void NotOffered(Cpu c, ref Instruction i) => throw Cpu.UD();
}
