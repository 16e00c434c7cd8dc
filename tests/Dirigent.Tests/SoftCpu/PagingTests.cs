using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Page faults (error code, CR2, faulting RIP) under 4-level, 32-bit and PAE paging, with CR0.WP and NX.</summary>
public class PagingTests
{
    private const ulong PtBase = 0x30_0000;
    private const ulong Nx = 1UL << 63, Rsvd51 = 1UL << 51;

    [Fact]
    public void LongModePageFaultErrorCodesAndCr2()
    {
        using var vm = new TestVm();
        var a = new Assembler(64);
        var L = Enumerable.Range(0, 10).Select(_ => a.CreateLabel()).ToArray();
        // 0 hPF, 1 hInt81, 2 user, 3..12 resume points
        a.mov(rbx, Results);
        a.lea(r15, __[L[3]]);
        a.mov(rax, __qword_ptr[0x40_0000]);               // not present, read
        a.Label(ref L[3]);
        a.lea(r15, __[L[4]]);
        a.mov(__dword_ptr[0x40_1000], 1);                  // read-only, supervisor write with WP=1
        a.Label(ref L[4]);
        a.mov(rax, cr0);
        a.and(eax, ~0x1_0000);
        a.mov(cr0, rax);
        a.mov(__dword_ptr[0x40_1008], 0x5A);               // WP=0: allowed
        a.or(eax, 0x1_0000);
        a.mov(cr0, rax);
        a.lea(r15, __[L[5]]);
        a.jmp(0x40_2000UL);                                // NX fetch
        a.Label(ref L[5]);
        a.lea(r15, __[L[6]]);
        a.mov(rax, __qword_ptr[0x40_3000]);                // reserved bit 51 set
        a.Label(ref L[6]);
        a.lea(r15, __[L[7]]);
        a.mov(__byte_ptr[0x40_0010], 1);                   // not present, write
        a.Label(ref L[7]);
        // To ring 3.
        IretqToRing3(a, L[2]);
        a.Label(ref L[2]);
        a.lea(r15, __[L[8]]);
        a.mov(rax, __qword_ptr[0x40_4000]);                // user read of a supervisor page
        a.Label(ref L[8]);
        a.lea(r15, __[L[9]]);
        a.mov(__dword_ptr[0x40_1000], 2);                  // user write of a read-only supervisor page
        a.Label(ref L[9]);
        a.mov(__dword_ptr[0x40_5000], 3);                  // user page: fine
        a.@int(0x81);
        RecordingHandler64(a, ref L[0], 14, true);
        a.Label(ref L[1]);
        a.hlt();
        var l = Emit(vm, a, TestVm.CodeBase, L);
        Setup64(vm, TestVm.CodeBase, userPages: true);
        Gate64(vm, 14, l[0]);
        Gate64(vm, 0x81, l[1], dpl: 3);
        W64(vm, Tss + 4, 0x4_0000);
        // 0x400000..0x5FFFFF through a 4 KiB page table.
        for (ulong k = 0; k < 512; k++) W64(vm, PtBase + k * 8, 0);
        W64(vm, PtBase + 1 * 8, 0x40_1001);
        W64(vm, PtBase + 2 * 8, 0x40_2003 | Nx);
        W64(vm, PtBase + 3 * 8, 0x40_3003 | Rsvd51);
        W64(vm, PtBase + 4 * 8, 0x40_4003);
        W64(vm, PtBase + 5 * 8, 0x40_5007);
        W64(vm, BootState.PdAddr + 2 * 8, PtBase | 7);
        vm.RunToHlt();
        var expect = new (ulong ec, ulong cr2)[]
        {
            (0, 0x40_0000), (3, 0x40_1000), (0x11, 0x40_2000), (9, 0x40_3000), (2, 0x40_0010), (5, 0x40_4000), (7, 0x40_1000),
        };
        for (int n = 0; n < expect.Length; n++)
        {
            var r = ReadRec(vm, n);
            Assert.Equal((14UL, expect[n].ec, expect[n].cr2), (r.Tag, r.Error, r.Cr2));
        }
        Assert.Equal(0x40_2000UL, ReadRec(vm, 2).Rip);
        Assert.Equal((ulong)U64, ReadRec(vm, 5).Cs);
        Assert.Equal(0UL, R64(vm, Results + 7 * 40));
        Assert.Equal(0x5AUL, R64(vm, 0x40_1008));
        Assert.Equal(3UL, R64(vm, 0x40_5000));
        // Accessed and dirty bits were set by the successful accesses.
        Assert.Equal(0x60UL, R64(vm, PtBase + 5 * 8) & 0x60);
    }

