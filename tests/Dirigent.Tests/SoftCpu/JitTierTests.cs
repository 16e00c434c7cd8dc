using Dirigent.Accel.Emu.Jit;
using Dirigent.Machine.Accel;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// The compiled tier against the interpreter on multi-instruction blocks: random straight-line programs (registers
/// cached across instructions, flag records passed from one instruction to the next, memory through the inline TLB
/// probe), loops that run inside one compiled block, self-modifying code, and a fault in the middle of a block. Both
/// tiers must end in exactly the same state: registers, RFLAGS, memory, RIP and the retired-instruction count.
/// Replay one case: DIRIGENT_JIT_SEED=N dotnet test --filter JitTierTests.
/// </summary>
public class JitTierTests
{
    private static readonly AssemblerRegister64[] R64 = [rax, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15];
    private static readonly AssemblerRegister32[] R32 = [eax, ecx, edx, esi, edi, ebp, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d];
    private const ulong Data = Infrastructure.TestVm.DataBase;

    private sealed record Result(ulong[] Gpr, ulong Rflags, ulong Rip, ulong Instret, byte[] Mem, VcpuExitReason Exit, string Detail, long DispatcherRuns = 0, long Regions = 0,
        long Bundles = 0, long TierUps = 0);

    private static Result Run(JitMode mode, Action<Assembler> program, ulong[] gpr, ulong rflags, byte[] mem, int native = 0)
    {
        using var vm = new Infrastructure.TestVm(jit: mode, native: native);
        vm.Vm.Memory.Write(Data, mem);
        vm.Start64(program);
        var s = vm.Cpu.GetState();
        for (int k = 0; k < 16; k++) if (k != 4) s.Gpr[k] = gpr[k];
        s.Gpr[3] = Data; // rbx: the data buffer
        s.Rflags = (rflags & 0xCD5) | 2;
        vm.Cpu.SetState(s);
        var exit = vm.Run(20_000);
        var st = vm.Cpu.GetState();
        if (mode == JitMode.Always)
        {
            Assert.True(vm.Accel.JitFailures == 0, $"compile failure: {vm.Accel.JitFirstFailure}");
            Assert.True(vm.Accel.JitBlocksCompiled > 0, "nothing was compiled");
        }
        // (A block whose first instruction is one the tier leaves to the interpreter gets no code: counted as tried.)
        if (native > 0) Assert.True(vm.Cpu.NativeTier is { } nt && nt.BlocksCompiled + nt.BlocksNone > 0, "the native tier was not on");
        var outMem = new byte[mem.Length];
        vm.Vm.Memory.Read(Data, outMem);
        return new Result(st.Gpr.ToArray(), st.Rflags, st.Rip, vm.Cpu.InstructionsRetired, outMem, exit.Reason, exit.Detail ?? "",
            vm.Cpu.JitRunsCompiled + vm.Cpu.JitRunsInterpreted, vm.Accel.JitRegionsCompiled, vm.Accel.JitBundlesCompiled, vm.Accel.JitTierUps);
    }

    private static string Compare(Result i, Result c)
    {
        var d = new List<string>();
        for (int k = 0; k < 16; k++) if (i.Gpr[k] != c.Gpr[k]) d.Add($"r{k}: interpreter={i.Gpr[k]:x} compiled={c.Gpr[k]:x}");
        if (i.Rflags != c.Rflags) d.Add($"rflags: interpreter={i.Rflags:x} compiled={c.Rflags:x}");
        if (i.Rip != c.Rip) d.Add($"rip: interpreter={i.Rip:x} compiled={c.Rip:x}");
        if (i.Instret != c.Instret) d.Add($"instructions: interpreter={i.Instret} compiled={c.Instret}");
        if (i.Exit != c.Exit || i.Detail != c.Detail) d.Add($"exit: interpreter={i.Exit} '{i.Detail}' compiled={c.Exit} '{c.Detail}'");
        for (int k = 0; k < i.Mem.Length; k++)
            if (i.Mem[k] != c.Mem[k]) { d.Add($"mem[{k}]: interpreter={i.Mem[k]:x2} compiled={c.Mem[k]:x2}"); break; }
        return string.Join("; ", d);
    }

    private static Result AssertSame(Action<Assembler> program, Random rng, string what, Action<long>? countRegions = null)
    {
        var gpr = new ulong[16];
        for (int k = 0; k < 16; k++) gpr[k] = Native.Differential.RandomValue(rng);
        ulong fl = (ulong)rng.Next() & 0x8D5;
        var mem = new byte[4096];
        rng.NextBytes(mem);
        var interp = Run(JitMode.Off, program, gpr, fl, mem);
        var compiled = Run(JitMode.Always, program, gpr, fl, mem);
        string diff = Compare(interp, compiled);
        // The program's bytes too: the block that went wrong can be disassembled without rerunning the generator.
        if (diff != "") Assert.Fail($"{what}: {diff} [program bytes {Convert.ToHexString(Native.Differential.Asm(program))}]");
        // The native first tier (every block's native code made before it runs, the interpreter for the rest).
        if (NativeTierSupported)
        {
            diff = Compare(interp, Run(JitMode.Off, program, gpr, fl, mem, native: 1));
            if (diff != "") Assert.Fail($"{what}: [native tier] {diff} [program bytes {Convert.ToHexString(Native.Differential.Asm(program))}]");
        }
        countRegions?.Invoke(compiled.Regions);
        return compiled;
    }

