using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// String instructions on the software CPU in situations the host oracle cannot cover: page boundaries, faults in
/// the middle of a REP, interrupts during a long REP, segment overrides and 16-bit addressing, I/O strings.
/// </summary>
public class IntFlowStringTests
{
    private static byte[] Pattern(int len, int seed)
    {
        var b = new byte[len];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static void RepMovs(Iced.Intel.Assembler a, int sz)
    {
        switch (sz)
        {
            case 1: a.rep.movsb(); break;
            case 2: a.rep.movsw(); break;
            case 4: a.rep.movsd(); break;
            default: a.rep.movsq(); break;
        }
    }

    [Theory]
    [InlineData(1, 0xFF3, 0x5FF9, 3 * 4096 + 77)]
    [InlineData(8, 0x1FFC, 0x8FFA, 1000)]
    [InlineData(4, 0x0000, 0x3000, 4096)]
    [InlineData(2, 0x0FFF, 0x2001, 5000)]
    public void RepMovsForwardAcrossPages64(int sz, int srcOff, int dstOff, int count)
    {
        using var vm = new TestVm();
        ulong src = TestVm.DataBase + (ulong)srcOff, dst = TestVm.DataBase + 0x10_0000 + (ulong)dstOff;
        int len = sz * count;
        var data = Pattern(len, sz);
        vm.Vm.Memory.Write(src, data);
        vm.Start64(a =>
        {
            a.mov(rsi, src);
            a.mov(rdi, dst);
            a.mov(rcx, (ulong)count);
            RepMovs(a, sz);
            a.hlt();
        });
        vm.RunToHlt();
        var got = new byte[len + 2];
        vm.Vm.Memory.Read(dst - 1, got);
        Assert.Equal(0, got[0]);
        Assert.Equal(0, got[^1]);
        Assert.True(data.AsSpan().SequenceEqual(got.AsSpan(1, len)), "copied bytes differ");
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
        Assert.Equal(src + (ulong)len, vm.Cpu.Gpr[6]);
        Assert.Equal(dst + (ulong)len, vm.Cpu.Gpr[7]);
    }

    [Fact]
    public void RepMovsdBackwardAcrossPages64()
    {
        using var vm = new TestVm();
        const int count = 3000;
        ulong src = TestVm.DataBase + 0x1002, dst = TestVm.DataBase + 0x20_0000 + 0x0FFE;
        var data = Pattern(count * 4, 3);
        vm.Vm.Memory.Write(src, data);
        vm.Start64(a =>
        {
            a.mov(rsi, src + (count - 1) * 4UL);
            a.mov(rdi, dst + (count - 1) * 4UL);
            a.mov(ecx, count);
            a.std();
            a.rep.movsd();
            a.cld();
            a.hlt();
        });
        vm.RunToHlt();
        var got = new byte[count * 4];
        vm.Vm.Memory.Read(dst, got);
        Assert.Equal(data, got);
        Assert.Equal(src - 4, vm.Cpu.Gpr[6]);
        Assert.Equal(dst - 4, vm.Cpu.Gpr[7]);
    }

    /// <summary>
    /// REP MOVS with DF=1 where source and destination overlap (or not) at distances below, within and above one
    /// element, across pages and over more than one execution's budget: the result must be what copying one element
    /// at a time from the top down gives (a later element reads what an earlier one wrote when the destination is
    /// below the source).
    /// </summary>
    [Theory]
    [InlineData(8, 0x2010, 0x2000, 1500)]   // destination 16 bytes below: later elements read earlier stores
    [InlineData(1, 0x0F03, 0x0F00, 9000)]   // 3 bytes below, byte elements, across pages
    [InlineData(4, 0x3002, 0x3000, 5000)]   // 2 bytes below: closer than one element
    [InlineData(8, 0x0100, 0x0118, 10000)]  // 24 bytes above (memmove's case), more than one budget
    [InlineData(2, 0x1FFF, 0x2000, 7000)]   // 1 byte above, odd alignment
    [InlineData(8, 0x0FFC, 0x9FFA, 3000)]   // apart, elements straddling pages
    public void RepMovsBackwardMatchesElementOrder64(int sz, int srcOff, int dstOff, int count)
    {
        using var vm = new TestVm();
        int len = sz * count;
        int region = Math.Max(srcOff, dstOff) + len + 64;
        var model = Pattern(region, 100 + sz);
        ulong b = TestVm.DataBase;
        vm.Vm.Memory.Write(b, model);
        ulong srcTop = b + (ulong)srcOff + (ulong)(len - sz), dstTop = b + (ulong)dstOff + (ulong)(len - sz);
        vm.Start64(a =>
        {
            a.mov(rsi, srcTop);
            a.mov(rdi, dstTop);
            a.mov(rcx, (ulong)count);
            a.std();
            RepMovs(a, sz);
            a.cld();
            a.hlt();
        });
        vm.RunToHlt();
        // The SDM's order: element k reads [RSI - k*sz] whole, then writes [RDI - k*sz].
        var elem = new byte[sz];
        for (int k = 0; k < count; k++)
        {
            int s = srcOff + len - sz - k * sz, d = dstOff + len - sz - k * sz;
            Array.Copy(model, s, elem, 0, sz);
            Array.Copy(elem, 0, model, d, sz);
        }
        var got = new byte[region];
        vm.Vm.Memory.Read(b, got);
        int diff = got.AsSpan().CommonPrefixLength(model);
        Assert.True(diff == region, $"first differing byte at offset {diff:x} of the region");
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
        Assert.Equal(b + (ulong)srcOff - (ulong)sz, vm.Cpu.Gpr[6]);
        Assert.Equal(b + (ulong)dstOff - (ulong)sz, vm.Cpu.Gpr[7]);
    }

    /// <summary>
    /// A backward REP MOVS that reaches a not-present page (as destination or source) faults at the first element in
    /// it, the page's highest: CR2 is that element's address and RCX/RSI/RDI the progress up to it; after the
    /// handler maps the page the instruction finishes the copy.
    /// </summary>
    [Theory]
    [InlineData(1, 0x20_6000UL, 0x20_2800UL, 0x3000, 0x20_3000UL, true)]
    [InlineData(8, 0x20_6008UL, 0x20_2000UL, 0x600, 0x20_7000UL, false)]
    public void RepMovsBackwardPageFaultMidwayResumes64(int sz, ulong src, ulong dst, int count, ulong missing, bool missingIsDst)
    {
        using var vm = new TestVm();
        int len = sz * count;
        var data = Pattern(len, 11 + sz);
        vm.Vm.Memory.Write(src, data);
        vm.Start64(a =>
        {
            a.mov(rsi, src + (ulong)(len - sz));
            a.mov(rdi, dst + (ulong)(len - sz));
            a.mov(ecx, count);
            a.std();
            RepMovs(a, sz);
            a.cld();
            a.cli();
            a.hlt();
        });
        SetupDemandPage(vm, missing);
        vm.RunToHlt();
        var m = vm.Vm.Memory;
        ulong faultAt = missing + 0x1000 - (ulong)sz;                  // the missing page's highest element
        ulong done = ((missingIsDst ? dst : src) + (ulong)(len - sz) - faultAt) / (ulong)sz;
        Assert.Equal(IntFlowSupport.NoVector, IntFlowSupport.Vector(vm));
        Assert.Equal(1u, m.ReadU32(Slots + 32));
        Assert.Equal(missingIsDst ? 2UL : 0UL, m.ReadU64(Slots));      // write or read, not present, CPL 0
        Assert.Equal(faultAt, vm.Cpu.Cr2);
        Assert.Equal((ulong)count - done, m.ReadU64(Slots + 8));       // RCX: elements still to go
        Assert.Equal(src + (ulong)(len - sz) - done * (ulong)sz, m.ReadU64(Slots + 16));
        Assert.Equal(dst + (ulong)(len - sz) - done * (ulong)sz, m.ReadU64(Slots + 24));
        var got = new byte[len];
        m.Read(dst, got);
        Assert.Equal(data, got);
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
        Assert.Equal(dst - (ulong)sz, vm.Cpu.Gpr[7]);
    }

    [Fact]
    public void RepStosLargerThanOneExecutionBudget64()
    {
        using var vm = new TestVm();
        ulong dst = 0x40_0003;
        const int qwords = 200_000; // 1.6 MB: many restarts of the same instruction
        vm.Start64(a =>
        {
            a.mov(rdi, dst);
            a.mov(rcx, (ulong)qwords);
            a.mov(rax, 0x0102_0304_0506_0708UL);
            a.rep.stosq();
            a.mov(rdi, dst + qwords * 8UL + 1);
            a.mov(ecx, 7);
            a.mov(al, 0xEE);
            a.rep.stosb();
            a.hlt();
        });
        vm.RunToHlt();
        var got = new byte[qwords * 8 + 9];
        vm.Vm.Memory.Read(dst, got);
        for (int k = 0; k < qwords; k++)
            Assert.Equal(0x0102_0304_0506_0708UL, BitConverter.ToUInt64(got, k * 8));
        Assert.Equal(0, got[qwords * 8]);
        for (int k = 1; k <= 7; k++) Assert.Equal(0xEE, got[qwords * 8 + k]);
        Assert.Equal(0, got[qwords * 8 + 8]);
        Assert.Equal(dst + qwords * 8UL + 8, vm.Cpu.Gpr[7]);
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
    }

    [Fact]
    public void RepWithZeroCountDoesNothing64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            a.xor(ecx, ecx);
            a.mov(rsi, 0x8000_0000_0000_0000UL); // non-canonical: any access would #GP
            a.mov(rdi, rsi);
            a.rep.movsb();
            a.repe.cmpsq();
            a.mov(r8, rsi);
            a.movsb();                            // no REP: faults
            a.hlt();
        });
        IntFlowSupport.InstallIdt(vm, longMode: true);
        vm.RunToHlt();
        Assert.Equal(0x8000_0000_0000_0000UL, vm.Cpu.Gpr[8]);
        Assert.Equal(13u, IntFlowSupport.Vector(vm));
    }

    private const ulong PtAddr = 0x5_0000;
    private const ulong Slots = 0x9_2100;
    private const ulong PfHandler = 0x9_4000;

    /// <summary>
    /// Maps 2..4 MiB with 4 KiB pages (4-level tables) with one page not present; the #PF handler records the
    /// progress registers, maps the page and returns to the faulting instruction without IRET.
    /// </summary>
    private static void SetupDemandPage(TestVm vm, ulong missing)
    {
        var m = vm.Vm.Memory;
        for (ulong k = 0; k < 512; k++)
        {
            ulong pa = 0x20_0000 + k * 4096;
            m.WriteU64(PtAddr + k * 8, pa == missing ? 0 : pa | 3);
        }
        m.WriteU64(BootState.PdAddr + 8, PtAddr | 3);
        IntFlowSupport.InstallIdt(vm, longMode: true);
        vm.Load(PfHandler, 64, a =>
        {
            a.pop(__qword_ptr[Slots]);                    // error code
            a.mov(__qword_ptr[Slots + 8], rcx);
            a.mov(__qword_ptr[Slots + 16], rsi);
            a.mov(__qword_ptr[Slots + 24], rdi);
            a.inc(__dword_ptr[Slots + 32]);
            a.mov(__qword_ptr[Slots + 48], rax);
            a.mov(rax, missing | 3);
            a.mov(__qword_ptr[PtAddr + ((missing - 0x20_0000) >> 12) * 8], rax);
            a.mov(rax, __qword_ptr[Slots + 48]);
            a.pop(__qword_ptr[Slots + 40]);               // RIP of the faulting instruction
            a.add(rsp, 8);                                // CS
            a.popfq();
            a.pop(rsp);
            a.jmp(__qword_ptr[Slots + 40]);
        });
        IntFlowSupport.SetGate(vm, 14, PfHandler, longMode: true);
    }

    [Fact]
    public void RepMovsbPageFaultMidwayResumes64()
    {
        using var vm = new TestVm();
        const ulong missing = 0x20_6000, src = 0x20_1000, dst = 0x20_4800;
        const int len = 0x3000;
        var data = Pattern(len, 9);
        vm.Vm.Memory.Write(src, data);
        vm.Start64(a =>
        {
            a.mov(rsi, src);
            a.mov(rdi, dst);
            a.mov(ecx, len);
            a.rep.movsb();
            a.cli();
            a.hlt();
        });
        SetupDemandPage(vm, missing);
        vm.RunToHlt();
        var m = vm.Vm.Memory;
        Assert.Equal(IntFlowSupport.NoVector, IntFlowSupport.Vector(vm));
        Assert.Equal(1u, m.ReadU32(Slots + 32));
        Assert.Equal(2UL, m.ReadU64(Slots));                         // write to a not-present page, CPL 0
        Assert.Equal(missing, vm.Cpu.Cr2);
        Assert.Equal((ulong)len - (missing - dst), m.ReadU64(Slots + 8)); // RCX: bytes still to go
        Assert.Equal(src + (missing - dst), m.ReadU64(Slots + 16));
        Assert.Equal(missing, m.ReadU64(Slots + 24));
        var got = new byte[len];
        m.Read(dst, got);
        Assert.Equal(data, got);
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
        Assert.Equal(dst + len, vm.Cpu.Gpr[7]);
    }

    [Fact]
    public void RepStosqPageFaultMidwayResumes64()
    {
        using var vm = new TestVm();
        const ulong missing = 0x20_3000, dst = 0x20_2008;
        const int count = 1024;
        vm.Start64(a =>
        {
            a.mov(rdi, dst);
            a.mov(ecx, count);
            a.mov(rax, 0x5A5A_5A5A_1234_5678UL);
            a.rep.stosq();
            a.cli();
            a.hlt();
        });
        SetupDemandPage(vm, missing);
        vm.RunToHlt();
        var m = vm.Vm.Memory;
        Assert.Equal(1u, m.ReadU32(Slots + 32));
        Assert.Equal(count - (missing - dst) / 8, m.ReadU64(Slots + 8));
        Assert.Equal(missing, m.ReadU64(Slots + 24));
        for (int k = 0; k < count; k++) Assert.Equal(0x5A5A_5A5A_1234_5678UL, m.ReadU64(dst + (ulong)k * 8));
    }

    [Fact]
    public void InterruptArrivesDuringLongRep64()
    {
        using var vm = new TestVm();
        const ulong dst = 0x40_0000, irqHandler = 0x9_5000, slot = 0x9_2200;
        const int len = 1 << 20;
        vm.Start64(a =>
        {
            a.mov(rdi, dst);
            a.mov(ecx, len);
            a.mov(al, 0xAB);
            a.sti();
            a.rep.stosb();
            a.cli();
            a.hlt();
        });
        IntFlowSupport.InstallIdt(vm, longMode: true);
        vm.Load(irqHandler, 64, a =>
        {
            a.mov(__qword_ptr[slot], rcx);
            a.mov(__qword_ptr[slot + 8], rdi);
            a.pop(rdx);
            a.add(rsp, 8);
            a.popfq();
            a.pop(rsp);
            a.jmp(rdx);
        });
        IntFlowSupport.SetGate(vm, 0x40, irqHandler, longMode: true);
        vm.Cpu.Idtr = new TableRegister { Base = IntFlowSupport.IdtBase, Limit = 0x41 * 16 - 1 };
        vm.Cpu.InjectInterrupt(0x40);
        vm.RunToHlt();
        var m = vm.Vm.Memory;
        ulong rcxAtIrq = m.ReadU64(slot);
        Assert.InRange(rcxAtIrq, 1UL, len - 1UL);
        Assert.Equal(dst + (len - rcxAtIrq), m.ReadU64(slot + 8));
        var got = new byte[len];
        m.Read(dst, got);
        Assert.All(got, b => Assert.Equal(0xAB, b));
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
    }

    [Fact]
    public void SegmentOverrideAndSixteenBitAddressing32()
    {
        using var vm = new TestVm();
        var m = vm.Vm.Memory;
        m.Write(0x21_0000, new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
        m.Write(0xFFFE, new byte[] { 0xA1, 0xA2 });
        m.Write(0x0000, new byte[] { 0xA3, 0xA4 });
        vm.Start32(a =>
        {
            a.mov(esi, 0x20_0000);
            a.mov(edi, 0x30_0000);
            a.mov(ecx, 8);
            a.db(0xF3, 0x64, 0xA4);           // rep movsb fs:[esi] -> es:[edi]
            a.mov(ebx, esi);
            a.mov(esi, 0x1234_FFFE);
            a.mov(edi, 0x5678_8000);
            a.mov(ecx, 0xABCD_0004);
            a.db(0x67, 0xF3, 0xA4);           // rep movsb with SI/DI/CX: SI wraps at 64K
            a.hlt();
        });
        var s = vm.Cpu.GetState();
        s.Segments[(int)Seg.FS].Base = 0x1_0000;
        vm.Cpu.SetState(s);
        vm.RunToHlt();
        var got = new byte[8];
        m.Read(0x30_0000, got);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, got);
        Assert.Equal(0x20_0008UL, vm.Cpu.Gpr[3]);
        var got2 = new byte[4];
        m.Read(0x8000, got2);
        Assert.Equal(new byte[] { 0xA1, 0xA2, 0xA3, 0xA4 }, got2);
        Assert.Equal(0x1234_0002UL, vm.Cpu.Gpr[6]);
        Assert.Equal(0x5678_8004UL, vm.Cpu.Gpr[7]);
        Assert.Equal(0xABCD_0000UL, vm.Cpu.Gpr[1]);
    }

    [Fact]
    public void AddressSize32In64BitModeUsesEsiEdiEcx()
    {
        using var vm = new TestVm();
        var m = vm.Vm.Memory;
        var data = Pattern(32, 5);
        m.Write(0x20_0000, data);
        vm.Start64(a =>
        {
            a.mov(rsi, 0xFFFF_FFFF_0020_0000UL);
            a.mov(rdi, 0x1234_5678_0030_0000UL);
            a.mov(rcx, 0x1_0000_0004UL);
            a.db(0x67, 0xF3, 0x48, 0xA5);     // rep movsq with ESI/EDI/ECX
            a.mov(rdi, 0xAB_0030_1000UL);
            a.mov(eax, 0x5A);
            a.db(0x67, 0xAA);                 // stosb to EDI
            a.hlt();
        });
        vm.RunToHlt();
        var got = new byte[32];
        m.Read(0x30_0000, got);
        Assert.Equal(data, got);
        Assert.Equal(0x20_0020UL, vm.Cpu.Gpr[6]);  // 32-bit index writes zero-extend
        Assert.Equal(0UL, vm.Cpu.Gpr[1]);
        Assert.Equal((byte)0x5A, m.ReadU8(0x30_1000));
        Assert.Equal(0x30_1001UL, vm.Cpu.Gpr[7]);
    }

    [Fact]
    public void RepMovsStopsAtSegmentLimitWithProgress32()
    {
        using var vm = new TestVm();
        var m = vm.Vm.Memory;
        m.Write(0x20_0000, Pattern(16, 7));
        vm.Start32(a =>
        {
            a.mov(esi, 0x20_0000);
            a.mov(edi, 0x30_0000);
            a.mov(ecx, 16);
            a.rep.movsb();
            a.hlt();
        });
        var s = vm.Cpu.GetState();
        s.Segments[(int)Seg.DS].Limit = 0x20_0007;   // byte-granular limit: 8 bytes readable
        vm.Cpu.SetState(s);
        IntFlowSupport.InstallIdt(vm, longMode: false);
        vm.RunToHlt();
        Assert.Equal(13u, IntFlowSupport.Vector(vm));
        Assert.Equal(8UL, vm.Cpu.Gpr[1]);
        Assert.Equal(0x20_0008UL, vm.Cpu.Gpr[6]);
        Assert.Equal(0x30_0008UL, vm.Cpu.Gpr[7]);
        var got = new byte[9];
        m.Read(0x30_0000, got);
        Assert.Equal(Pattern(16, 7)[..8], got[..8]);
        Assert.Equal(0, got[8]);
    }

    [Fact]
    public void RealModeRepMovswUsesDsAndEs()
    {
        using var vm = new TestVm();
        var m = vm.Vm.Memory;
        m.Write(0x1_0100, new byte[] { 9, 8, 7, 6, 5, 4 });
        vm.Start16(a =>
        {
            a.mov(si, 0x100);
            a.mov(di, 0x200);
            a.mov(cx, 3);
            a.rep.movsw();
            a.hlt();
        });
        var s = vm.Cpu.GetState();
        s.Segments[(int)Seg.DS] = SegmentState.RealMode(0x1000);
        s.Segments[(int)Seg.ES] = SegmentState.RealMode(0x2000);
        vm.Cpu.SetState(s);
        vm.RunToHlt();
        var got = new byte[6];
        m.Read(0x2_0200, got);
        Assert.Equal(new byte[] { 9, 8, 7, 6, 5, 4 }, got);
        Assert.Equal(0x106UL, vm.Cpu.Gpr[6] & 0xFFFF);
    }

    [Fact]
    public void RepneScasbAndRepeCmpsb32()
    {
        using var vm = new TestVm();
        var m = vm.Vm.Memory;
        m.Write(0x20_0000, "hello, world\0"u8.ToArray());
        m.Write(0x20_1000, "hello, there"u8.ToArray());
        vm.Start32(a =>
        {
            a.mov(edi, 0x20_0000);
            a.xor(eax, eax);
            a.mov(ecx, -1);
            a.repne.scasb();                // strlen idiom
            a.not(ecx);
            a.dec(ecx);
            a.mov(ebx, ecx);                // 12
            a.mov(esi, 0x20_0000);
            a.mov(edi, 0x20_1000);
            a.mov(ecx, 12);
            a.repe.cmpsb();                 // stops after the 'w' / 't' mismatch
            a.mov(edx, ecx);
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(12UL, g[3]);
        Assert.Equal(4UL, g[2]);            // 12 - 8 compared
        Assert.Equal(0x20_0008UL, g[6]);
        Assert.Equal(0x20_1008UL, g[7]);
    }

    private sealed class CountingPort : IPortDevice
    {
        public uint Next = 0x1000;
        public readonly List<(int Size, uint Value)> Writes = new();
        public uint Read(ushort offset, int size) => Next++;
        public void Write(ushort offset, int size, uint value) => Writes.Add((size, value));
    }

    [Fact]
    public void RepOutswAndRepInsd32()
    {
        using var vm = new TestVm();
        var port = new CountingPort();
        vm.Vm.Io.Register(0x300, 1, port);
        vm.Vm.Memory.Write(0x20_0000, new byte[] { 1, 0, 2, 0, 3, 0, 4, 0, 5, 0 });
        vm.Start32(a =>
        {
            a.mov(dx, 0x300);
            a.mov(esi, 0x20_0000);
            a.mov(ecx, 5);
            a.rep.outsw();
            a.mov(edi, 0x20_1000);
            a.mov(ecx, 3);
            a.rep.insd();
            a.insb();
            a.hlt();
        });
        vm.RunToHlt();
        Assert.Equal(new[] { (2, 1u), (2, 2u), (2, 3u), (2, 4u), (2, 5u) }, port.Writes);
        var m = vm.Vm.Memory;
        Assert.Equal(0x1000u, m.ReadU32(0x20_1000));
        Assert.Equal(0x1002u, m.ReadU32(0x20_1008));
        Assert.Equal((byte)0x03, m.ReadU8(0x20_100C));
        Assert.Equal(0x20_100DUL, vm.Cpu.Gpr[7]);
        Assert.Equal(0x20_000AUL, vm.Cpu.Gpr[6]);
    }

    [Fact]
    public void RepMovsbOverFollowingCodeTakesEffect64()
    {
        using var vm = new TestVm();
        vm.Start64(a =>
        {
            Iced.Intel.Label patch = a.CreateLabel(), target = a.CreateLabel();
            a.lea(rsi, __[patch]);
            a.lea(rdi, __[target]);
            a.mov(ecx, 5);
            a.rep.movsb();
            a.Label(ref target);
            a.mov(eax, 0x1111_1111);
            a.hlt();
            a.Label(ref patch);
            a.db(0xB8, 0x42, 0, 0, 0);
        });
        vm.RunToHlt();
        Assert.Equal(0x42UL, vm.Cpu.Gpr[0]);
    }
}
