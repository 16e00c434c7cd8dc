using Dirigent.Accel.Emu.Jit;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Debug registers and debug exceptions (SDM vol. 3 ch. 17): instruction, data and I/O breakpoints through DR7,
/// DR6 status bits, DR7.GD, RFLAGS.RF, and single-step traps with MOV SS blocking, STI;HLT, INT3 and ICEBP.
/// The guests' #DB/#BP handler logs (vector, DR6, pushed RIP, pushed RFLAGS, DR7) at [RBX], ORs R13 into the
/// pushed RFLAGS (RF for instruction breakpoints) and, when R12 is non-zero, clears DR6 as a debugger would.
/// </summary>
public class DebugRegisterTests
{
    private const ulong RF = 1UL << 16, TF = 1UL << 8;
    private const ulong B0 = 1, B1 = 2, B2 = 4, B3 = 8, BD = 1UL << 13, BS = 1UL << 14, Dr6Fixed = 0xFFFF_0FF0;

    /// <summary>DR7 bits enabling breakpoint n (Gn) with R/W type rw and LEN code len (0:1, 1:2, 3:4, 2:8 bytes).</summary>
    private static ulong Dr7(int n, int rw, int len, bool enable = true) =>
        (enable ? 2UL << (2 * n) : 0) | ((ulong)rw << (16 + 4 * n)) | ((ulong)len << (18 + 4 * n));

    private readonly record struct Db(ulong Vector, ulong Dr6, ulong Rip, ulong Rflags, ulong Dr7);

    private static void Handler(Assembler a, ref Label l, int tag)
    {
        var keep = a.CreateLabel();
        a.Label(ref l);
        a.push(rax);
        a.mov(__qword_ptr[rbx], tag);
        a.mov(rax, dr6);
        a.mov(__qword_ptr[rbx + 8], rax);
        a.mov(rax, __qword_ptr[rsp + 8]);
        a.mov(__qword_ptr[rbx + 16], rax);
        a.mov(rax, __qword_ptr[rsp + 24]);
        a.mov(__qword_ptr[rbx + 24], rax);
        a.mov(rax, dr7);
        a.mov(__qword_ptr[rbx + 32], rax);
        a.add(rbx, 40);
        a.or(__qword_ptr[rsp + 24], r13);
        a.test(r12, r12);
        a.jz(keep);
        a.xor(eax, eax);
        a.mov(dr6, rax);
        a.Label(ref keep);
        a.pop(rax);
        a.iretq();
    }

    /// <summary>Assembles body (with RBX=Results, R12=clearDr6, R13=orFlags set first), the handlers, and runs to HLT.</summary>
    private static (TestVm Vm, ulong[] L, Db[] Recs) Run(Action<Assembler> body, Func<Assembler, Label[]> labels, bool clearDr6 = true,
        ulong orFlags = 0, JitMode? jit = null)
    {
        var vm = new TestVm(jit: jit);
        var a = new Assembler(64);
        Label hDb = a.CreateLabel(), hBp = a.CreateLabel();
        a.mov(rbx, Results);
        a.mov(r12, clearDr6 ? 1 : 0);
        a.mov(r13, orFlags);
        var ls = labels(a);
        body(a);
        Handler(a, ref hDb, 1);
        Handler(a, ref hBp, 3);
        var l = Emit(vm, a, TestVm.CodeBase, [hDb, hBp, .. ls]);
        Setup64(vm, TestVm.CodeBase);
        Gate64(vm, 1, l[0]);
        Gate64(vm, 3, l[1]);
        vm.RunToHlt();
        int n = (int)((vm.Cpu.Gpr[3] - Results) / 40);
        var recs = Enumerable.Range(0, n).Select(k =>
        {
            ulong b = Results + (ulong)k * 40;
            return new Db(R64(vm, b), R64(vm, b + 8), R64(vm, b + 16), R64(vm, b + 24), R64(vm, b + 32));
        }).ToArray();
        return (vm, l[2..], recs);
    }

    /// <summary>Pushes the current RFLAGS (to be restored by a later POPFQ) and sets TF through POPFQ.</summary>
    private static void TfOn(Assembler a)
    {
        a.pushfq();
        a.pop(r9);
        a.push(r9);
        a.mov(r10, r9);
        a.or(r10, (int)TF);
        a.push(r10);
        a.popfq();
    }