    /// <summary>One random instruction of the kinds the compiler inlines, plus some it leaves to the interpreter.</summary>
    private static void RandomInstruction(Assembler a, Random rng)
    {
        var x = R64[rng.Next(R64.Length)];
        var y = R64[rng.Next(R64.Length)];
        var x32 = R32[rng.Next(R32.Length)];
        var y32 = R32[rng.Next(R32.Length)];
        int imm = rng.Next(4) == 0 ? rng.Next() - int.MaxValue / 2 : rng.Next(-300, 300);
        int disp = rng.Next(0, 4096 - 8);
        int disp16 = rng.Next(0, 4096 - 16), aligned16 = disp16 & ~15;
        switch (rng.Next(87))
        {
            case 0: a.mov(x, y); break;
            case 1: a.mov(x32, y32); break;
            case 2: a.mov(x, (ulong)Native.Differential.RandomValue(rng)); break;
            case 3: a.add(x, y); break;
            case 4: a.sub(x32, y32); break;
            case 5: a.and(x, imm); break;
            case 6: a.or(x32, imm); break;
            case 7: a.xor(x, y); break;
            case 8: a.cmp(x, y); break;
            case 9: a.cmp(x32, imm); break;
            case 10: a.test(x, y); break;
            case 11: a.test(x32, imm); break;
            case 12: a.add(x, __qword_ptr[rbx + disp]); break;
            case 13: a.mov(x32, __dword_ptr[rbx + disp]); break;
            case 14: a.mov(__qword_ptr[rbx + disp], x); break;
            case 15: a.mov(__dword_ptr[rbx + disp], y32); break;
            case 16: a.mov(__byte_ptr[rbx + disp], imm & 0x7F); break;
            case 17: a.lea(x, __[y + x * 4 + imm]); break;
            case 18: a.lea(x32, __[y + 12]); break;
            case 19: a.inc(x); break;
            case 20: a.dec(x32); break;
            case 21: a.movzx(x32, __byte_ptr[rbx + disp]); break;
            case 22: a.movsx(x, __word_ptr[rbx + disp]); break;
            case 23: a.movsxd(x, __dword_ptr[rbx + disp]); break;
            case 24: a.cmovl(x, y); break;
            case 25: a.cmovbe(x32, y32); break;
            case 26: a.cmove(x, __qword_ptr[rbx + disp]); break;
            case 27: a.push(x); a.pop(y); break;
            case 28: a.cmp(__qword_ptr[rbx + disp], x); break;
            // Left to the interpreter's handlers: they read and write the flags the compiled code keeps in locals.
            case 29: a.adc(x, y); break;
            case 30: a.shl(x32, (byte)(imm & 31)); break;
            case 31: a.setg(__byte_ptr[rbx + disp]); break;
            case 32: a.add(__qword_ptr[rbx + disp], x); break;
            case 33: a.imul(x32, __dword_ptr[rbx + disp], imm); break;
            case 34: a.shl(x, (byte)rng.Next(64)); break;
            case 35: a.shr(x32, (byte)rng.Next(40)); break;
            case 36: a.sar(x, (byte)rng.Next(64)); break;
            case 37: a.rol(x32, (byte)rng.Next(33)); break;
            case 38: a.ror(x, (byte)rng.Next(65)); break;
            case 39: a.setb(cl); break;
            case 40: a.setle(__byte_ptr[rbx + disp]); break;
            case 41: a.mov(dl, __byte_ptr[rbx + disp]); break;
            case 42: a.mov(sil, (byte)imm); break;
            case 43: a.cmp(r9b, __byte_ptr[rbx + disp]); break;
            case 44: a.test(__word_ptr[rbx + disp], (short)imm); break;
            case 45: a.sub(__dword_ptr[rbx + disp], imm); break;
            case 46: a.xor(__qword_ptr[rbx + disp], y); break;
            case 47: a.ror(x32, 7); a.xor(x32, y32); break;
            case 48: a.rol(x, 13); a.mov(y, x); a.add(y, 1); break;
            case 49: a.test(al, al); break;
            case 50: a.cmp(__byte_ptr[rbx + disp], (byte)imm); break;
            case 51: a.inc(__dword_ptr[rbx + disp]); break;
            case 52: a.dec(__qword_ptr[rbx + disp]); break;
            case 53: a.not(x); break;
            case 54: a.not(x32); break;
            // SSE2 forms the compiler inlines (XMM state reaches the compared GPRs and memory through MOVD/PMOVMSKB/stores).
            case 55: a.movdqu(xmm1, __xmmword_ptr[rbx + disp16]); a.pcmpeqb(xmm1, xmm2); a.pmovmskb(x32, xmm1); break;
            case 56: a.movq(xmm3, x); a.pxor(xmm3, xmm1); a.movdqu(__xmmword_ptr[rbx + disp16], xmm3); break;
            case 57: a.movdqa(xmm2, __xmmword_ptr[rbx + aligned16]); a.movd(x32, xmm2); break;
            case 58: a.movd(xmm1, y32); a.paddd(xmm1, __xmmword_ptr[rbx + aligned16]); a.movdqa(__xmmword_ptr[rbx + aligned16], xmm1); break;
            case 59: a.pminub(xmm2, xmm1); a.pandn(xmm3, xmm2); a.por(xmm1, xmm3); a.movq(x, xmm1); break;
            case 61: a.and(__byte_ptr[rbx + disp], (byte)imm); break;
            case 62: a.or(__word_ptr[rbx + disp], (short)imm); break;
            case 63: a.add(__byte_ptr[rbx + disp], dl); break;
            case 64: a.sub(__word_ptr[rbx + disp], si); break;
            case 60: a.movq(xmm0, __qword_ptr[rbx + disp]); a.psubq(xmm0, xmm3); a.movq(__qword_ptr[rbx + disp], xmm0); a.movd(__dword_ptr[rbx + disp], xmm2); break;
            // Shifts by CL, bit tests, IMUL, NEG, BSWAP, rotates and LEAVE (native templates since 2026-12-07).
            case 65: a.mov(rcx, (ulong)(long)rng.Next(-2048, 2048)); a.bts(__qword_ptr[rbx + 2048], rcx); break;
            case 66: a.shl(x, cl); break;
            case 67: a.shr(x32, cl); break;
            case 68: a.sar(x, cl); break;
            case 69: a.bt(x, y); break;
            case 70: a.btr(x32, (byte)rng.Next(256)); break;
            case 71: a.bts(__qword_ptr[rbx + disp], (byte)rng.Next(256)); break;
            case 72: a.btc(__dword_ptr[rbx + disp], (byte)rng.Next(256)); break;
            case 73: a.imul(x, __qword_ptr[rbx + disp]); break;
            case 74: a.imul(x32, y32, imm); break;
            case 75: a.neg(x); break;
            case 76: a.neg(__word_ptr[rbx + disp]); break;
            case 77: a.bswap(x); break;
            case 78: a.bswap(x32); break;
            case 79: a.rol(x, (byte)rng.Next(1, 64)); break;
            case 80: a.ror(x32, (byte)rng.Next(1, 32)); break;
            case 81: a.push(rbp); a.mov(rbp, rsp); a.push(x); a.leave(); break;
            case 82: a.@lock.cmpxchg(__qword_ptr[rbx + disp], x); break;
            case 83: a.cmpxchg(__dword_ptr[rbx + disp], y32); break;
            case 84: a.@lock.xadd(__dword_ptr[rbx + disp], x32); break;
            case 85: a.@lock.xadd(__qword_ptr[rbx + disp], y); break;
            case 86: a.pushfq(); a.pop(x); break;
            default: a.imul(x, y); break;
        }
    }

