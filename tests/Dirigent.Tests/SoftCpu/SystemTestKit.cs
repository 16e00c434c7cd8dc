using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>Shared setup for system-instruction guests: descriptor tables, gates and assembling with label addresses.</summary>
internal static class SystemTestKit
{
    public const ulong Gdt = 0x21_0000, Idt = 0x21_1000, Tss = 0x21_2000, Results = 0x22_0000, Flag = 0x22_1000;

    // Long-mode GDT selectors.
    public const ushort K32 = 0x08, K64 = 0x10, KData = 0x18, U32 = 0x23, UData = 0x2B, U64 = 0x33, TssSel = 0x38, GateSel = 0x48;

    public static readonly ulong[] Gdt64Entries =
    {
        0,
        0x00CF_9B00_0000_FFFF, // 0x08 kernel code32
        0x00AF_9B00_0000_FFFF, // 0x10 kernel code64
        0x00CF_9300_0000_FFFF, // 0x18 kernel data
        0x00CF_FB00_0000_FFFF, // 0x20 user code32
        0x00CF_F300_0000_FFFF, // 0x28 user data
        0x00AF_FB00_0000_FFFF, // 0x30 user code64
    };

    /// <summary>An 8-byte code/data/system descriptor.</summary>
    public static ulong Desc(ulong bas, uint limit, ulong access, ulong flags) =>
        (limit & 0xFFFF) | ((bas & 0xFF_FFFF) << 16) | (access << 40) | ((ulong)((limit >> 16) & 0xF) << 48) |
        (flags << 52) | (((bas >> 24) & 0xFF) << 56);

    /// <summary>Assembles code at addr, writes it to guest RAM and returns the addresses of the labels.</summary>
    public static ulong[] Emit(TestVm vm, Assembler a, ulong addr, params Label[] labels)
    {
        using var ms = new MemoryStream();
        var res = a.Assemble(new StreamCodeWriter(ms), addr, BlockEncoderOptions.ReturnNewInstructionOffsets);
        vm.Vm.Memory.Write(addr, ms.ToArray());
        var r = new ulong[labels.Length];
        for (int k = 0; k < labels.Length; k++) r[k] = res.GetLabelRIP(labels[k]);
        return r;
    }

    /// <summary>
    /// Two-pass assembly for 16/32-bit code, where Iced cannot use labels as memory operands: build gets the label
    /// addresses of the previous pass through at(k) (0 in the first), and returns its labels in that order.
    /// </summary>
    public static ulong[] Emit2(TestVm vm, ulong addr, int bits, Func<Assembler, Func<int, uint>, Label[]> build)
    {
        ulong[] prev = new ulong[64];
        ulong[] got = [];
        for (int pass = 0; pass < 2; pass++)
        {
            var a = new Assembler(bits);
            var snapshot = (ulong[])prev.Clone();
            var labels = build(a, k => (uint)snapshot[k]);
            got = Emit(vm, a, addr, labels);
            Array.Copy(got, prev, got.Length);
        }
        return got;
    }

    public static void W64(TestVm vm, ulong addr, ulong v) => vm.Vm.Memory.WriteU64(addr, v);
    public static ulong R64(TestVm vm, ulong addr) => vm.Vm.Memory.ReadU64(addr);
    public static uint R32(TestVm vm, ulong addr) => (uint)vm.Vm.Memory.ReadU64(addr);

    /// <summary>Long mode with our GDT (user segments, a 64-bit TSS at 0x38) and an empty IDT; TR loaded from the host.</summary>
    public static void Setup64(TestVm vm, ulong entry, bool userPages = false)
    {
        vm.Cpu.SetState(BootState.Long64(vm.Vm.Memory, entry, TestVm.StackTop));
        for (int k = 0; k < Gdt64Entries.Length; k++) W64(vm, Gdt + (ulong)k * 8, Gdt64Entries[k]);
        W64(vm, Gdt + 0x38, Desc(Tss, 0x67, 0x89, 0));
        W64(vm, Gdt + 0x40, 0);
        vm.Cpu.Gdtr = new TableRegister { Base = Gdt, Limit = 0x5F };
        vm.Cpu.Idtr = new TableRegister { Base = Idt, Limit = 0xFFF };
        vm.Cpu.Tr = new SegmentState { Selector = TssSel, Base = Tss, Limit = 0x67, Attributes = 0x8B };
        vm.Cpu.Sreg[(int)Seg.CS].Selector = K64;
        if (userPages)
        {
            // BootState maps without U/S; ring-3 tests need user-accessible pages.
            var m = vm.Vm.Memory;
            m.WriteU64(BootState.Pml4Addr, m.ReadU64(BootState.Pml4Addr) | 4);
            for (ulong g = 0; g < 4; g++)
            {
                m.WriteU64(BootState.PdptAddr + g * 8, m.ReadU64(BootState.PdptAddr + g * 8) | 4);
                for (ulong k = 0; k < 512; k++)
                {
                    ulong e = BootState.PdAddr + g * 0x1000 + k * 8;
                    m.WriteU64(e, m.ReadU64(e) | 4);
                }
            }
        }
    }

