using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.LifecycleTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Cross-modifying code between two vCPUs on two threads: a store by one vCPU into code the other runs takes effect
/// there before it runs that code again, even when the writer held a write-TLB entry for the page from before the
/// page became code (the page's protection must make the writer drop it, at the writer's own safe point).
/// </summary>
public class CrossModifyingCodeTests
{
    private const ulong CodeA = TestVm.CodeBase, CodeB = TestVm.CodeBase + 0x1000;
    private const ulong Func = 0x18_0000;          // F: mov eax, imm32; ret — alone on its page with one data byte
    private const ulong FuncData = Func + 0x800;
    private const ulong BReady = 0x22_0000, AStarted = 0x22_0008, Written = 0x22_0010, Result = 0x22_0018, Calls = 0x22_0020;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void StoreByOneVcpuIntoCodeAnotherRunsTakesEffectThere(bool lockedStore)
    {
        using var vm = new TestVm();
        var a = vm.Cpu;
        var b = (Cpu)vm.Accel.CreateVcpu(1);
        vm.Load(Func, 64, g => { g.mov(eax, 1); g.ret(); });

        // A: waits for B's write entry, then calls F until B says it rewrote F, then calls F once more.
        vm.Load(CodeA, 64, g =>
        {
            Label waitB = g.CreateLabel(), loop = g.CreateLabel(), park = g.CreateLabel();
            g.Label(ref waitB);
            g.pause();
            g.cmp(__byte_ptr[BReady], 1);
            g.jne(waitB);
            g.mov(r12, Func);
            g.Label(ref loop);
            g.call(r12);
            g.inc(__qword_ptr[Calls]);
            g.mov(__byte_ptr[AStarted], 1);
            g.cmp(__byte_ptr[Written], 1);
            g.jne(loop);
            g.call(r12);
            g.mov(__dword_ptr[Result], eax);
            g.Label(ref park);
            g.cli();
            g.hlt();
            g.jmp(park);
        });
        // B: fills a write entry for F's page while it is still data, waits until A runs F (the page is code now),
        // then rewrites F's immediate 1 → 2 and says so.
        vm.Load(CodeB, 64, g =>
        {
            Label waitA = g.CreateLabel(), park = g.CreateLabel();
            g.mov(__byte_ptr[FuncData], 0x55);
            g.mov(__byte_ptr[BReady], 1);
            g.Label(ref waitA);
            g.pause();
            g.cmp(__byte_ptr[AStarted], 1);
            g.jne(waitA);
            if (lockedStore) g.@lock.add(__dword_ptr[Func + 1], 1);
            else g.mov(__dword_ptr[Func + 1], 2);
            g.mov(__byte_ptr[Written], 1);
            g.Label(ref park);
            g.cli();
            g.hlt();
            g.jmp(park);
        });
        a.SetState(BootState.Long64(vm.Vm.Memory, CodeA, TestVm.StackTop));
        b.SetState(BootState.Long64(vm.Vm.Memory, CodeB, TestVm.StackTop - 0x1000));
        using var aDone = new ManualResetEventSlim(false);
        using var bDone = new ManualResetEventSlim(false);
        a.OnIdle = () => { if (vm.Vm.Memory.ReadU32(Result) != 0) aDone.Set(); };
        b.OnIdle = () => { if (vm.Vm.Memory.ReadU8(Written) == 1) bDone.Set(); };
        var ta = StartOn(a, out var ra);
        var tb = StartOn(b, out var rb);
        try
        {
            Await(bDone, "vCPU 1 to rewrite F and park");
            Await(aDone, "vCPU 0 to see the rewrite and park");
        }
        finally
        {
            StopAndJoin(a, ta);
            StopAndJoin(b, tb);
        }
        Assert.Equal(VcpuExitReason.Stopped, ra[0].Reason);
        Assert.Equal(VcpuExitReason.Stopped, rb[0].Reason);
        Assert.Equal(2u, vm.Vm.Memory.ReadU32(Func + 1));
        Assert.True(vm.Vm.Memory.ReadU64(Calls) >= 1);
        Assert.Equal(2u, vm.Vm.Memory.ReadU32(Result));
    }
}
