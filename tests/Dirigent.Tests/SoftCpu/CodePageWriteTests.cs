using Dirigent.Accel.Emu.Jit;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// Stores into a page that holds decoded code, beside the code and into it: a patched function on the running code's
/// page, a block whose last bytes lie on the next page, a page of busy data next to its loop. The stored bytes run
/// as stored and the data comes out right, on the interpreter and with every block compiled.
/// </summary>
public class CodePageWriteTests
{
    private const ulong Page = 0x18_0000;

    private static TestVm NewVm(JitMode jit) => new(jit: jit);

    /// <summary>CodeBase: jump to <paramref name="entry"/> (code on the test page).</summary>
    private static void Start(TestVm vm, ulong entry)
    {
        var a = new Assembler(64);
        a.mov(rax, entry);
        a.jmp(rax);
        Emit(vm, a, TestVm.CodeBase);
        Setup64(vm, TestVm.CodeBase);
    }

    [Theory]
    [InlineData(JitMode.Off)]
    [InlineData(JitMode.Always)]
    public void A_store_into_a_function_on_the_same_page_takes_effect_at_its_next_call(JitMode jit)
    {
        using var vm = NewVm(jit);
        // F at Page: mov eax, 0x1000; ret. The loop at Page + 0x100 calls it, stores beside the code, then patches
        // F's immediate (the bytes at Page + 1) with the next iteration's number.
        var f = new Assembler(64);
        f.mov(eax, 0x1000);
        f.ret();
        Emit(vm, f, Page);
        var a = new Assembler(64);
        Label loop = a.CreateLabel();
        a.xor(ecx, ecx);
        a.Label(ref loop);
        a.mov(rax, Page);
        a.call(rax);
        a.mov(__dword_ptr[rcx * 4 + (long)Results], eax);
        a.mov(__dword_ptr[Page + 0x800], ecx);
        a.lea(edx, __[rcx + 1]);
        a.mov(__dword_ptr[Page + 1], edx);
        a.inc(ecx);
        a.cmp(ecx, 5);
        a.jne(loop);
        a.hlt();
        Emit(vm, a, Page + 0x100);
        Start(vm, Page + 0x100);
        vm.RunToHlt();
        Assert.Equal([0x1000u, 1, 2, 3, 4], Enumerable.Range(0, 5).Select(k => vm.Vm.Memory.ReadU32(Results + (ulong)k * 4)).ToArray());
        Assert.True(vm.Accel.BlocksInvalidated > 0);
    }

    [Theory]
    [InlineData(JitMode.Off)]
    [InlineData(JitMode.Always)]
    public void A_block_running_onto_the_next_page_is_dropped_by_a_store_into_its_tail_there(JitMode jit)
    {
        using var vm = NewVm(jit);
        // F at Page + 0xFFC: mov eax, imm32 (its last immediate byte is the first byte of the next page), then ret on
        // the next page.
        var f = new Assembler(64);
        f.mov(eax, 0x1122_3344);
        f.ret();
        Emit(vm, f, Page + 0xFFC);
        var a = new Assembler(64);
        a.mov(rbx, Page + 0xFFC);
        a.call(rbx);
        a.mov(__dword_ptr[Results], eax);
        a.mov(__byte_ptr[Page + 0x1800], 0x55);   // the next page, beside F's tail
        a.mov(__byte_ptr[Page + 0xF00], 0x55);    // F's first page, beside it
        a.call(rbx);
        a.mov(__dword_ptr[Results + 4], eax);
        a.hlt();
        a.mov(__byte_ptr[Page + 0x1000], 0x77);   // F's tail: the immediate's top byte
        a.call(rbx);
        a.mov(__dword_ptr[Results + 12], eax);
        a.hlt();
        Emit(vm, a, Page + 0x2000);
        Start(vm, Page + 0x2000);
        vm.RunToHlt();
        Assert.Equal((0x1122_3344u, 0x1122_3344u), (vm.Vm.Memory.ReadU32(Results), vm.Vm.Memory.ReadU32(Results + 4)));
        long before = vm.Accel.BlocksInvalidated;
        vm.Cpu.Halted = false; // on past the HLT (RIP is after it)
        vm.RunToHlt();
        Assert.Equal(0x7722_3344u, vm.Vm.Memory.ReadU32(Results + 12));
        Assert.True(vm.Accel.BlocksInvalidated > before, "the store into F's tail on the next page dropped no block");
    }

    [Theory]
    [InlineData(JitMode.Off)]
    [InlineData(JitMode.Always)]
    public void A_page_stored_into_beside_its_code_again_and_again_stays_correct(JitMode jit)
    {
        using var vm = NewVm(jit);
        var a = new Assembler(64);
        Label loop = a.CreateLabel();
        a.mov(ecx, 1000);
        a.xor(eax, eax);
        a.Label(ref loop);
        a.add(__dword_ptr[Page + 0x800], ecx);
        a.inc(eax);
        a.dec(ecx);
        a.jnz(loop);
        a.mov(__dword_ptr[Results], eax);
        a.hlt();
        Emit(vm, a, Page);
        Start(vm, Page);
        vm.RunToHlt();
        Assert.Equal((1000u, 500500u), (vm.Vm.Memory.ReadU32(Results), vm.Vm.Memory.ReadU32(Page + 0x800)));
    }
}