    private static bool NativeTierSupported =>
        System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64 && OperatingSystem.IsLinux();

    private static int BaseSeed => int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_SEED"), out int s) ? s : 0x5EED_0012;

    [Fact]
    public void Random_straight_line_blocks_end_in_the_interpreters_state()
    {
        int seed0 = BaseSeed;
        for (int n = 0; n < 120; n++)
        {
            int seed = seed0 + n;
            var rng = new Random(seed);
            int len = rng.Next(2, 24);
            Action<Assembler> program = a =>
            {
                var r = new Random(seed * 31 + 7);
                for (int k = 0; k < len; k++) RandomInstruction(a, r);
                // A conditional branch on the last flags, so the block ends in a compiled Jcc both ways.
                var skip = a.CreateLabel();
                switch (r.Next(4))
                {
                    case 0: a.jne(skip); break;
                    case 1: a.jl(skip); break;
                    case 2: a.ja(skip); break;
                    default: a.js(skip); break;
                }
                a.mov(r15, 0x1234);
                a.Label(ref skip);
                a.hlt();
            };
            AssertSame(program, rng, $"seed {seed} (replay: DIRIGENT_JIT_SEED={seed})");
        }
    }

    [Fact]
    public void Random_loops_of_several_blocks_compiled_as_one_region_end_in_the_interpreters_state()
    {
        // A loop of three blocks on one page: under Always the block with the back edge is compiled with the head and
        // the head's other successor as one region (inner branches, registers and the flag record kept in locals
        // across them). Random instructions at the start of each block read the flags the block before left (ADC,
        // CMOVcc, SETcc, a Jcc with no flag write before it): the record crosses the inner edges.
        int seed0 = BaseSeed + 1000;
        long regions = 0, bundles = 0;
        for (int n = 0; n < 40; n++)
        {
            int seed = seed0 + n;
            var rng = new Random(seed);
            int k1 = rng.Next(1, 8), k2 = rng.Next(0, 8), k3 = rng.Next(0, 8);
            Action<Assembler> program = a =>
            {
                var r = new Random(seed * 31 + 7);
                var top = a.CreateLabel();
                var mid = a.CreateLabel();
                a.mov(__qword_ptr[rbx + 8192], 200 + r.Next(100));
                a.Label(ref top);
                for (int k = 0; k < k1; k++) RandomInstruction(a, r);
                switch (r.Next(3))
                {
                    case 0: a.jl(mid); break;
                    case 1: a.jb(mid); break;
                    default: a.jne(mid); break;
                }
                // The fall-through block starts with a conditional branch on the flags from the block before.
                if (r.Next(2) == 0) a.jg(mid);
                for (int k = 0; k < k2; k++) RandomInstruction(a, r);
                a.Label(ref mid);
                for (int k = 0; k < k3; k++) RandomInstruction(a, r);
                a.dec(__qword_ptr[rbx + 8192]);
                a.jnz(top);
                a.hlt();
            };
            var c = AssertSame(program, rng, $"seed {seed} (replay: DIRIGENT_JIT_SEED={seed - 1000})", countRegions: x => regions += x);
            bundles += c.Bundles;
        }
        Assert.True(regions > 0, "no region was compiled");
        // Under Always a block that is not a region head is compiled into a bundle behind another block's code
        // (BlockCompiler.Bundle.cs): the regions' neighbours ran as bundle members.
        Assert.True(bundles > 0, "no bundle was compiled");
    }