    /// <summary>
    /// SDM 4.10.4.1: with CR4.PGE a MOV to CR3 drops the TLB's non-global translations and keeps the global ones, until
    /// INVLPG of the page or a change of CR4.PGE; without PGE the G bit means nothing and CR3 drops everything. A guest
    /// sees this when it changes a PTE without invalidating it: the old frame stays in use. With
    /// <paramref name="manyFills"/> 2100 other pages are written first, more than the TLB's log of fills holds, so the
    /// first CR3 write sweeps the whole TLB instead.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Cr3WriteKeepsGlobalTranslationsUntilInvlpgOrAPgeChange(bool manyFills)
    {
        const ulong G = 0x100;
        using var vm = new TestVm(ramSize: 32 << 20);
        var a = new Assembler(64);
        void Remap(ulong slot, ulong pte) { a.mov(rax, pte); a.mov(__qword_ptr[PtBase + slot * 8], rax); }
        void Record(ulong linear, int n) { a.mov(rax, __qword_ptr[linear]); a.mov(__qword_ptr[Results + (ulong)n * 8], rax); }
        void ReloadCr3() { a.mov(rax, cr3); a.mov(cr3, rax); }
        a.mov(rax, cr4);
        a.or(eax, 0x80);                                   // CR4.PGE
        a.mov(cr4, rax);
        Record(0x40_1000, 0);                              // global page: frame 0x50_0000
        Record(0x40_2000, 1);                              // not global: frame 0x50_1000
        Remap(1, 0x50_2003 | G);
        Remap(2, 0x50_3003);
        if (manyFills)
        {
            // Writes: their entries go to the write table, so the read entries of 0x40_1000 and 0x40_2000 stay.
            var fill = a.CreateLabel();
            a.mov(ecx, 2100);
            a.mov(esi, 0x100_0000);
            a.Label(ref fill);
            a.mov(__dword_ptr[rsi], ecx);
            a.add(esi, 0x1000);
            a.dec(ecx);
            a.jnz(fill);
        }
        ReloadCr3();
        Record(0x40_1000, 2);                              // still the old frame: the global entry was kept
        Record(0x40_2000, 3);                              // the new frame
        a.invlpg(__[0x40_1000]);
        Record(0x40_1000, 4);                              // the new frame
        Remap(1, 0x50_0003 | G);
        ReloadCr3();
        Record(0x40_1000, 5);                              // kept again (filled as global by the read above)
        a.mov(rax, cr4);
        a.and(eax, ~0x80);                                 // clearing PGE flushes everything
        a.mov(cr4, rax);
        Record(0x40_1000, 6);
        Remap(1, 0x50_2003 | G);
        ReloadCr3();                                       // without PGE, G entries go too
        Record(0x40_1000, 7);
        a.hlt();
        Emit(vm, a, TestVm.CodeBase, []);
        Setup64(vm, TestVm.CodeBase);
        for (ulong k = 0; k < 512; k++) W64(vm, PtBase + k * 8, 0);
        W64(vm, PtBase + 1 * 8, 0x50_0003 | G);
        W64(vm, PtBase + 2 * 8, 0x50_1003);
        W64(vm, BootState.PdAddr + 2 * 8, PtBase | 3);
        W64(vm, 0x50_0000, 0xA0);
        W64(vm, 0x50_1000, 0xB0);
        W64(vm, 0x50_2000, 0xA1);
        W64(vm, 0x50_3000, 0xB1);
        vm.RunToHlt();
        var got = Enumerable.Range(0, 8).Select(n => R64(vm, Results + (ulong)n * 8)).ToArray();
        Assert.Equal(new ulong[] { 0xA0, 0xB0, 0xA0, 0xB1, 0xA1, 0xA1, 0xA0, 0xA1 }, got);
    }

    /// <summary>Logs (14, error code, CR2, EIP) as dwords at [EBX], resumes at EDI.</summary>
    private static void PfHandler32(Assembler a, ref Label l)
    {
        a.Label(ref l);
        a.mov(__dword_ptr[ebx], 14);
        a.mov(eax, __dword_ptr[esp]);
        a.mov(__dword_ptr[ebx + 4], eax);
        a.mov(eax, cr2);
        a.mov(__dword_ptr[ebx + 8], eax);
        a.mov(eax, __dword_ptr[esp + 4]);
        a.mov(__dword_ptr[ebx + 12], eax);
        a.add(ebx, 16);
        a.add(esp, 4);
        a.mov(__dword_ptr[esp], edi);
        a.iretd();
    }

    private static uint[] Rec32(TestVm vm, int n) =>
        Enumerable.Range(0, 4).Select(k => vm.Vm.Memory.ReadU32(Results + (ulong)(n * 16 + k * 4))).ToArray();

