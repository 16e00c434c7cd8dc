using Dirigent.Machine.Accel;
using Dirigent.Tests.Infrastructure;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Guest scaffolding for the integer/flow tests: an IDT whose every vector records its number in
/// <see cref="VecSlot"/> and halts (interrupts off), so a test can assert which exception an instruction raised.
/// </summary>
internal static class IntFlowSupport
{
    public const ulong IdtBase = 0x9_0000;
    public const ulong StubBase = 0x9_1000;
    public const ulong VecSlot = 0x9_2000;
    public const uint NoVector = 0xFFFF_FFFF;

    /// <summary>Installs the recording IDT for the CPU's current mode (call after Start32/Start64).</summary>
    public static void InstallIdt(TestVm vm, bool longMode)
    {
        vm.Vm.Memory.WriteU32(VecSlot, NoVector);
        for (int v = 0; v < 32; v++)
        {
            ulong stub = StubBase + (ulong)v * 16;
            int vec = v;
            if (longMode) vm.Load(stub, 64, a => { a.mov(__dword_ptr[VecSlot], vec); a.hlt(); });
            else vm.Load(stub, 32, a => { a.mov(__dword_ptr[(uint)VecSlot], vec); a.hlt(); });
            SetGate(vm, v, stub, longMode);
        }
        vm.Cpu.Idtr = new TableRegister { Base = IdtBase, Limit = (ushort)(longMode ? 32 * 16 - 1 : 32 * 8 - 1) };
    }

    /// <summary>Points an interrupt gate (DPL 0, interrupts off) at handler.</summary>
    public static void SetGate(TestVm vm, int vector, ulong handler, bool longMode)
    {
        if (longMode)
        {
            ulong lo = (handler & 0xFFFF) | (0x10UL << 16) | (0x8EUL << 40) | (((handler >> 16) & 0xFFFF) << 48);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)vector * 16, lo);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)vector * 16 + 8, handler >> 32);
        }
        else
        {
            ulong g = (handler & 0xFFFF) | (0x08UL << 16) | (0x8EUL << 40) | (((handler >> 16) & 0xFFFF) << 48);
            vm.Vm.Memory.WriteU64(IdtBase + (ulong)vector * 8, g);
        }
    }

    public static uint Vector(TestVm vm) => vm.Vm.Memory.ReadU32(VecSlot);
}