    [Fact]
    public void A_loop_that_jumps_to_its_own_start_runs_inside_one_compiled_block()
    {
        var rng = new Random(BaseSeed);
        AssertSame(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 100_000);
            a.Label(ref top);
            a.add(rax, rcx);
            a.xor(rdx, rax);
            a.lea(rsi, __[rsi + rdx * 2 + 1]);
            a.mov(__qword_ptr[rbx + 64], rsi);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, rng, "self loop");
    }

    [Fact]
    public void Blocks_that_jump_into_each_other_chain_without_growing_the_stack()
    {
        // Three compiled blocks jumping into each other for millions of passes with nothing pending: each transition
        // is a direct (tail) jump from one compiled block into the next; a call per transition would overflow the
        // vCPU thread's stack long before the end.
        var rng = new Random(BaseSeed + 4);
        var r = AssertSame(a =>
        {
            var top = a.CreateLabel();
            var skip = a.CreateLabel();
            a.mov(ecx, 3_000_000);
            a.Label(ref top);
            a.add(rax, rcx);
            a.test(cl, 1);
            a.jz(skip);
            a.xor(rdx, rax);
            a.Label(ref skip);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, rng, "chained loop");
        // ~7.5 million block transitions; the dispatcher saw only the few before the links were made.
        Assert.True(r.DispatcherRuns < 1000, $"the dispatcher ran {r.DispatcherRuns} blocks: the compiled blocks did not chain");
    }

    [Fact]
    public void Calls_returns_and_pushes_through_the_compiled_tier()
    {
        var rng = new Random(BaseSeed + 1);
        var r = AssertSame(a =>
        {
            var f = a.CreateLabel();
            var top = a.CreateLabel();
            a.mov(ecx, 500);
            a.Label(ref top);
            a.push(rcx);
            a.call(f);
            a.pop(rcx);
            a.dec(rcx);
            a.jnz(top);
            a.hlt();
            a.Label(ref f);
            a.add(rax, __qword_ptr[rsp + 8]);
            a.ret();
        }, rng, "call/ret");
        // Under Always the blocks are compiled in bundles, and one entered a few times is compiled again alone while
        // its bundle's code is running (BlockCompiler.Bundle.cs): the 500 calls ran bundle code, then the block's own.
        Assert.True(r.Bundles > 0, "no bundle was compiled");
        Assert.True(r.TierUps > 0, "no bundled block was compiled again alone");
    }

    [Fact]
    public void A_store_into_the_running_block_takes_effect_at_the_next_instruction()
    {
        // The loop body patches the immediate of its own "add eax, imm32" once: the compiled block must stop and the
        // new bytes run from the next pass on, exactly as in the interpreter.
        var rng = new Random(BaseSeed + 2);
        AssertSame(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 50);
            a.Label(ref top);
            a.add(eax, 0x11111111);
            a.lea(rdi, __[top]);
            a.mov(__dword_ptr[rdi + 1], 5);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, rng, "self-modifying code");
    }

    [Fact]
    public void Loads_and_stores_walking_across_a_page_boundary_match_the_interpreter()
    {
        // A loop (so the soft TLB is warm and compiled and native code take their inline paths) whose 2-, 4- and
        // 8-byte accesses slide one byte a pass over the end of the data page: the ones that straddle it must leave
        // the inline path for the slow one, with the instructions before them done and none after.
        var rng = new Random(BaseSeed + 7);
        AssertSame(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 0xFF0);
            a.Label(ref top);
            a.mov(rax, __qword_ptr[rbx + rcx]);
            a.add(rdx, rax);
            a.mov(__word_ptr[rbx + rcx - 0x800], dx);
            a.xor(esi, __dword_ptr[rbx + rcx + 2]);
            a.add(__dword_ptr[rbx + rcx - 0x400], esi);
            a.inc(ecx);
            a.cmp(ecx, 0x1008);
            a.jb(top);
            a.hlt();
        }, rng, "page-crossing accesses");
    }

    [Fact]
    public void A_fault_in_the_middle_of_a_compiled_block_is_precise()
    {
        // No IDT: the #GP of a non-canonical load shuts the machine down, with the state of the faulting instruction.
        var rng = new Random(BaseSeed + 3);
        AssertSame(a =>
        {
            a.add(rcx, 5);
            a.mov(rdx, 7);
            a.cmp(rcx, rdx);
            a.push(rax);
            a.mov(rsi, 0x8000_0000_0000_0000UL);
            a.mov(rax, __qword_ptr[rsi]);
            a.mov(rdi, 1);
            a.hlt();
        }, rng, "fault");
    }

    [Fact]
    public void Indirect_jumps_and_calls_through_registers_and_memory()
    {
        // A jump table in memory, a function pointer called through a register and through memory, many times (so
        // the compiled blocks chain through the jump cache), then a non-canonical target: #GP(0) at that JMP.
        var rng = new Random(BaseSeed + 4);
        AssertSame(a =>
        {
            var f = a.CreateLabel();
            var top = a.CreateLabel();
            var caseA = a.CreateLabel();
            var caseB = a.CreateLabel();
            var join = a.CreateLabel();
            a.lea(rax, __[caseA]);
            a.mov(__qword_ptr[rbx], rax);
            a.lea(rax, __[caseB]);
            a.mov(__qword_ptr[rbx + 8], rax);
            a.lea(rax, __[f]);
            a.mov(__qword_ptr[rbx + 16], rax);
            a.mov(ecx, 400);
            a.Label(ref top);
            a.mov(edx, ecx);
            a.and(edx, 1);
            a.jmp(__qword_ptr[rbx + rdx * 8]);
            a.Label(ref caseA);
            a.add(r8, rcx);
            a.jmp(join);
            a.Label(ref caseB);
            a.xor(r9, rcx);
            a.Label(ref join);
            a.lea(r10, __[f]);
            a.call(r10);
            a.call(__qword_ptr[rbx + 16]);
            a.dec(ecx);
            a.jnz(top);
            a.mov(rax, 0x0000_8000_0000_0000UL);
            a.jmp(rax);
            a.Label(ref f);
            a.add(r11, __qword_ptr[rsp]);
            a.ret();
        }, rng, "indirect branches");
    }
    [Fact]
    public void A_return_to_alternating_and_rewritten_call_sites_goes_where_the_stack_says()
    {
        // One function returned from to two call sites in turn (its RET's last-target link is stale every other time
        // and must only miss), and halfway through one return site's code is rewritten (the block the link and the
        // jump cache hold is invalidated: the new bytes must run from the next return on).
        var rng = new Random(BaseSeed + 5);
        var r = AssertSame(a =>
        {
            var f = a.CreateLabel();
            var top = a.CreateLabel();
            var odd = a.CreateLabel();
            var next = a.CreateLabel();
            var noPatch = a.CreateLabel();
            var afterAdd = a.CreateLabel();
            a.mov(ecx, 20_000);
            a.Label(ref top);
            a.test(cl, 1);
            a.jnz(odd);
            a.call(f);
            a.add(r8, 0x1111); // return site 1: its imm32 (the instruction's last 4 bytes) is patched below
            a.Label(ref afterAdd);
            a.jmp(next);
            a.Label(ref odd);
            a.call(f);
            a.xor(r9, rcx);    // return site 2
            a.Label(ref next);
            a.cmp(ecx, 10_000);
            a.jne(noPatch);
            a.lea(rdi, __[afterAdd]);
            a.mov(__dword_ptr[rdi - 4], 0x2222);
            a.Label(ref noPatch);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
            a.Label(ref f);
            a.add(r10, rcx);
            a.ret();
        }, rng, "alternating returns");
        // 60000 returns and calls; only the first passes, and those after the rewrite until it is compiled, go through the dispatcher.
        Assert.True(r.DispatcherRuns < 5000, $"the dispatcher ran {r.DispatcherRuns} blocks: the returns did not chain");
    }

    [Fact]
    public void Push_and_pop_runs_compiled_as_one_stack_access_match_the_interpreter()
    {
        // A function saving and restoring registers in runs (one soft-TLB check per run in the compiled tier), called
        // with the stack moving 24 bytes down per call: some runs cross a page boundary, miss the check and go through
        // the handlers one by one. Pops land in other registers than the pushes came from, with immediates among them.
        var rng = new Random(BaseSeed + 7);
        AssertSame(a =>
        {
            var f = a.CreateLabel();
            var top = a.CreateLabel();
            a.mov(ecx, 400);
            a.Label(ref top);
            a.push(rcx);
            a.call(f);
            a.pop(rcx);
            a.sub(rsp, 24);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
            a.Label(ref f);
            a.push(rbp);
            a.push(r12);
            a.push(r13);
            a.push(0x12);
            a.push(-7);
            a.push(rax);
            a.mov(r12, rcx);
            a.add(r13, __qword_ptr[rsp + 16]);
            a.imul(rbp, rcx);
            a.pop(rdx);
            a.pop(rsi);
            a.pop(rdi);
            a.pop(r13);
            a.pop(r12);
            a.pop(rbp);
            a.add(rax, rdx);
            a.add(rax, rsi);
            a.xor(rax, rdi);
            a.ret();
        }, rng, "push/pop runs");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_fault_inside_a_push_or_pop_run_leaves_the_instructions_before_it_done(bool push)
    {
        // No IDT: the #PF shuts the machine down with the state of the faulting instruction. Pushes from RSP = 0x10:
        // the third goes below address 0 into the unmapped top of the address space. Pops from 4 GiB - 16: the third
        // reads at 4 GiB, where the page tables end. The first two must have moved RSP and written (or set) their
        // operands in both tiers.
        var rng = new Random(BaseSeed + 8 + (push ? 1 : 0));
        AssertSame(a =>
        {
            if (push)
            {
                a.mov(rsp, 0x10);
                a.push(rax);
                a.push(rcx);
                a.push(rdx);
                a.push(rsi);
            }
            else
            {
                a.mov(rsp, 0xFFFF_FFF0UL);
                a.pop(rax);
                a.pop(rcx);
                a.pop(rdx);
                a.pop(rsi);
            }
            a.mov(rdi, 5);
            a.hlt();
        }, rng, push ? "push fault" : "pop fault");
    }

    [Fact]
    public void Fs_relative_loads_and_stores_use_the_segment_base()
    {
        // FS base set through IA32_FS_BASE, then a loop of fs: loads and stores (TLS, the stack protector's canary):
        // the compiled tier reads the base inline.
        var rng = new Random(BaseSeed + 10);
        AssertSame(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 0xC000_0100);
            a.mov(eax, (uint)Data + 0x100);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, 300);
            a.Label(ref top);
            a.mov(rax, __qword_ptr.fs[0x28]);
            a.add(rdx, rax);
            a.mov(__qword_ptr.fs[0x30], rdx);
            a.add(r8, __qword_ptr.fs[rcx * 8]);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, rng, "fs-relative");
    }

    [Fact]
    public void Chained_native_code_across_pages_and_into_a_rewritten_block_matches_the_interpreter()
    {
        // Blocks on two pages whose native code links through trampolines (same-page links and cross-page ones, which
        // check the execute TLB). Halfway, a block rewrites the immediate of the block on the other page, to which a
        // trampoline already leads: from then on the new bytes must run, as in the interpreter.
        var rng = new Random(BaseSeed + 11);
        AssertSame(a =>
        {
            var top = a.CreateLabel();
            var skip = a.CreateLabel();
            var far = a.CreateLabel();
            var near = a.CreateLabel();
            a.mov(ecx, 200);
            a.Label(ref top);
            a.add(edx, ecx);
            a.cmp(ecx, 100);
            a.jne(skip);
            a.lea(rdi, __[far]);
            a.mov(__dword_ptr[rdi + 1], ecx); // far's "add eax, imm32" (05 id)
            a.Label(ref skip);
            a.xor(esi, edx);
            a.jmp(far);
            a.db(Enumerable.Repeat((byte)0xCC, 4096).ToArray());
            a.Label(ref far);
            a.add(eax, 0x11111111);
            a.test(ecx, 1);
            a.jz(near);
            a.add(r8, rax);
            a.Label(ref near);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, rng, "native chains");
    }

    [Fact]
    public void Inc_and_dec_at_a_block_start_keep_the_carry_of_every_kind_of_flag_record()
    {
        // INC/DEC keep CF, which then comes from whatever wrote the flags before the block: native code has the shared
        // flags routine replay the lazy record at run time (every kind of record). Each pair of blocks: a flag writer,
        // a jump, INC or DEC, then the carry and all flags stored.
        var rng = new Random(BaseSeed + 12);
        for (int round = 0; round < 8; round++)
        {
            // The choices are drawn once: the program is built again for each tier.
            var pick = Enumerable.Range(0, 24).Select(_ => (x: rng.Next(R64.Length), kind: rng.Next(12), sh: rng.Next(1, 64),
                y: rng.Next(R64.Length), mem: rng.Next(2) == 0)).ToArray();
            AssertSame(a =>
            {
                for (int n = 0; n < pick.Length; n++)
                {
                    var x = R64[pick[n].x];
                    var x32 = R32[pick[n].x];
                    var next = a.CreateLabel();
                    switch (pick[n].kind)
                    {
                        case 0: a.add(x, __qword_ptr[rbx + 8 * n]); break;
                        case 1: a.sub(x32, __dword_ptr[rbx + 8 * n]); break;
                        case 2: a.add(__byte_ptr[rbx + n], cl); break;
                        case 3: a.sub(__word_ptr[rbx + 2 * n], dx); break;
                        case 4: a.cmp(x, __qword_ptr[rbx + 8 * n + 256]); break;
                        case 5: a.and(x32, __dword_ptr[rbx + 4 * n]); break;
                        case 6: a.shl(x, (byte)pick[n].sh); break;
                        case 7: a.inc(__byte_ptr[rbx + n]); break;
                        case 8: a.dec(x32); break;
                        case 9: a.adc(x, __qword_ptr[rbx + 8 * n]); break;
                        case 10: a.neg(x32); break;
                        default: a.stc(); break;
                    }
                    a.jmp(next);
                    a.Label(ref next);
                    if (pick[n].mem) a.dec(__dword_ptr[rbx + 4 * n + 512]); else a.inc(R64[pick[n].y]);
                    a.setb(__byte_ptr[rbx + n + 1024]);
                    // (A block of its own, so that native code covers it whole; PUSHF is the interpreter's.)
                    var store = a.CreateLabel();
                    a.jmp(store);
                    a.Label(ref store);
                    a.pushfq();
                    a.pop(__qword_ptr[rbx + 8 * n + 1536]);
                }
                a.hlt();
            }, rng, $"inc/dec after a flag record, round {round}");
        }
    }

    [Fact]
    public void Conditions_at_a_block_start_read_every_kind_of_flag_record()
    {
        // A Jcc, SETcc or CMOVcc whose flags were written before its block: native code calls the shared flags routine,
        // which replays whatever lazy record is there (ADD, ADC, SUB, SBB, NEG, logic, INC, DEC at each size, or flags
        // already in RFLAGS). Each round: a flag writer, a jump, then the condition's three forms on all 16 codes.
        var rng = new Random(BaseSeed + 13);
        for (int round = 0; round < 8; round++)
        {
            var pick = Enumerable.Range(0, 24).Select(_ => (x: rng.Next(R64.Length), kind: rng.Next(16), cc: rng.Next(16),
                y: rng.Next(R64.Length), taken: rng.Next(2) == 0)).ToArray();
            AssertSame(a =>
            {
                for (int n = 0; n < pick.Length; n++)
                {
                    var x = R64[pick[n].x];
                    var x32 = R32[pick[n].x];
                    var y = R64[pick[n].y];
                    var next = a.CreateLabel();
                    switch (pick[n].kind)
                    {
                        case 0: a.add(x, __qword_ptr[rbx + 8 * n]); break;
                        case 1: a.adc(__byte_ptr[rbx + n], cl); break;
                        case 2: a.adc(x32, __dword_ptr[rbx + 4 * n]); break;
                        case 3: a.sub(__word_ptr[rbx + 2 * n], dx); break;
                        case 4: a.sbb(x, __qword_ptr[rbx + 8 * n + 256]); break;
                        case 5: a.sbb(__word_ptr[rbx + 2 * n], si); break;
                        case 6: a.neg(x32); break;
                        case 7: a.neg(__byte_ptr[rbx + n]); break;
                        case 8: a.or(x, __qword_ptr[rbx + 8 * n]); break;
                        case 9: a.xor(__byte_ptr[rbx + n], al); break;
                        case 10: a.inc(__word_ptr[rbx + 2 * n]); break;
                        case 11: a.dec(x32); break;
                        case 12: a.shr(x, 3); break;
                        case 13: a.cmp(__byte_ptr[rbx + n], (byte)n); break;
                        case 14: a.bt(x, (byte)n); break;
                        default: a.stc(); break;
                    }
                    a.jmp(next);
                    a.Label(ref next);
                    var skip = a.CreateLabel();
                    int cc = pick[n].cc;
                    // SETcc to memory, CMOVcc from memory, then the Jcc.
                    Cc(a, cc, __byte_ptr[rbx + n + 1024]);
                    CmovCc(a, cc, y, __qword_ptr[rbx + 8 * n + 1536]);
                    JccTo(a, cc, skip);
                    a.add(__qword_ptr[rbx + 8 * n + 2048], 1);
                    a.Label(ref skip);
                }
                a.hlt();
            }, rng, $"a condition after a flag record, round {round}");
        }
    }

    [Fact]
    public void Shifts_rotates_bit_tests_imul_carries_and_atomics_leave_the_interpreters_flags_after_each_instruction()
    {
        // Each instruction is followed by PUSHF (the interpreter's, in the next block), so every flag it leaves is seen, the ones the SDM
        // leaves undefined included: all tiers must set those alike (a logic operation just before a bit test or a
        // rotate: AF, undefined after AND on the host, is 0 on the interpreter). Counts by CL include zero.
        var rng = new Random(BaseSeed + 14);
        for (int round = 0; round < 8; round++)
        {
            var pick = Enumerable.Range(0, 32).Select(_ => (x: rng.Next(R64.Length), y: rng.Next(R64.Length), kind: rng.Next(22),
                count: rng.Next(4) == 0 ? 64 * rng.Next(2) : rng.Next(1, 64), logic: rng.Next(3))).ToArray();
            AssertSame(a =>
            {
                for (int n = 0; n < pick.Length; n++)
                {
                    var (x, y) = (R64[pick[n].x], R64[pick[n].y]);
                    var (x32, y32) = (R32[pick[n].x], R32[pick[n].y]);
                    byte c = (byte)pick[n].count;
                    if (pick[n].logic == 0) a.and(x32, y32);
                    else if (pick[n].logic == 1) a.add(x, y);
                    switch (pick[n].kind)
                    {
                        case 0: a.mov(ecx, c); a.shl(x, cl); break;
                        case 1: a.mov(ecx, c); a.shr(x32, cl); break;
                        case 2: a.mov(ecx, c); a.sar(x, cl); break;
                        case 3: a.rol(x, (byte)Math.Max(1, c & 63)); break;
                        case 4: a.ror(x32, (byte)Math.Max(1, c & 31)); break;
                        case 5: a.ror(x, (byte)Math.Max(1, c & 63)); break;
                        case 6: a.bt(x, y); break;
                        case 7: a.bts(x32, c); break;
                        case 8: a.btr(__qword_ptr[rbx + 8 * n], c); break;
                        case 9: a.mov(rcx, (ulong)(long)(c * 7 - 200)); a.btc(__dword_ptr[rbx + 1024], rcx); break;
                        case 10: a.imul(x, y); break;
                        case 11: a.imul(x32, __dword_ptr[rbx + 4 * n], c * 1000); break;
                        case 12: a.neg(x32); break;
                        case 13: a.neg(__byte_ptr[rbx + n]); break;
                        case 14: a.bswap(x); break;
                        case 15: a.sbb(x32, __dword_ptr[rbx + 4 * n]); break;
                        case 16: a.adc(__qword_ptr[rbx + 8 * n + 512], y); break;
                        case 17: a.@lock.cmpxchg(__qword_ptr[rbx + 8 * (n & 3)], y); break;
                        case 18: a.@lock.xadd(__word_ptr[rbx + 2 * n], dx); break;
                        case 19: a.cmpxchg(__byte_ptr[rbx + n], cl); break;
                        case 20: a.pushfq(); a.pop(__qword_ptr[rbx + 8 * n + 512]); break;
                        default: a.shl(x32, c); break;
                    }
                    // PUSHF in a block of its own (native code covers the one before it whole).
                    var store = a.CreateLabel();
                    var next = a.CreateLabel();
                    a.jmp(store);
                    a.Label(ref store);
                    a.pushfq();
                    a.pop(__qword_ptr[rbx + 8 * n + 2048]);
                    a.jmp(next);
                    a.Label(ref next);
                }
                a.hlt();
            }, rng, $"flags after each instruction, round {round}");
        }
    }

    private static void Cc(Assembler a, int cc, AssemblerMemoryOperand m)
    {
        switch (cc)
        {
            case 0: a.seto(m); break; case 1: a.setno(m); break; case 2: a.setb(m); break; case 3: a.setae(m); break;
            case 4: a.sete(m); break; case 5: a.setne(m); break; case 6: a.setbe(m); break; case 7: a.seta(m); break;
            case 8: a.sets(m); break; case 9: a.setns(m); break; case 10: a.setp(m); break; case 11: a.setnp(m); break;
            case 12: a.setl(m); break; case 13: a.setge(m); break; case 14: a.setle(m); break; default: a.setg(m); break;
        }
    }

    private static void CmovCc(Assembler a, int cc, AssemblerRegister64 r, AssemblerMemoryOperand m)
    {
        switch (cc)
        {
            case 0: a.cmovo(r, m); break; case 1: a.cmovno(r, m); break; case 2: a.cmovb(r, m); break; case 3: a.cmovae(r, m); break;
            case 4: a.cmove(r, m); break; case 5: a.cmovne(r, m); break; case 6: a.cmovbe(r, m); break; case 7: a.cmova(r, m); break;
            case 8: a.cmovs(r, m); break; case 9: a.cmovns(r, m); break; case 10: a.cmovp(r, m); break; case 11: a.cmovnp(r, m); break;
            case 12: a.cmovl(r, m); break; case 13: a.cmovge(r, m); break; case 14: a.cmovle(r, m); break; default: a.cmovg(r, m); break;
        }
    }

    private static void JccTo(Assembler a, int cc, Label l)
    {
        switch (cc)
        {
            case 0: a.jo(l); break; case 1: a.jno(l); break; case 2: a.jb(l); break; case 3: a.jae(l); break;
            case 4: a.je(l); break; case 5: a.jne(l); break; case 6: a.jbe(l); break; case 7: a.ja(l); break;
            case 8: a.js(l); break; case 9: a.jns(l); break; case 10: a.jp(l); break; case 11: a.jnp(l); break;
            case 12: a.jl(l); break; case 13: a.jge(l); break; case 14: a.jle(l); break; default: a.jg(l); break;
        }
    }

    [SkippableFact]
    public void A_loop_of_chained_native_code_stops_when_asked_with_every_instruction_counted()
    {
        // Two blocks that jump to each other forever: their native code links into a loop that never returns on its
        // own. It must still leave for a stop request (trampolines check pending events), and the instructions of
        // every block it ran through must be counted: the retired count, the registers and RIP agree.
        Skip.IfNot(NativeTierSupported, "the native tier runs on x86-64 Linux hosts only");
        using var vm = new Infrastructure.TestVm(jit: JitMode.Off, native: 1);
        Action<Assembler> program = a =>
        {
            var top = a.CreateLabel();
            var mid = a.CreateLabel();
            a.xor(eax, eax);
            a.xor(edx, edx);
            a.Label(ref top);
            a.add(rax, 1);
            a.jmp(mid);
            a.Label(ref mid);
            a.add(rdx, 2);
            a.jmp(top);
        };
        vm.Start64(program);
        VcpuExit exit = default;
        var t = new Thread(() => exit = vm.Cpu.Run(), 16 << 20) { IsBackground = true };
        t.Start();
        // Waits on guest progress (the 60 s are only a guard against a hang).
        Assert.True(SpinWait.SpinUntil(() => vm.Cpu.InstructionsRetired > 2_000_000, 60_000), "the guest made no progress");
        vm.Cpu.RequestStop();
        Assert.True(t.Join(60_000), "the vCPU did not stop");
        Assert.Equal(VcpuExitReason.Stopped, exit.Reason);
        var s = vm.Cpu.GetState();
        ulong tops = s.Gpr[0], mids = s.Gpr[2] / 2;
        Assert.True(mids == tops || mids + 1 == tops, $"rax={tops:x} rdx={s.Gpr[2]:x}");
        Assert.True(2 + 2 * tops + 2 * mids == vm.Cpu.InstructionsRetired, $"retired {vm.Cpu.InstructionsRetired}, rax={tops:x} rdx={s.Gpr[2]:x} rip={s.Rip:x}");
        // top at +4 (after two 2-byte XORs), mid at +12 (Iced encodes "add rax, 1" as 48 05 id, then a 2-byte JMP).
        Assert.True(Infrastructure.TestVm.CodeBase + (mids == tops ? 4UL : 12UL) == s.Rip, $"rip={s.Rip:x} rax={tops:x} rdx={s.Gpr[2]:x} bytes={Convert.ToHexString(Native.Differential.Asm(program))}");
        Assert.True(vm.Cpu.NativeTier!.Links > 0, "no native code was linked");
    }
}
