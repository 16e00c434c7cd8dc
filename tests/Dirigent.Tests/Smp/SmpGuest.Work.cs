using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Smp;

/// <summary>The tiny SMP guest's work (what the vCPUs do once all are up) and its report.</summary>
internal static partial class SmpGuest
{
    // ---------------- the work ----------------

    private static void EmitBodies(Assembler a, Code64 l, SmpWork work, int cpus, int iterations)
    {
        switch (work)
        {
            case SmpWork.Ipis:
                a.Label(ref l.BodyBsp);
                EmitIpiSender(a, l, cpus, iterations);
                a.ret();
                a.Label(ref l.BodyAp);
                a.ret(); // the handlers do the work while the AP sleeps in HLT
                return;
            case SmpWork.CrossModifyingCode:
                a.Label(ref l.BodyBsp);
                EmitModifier(a, cpus, iterations);
                a.ret();
                a.Label(ref l.BodyAp);
                EmitCaller(a, iterations);
                a.ret();
                return;
        }
        a.Label(ref l.BodyBsp);
        a.jmp(l.BodyAp);
        a.Label(ref l.BodyAp);
        // R10 counts signs that another vCPU got in between (evidence of real overlap): XADD results that do not
        // follow this vCPU's previous one (R11; the first is compared with a plain read), failed compare-exchanges,
        // spins for the ticket lock.
        var loop = a.CreateLabel();
        var next = a.CreateLabel();
        a.mov(r9d, iterations);
        a.xor(r10d, r10d);
        a.mov(r11, __qword_ptr[Counter]);
        a.dec(r11);
        a.Label(ref loop);
        switch (work)
        {
            case SmpWork.LockXadd:
                a.mov(eax, 1);
                a.@lock.xadd(__qword_ptr[Counter], rax);
                a.lea(rdx, __[r11 + 1]);
                a.mov(r11, rax);
                a.cmp(rax, rdx);
                a.je(next);
                a.inc(r10);
                break;
            case SmpWork.LockCmpxchg:
            {
                var retry = a.CreateLabel();
                a.mov(rax, __qword_ptr[Counter]);
                a.Label(ref retry);
                a.lea(rdx, __[rax + 1]);
                a.@lock.cmpxchg(__qword_ptr[Counter], rdx); // on failure RAX = the current value
                a.je(next);
                a.inc(r10);
                a.jmp(retry);
                break;
            }
            case SmpWork.TicketLock:
            {
                var spin = a.CreateLabel();
                var got = a.CreateLabel();
                a.mov(eax, 1);
                a.@lock.xadd(__qword_ptr[NextTicket], rax);
                a.Label(ref spin);
                a.cmp(__qword_ptr[NowServing], rax);
                a.je(got);
                a.inc(r10);
                a.pause();
                a.jmp(spin);
                a.Label(ref got);
                // A plain read-modify-write with a few instructions in the window: only mutual exclusion keeps it exact.
                a.mov(rdx, __qword_ptr[Guarded]);
                a.mov(rcx, rdx);
                a.xor(rcx, r9);
                a.add(rdx, 1);
                a.mov(__qword_ptr[Guarded], rdx);
                // Release: only the holder writes NowServing, and x86 stores are not reordered with older stores.
                a.mov(rdx, __qword_ptr[NowServing]);
                a.inc(rdx);
                a.mov(__qword_ptr[NowServing], rdx);
                break;
            }
            case SmpWork.Cmpxchg16b:
            {
                var retry = a.CreateLabel();
                // Plain loads, low half first: both halves only grow together, so an untorn pair gives hi >= lo.
                a.mov(rax, __qword_ptr[Pair]);
                a.mov(rdx, __qword_ptr[Pair + 8]);
                a.cmp(rdx, rax);
                a.jae(retry);
                a.@lock.inc(__qword_ptr[Torn]);
                a.Label(ref retry);
                a.lea(rbx, __[rax + 1]);
                a.lea(rcx, __[rdx + 1]);
                a.@lock.cmpxchg16b(__xmmword_ptr[Pair]);
                a.je(next);
                a.inc(r10);
                // Failed: RDX:RAX is the value found, read atomically, so its halves are equal.
                a.cmp(rax, rdx);
                a.je(retry);
                a.@lock.inc(__qword_ptr[Torn]);
                a.jmp(retry);
                break;
            }
        }
        a.Label(ref next);
        a.dec(r9d);
        a.jnz(loop);
        a.@lock.add(__qword_ptr[Contended], r10);
        a.ret();
    }

