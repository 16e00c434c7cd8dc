using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Accessed/dirty updates during a page walk are a compare-exchange against the entry the walk read, as on hardware:
/// when another vCPU changes the entry in between (Linux's ptep_get_and_clear), the walk starts again instead of
/// setting A/D on the changed entry. The hook stands in for the other vCPU at exactly that moment.
/// </summary>
public class PageWalkRaceTests
{
    private const ulong Pt = 0x31_0000, Linear = 0x40_0000, Entry = Pt + 8, Page = Linear + 0x1000, Other = 0x50_0000;

    private static TestVm WithPageTable()
    {
        var vm = new TestVm();
        vm.Cpu.SetState(BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        var m = vm.Vm.Memory;
        // Upper levels already accessed, so the only A/D update of a walk to Page is the one in the PT entry.
        m.WriteU64(BootState.Pml4Addr, m.ReadU64(BootState.Pml4Addr) | 0x20);
        m.WriteU64(BootState.PdptAddr, m.ReadU64(BootState.PdptAddr) | 0x20);
        m.WriteU64(BootState.PdAddr + 2 * 8, Pt | 0x23);
        for (ulong k = 0; k < 512; k++) m.WriteU64(Pt + k * 8, (Linear + k * 0x1000) | 0x3);
        return vm;
    }

    [Fact]
    public void EntryClearedBeforeTheDirtyUpdateFaultsAndStaysClear()
    {
        using var vm = WithPageTable();
        vm.Cpu.BeforePteUpdate = pa => { if (pa == Entry) vm.Vm.Memory.WriteU64(Entry, 0); };
        var ex = Assert.Throws<CpuException>(() => vm.Cpu.Translate(Page + 0x10, Access.Write, false));
        Assert.Equal(14, ex.Vector);
        Assert.Equal(2u, ex.ErrorCode); // not present, write
        Assert.Equal(0UL, vm.Vm.Memory.ReadU64(Entry)); // no stray A/D bits in the cleared entry
    }

    [Fact]
    public void EntryRewrittenBeforeTheUpdateIsWalkedAgain()
    {
        using var vm = WithPageTable();
        int calls = 0;
        vm.Cpu.BeforePteUpdate = pa => { if (pa == Entry && calls++ == 0) vm.Vm.Memory.WriteU64(Entry, Other | 0x3); };
        Assert.Equal(Other + 0x10, vm.Cpu.Translate(Page + 0x10, Access.Write, false));
        Assert.Equal(Other | 0x63, vm.Vm.Memory.ReadU64(Entry));
        Assert.Equal(2, calls);
    }
}
