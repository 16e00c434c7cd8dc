using Dirigent.Accel.Emu.Jit;
using Dirigent.Machine.Introspection;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// The introspection hooks (Machine/Introspection/GuestHooks.cs) on bare-metal guests built with Iced: watchpoints,
/// system calls with their return values, CR3 writes, interrupts and execution ranges. Each runs in the interpreter
/// and with every block compiled (JitMode.Always), since hooks must hold in both tiers.
/// </summary>
public class IntrospectionHookTests
{
    private const ulong Var = TestVm.DataBase + 0x100;

    [Theory]
    [InlineData(JitMode.Off)]
    [InlineData(JitMode.Always)]
    public void WriteWatchpointReportsEachStoreWithRipAndValue(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        var a = new Assembler(64);
        Label store1 = a.CreateLabel(), loop = a.CreateLabel(), store2 = a.CreateLabel(), store3 = a.CreateLabel();
        a.mov(rbx, Var);
        a.mov(rax, 0x1122334455667788);
        a.Label(ref store1);
        a.mov(__qword_ptr[rbx], rax);
        a.mov(ecx, 0);
        a.Label(ref loop);
        a.inc(ecx);
        a.Label(ref store2);
        a.mov(__dword_ptr[rbx], ecx);        // 300 stores from a hot loop (compiled after its first runs)
        a.mov(__qword_ptr[rbx + 0x800], rcx); // a store to the same page outside the range: not reported
        a.cmp(ecx, 300);
        a.jne(loop);
        a.Label(ref store3);
        a.add(__word_ptr[rbx + 2], 5);        // a read-modify-write
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, store1, store2, store3);
        vm.Cpu.SetState(Dirigent.Machine.Loaders.BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        var seen = new List<MemoryAccessEvent>();
        using (vm.Vm.Hooks.AddWatchpoint(Var, 8, WatchKind.Write, physical: true, (_, e) => seen.Add(e)))
            vm.RunToHlt();
        Assert.Equal(302, seen.Count);
        Assert.Equal((l[0], 8, 0x1122334455667788UL), (seen[0].Rip, seen[0].Size, seen[0].Value));
        for (int k = 1; k <= 300; k++)
            Assert.True(seen[k].Rip == l[1] && seen[k].Size == 4 && seen[k].Value == (ulong)k && seen[k].Physical == Var && seen[k].IsWrite,
                $"store {k}: rip {seen[k].Rip:x} size {seen[k].Size} value {seen[k].Value}");
        var last = seen[301];
        // The dword stores cleared bytes 2-3: the word there was 0.
        Assert.Equal((l[2], 2, Var + 2, 5UL), (last.Rip, last.Size, last.Physical, last.Value));
        Assert.Equal(0x1122_3344_0005_012CUL, vm.Vm.Memory.ReadU64(Var));
    }

    [Fact]
    public void ReadWatchpointOnVirtualRangeReportsValueRead()
    {
        using var vm = new TestVm(jit: JitMode.Always);
        var a = new Assembler(64);
        Label ld = a.CreateLabel();
        a.mov(rbx, Var);
        a.mov(__qword_ptr[rbx], 0x42);
        a.Label(ref ld);
        a.mov(rax, __qword_ptr[rbx]);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, ld);
        vm.Cpu.SetState(Dirigent.Machine.Loaders.BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        var seen = new List<MemoryAccessEvent>();
        using (vm.Vm.Hooks.AddWatchpoint(Var, 1, WatchKind.Read, physical: false, (_, e) => seen.Add(e)))
            vm.RunToHlt();
        var e = Assert.Single(seen);
        Assert.Equal((l[0], 0x42UL, false, 8), (e.Rip, e.Value, e.IsWrite, e.Size));
    }

