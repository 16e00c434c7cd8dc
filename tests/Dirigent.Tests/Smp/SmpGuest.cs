using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Smp;

/// <summary>What the tiny SMP guest's vCPUs do together once they are all up.</summary>
public enum SmpWork
{
    /// <summary>Every vCPU adds 1 to one counter <c>iterations</c> times with LOCK XADD.</summary>
    LockXadd,
    /// <summary>The same with a LOCK CMPXCHG retry loop.</summary>
    LockCmpxchg,
    /// <summary>A ticket spinlock (LOCK XADD ticket, PAUSE while spinning) guards a plain read-modify-write.</summary>
    TicketLock,
    /// <summary>LOCK CMPXCHG16B adds 1 to both halves of one 16-byte pair; plain loads of it must never be torn.</summary>
    Cmpxchg16b,
    /// <summary>
    /// The BSP sends <c>iterations</c> rounds of fixed and NMI IPIs to the APs (physical destination, all-excluding-self
    /// shorthand, logical destination in the flat model), waiting for each to be counted by the target's handler.
    /// </summary>
    Ipis,
    /// <summary>
    /// Cross-modifying code: for <c>iterations</c> rounds the BSP rewrites the immediate of a <c>mov eax, imm32; ret</c>
    /// function that the APs keep calling, then signals; each AP serializes (CPUID) and must get the new value.
    /// </summary>
    CrossModifyingCode,
}

/// <summary>
/// A Multiboot guest that brings up all its vCPUs the MP-spec way and makes them work on shared memory.
/// The BSP enters long mode (identity map of 4 GiB with 2 MiB pages, which covers the local APIC page), copies a
/// real-mode trampoline to 0x8000 and sends INIT (assert, de-assert) and two STARTUPs (vector 8) to all excluding
/// self through its ICR. Each AP goes real → protected → long mode on the shared GDT and page tables, takes a unique
/// index with LOCK XADD, its own stack, enables its local APIC (logical ID 1 &lt;&lt; APIC ID, flat model) and checks in.
/// The BSP releases everyone at once, runs its own share, waits for all to finish, prints the results on COM1 as
/// <c>name=HEX16</c> and leaves through the debug-exit port with <see cref="Pass"/> or <see cref="Fail"/>.
/// </summary>
internal static partial class SmpGuest
{
    public const int Pass = 0x31, Fail = 0x32, Fault = 0x3F;

    private const uint LoadAddr = 0x10_0000;
    // Image layout: 32-bit Multiboot entry, 64-bit code, then the trampoline page that the BSP copies to 0x8000.
    private const uint Main64Off = 0x1000, TrampOff = 0x4000, ImageSize = 0x5000;
    private const uint Tramp = 0x8000, Tramp32 = Tramp + 0x100, Gdt = Tramp + 0x200, Gdtr = Tramp + 0x240;
    private const byte SipiVector = (byte)(Tramp >> 12);
    private const ushort Code32Sel = 0x08, Code64Sel = 0x10, DataSel = 0x18;
    private static readonly ulong[] s_gdt = [0, 0x00CF_9A00_0000_FFFF, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];

    private const uint Pml4 = 0x20_0000, Pdpt = 0x20_1000, Pd = 0x20_2000; // four page directories follow Pd
    private const uint Idt = 0x21_0000;
    private const uint StackBase = 0x40_0000, StackSize = 0x1_0000;
    private const uint Func = 0x23_0000; // the cross-modified function, on its own page

    // Shared variables, one 64-byte line each (per-CPU arrays: 8 bytes per APIC ID).
    internal const uint Vars = 0x22_0000;
    internal const uint NextIndex = Vars + 0x000, CheckedIn = Vars + 0x040, Done = Vars + 0x080, Go = Vars + 0x0C0;
    internal const uint Counter = Vars + 0x100, NextTicket = Vars + 0x140, NowServing = Vars + 0x180, Guarded = Vars + 0x1C0;
    private const uint Pair = Vars + 0x200, Torn = Vars + 0x240, Failed = Vars + 0x280, Gen = Vars + 0x2C0;
    private const uint Acks = Vars + 0x300, Bad = Vars + 0x340, LastBad = Vars + 0x380;
    private const uint FixedCount = Vars + 0x400, NmiCount = Vars + 0x600, ExpFixed = Vars + 0x800, ExpNmi = Vars + 0xA00;
    private const uint Contended = Vars + 0xD00, MaxWait = Vars + 0xE00, SlowWaits = Vars + 0xE40, IdtrAddr = Vars + 0xF00;