    [Fact]
    public void LegacyTwoLevelPagingFaults()
    {
        using var vm = new TestVm();
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 4).Select(_ => a.CreateLabel()).ToArray();
            a.mov(ebx, (uint)Results);
            a.mov(eax, (uint)PtBase);
            a.mov(cr3, eax);
            a.mov(eax, cr0);
            a.or(eax, 0x8001_0000); // PG | WP
            a.mov(cr0, eax);
            a.mov(edi, at(1));
            a.mov(eax, __dword_ptr[0x40_0000]);
            a.Label(ref L[1]);
            a.mov(edi, at(2));
            a.mov(__dword_ptr[0x40_1004], 7);
            a.Label(ref L[2]);
            a.mov(eax, cr0);
            a.and(eax, ~0x1_0000);
            a.mov(cr0, eax);
            a.mov(__dword_ptr[0x40_1008], 9);
            a.mov(edi, at(3));
            a.mov(__byte_ptr[0x7F_F000], 1); // PDE 1 covers 4-8 MiB; its last PTE is not present either
            a.Label(ref L[3]);
            a.hlt();
            PfHandler32(a, ref L[0]);
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        Gate32(vm, 14, l[0], P32Code);
        var m = vm.Vm.Memory;
        void W32(ulong addr, uint v) => m.Write(addr, BitConverter.GetBytes(v));
        // PD: 0-4 MiB through PT0 (identity), 4-8 MiB through PT1 (only page 0x401000, read-only).
        for (ulong k = 0; k < 1024; k++)
        {
            W32(PtBase + k * 4, 0);
            W32(PtBase + 0x1000 + k * 4, (uint)(k << 12) | 3);
            W32(PtBase + 0x2000 + k * 4, 0);
        }
        W32(PtBase, (uint)(PtBase + 0x1000) | 3);
        W32(PtBase + 4, (uint)(PtBase + 0x2000) | 3);
        W32(PtBase + 0x2000 + 4, 0x40_1001);
        vm.RunToHlt();
        Assert.Equal((14u, 0u, 0x40_0000u), (Rec32(vm, 0)[0], Rec32(vm, 0)[1], Rec32(vm, 0)[2]));
        Assert.Equal((14u, 3u, 0x40_1004u), (Rec32(vm, 1)[0], Rec32(vm, 1)[1], Rec32(vm, 1)[2]));
        Assert.Equal((14u, 2u, 0x7F_F000u), (Rec32(vm, 2)[0], Rec32(vm, 2)[1], Rec32(vm, 2)[2]));
        Assert.Equal(9u, m.ReadU32(0x40_1008));
    }

    [Fact]
    public void PaePagingFaultsIncludingNxAndReservedBits()
    {
        using var vm = new TestVm();
        const ulong pdpt = PtBase + 0x3000, pd = PtBase + 0x4000, pt = PtBase + 0x5000;
        var l = Emit2(vm, TestVm.CodeBase, 32, (a, at) =>
        {
            var L = Enumerable.Range(0, 5).Select(_ => a.CreateLabel()).ToArray();
            a.mov(ebx, (uint)Results);
            a.mov(ecx, 0xC000_0080u);
            a.rdmsr();
            a.or(eax, 0x800); // NXE
            a.wrmsr();
            a.mov(eax, cr4);
            a.or(eax, 0x20);
            a.mov(cr4, eax);
            a.mov(eax, (uint)pdpt);
            a.mov(cr3, eax);
            a.mov(eax, cr0);
            a.or(eax, 0x8001_0000);
            a.mov(cr0, eax);
            a.mov(edi, at(1));
            a.mov(eax, __dword_ptr[0x40_0000]);
            a.Label(ref L[1]);
            a.mov(edi, at(2));
            a.mov(__dword_ptr[0x40_1000], 1);
            a.Label(ref L[2]);
            a.mov(edi, at(3));
            a.jmp(0x40_2000UL);
            a.Label(ref L[3]);
            a.mov(edi, at(4));
            a.mov(eax, __dword_ptr[0x40_3000]);
            a.Label(ref L[4]);
            a.hlt();
            PfHandler32(a, ref L[0]);
            return L;
        });
        Setup32(vm, TestVm.CodeBase);
        Gate32(vm, 14, l[0], P32Code);
        W64(vm, pdpt, pd | 1);
        for (ulong k = 1; k < 4; k++) W64(vm, pdpt + k * 8, 0);
        for (ulong k = 0; k < 512; k++) W64(vm, pd + k * 8, 0);
        W64(vm, pd, 0x83);
        W64(vm, pd + 8, 0x20_0083);
        W64(vm, pd + 16, pt | 3);
        for (ulong k = 0; k < 512; k++) W64(vm, pt + k * 8, 0);
        W64(vm, pt + 8, 0x40_1001);
        W64(vm, pt + 16, 0x40_2003 | Nx);
        W64(vm, pt + 24, 0x40_3003 | Rsvd51);
        vm.RunToHlt();
        Assert.Equal((14u, 0u, 0x40_0000u), (Rec32(vm, 0)[0], Rec32(vm, 0)[1], Rec32(vm, 0)[2]));
        Assert.Equal((14u, 3u, 0x40_1000u), (Rec32(vm, 1)[0], Rec32(vm, 1)[1], Rec32(vm, 1)[2]));
        Assert.Equal((14u, 0x11u, 0x40_2000u, 0x40_2000u), (Rec32(vm, 2)[0], Rec32(vm, 2)[1], Rec32(vm, 2)[2], Rec32(vm, 2)[3]));
        Assert.Equal((14u, 9u, 0x40_3000u), (Rec32(vm, 3)[0], Rec32(vm, 3)[1], Rec32(vm, 3)[2]));
    }
}