    [Theory]
    [InlineData(JitMode.Off)]
    [InlineData(JitMode.Always)]
    public void SyscallHookSeesNumberArgsAndSysretReturnValue(JitMode jit)
    {
        using var vm = new TestVm(jit: jit);
        var a = new Assembler(64);
        Label entry = a.CreateLabel(), user = a.CreateLabel(), sc1 = a.CreateLabel(), sc2 = a.CreateLabel(), done = a.CreateLabel();
        Wrmsr(a, 0xC000_0081, (0x20UL << 48) | (0x10UL << 32));
        a.lea(rax, __[entry]);
        a.xor(edx, edx);
        a.mov(ecx, 0xC000_0082);
        a.wrmsr();
        a.lea(rcx, __[user]);
        a.mov(r11, 0x202);
        a.mov(rsp, 0x5_F000);
        a.sysretq();
        // ---- ring 3: two system calls, the kernel returns number * 2 ----
        a.Label(ref user);
        a.mov(eax, 257);
        a.mov(edi, 11); a.mov(esi, 12); a.mov(edx, 13); a.mov(r10d, 14); a.mov(r8d, 15); a.mov(r9d, 16);
        a.Label(ref sc1);
        a.syscall();
        a.mov(__qword_ptr[Results], rax);
        a.mov(eax, 60);
        a.mov(edi, 7);
        a.Label(ref sc2);
        a.syscall();
        a.hlt(); // #GP in ring 3 with an empty IDT: not reached, the kernel halts at the second call
        // ---- kernel ----
        a.Label(ref entry);
        a.cmp(eax, 60);
        a.je(done);
        a.add(rax, rax);
        a.sysretq();
        a.Label(ref done);
        a.cli();
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, sc1, sc2);
        Setup64(vm, TestVm.CodeBase, userPages: true);
        var enters = new List<SyscallEvent>();
        var exits = new List<SyscallEvent>();
        using (vm.Vm.Hooks.AddSyscallHook((_, e) => enters.Add(e), (_, e) => exits.Add(e)))
            vm.RunToHlt();
        Assert.Equal(2, enters.Count);
        Assert.Equal((257UL, l[0], SyscallKind.Syscall), (enters[0].Number, enters[0].Rip, enters[0].Kind));
        Assert.Equal([11UL, 12, 13, 14, 15, 16], enters[0].Args);
        Assert.Equal((60UL, 7UL, l[1]), (enters[1].Number, enters[1].Args[0], enters[1].Rip));
        var x = Assert.Single(exits); // exit(7) never returns
        Assert.Same(enters[0], x);
        Assert.Equal(514UL, x.Return);
        Assert.Equal(514UL, R64(vm, Results));
        Assert.Null(enters[1].Return);
    }

    [Fact]
    public void InterruptCr3AndExecutionHooksFire()
    {
        using var vm = new TestVm(jit: JitMode.Always);
        var a = new Assembler(64);
        Label handler = a.CreateLabel(), body = a.CreateLabel(), bodyEnd = a.CreateLabel();
        a.mov(rax, cr3);
        a.mov(cr3, rax);
        a.mov(ecx, 3);
        a.Label(ref body);
        a.nop();
        a.dec(ecx);
        a.Label(ref bodyEnd);
        a.jne(body);
        a.int3();
        a.Label(ref handler);
        a.cli();
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, handler, body, bodyEnd);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 3, l[0], dpl: 0);
        var cr3s = new List<(ulong, ulong)>();
        var ints = new List<InterruptEvent>();
        var execs = new List<ulong>();
        using (vm.Vm.Hooks.AddAddressSpaceHook((_, o, n) => cr3s.Add((o, n))))
        using (vm.Vm.Hooks.AddInterruptHook((_, e) => ints.Add(e)))
        using (vm.Vm.Hooks.AddExecutionHook(l[1], l[2], (_, rip) => execs.Add(rip)))
            vm.RunToHlt();
        var c = Assert.Single(cr3s);
        Assert.Equal(c.Item1, c.Item2);
        var i = Assert.Single(ints);
        Assert.Equal((3, true), (i.Vector, i.Software));
        // nop and dec, three times each.
        Assert.Equal(6, execs.Count);
        Assert.Equal([l[1], l[1] + 1], execs.Take(2));
    }

    [Fact]
    public void DeviceAccessHookSeesPortWritesAndReads()
    {
        using var vm = new TestVm(jit: JitMode.Always);
        var a = new Assembler(64);
        Label o = a.CreateLabel();
        a.mov(al, (byte)'Q');
        a.Label(ref o);
        a.@out(0xE9, al);
        a.@in(al, 0xE9);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, o);
        vm.Cpu.SetState(Dirigent.Machine.Loaders.BootState.Long64(vm.Vm.Memory, TestVm.CodeBase, TestVm.StackTop));
        var seen = new List<DeviceAccessEvent>();
        using (vm.Vm.Hooks.AddDeviceAccessHook((_, e) => seen.Add(e)))
            vm.RunToHlt();
        Assert.Equal(2, seen.Count);
        Assert.Equal((true, 0xE9UL, 1, (ulong)'Q', true, l[0]), (seen[0].IsPort, seen[0].Address, seen[0].Size, seen[0].Value, seen[0].IsWrite, seen[0].Rip));
        Assert.Equal((0xE9UL, false), (seen[1].Value, seen[1].IsWrite)); // the console port reads back 0xE9
    }

    private static void Wrmsr(Assembler a, uint msr, ulong v)
    {
        a.mov(ecx, msr);
        a.mov(eax, (uint)v);
        a.mov(edx, (uint)(v >> 32));
        a.wrmsr();
    }
}