    private const ulong Lapic = 0xFEE0_0000;
    private const int ApicId = 0x20, Eoi = 0xB0, Ldr = 0xD0, Dfr = 0xE0, Svr = 0xF0, IcrLow = 0x300, IcrHigh = 0x310;
    private const byte FixedVector = 0x40, SpuriousVector = 0xFF;
    // ICR low: delivery mode << 8, logical bit 11, level assert bit 14, trigger bit 15, shorthand << 18.
    private const uint IcrFixed = 0x4000 | FixedVector, IcrNmi = 0x4400, IcrLogical = 1 << 11, IcrAllButSelf = 3 << 18;
    private const uint IcrInitAssert = 0xC000 | 0x500, IcrInitDeassert = 0x8000 | 0x500, IcrStartup = 0x4600 | SipiVector;

    /// <summary>Rounds of the BSP's IPI sequence per AP: fixed count per round and NMI count per round.</summary>
    public const int FixedPerRound = 4, NmiPerRound = 2;

    // A guest-side bound on each wait for an IPI to be counted: a lost IPI ends the run with a message, not a hang.
    private const uint IpiWaitLoops = 200_000_000;

    public static string WriteKernel(string dir, SmpWork work, int cpus, int iterations)
    {
        string path = Path.Combine(dir, $"smp-{work}-{cpus}.bin");
        File.WriteAllBytes(path, Build(work, cpus, iterations));
        return path;
    }

    public static byte[] Build(SmpWork work, int cpus, int iterations)
    {
        if (cpus < 1 || cpus > 32) throw new ArgumentOutOfRangeException(nameof(cpus));
        var (main64, bspMain, apEntry) = Assemble64(work, cpus, iterations);
        var img = new byte[ImageSize];
        Place(img, 0, Assemble32Entry(bspMain), Main64Off);
        Place(img, Main64Off, main64, TrampOff - Main64Off);
        Place(img, TrampOff, AssembleTrampoline16(), Tramp32 - Tramp);
        Place(img, TrampOff + (Tramp32 - Tramp), AssembleTrampoline32(apEntry), Gdt - Tramp32);
        for (int k = 0; k < s_gdt.Length; k++)
            BitConverter.TryWriteBytes(img.AsSpan((int)(TrampOff + Gdt - Tramp) + 8 * k), s_gdt[k]);
        BitConverter.TryWriteBytes(img.AsSpan((int)(TrampOff + Gdtr - Tramp)), (ushort)(s_gdt.Length * 8 - 1));
        BitConverter.TryWriteBytes(img.AsSpan((int)(TrampOff + Gdtr - Tramp) + 2), Gdt);
        return img;
    }

    private static void Place(byte[] img, uint at, byte[] code, uint room)
    {
        if (code.Length > room) throw new InvalidOperationException($"guest section at 0x{at:x} is {code.Length} bytes, room for {room}");
        code.CopyTo(img, at);
    }

    // ---------------- 32-bit Multiboot entry (BSP) ----------------

    private static byte[] Assemble32Entry(ulong bspMain)
    {
        // Two passes: the far jump that reloads CS needs the address of its target as a constant (same length both times).
        var (_, reloadAt) = Assemble32Entry(bspMain, 0);
        return Assemble32Entry(bspMain, reloadAt).Code;
    }

