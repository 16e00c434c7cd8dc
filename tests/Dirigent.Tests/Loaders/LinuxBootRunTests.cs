using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Loaders;

/// <summary>A synthetic bzImage whose 64-bit entry reads boot_params the way Linux does, run on the software CPU.</summary>
public class LinuxBootRunTests
{
    [Fact]
    public void SixtyFourBitEntrySeesZeroPageCommandLineAndInitrd()
    {
        using var vm = new TestVm(64 << 20);
        var img = LinuxLoaderTests.BzImage();
        const ulong Load = 0x100_0000;
        var a = new Assembler(64);
        var fail = a.CreateLabel(); var loop = a.CreateLabel(); var done = a.CreateLabel();
        a.cmp(__word_ptr[rsi + 0x1FE], 0xAA55);          // boot_flag copied into the zero page
        a.jne(fail);
        a.cmp(__byte_ptr[rsi + 0x210], 0xFF);             // type_of_loader
        a.jne(fail);
        a.cmp(__byte_ptr[rsi + 0x1E8], 5);                // e820_entries
        a.jne(fail);
        a.mov(eax, __dword_ptr[rsi + 0x2D0 + 2 * 20 + 8]); // e820[2].size (low half): RAM above 1 MiB
        a.cmp(eax, (64 << 20) - 0x10_0000);
        a.jne(fail);
        a.mov(edi, __dword_ptr[rsi + 0x218]);             // ramdisk_image: first byte of the initrd
        a.mov(al, __byte_ptr[rdi]);
        a.@out(0xE9, al);
        a.mov(edi, __dword_ptr[rsi + 0x228]);             // cmd_line_ptr
        a.Label(ref loop);
        a.mov(al, __byte_ptr[rdi]);
        a.test(al, al);
        a.jz(done);
        a.@out(0xE9, al);
        a.inc(rdi);
        a.jmp(loop);
        a.Label(ref done);
        a.mov(al, (byte)'!');
        a.@out(0xE9, al);
        a.hlt();
        a.Label(ref fail);
        a.mov(al, (byte)'F');
        a.@out(0xE9, al);
        a.hlt();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), Load + 0x200);
        ms.ToArray().CopyTo(img, 5 * 512 + 0x200);

        var opts = LinuxLoaderTests.Options(vm.Vm.Memory, "console=ttyS0", new InitrdFile("rd", "Zrest"u8.ToArray()));
        var k = KernelImage.Load(vm.Vm.Memory, img, opts);
        vm.Cpu.SetState(k.State);
        vm.RunToHlt();
        Assert.Equal("Zconsole=ttyS0!", vm.Console.ToString());
    }
}