    /// <summary>
    /// Each round: a fixed and an NMI IPI to each AP by physical destination, a fixed one by logical destination,
    /// then a fixed and an NMI one to all excluding self, and a fixed one to all APs as one logical multicast.
    /// After each IPI the BSP waits until every AP has counted what it was sent (two fixed IPIs of one vector in
    /// flight at once could rightly be merged into one, so each must be taken before the next).
    /// </summary>
    private static void EmitIpiSender(Assembler a, Code64 l, int cpus, int rounds)
    {
        var round = a.CreateLabel();
        a.mov(rsi, Lapic);
        a.mov(r12d, rounds);
        a.Label(ref round);
        for (int d = 1; d < cpus; d++)
        {
            EmitIcr(a, l, (byte)d, IcrFixed);
            a.inc(__qword_ptr[ExpFixed + d * 8]);
            a.call(l.WaitIpis);
            EmitIcr(a, l, (byte)d, IcrNmi);
            a.inc(__qword_ptr[ExpNmi + d * 8]);
            a.call(l.WaitIpis);
            EmitIcr(a, l, (byte)(1 << d), IcrFixed | IcrLogical);
            a.inc(__qword_ptr[ExpFixed + d * 8]);
            a.call(l.WaitIpis);
        }
        EmitIcr(a, l, 0, IcrFixed | IcrAllButSelf);
        for (int d = 1; d < cpus; d++) a.inc(__qword_ptr[ExpFixed + d * 8]);
        a.call(l.WaitIpis);
        EmitIcr(a, l, 0, IcrNmi | IcrAllButSelf);
        for (int d = 1; d < cpus; d++) a.inc(__qword_ptr[ExpNmi + d * 8]);
        a.call(l.WaitIpis);
        uint allAps = (uint)((1 << cpus) - 2);
        EmitIcr(a, l, (byte)allAps, IcrFixed | IcrLogical);
        for (int d = 1; d < cpus; d++) a.inc(__qword_ptr[ExpFixed + d * 8]);
        a.call(l.WaitIpis);
        a.dec(r12d);
        a.jnz(round);
    }

    /// <summary>BSP: each round writes the function's new immediate, publishes the round and waits for every AP.</summary>
    private static void EmitModifier(Assembler a, int cpus, int rounds)
    {
        var round = a.CreateLabel();
        var wait = a.CreateLabel();
        a.mov(r12d, 1);
        a.Label(ref round);
        a.lea(eax, __[r12 + (int)FuncValue(0)]);
        a.mov(__dword_ptr[Func + 1], eax);
        a.mov(__qword_ptr[Gen], r12);
        // Every AP acknowledges each round: wait for round * (cpus - 1) acknowledgements.
        a.mov(rax, r12);
        a.imul(rax, rax, cpus - 1);
        a.Label(ref wait);
        a.pause();
        a.cmp(__qword_ptr[Acks], rax);
        a.jne(wait);
        a.inc(r12d);
        a.cmp(r12d, rounds);
        a.jbe(round);
    }

    /// <summary>
    /// AP: keeps calling the function while it waits for the next round (so its old code is hot), checking it
    /// returns the previous or the new value; once the round is published, serializes as SDM 8.1.3 asks of the
    /// executing processor and calls it again: it must return the new value.
    /// </summary>
    private static void EmitCaller(Assembler a, int rounds)
    {
        var spin = a.CreateLabel();
        var spinOk = a.CreateLabel();
        var ready = a.CreateLabel();
        var ok = a.CreateLabel();
        a.mov(r12d, 1);
        a.Label(ref spin);
        a.mov(eax, Func);
        a.call(rax);
        a.lea(edx, __[r12 + (int)FuncValue(0)]);
        a.cmp(eax, edx);
        a.je(spinOk);
        a.dec(edx);
        a.cmp(eax, edx);
        a.je(spinOk);
        a.@lock.inc(__qword_ptr[Bad]);
        a.mov(__dword_ptr[LastBad], eax);
        a.Label(ref spinOk);
        a.cmp(__qword_ptr[Gen], r12);
        a.je(ready);
        a.pause();
        a.jmp(spin);
        a.Label(ref ready);
        a.push(rbx);
        a.xor(eax, eax);
        a.cpuid();
        a.pop(rbx);
        a.mov(eax, Func);
        a.call(rax);
        a.lea(edx, __[r12 + (int)FuncValue(0)]);
        a.cmp(eax, edx);
        a.je(ok);
        a.@lock.inc(__qword_ptr[Bad]);
        a.mov(__dword_ptr[LastBad], eax);
        a.Label(ref ok);
        a.@lock.inc(__qword_ptr[Acks]);
        a.inc(r12d);
        a.cmp(r12d, rounds);
        a.jbe(spin);
    }