    [Fact]
    public void InstructionBreakpointFaultsBeforeTheInstructionAndRfLetsItRunOnce()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            a.lea(rax, __[L[0]]);
            a.mov(dr0, rax);
            a.mov(rax, Dr7(0, 0, 0));
            a.mov(dr7, rax);
            a.xor(esi, esi);
            a.mov(ecx, 3);
            a.Label(ref L[0]);
            a.inc(esi);
            a.dec(ecx);
            a.jnz(L[0]);
            a.hlt();
        }, a => L = [a.CreateLabel()], orFlags: RF);
        using var _ = vm;
        // A fault each time round: RIP at the instruction, B0 in DR6, RF=0 pushed; the handler's RF lets it run once.
        Assert.Equal(3, recs.Length);
        Assert.All(recs, r => Assert.Equal(new Db(1, Dr6Fixed | B0, l[0], r.Rflags, r.Dr7), r));
        Assert.All(recs, r => Assert.Equal(0UL, r.Rflags & RF));
        Assert.Equal(3UL, vm.Cpu.Gpr[6]);
    }

    [Fact]
    public void FaultsPushRfSetAndGeneralDetectRaisesDbWithBd()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            a.mov(rax, 0x2400UL); // DR7.GD
            a.mov(dr7, rax);
            a.Label(ref L[0]);
            a.mov(rcx, dr0); // #DB fault (BD); GD is clear in the handler, so the MOV then runs
            a.mov(rdx, dr7);
            a.hlt();
        }, a => L = [a.CreateLabel()]);
        using var _ = vm;
        Assert.Single(recs);
        Assert.Equal(1UL, recs[0].Vector);
        Assert.Equal(Dr6Fixed | BD, recs[0].Dr6);
        Assert.Equal(l[0], recs[0].Rip);
        Assert.Equal(RF, recs[0].Rflags & RF); // a fault-class #DB pushes RF=1 (SDM 17.3.1.1)
        Assert.Equal(0x400UL, recs[0].Dr7); // GD cleared on entry to the handler
        Assert.Equal(0x400UL, vm.Cpu.Gpr[2]);
    }

    [Fact]
    public void DataBreakpointsTrapAfterMatchingWritesAndReads()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            a.mov(__dword_ptr[Flag + 8], 0); // the page is in the TLB before the breakpoint is armed
            a.mov(rax, Flag + 9);
            a.mov(dr1, rax); // a 4-byte breakpoint covers the aligned Flag+8..11
            a.mov(rax, Flag + 8);
            a.mov(dr2, rax);
            a.mov(rax, Dr7(1, 1, 3) | Dr7(2, 3, 0, enable: false));
            a.mov(dr7, rax);
            a.mov(__dword_ptr[Flag + 8], 1);   // write: trap, B1 and the matching (disabled) B2
            a.Label(ref L[0]);
            a.mov(ecx, __dword_ptr[Flag + 8]); // read of a write-only breakpoint: nothing
            a.mov(__qword_ptr[Flag + 4], 0);  // overlapping 8-byte write: trap
            a.Label(ref L[1]);
            a.mov(__byte_ptr[Flag + 12], 0);   // just outside: nothing
            a.mov(__byte_ptr[Flag + 11], 0);   // last covered byte: trap, B1 only
            a.Label(ref L[2]);
            a.mov(rax, Dr7(2, 3, 0));
            a.mov(dr7, rax);
            a.mov(cl, __byte_ptr[Flag + 8]);   // read of a read/write breakpoint: trap
            a.Label(ref L[3]);
            a.@lock.inc(__dword_ptr[Flag + 8]); // a locked read-modify-write: trap
            a.Label(ref L[4]);
            a.xor(eax, eax);
            a.mov(dr7, rax);
            a.mov(__byte_ptr[Flag + 8], 0);    // disarmed: nothing
            a.hlt();
        }, a => L = Enumerable.Range(0, 5).Select(_ => a.CreateLabel()).ToArray());
        using var _ = vm;
        Assert.Equal(
            new[] { (l[0], B1 | B2), (l[1], B1 | B2), (l[2], B1), (l[3], B2), (l[4], B2) },
            recs.Select(r => (r.Rip, r.Dr6 & ~Dr6Fixed)).ToArray());
        Assert.All(recs, r => Assert.Equal(0UL, r.Rflags & RF)); // traps push the current RF (0)
        Assert.Equal(0u, vm.Vm.Memory.ReadU32(Flag + 8));
    }

    [Fact]
    public void IoBreakpointsNeedCr4DeAndMatchThePortRange()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            a.mov(eax, 0x80);
            a.mov(dr3, rax);
            a.mov(rax, Dr7(3, 2, 1)); // ports 0x80-0x81
            a.mov(dr7, rax);
            a.@in(al, 0x80);  // CR4.DE=0: R/W 10 is no I/O breakpoint
            a.mov(rax, cr4);
            a.or(rax, 8);
            a.mov(cr4, rax);
            a.@in(al, 0x80);
            a.Label(ref L[0]);
            a.mov(edx, 0x7F);
            a.@out(dx, ax);   // ports 0x7F-0x80 overlap
            a.Label(ref L[1]);
            a.@out(0x82, al); // outside
            a.hlt();
        }, a => L = [a.CreateLabel(), a.CreateLabel()]);
        using var _ = vm;
        Assert.Equal(new[] { (l[0], B3), (l[1], B3) }, recs.Select(r => (r.Rip, r.Dr6 & ~Dr6Fixed)).ToArray());
    }

    [Fact]
    public void SingleStepIsHeldBackOneInstructionByMovSs()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            TfOn(a);
            a.mov(eax, (uint)KData);
            a.Label(ref L[0]);
            a.mov(ss, ax);   // no trap after MOV SS...
            a.nop();         // ...one trap after the next instruction
            a.Label(ref L[1]);
            a.popfq();       // TF was set when it began: a trap after it
            a.Label(ref L[2]);
            a.nop();
            a.hlt();
        }, a => L = [a.CreateLabel(), a.CreateLabel(), a.CreateLabel()]);
        using var _ = vm;
        Assert.Equal(new[] { l[0], l[1], l[2] }, recs.Select(r => r.Rip).ToArray());
        Assert.All(recs, r => Assert.Equal(Dr6Fixed | BS, r.Dr6));
        // The last trap follows the POPFQ that cleared TF: the handler returns to code that runs unstepped.
        Assert.Equal(new[] { TF, TF, 0UL }, recs.Select(r => r.Rflags & TF).ToArray());
    }

    [Fact]
    public void DataBreakpointOnMovSsIsHeldBackOneInstruction()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            a.mov(__word_ptr[Flag + 0x20], KData);
            a.mov(rax, Flag + 0x20);
            a.mov(dr0, rax);
            a.mov(rax, Dr7(0, 3, 1));
            a.mov(dr7, rax);
            a.mov(ss, __word_ptr[Flag + 0x20]);
            a.mov(ecx, 1);
            a.Label(ref L[0]);
            a.mov(ecx, 2);
            a.hlt();
        }, a => L = [a.CreateLabel()]);
        using var _ = vm;
        Assert.Single(recs);
        Assert.Equal((l[0], B0), (recs[0].Rip, recs[0].Dr6 & ~Dr6Fixed));
    }

    [Fact]
    public void SingleStepThroughStiHltInt3AndIcebp()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            TfOn(a);
            a.Label(ref L[0]);
            a.sti();          // trap after STI (the shadow holds off interrupts, not #DB)
            a.Label(ref L[1]);
            a.hlt();          // the trap after HLT resumes the processor
            a.Label(ref L[2]);
            a.int3();         // #BP with TF=1 pushed; no single-step trap into its handler
            a.Label(ref L[3]);
            a.nop();
            a.Label(ref L[4]);
            a.int1();         // ICEBP: a #DB without BS
            a.Label(ref L[5]);
            a.popfq();
            a.Label(ref L[6]);
            a.hlt();
        }, a => L = Enumerable.Range(0, 7).Select(_ => a.CreateLabel()).ToArray());
        using var _ = vm;
        Assert.Equal(
            new[] { (1UL, l[1], BS), (1UL, l[2], BS), (3UL, l[3], 0UL), (1UL, l[4], BS), (1UL, l[5], 0UL), (1UL, l[6], BS) },
            recs.Select(r => (r.Vector, r.Rip, r.Dr6 & ~Dr6Fixed)).ToArray());
    }

    [Fact]
    public void Dr6StatusBitsAreStickyExceptB0ToB3()
    {
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            a.mov(eax, (uint)(BS | B1));
            a.mov(dr6, rax); // software leaves BS and B1 set
            a.lea(rax, __[L[0]]);
            a.mov(dr0, rax);
            a.mov(rax, Dr7(0, 0, 0));
            a.mov(dr7, rax);
            a.Label(ref L[0]);
            a.nop();
            a.hlt();
        }, a => L = [a.CreateLabel()], clearDr6: false, orFlags: RF);
        using var _ = vm;
        Assert.Single(recs);
        // B0-B3 describe this exception (B1 gone), BS is never cleared by the processor (SDM 17.2.3).
        Assert.Equal(Dr6Fixed | BS | B0, recs[0].Dr6);
    }

    [Fact]
    public void BreakpointsArmedOverCompiledCodeAreTaken()
    {
        // JIT Always: the loop is compiled (inline TLB probes) before DR7 arms; it must still trap every time.
        Label[] L = [];
        var (vm, l, recs) = Run(a =>
        {
            var loop1 = a.CreateLabel();
            var loop2 = a.CreateLabel();
            a.mov(ecx, 100);
            a.Label(ref loop1);
            a.mov(__dword_ptr[Flag + 0x40], ecx);
            a.dec(ecx);
            a.jnz(loop1);
            a.mov(rax, Flag + 0x40);
            a.mov(dr2, rax);
            a.lea(rax, __[L[1]]);
            a.mov(dr3, rax);
            a.mov(rax, Dr7(2, 1, 3) | Dr7(3, 0, 0));
            a.mov(dr7, rax);
            a.mov(ecx, 3);
            a.Label(ref loop2);
            a.mov(__dword_ptr[Flag + 0x40], ecx);
            a.Label(ref L[0]);
            a.dec(ecx);
            a.Label(ref L[1]);
            a.jnz(loop2);
            a.hlt();
        }, a => L = [a.CreateLabel(), a.CreateLabel()], orFlags: RF, jit: JitMode.Always);
        using var _ = vm;
        // Each round: the store's data trap (RIP at the DEC, B2), then the instruction breakpoint on the JNZ (B3).
        var round = new[] { (l[0], B2), (l[1], B3) };
        Assert.Equal(round.Concat(round).Concat(round).ToArray(), recs.Select(r => (r.Rip, r.Dr6 & ~Dr6Fixed)).ToArray());
        Assert.True(vm.Accel.JitBlocksCompiled > 0);
    }
}
