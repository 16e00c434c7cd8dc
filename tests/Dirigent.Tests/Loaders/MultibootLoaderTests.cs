using System.Buffers.Binary;
using Dirigent.Devices.Firmware;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Loaders;

/// <summary>Multiboot kernels assembled here, loaded by the loader and run on the software CPU.</summary>
public class MultibootLoaderTests
{
    private const uint Magic = 0x1BAD_B002;
    private const uint ExpectedMemUpper = (16 << 10) - 1024; // TestVm: 16 MiB RAM, KiB above 1 MiB

    private static byte[] Assemble(ulong addr, Action<Assembler> build)
    {
        var a = new Assembler(32);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), addr);
        return ms.ToArray();
    }

    /// <summary>Prints the NUL-terminated string at [reg] to port 0xE9 (clobbers AL and the register).</summary>
    private static void Print(Assembler a, AssemblerRegister32 reg)
    {
        var loop = a.CreateLabel(); var done = a.CreateLabel();
        a.Label(ref loop);
        a.mov(al, __byte_ptr[reg]);
        a.test(al, al);
        a.jz(done);
        a.@out(0xE9, al);
        a.inc(reg);
        a.jmp(loop);
        a.Label(ref done);
    }

    private static void Dd(Assembler a, params uint[] v) { foreach (var x in v) a.dd(x); }

    private static void Emit(Assembler a, string s) { foreach (char c in s) { a.mov(al, (byte)c); a.@out(0xE9, al); } }

    /// <summary>Checks the boot magic and mem_upper, then prints the command line and "|ok".</summary>
    private static void GuestChecksInfo(Assembler a)
    {
        var fail = a.CreateLabel();
        a.cmp(eax, unchecked((int)MultibootLoader.BootloaderMagic));
        a.jne(fail);
        a.mov(eax, __dword_ptr[ebx]);
        a.and(eax, (int)(MultibootLoader.InfoMem | MultibootLoader.InfoCmdLine));
        a.cmp(eax, (int)(MultibootLoader.InfoMem | MultibootLoader.InfoCmdLine));
        a.jne(fail);
        a.mov(eax, __dword_ptr[ebx + 8]);
        a.cmp(eax, (int)ExpectedMemUpper);
        a.jne(fail);
        a.mov(esi, __dword_ptr[ebx + 16]);
        Print(a, esi);
        Emit(a, "|ok");
        a.hlt();
        a.Label(ref fail);
        Emit(a, "FAIL");
        a.hlt();
    }

    private static BootOptions Options(TestVm vm, string cmd, params InitrdFile[] mods) =>
        new() { CommandLine = cmd, Initrds = mods, MemoryMap = PcFirmware.MemoryMap(vm.Vm.Memory) };

    [Fact]
    public void AoutKludgeKernelRunsAndReadsMultibootInfo()
    {
        const uint Base = 0x10_0000, Flags = 0x1_0002, BssEnd = Base + 0x3000;
        var image = Assemble(Base, a =>
        {
            Dd(a, Magic, Flags, unchecked(0u - Magic - Flags), Base, Base, 0, BssEnd, Base + 32);
            GuestChecksInfo(a);
        });
        using var vm = new TestVm();
        vm.Vm.Memory.Write(Base + 0x2000, Enumerable.Repeat((byte)0xAA, 16).ToArray());
        var k = KernelImage.Load(vm.Vm.Memory, image, Options(vm, "kernel.bin hello=world"));
        Assert.Equal(KernelFormat.MultibootAout, k.Format);
        Assert.Equal(0UL, vm.Vm.Memory.ReadU64(Base + 0x2000)); // bss cleared
        vm.Cpu.SetState(k.State);
        vm.RunToHlt();
        Assert.Equal("kernel.bin hello=world|ok", vm.Console.ToString());
    }

    /// <summary>ELF32 file: header, one program header, the Multiboot header, then code; one segment maps all of it.</summary>
    private static byte[] Elf32Multiboot(uint paddr, Action<Assembler> build)
    {
        const int CodeOff = 52 + 32 + 12;
        var code = Assemble(paddr + CodeOff, build);
        var b = new byte[CodeOff + code.Length];
        var s = b.AsSpan();
        b[0] = 0x7F; b[1] = (byte)'E'; b[2] = (byte)'L'; b[3] = (byte)'F'; b[4] = 1; b[5] = 1; b[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 3);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(s[24..], paddr + CodeOff);
        BinaryPrimitives.WriteUInt32LittleEndian(s[28..], 52);
        BinaryPrimitives.WriteUInt16LittleEndian(s[40..], 52);
        BinaryPrimitives.WriteUInt16LittleEndian(s[42..], 32);
        BinaryPrimitives.WriteUInt16LittleEndian(s[44..], 1);
        var p = s[52..];
        BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], 0xC000_0000 + paddr); // virtual != physical: must load by p_paddr
        BinaryPrimitives.WriteUInt32LittleEndian(p[12..], paddr);
        BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)b.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)b.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(p[24..], 5);
        var h = s[84..];
        BinaryPrimitives.WriteUInt32LittleEndian(h, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], 3);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], unchecked(0u - Magic - 3));
        code.CopyTo(b, CodeOff);
        return b;
    }

    [Fact]
    public void ElfKernelGetsModulesWithTheirStrings()
    {
        var image = Elf32Multiboot(0x20_0000, a =>
        {
            var fail = a.CreateLabel();
            a.cmp(eax, unchecked((int)MultibootLoader.BootloaderMagic));
            a.jne(fail);
            a.mov(eax, __dword_ptr[ebx]);
            a.and(eax, (int)MultibootLoader.InfoMods);
            a.jz(fail);
            a.cmp(__dword_ptr[ebx + 20], 2);
            a.jne(fail);
            a.mov(ebp, __dword_ptr[ebx + 24]);
            for (int m = 0; m < 2; m++)
            {
                a.mov(edi, __dword_ptr[ebp + m * 16]);
                a.test(edi, 0xFFF);           // page-aligned (header flag bit 0)
                a.jnz(fail);
                a.mov(al, __byte_ptr[edi]);
                a.@out(0xE9, al);
                a.mov(ecx, __dword_ptr[ebp + m * 16 + 4]);
                a.sub(ecx, edi);
                a.add(cl, (byte)'0');          // module length as a digit
                a.mov(al, cl);
                a.@out(0xE9, al);
                Emit(a, ":");
                a.mov(esi, __dword_ptr[ebp + m * 16 + 8]);
                Print(a, esi);
                Emit(a, "|");
            }
            Emit(a, "ok");
            a.hlt();
            a.Label(ref fail);
            Emit(a, "FAIL");
            a.hlt();
        });
        using var vm = new TestVm();
        var k = KernelImage.Load(vm.Vm.Memory, image, Options(vm, "k",
            new InitrdFile("first arg", "Axy"u8.ToArray()), new InitrdFile("second", "B1234"u8.ToArray())));
        Assert.Equal(KernelFormat.MultibootElf, k.Format);
        vm.Cpu.SetState(k.State);
        vm.RunToHlt();
        Assert.Equal("A3:first arg|B5:second|ok", vm.Console.ToString());
    }

    [Fact]
    public void MemoryMapIsPassedAsMmap()
    {
        using var vm = new TestVm();
        var image = Assemble(0x10_0000, a => { Dd(a, Magic, 0x1_0000, unchecked(0u - Magic - 0x1_0000), 0x10_0000, 0x10_0000, 0, 0, 0x10_0020); a.hlt(); });
        var k = KernelImage.Load(vm.Vm.Memory, image, Options(vm, ""));
        var mem = vm.Vm.Memory;
        ulong info = k.BootInfoAddress;
        Assert.Equal(639u, mem.ReadU32(info + 4));
        uint len = mem.ReadU32(info + 44), addr = mem.ReadU32(info + 48);
        var map = PcFirmware.MemoryMap(mem);
        Assert.Equal((uint)(24 * map.Count), len);
        for (int i = 0; i < map.Count; i++)
        {
            ulong e = addr + (ulong)i * 24;
            Assert.Equal(20u, mem.ReadU32(e));
            Assert.Equal(map[i].Base, mem.ReadU64(e + 4));
            Assert.Equal(map[i].Length, mem.ReadU64(e + 12));
            Assert.Equal((uint)map[i].Type, mem.ReadU32(e + 20));
        }
    }

    [Fact]
    public void BadMultibootImagesAreRejected()
    {
        using var vm = new TestVm();
        // Valid header, but requires a feature this loader does not know (flags bit 3).
        var video = Assemble(0x10_0000, a => Dd(a, Magic, 0x1_0008, unchecked(0u - Magic - 0x1_0008), 0x10_0000, 0x10_0000, 0, 0, 0x10_0020));
        Assert.Contains("unsupported", Assert.Throws<LoaderException>(() => KernelImage.Load(vm.Vm.Memory, video, Options(vm, ""))).Message);
        // Loads above the end of RAM.
        uint far = 0x4000_0000;
        var high = Assemble(far, a => Dd(a, Magic, 0x1_0000, unchecked(0u - Magic - 0x1_0000), far, far, 0, 0, far + 32));
        Assert.Contains("not in guest RAM", Assert.Throws<LoaderException>(() => KernelImage.Load(vm.Vm.Memory, high, Options(vm, ""))).Message);
        // Entry outside the image.
        var entry = Assemble(0x10_0000, a => Dd(a, Magic, 0x1_0000, unchecked(0u - Magic - 0x1_0000), 0x10_0000, 0x10_0000, 0, 0, 0x50_0000));
        Assert.Contains("entry", Assert.Throws<LoaderException>(() => KernelImage.Load(vm.Vm.Memory, entry, Options(vm, ""))).Message);
        // Bad checksum: not recognised as Multiboot at all.
        var sum = Assemble(0x10_0000, a => Dd(a, Magic, 0x1_0000, 0, 0x10_0000, 0x10_0000, 0, 0, 0x10_0020));
        Assert.Throws<LoaderException>(() => KernelImage.Load(vm.Vm.Memory, sum, Options(vm, "")));
    }
}
