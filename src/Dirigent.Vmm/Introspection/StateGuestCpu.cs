using Dirigent.Machine.Accel;
using Dirigent.Machine.Introspection;
using Dirigent.Machine.Memory;

namespace Dirigent.Vmm.Introspection;

/// <summary>An <see cref="IGuestCpu"/> over a saved vCPU state (a stopped or queried vCPU), for looking outside events.</summary>
internal sealed class StateGuestCpu(int index, CpuState s, GuestMemory mem, ulong instructions) : IGuestCpu
{
    private const uint MsrLstar = 0xC000_0082, MsrKernelGsBase = 0xC000_0102;

    public int Index => index;
    public ulong InstructionPointer => s.Rip;
    public ulong Gpr(int n) => s.Gpr[n];
    public ulong Cr3 => s.Cr3;
    public int Cpl => s.Segments[1].Selector & 3;
    public ulong GsBase => s.Segments[5].Base;
    public ulong KernelGsBase => s.Msrs.GetValueOrDefault(MsrKernelGsBase);
    public ulong Lstar => s.Msrs.GetValueOrDefault(MsrLstar);
    public ulong InstructionsRetired => instructions;
    public bool TryTranslate(ulong linear, out ulong physical) => PageWalk.TryTranslate(mem, s.Cr0, s.Cr3, s.Cr4, s.Efer, linear, out physical);
    public int ReadVirtual(ulong linear, Span<byte> dst) => PageWalk.ReadVirtual(mem, s.Cr0, s.Cr3, s.Cr4, s.Efer, linear, dst);
}