    // ---------------- results ----------------

    private static void EmitReport(Assembler a, Code64 l, SmpWork work, int cpus, int iterations, ulong total)
    {
        switch (work)
        {
            case SmpWork.LockXadd:
            case SmpWork.LockCmpxchg:
                EmitCheck(a, l, "counter", Counter, total);
                break;
            case SmpWork.TicketLock:
                EmitCheck(a, l, "guarded", Guarded, total);
                EmitCheck(a, l, "tickets", NextTicket, total);
                EmitCheck(a, l, "serving", NowServing, total);
                break;
            case SmpWork.Cmpxchg16b:
                EmitCheck(a, l, "lo", Pair, total);
                EmitCheck(a, l, "hi", Pair + 8, total);
                EmitCheck(a, l, "torn", Torn, 0);
                break;
            case SmpWork.Ipis:
                for (int d = 0; d < cpus; d++)
                {
                    EmitCheck(a, l, $"fixed{d}", FixedCount + (uint)d * 8, d == 0 ? 0 : (ulong)(FixedPerRound * iterations));
                    EmitCheck(a, l, $"nmi{d}", NmiCount + (uint)d * 8, d == 0 ? 0 : (ulong)(NmiPerRound * iterations));
                }
                EmitPrint(a, l, " maxwait=");
                a.mov(rax, __qword_ptr[MaxWait]);
                a.call(l.PutHex);
                EmitPrint(a, l, " slow=");
                a.mov(rax, __qword_ptr[SlowWaits]);
                a.call(l.PutHex);
                break;
            case SmpWork.CrossModifyingCode:
                EmitCheck(a, l, "acks", Acks, (ulong)((cpus - 1) * iterations));
                EmitCheck(a, l, "bad", Bad, 0);
                EmitPrint(a, l, " lastbad=");
                a.mov(eax, __dword_ptr[LastBad]);
                a.call(l.PutHex);
                break;
        }
        if (work is SmpWork.LockXadd or SmpWork.LockCmpxchg or SmpWork.TicketLock or SmpWork.Cmpxchg16b)
        {
            EmitPrint(a, l, " contended=");
            a.mov(rax, __qword_ptr[Contended]);
            a.call(l.PutHex);
        }
        var failed = a.CreateLabel();
        EmitPrint(a, l, "\n");
        a.cmp(__qword_ptr[Failed], 0);
        a.jne(failed);
        EmitPrint(a, l, "PASS\n");
        EmitExit(a, Pass);
        a.Label(ref failed);
        EmitPrint(a, l, "FAIL\n");
        EmitExit(a, Fail);
    }

    /// <summary>Prints " name=HEX16" and marks the run failed unless the qword at addr equals expected.</summary>
    private static void EmitCheck(Assembler a, Code64 l, string name, uint addr, ulong expected)
    {
        EmitPrint(a, l, $" {name}=");
        a.mov(rax, __qword_ptr[addr]);
        a.call(l.PutHex);
        a.mov(rax, __qword_ptr[addr]);
        a.mov(rdx, expected);
        a.cmp(rax, rdx);
        a.setne(cl);
        a.movzx(ecx, cl);
        a.or(__qword_ptr[Failed], rcx);
    }

    private static void EmitExit(Assembler a, int value)
    {
        var park = a.CreateLabel();
        a.mov(al, (byte)value);
        a.@out(0xF4, al);
        a.Label(ref park);
        a.cli();
        a.hlt();
        a.jmp(park);
    }
}