    private static (byte[] Code, uint ReloadAt) Assemble32Entry(ulong bspMain, uint reloadAt)
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        var reload = a.CreateLabel();
        var fill = a.CreateLabel();
        a.cli();
        a.cld();
        a.mov(esp, StackBase + StackSize);
        // The trampoline page (with the GDT everyone shares) goes below 1 MiB, where a SIPI can start a CPU.
        a.mov(esi, LoadAddr + TrampOff);
        a.mov(edi, Tramp);
        a.mov(ecx, 0x1000);
        a.rep.movsb();
        a.lgdt(__[Gdtr]);
        a.jmp(Code32Sel, reloadAt);
        a.Label(ref reload);
        a.mov(ax, DataSel);
        a.mov(ds, ax);
        a.mov(es, ax);
        a.mov(ss, ax);
        // Identity map of 0..4 GiB with 2 MiB pages (fresh RAM is zero, so only the present entries are written).
        a.mov(__dword_ptr[Pml4], Pdpt | 3);
        for (uint g = 0; g < 4; g++) a.mov(__dword_ptr[Pdpt + g * 8], (Pd + g * 0x1000) | 3);
        a.xor(ecx, ecx);
        a.Label(ref fill);
        a.mov(eax, ecx);
        a.shl(eax, 21);
        a.or(eax, 0x83); // P | RW | PS
        a.mov(__dword_ptr[ecx * 8 + Pd], eax);
        a.mov(__dword_ptr[ecx * 8 + Pd + 4], 0);
        a.inc(ecx);
        a.cmp(ecx, 2048);
        a.jb(fill);
        EmitEnterLongMode(a, bspMain);
        using var ms = new MemoryStream();
        var r = a.Assemble(new StreamCodeWriter(ms), LoadAddr, BlockEncoderOptions.ReturnNewInstructionOffsets);
        return (ms.ToArray(), (uint)r.GetLabelRIP(reload));
    }

    /// <summary>Protected mode (paging off) to long mode: PAE, CR3, EFER.LME, CR0.PG, far jump to 64-bit code.</summary>
    private static void EmitEnterLongMode(Assembler a, ulong target)
    {
        a.mov(eax, cr4);
        a.or(eax, 0x20);
        a.mov(cr4, eax);
        a.mov(eax, Pml4);
        a.mov(cr3, eax);
        a.mov(ecx, 0xC000_0080);
        a.rdmsr();
        a.or(eax, 0x100);
        a.wrmsr();
        a.mov(eax, cr0);
        a.or(eax, unchecked((int)0x8000_0000));
        a.mov(cr0, eax);
        a.jmp(Code64Sel, (uint)target);
    }

    // ---------------- AP trampoline ----------------

    /// <summary>Real mode at 0800:0000 (SIPI vector 8): load the shared GDT, set PE, far jump to 32-bit code.</summary>
    private static byte[] AssembleTrampoline16()
    {
        var a = new Assembler(16);
        a.cli();
        a.cld();
        a.mov(ax, cs);
        a.mov(ds, ax);
        a.lgdt(__[Gdtr - Tramp]);
        a.mov(eax, cr0);
        a.or(eax, 1);
        a.mov(cr0, eax);
        a.jmp(Code32Sel, Tramp32);
        return Assemble(a, 0);
    }

    private static byte[] AssembleTrampoline32(ulong apEntry)
    {
        var a = new Assembler(32);
        a.mov(ax, DataSel);
        a.mov(ds, ax);
        a.mov(es, ax);
        a.mov(ss, ax);
        a.mov(fs, ax);
        a.mov(gs, ax);
        EmitEnterLongMode(a, apEntry);
        return Assemble(a, Tramp32);
    }

    private static byte[] Assemble(Assembler a, ulong rip)
    {
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), rip);
        return ms.ToArray();
    }

    // ---------------- 64-bit code ----------------

    /// <summary>Labels of the 64-bit section's shared routines.</summary>
    private sealed class Code64(Assembler a)
    {
        public Label Putc = a.CreateLabel(), PutHex = a.CreateLabel(), SetGate = a.CreateLabel();
        public Label LapicEnable = a.CreateLabel(), WaitIcr = a.CreateLabel(), FaultCommon = a.CreateLabel();
        public Label BodyBsp = a.CreateLabel(), BodyAp = a.CreateLabel(), WaitIpis = a.CreateLabel();
    }

    private static (byte[] Code, ulong BspMain, ulong ApEntry) Assemble64(SmpWork work, int cpus, int iterations)
    {
        var a = new Assembler(64);
        var l = new Code64(a);
        var bspMain = a.CreateLabel();
        var apEntry = a.CreateLabel();
        ulong total = (ulong)cpus * (ulong)iterations;

        // BSP: IDT, index, local APIC, work set-up, start the APs, run, collect, report.
        a.Label(ref bspMain);
        EmitLoadDataSegments(a);
        a.mov(rsp, StackBase + StackSize);
        EmitBuildIdt(a, l);
        a.lidt(__[IdtrAddr]);
        EmitTakeIndex(a);
        a.call(l.LapicEnable);
        EmitPrint(a, l, $"SMP {work} cpus={cpus}\n");
        if (work == SmpWork.CrossModifyingCode) EmitWriteFunc(a, FuncValue(0));
        if (cpus > 1)
        {
            // MP spec B.4: INIT assert and de-assert, then STARTUP twice (a STARTUP to a running CPU is ignored).
            a.mov(rsi, Lapic);
            EmitIcr(a, l, 0, IcrAllButSelf | IcrInitAssert);
            EmitIcr(a, l, 0, IcrAllButSelf | IcrInitDeassert);
            EmitIcr(a, l, 0, IcrAllButSelf | IcrStartup);
            EmitIcr(a, l, 0, IcrAllButSelf | IcrStartup);
        }
        EmitSpinUntilEquals(a, CheckedIn, (ulong)(cpus - 1));
        EmitPrint(a, l, "up\n");
        a.mov(__qword_ptr[Go], 1);
        a.call(l.BodyBsp);
        a.@lock.inc(__qword_ptr[Done]);
        EmitSpinUntilEquals(a, Done, (ulong)cpus);
        EmitReport(a, l, work, cpus, iterations, total);

        // AP: arrives in long mode from the trampoline.
        a.Label(ref apEntry);
        EmitLoadDataSegments(a);
        EmitTakeIndex(a);
        a.mov(rsp, r15);
        a.shl(rsp, 16);
        a.add(rsp, (int)(StackBase + StackSize));
        a.lidt(__[IdtrAddr]);
        a.call(l.LapicEnable);
        a.sti();
        a.@lock.inc(__qword_ptr[CheckedIn]);
        EmitSpinUntilEquals(a, Go, 1);
        a.call(l.BodyAp);
        a.@lock.inc(__qword_ptr[Done]);
        var park = a.CreateLabel();
        a.Label(ref park);
        a.hlt();
        a.jmp(park);

        EmitBodies(a, l, work, cpus, iterations);
        EmitRoutines(a, l, cpus);

        using var ms = new MemoryStream();
        var r = a.Assemble(new StreamCodeWriter(ms), LoadAddr + Main64Off, BlockEncoderOptions.ReturnNewInstructionOffsets);
        return (ms.ToArray(), r.GetLabelRIP(bspMain), r.GetLabelRIP(apEntry));
    }

    private static void EmitLoadDataSegments(Assembler a)
    {
        a.mov(ax, DataSel);
        a.mov(ds, ax);
        a.mov(es, ax);
        a.mov(ss, ax);
    }

    /// <summary>R15 = this CPU's unique index (0 for the BSP, which takes it before starting the APs).</summary>
    private static void EmitTakeIndex(Assembler a)
    {
        a.mov(eax, 1);
        a.@lock.xadd(__qword_ptr[NextIndex], rax);
        a.mov(r15, rax);
    }

    // Emitters never end on a label: Iced allows one label per instruction, and the next emitter may start with one.

    private static void EmitSpinUntilEquals(Assembler a, uint addr, ulong value)
    {
        var spin = a.CreateLabel();
        a.Label(ref spin);
        a.pause();
        a.cmp(__qword_ptr[addr], (int)value);
        a.jne(spin);
    }

    /// <summary>Text to COM1 through Putc.</summary>
    private static void EmitPrint(Assembler a, Code64 l, string text)
    {
        foreach (char ch in text)
        {
            a.mov(al, (byte)ch);
            a.call(l.Putc);
        }
    }

    /// <summary>Writes the ICR (high then low: the low write sends) and waits for delivery status idle. RSI = LAPIC.</summary>
    private static void EmitIcr(Assembler a, Code64 l, byte dest, uint low)
    {
        a.mov(__dword_ptr[rsi + IcrHigh], (uint)dest << 24);
        a.mov(__dword_ptr[rsi + IcrLow], low);
        a.call(l.WaitIcr);
    }

    /// <summary><c>mov eax, imm32; ret</c> at <see cref="Func"/>.</summary>
    private static void EmitWriteFunc(Assembler a, uint value)
    {
        a.mov(__byte_ptr[Func], 0xB8);
        a.mov(__dword_ptr[Func + 1], value);
        a.mov(__byte_ptr[Func + 5], 0xC3);
    }

    private static uint FuncValue(int round) => 0x5A00_0000u + (uint)round;

    private static void EmitBuildIdt(Assembler a, Code64 l)
    {
        a.mov(__word_ptr[IdtrAddr], 0xFFF);
        a.mov(__qword_ptr[IdtrAddr + 2], (int)Idt);
        var after = a.CreateLabel();
        var stubs = new Label[32];
        for (int v = 0; v < 32; v++) stubs[v] = a.CreateLabel();
        var fixedHandler = a.CreateLabel();
        var nmiHandler = a.CreateLabel();
        var spurious = a.CreateLabel();
        for (int v = 0; v < 32; v++)
        {
            a.lea(rax, __[v == 2 ? nmiHandler : stubs[v]]);
            a.mov(ecx, v);
            a.call(l.SetGate);
        }
        a.lea(rax, __[fixedHandler]);
        a.mov(ecx, FixedVector);
        a.call(l.SetGate);
        a.lea(rax, __[spurious]);
        a.mov(ecx, SpuriousVector);
        a.call(l.SetGate);
        a.jmp(after);

        // Exceptions: report vector and RIP, end the run.
        int[] withErrorCode = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
        for (int v = 0; v < 32; v++)
        {
            a.Label(ref stubs[v]);
            a.mov(r8d, v);
            a.mov(r9, __qword_ptr[rsp + (withErrorCode.Contains(v) ? 8 : 0)]);
            a.jmp(l.FaultCommon);
        }
        // A fixed IPI or an NMI: count it for this APIC ID.
        EmitCountingHandler(a, ref fixedHandler, FixedCount, eoi: true);
        EmitCountingHandler(a, ref nmiHandler, NmiCount, eoi: false);
        a.Label(ref spurious);
        a.iretq();
        a.Label(ref after);
    }

    private static void EmitCountingHandler(Assembler a, ref Label at, uint counts, bool eoi)
    {
        a.Label(ref at);
        a.push(rax);
        a.push(rsi);
        a.mov(rsi, Lapic);
        a.mov(eax, __dword_ptr[rsi + ApicId]);
        a.shr(eax, 24);
        a.@lock.inc(__qword_ptr[rax * 8 + counts]);
        if (eoi) a.mov(__dword_ptr[rsi + Eoi], 0);
        a.pop(rsi);
        a.pop(rax);
        a.iretq();
    }

    private static void EmitRoutines(Assembler a, Code64 l, int cpus)
    {
        // Putc: AL to COM1 once THR is empty. Keeps all registers but AX.
        a.Label(ref l.Putc);
        a.push(rdx);
        Lifecycle.TinyGuest.EmitPutc(a);
        a.pop(rdx);
        a.ret();

        // PutHex: RAX as 16 hex digits.
        var digit = a.CreateLabel();
        var dec = a.CreateLabel();
        a.Label(ref l.PutHex);
        a.push(rbx);
        a.push(rcx);
        a.mov(rbx, rax);
        a.mov(ecx, 16);
        a.Label(ref digit);
        a.rol(rbx, 4);
        a.mov(eax, ebx);
        a.and(eax, 15);
        a.cmp(al, 10);
        a.jb(dec);
        a.add(al, (byte)('A' - '0' - 10));
        a.Label(ref dec);
        a.add(al, (byte)'0');
        a.call(l.Putc);
        a.dec(ecx);
        a.jnz(digit);
        a.pop(rcx);
        a.pop(rbx);
        a.ret();

        // SetGate: a 64-bit interrupt gate for vector ECX at handler RAX.
        a.Label(ref l.SetGate);
        a.mov(edi, ecx);
        a.shl(edi, 4);
        a.add(edi, Idt);
        a.mov(__word_ptr[rdi], ax);
        a.mov(__word_ptr[rdi + 2], Code64Sel);
        a.mov(__word_ptr[rdi + 4], 0x8E00);
        a.mov(rdx, rax);
        a.shr(rdx, 16);
        a.mov(__word_ptr[rdi + 6], dx);
        a.shr(rdx, 16);
        a.mov(__dword_ptr[rdi + 8], edx);
        a.mov(__dword_ptr[rdi + 12], 0);
        a.ret();

        // LapicEnable: software-enable the local APIC (spurious vector 0xFF), flat model, logical ID 1 << APIC ID.
        a.Label(ref l.LapicEnable);
        a.mov(rsi, Lapic);
        a.mov(__dword_ptr[rsi + Svr], 0x100 | SpuriousVector);
        a.mov(__dword_ptr[rsi + Dfr], unchecked((int)0xFFFF_FFFF));
        a.mov(ecx, __dword_ptr[rsi + ApicId]);
        a.shr(ecx, 24);
        a.mov(eax, 1);
        a.shl(eax, cl);
        a.shl(eax, 24);
        a.mov(__dword_ptr[rsi + Ldr], eax);
        a.ret();

        // WaitIcr: until the ICR's delivery status (bit 12) says idle. RSI = LAPIC.
        var icrIdle = a.CreateLabel();
        a.Label(ref l.WaitIcr);
        a.test(__dword_ptr[rsi + IcrLow], 0x1000);
        a.jz(icrIdle);
        a.pause();
        a.jmp(l.WaitIcr);
        a.Label(ref icrIdle);
        a.ret();

        // WaitIpis: until every AP's fixed and NMI counts equal what the BSP sent, each within a bounded spin.
        var nextAp = a.CreateLabel();
        var poll = a.CreateLabel();
        var notYet = a.CreateLabel();
        var counted = a.CreateLabel();
        var lost = a.CreateLabel();
        var counted2 = a.CreateLabel();
        a.Label(ref l.WaitIpis);
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rdx, rax);
        a.mov(r10, rdx);
        a.mov(r8d, 1);
        a.Label(ref nextAp);
        a.cmp(r8d, cpus);
        a.jae(counted);
        a.mov(ecx, IpiWaitLoops);
        a.Label(ref poll);
        a.mov(rax, __qword_ptr[r8 * 8 + FixedCount]);
        a.cmp(rax, __qword_ptr[r8 * 8 + ExpFixed]);
        a.jne(notYet);
        a.mov(rax, __qword_ptr[r8 * 8 + NmiCount]);
        a.cmp(rax, __qword_ptr[r8 * 8 + ExpNmi]);
        a.jne(notYet);
        a.inc(r8d);
        a.jmp(nextAp);
        a.Label(ref notYet);
        a.pause();
        a.dec(ecx);
        a.jnz(poll);
        a.jmp(lost);
        a.Label(ref counted);
        // For the report: the longest wait in TSC ticks (a lost wake-up would show as the vCPU's idle poll interval)
        // and how many took 20 ms or more of TSC time (40 M ticks at the software CPU's 2 GHz).
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rdx, rax);
        a.sub(rdx, r10);
        a.mov(rax, 40_000_000);
        a.cmp(rdx, rax);
        a.setae(al);
        a.movzx(eax, al);
        a.add(__qword_ptr[SlowWaits], rax);
        a.cmp(rdx, __qword_ptr[MaxWait]);
        a.jbe(counted2);
        a.mov(__qword_ptr[MaxWait], rdx);
        a.Label(ref counted2);
        a.ret();
        a.Label(ref lost);
        EmitPrint(a, l, "\nLOST apic=");
        a.mov(rax, r8);
        a.call(l.PutHex);
        EmitPrint(a, l, " fixed=");
        a.mov(rax, __qword_ptr[r8 * 8 + FixedCount]);
        a.call(l.PutHex);
        EmitPrint(a, l, "/");
        a.mov(rax, __qword_ptr[r8 * 8 + ExpFixed]);
        a.call(l.PutHex);
        EmitPrint(a, l, " nmi=");
        a.mov(rax, __qword_ptr[r8 * 8 + NmiCount]);
        a.call(l.PutHex);
        EmitPrint(a, l, "/");
        a.mov(rax, __qword_ptr[r8 * 8 + ExpNmi]);
        a.call(l.PutHex);
        EmitPrint(a, l, "\nFAIL\n");
        EmitExit(a, Fail);

        // FaultCommon: R8 = vector, R9 = RIP.
        a.Label(ref l.FaultCommon);
        EmitPrint(a, l, "\nFAULT vector=");
        a.mov(rax, r8);
        a.call(l.PutHex);
        EmitPrint(a, l, " rip=");
        a.mov(rax, r9);
        a.call(l.PutHex);
        EmitPrint(a, l, " cpu=");
        a.mov(rax, r15);
        a.call(l.PutHex);
        EmitPrint(a, l, "\n");
        EmitExit(a, Fault);
    }
}