    /// <summary>Emits an IRETQ frame that drops to ring 3 (user code/data selectors, RSP 0x5F000, IF clear) at <paramref name="user"/>.</summary>
    public static void IretqToRing3(Assembler a, Label user)
    {
        a.mov(__qword_ptr[rsp - 8], UData);
        a.mov(__qword_ptr[rsp - 16], 0x5_F000);
        a.mov(__qword_ptr[rsp - 24], 0x2);
        a.mov(__qword_ptr[rsp - 32], U64);
        a.lea(rax, __[user]);
        a.mov(__qword_ptr[rsp - 40], rax);
        a.sub(rsp, 40);
        a.iretq();
    }

    public static void Gate64(TestVm vm, int vector, ulong handler, int dpl = 0, int ist = 0, int type = 0xE, ushort sel = K64, bool present = true)
    {
        ulong lo = (handler & 0xFFFF) | ((ulong)sel << 16) | ((ulong)ist << 32) | ((ulong)type << 40) | ((ulong)dpl << 45) |
                   ((present ? 1UL : 0) << 47) | (((handler >> 16) & 0xFFFF) << 48);
        W64(vm, Idt + (ulong)vector * 16, lo);
        W64(vm, Idt + (ulong)vector * 16 + 8, handler >> 32);
    }

    public static void Gate32(TestVm vm, int vector, ulong handler, ushort sel, int dpl = 0, int type = 0xE)
    {
        ulong g = (handler & 0xFFFF) | ((ulong)sel << 16) | ((ulong)type << 40) | ((ulong)dpl << 45) | (1UL << 47) |
                  (((handler >> 16) & 0xFFFF) << 48);
        W64(vm, Idt + (ulong)vector * 8, g);
    }

    /// <summary>
    /// A 64-bit handler that logs (vector tag, error code or 0, CR2, pushed RIP, pushed CS) at [RBX] and resumes at R15.
    /// </summary>
    public static void RecordingHandler64(Assembler a, ref Label l, int tag, bool hasError)
    {
        a.Label(ref l);
        a.mov(__qword_ptr[rbx], tag);
        if (hasError)
        {
            a.mov(rax, __qword_ptr[rsp]);
            a.mov(__qword_ptr[rbx + 8], rax);
            a.add(rsp, 8);
        }
        else a.mov(__qword_ptr[rbx + 8], 0);
        a.mov(rax, cr2);
        a.mov(__qword_ptr[rbx + 16], rax);
        a.mov(rax, __qword_ptr[rsp]);
        a.mov(__qword_ptr[rbx + 24], rax);
        a.mov(rax, __qword_ptr[rsp + 8]);
        a.mov(__qword_ptr[rbx + 32], rax);
        a.add(rbx, 40);
        a.mov(__qword_ptr[rsp], r15);
        a.iretq();
    }

    /// <summary>One record written by <see cref="RecordingHandler64"/>.</summary>
    public readonly record struct Rec(ulong Tag, ulong Error, ulong Cr2, ulong Rip, ulong Cs);

    public static Rec ReadRec(TestVm vm, int n)
    {
        ulong b = Results + (ulong)n * 40;
        return new Rec(R64(vm, b), R64(vm, b + 8), R64(vm, b + 16), R64(vm, b + 24), R64(vm, b + 32));
    }

    // Protected-mode (32-bit) GDT selectors.
    public const ushort P32Code = 0x08, P32Data = 0x10, P32UCode = 0x1B, P32UData = 0x23, P32Tss = 0x28;

    /// <summary>32-bit protected mode, paging off, with kernel/user flat segments, a 32-bit TSS and an IDT at <see cref="Idt"/>.</summary>
    public static void Setup32(TestVm vm, ulong entry)
    {
        var s = BootState.Protected32(vm.Vm.Memory, entry);
        s.Gpr[4] = TestVm.StackTop;
        vm.Cpu.SetState(s);
        W64(vm, Gdt, 0);
        W64(vm, Gdt + 0x08, 0x00CF_9B00_0000_FFFF);
        W64(vm, Gdt + 0x10, 0x00CF_9300_0000_FFFF);
        W64(vm, Gdt + 0x18, 0x00CF_FB00_0000_FFFF);
        W64(vm, Gdt + 0x20, 0x00CF_F300_0000_FFFF);
        W64(vm, Gdt + 0x28, Desc(Tss, 0x67, 0x89, 0));
        vm.Cpu.Gdtr = new TableRegister { Base = Gdt, Limit = 0x2F };
        vm.Cpu.Idtr = new TableRegister { Base = Idt, Limit = 0x7FF };
        var data = new SegmentState { Selector = P32Data, Base = 0, Limit = 0xFFFF_FFFF, Attributes = 0xC093 };
        foreach (int seg in new[] { 0, 2, 3, 4, 5 }) vm.Cpu.Sreg[seg] = data;
        vm.Cpu.Tr = new SegmentState { Selector = P32Tss, Base = Tss, Limit = 0x67, Attributes = 0x8B };
    }
}
