using System.Buffers.Binary;
using System.Text;
using Dirigent.Devices.Firmware;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Loaders;

public class LinuxLoaderTests
{
    internal const int SetupSects = 4;
    internal const int PayloadSize = 0x3000;

    /// <summary>A minimal bzImage: boot sector + setup header (protocol 2.15) + recognisable protected-mode payload.</summary>
    internal static byte[] BzImage(ushort version = 0x20F, ushort xloadflags = 1, bool relocatable = true,
        uint initSize = 0x40_0000, ulong pref = 0x100_0000, uint align = 0x20_0000, uint cmdlineSize = 2047, uint initrdMax = 0x7FFF_FFFF)
    {
        var b = new byte[(SetupSects + 1) * 512 + PayloadSize];
        var s = b.AsSpan();
        b[0x1F1] = SetupSects;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x1FE..], 0xAA55);
        b[0x200] = 0xEB; b[0x201] = 0x66; // jmp to the end of the header at 0x268
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x202..], 0x5372_6448);
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x206..], version);
        b[0x211] = 0x01; // LOADED_HIGH, as bzImages ship it
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x214..], 0x10_0000);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x22C..], initrdMax);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x230..], align);
        b[0x234] = relocatable ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x236..], xloadflags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x238..], cmdlineSize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[0x258..], pref);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x260..], initSize);
        b[0x267] = 0x5A; // last header byte: must be copied into the zero page
        for (int i = 0; i < PayloadSize; i++) b[(SetupSects + 1) * 512 + i] = (byte)(i * 7 + 3);
        return b;
    }

    internal static BootOptions Options(GuestMemory mem, string cmd = "console=ttyS0", params InitrdFile[] initrds) =>
        new() { CommandLine = cmd, Initrds = initrds, MemoryMap = PcFirmware.MemoryMap(mem), AcpiRsdpAddress = 0xE0000 };

    private static string CString(GuestMemory mem, ulong addr)
    {
        var sb = new StringBuilder();
        for (byte c; (c = mem.ReadU8(addr)) != 0; addr++) sb.Append((char)c);
        return sb.ToString();
    }

    [Fact]
    public void BzImageLoadsAtPreferredAddressWithZeroPage()
    {
        using var mem = new GuestMemory(64 << 20);
        var img = BzImage();
        var rd1 = new InitrdFile("a.cpio", Enumerable.Range(0, 5000).Select(i => (byte)i).ToArray());
        var rd2 = new InitrdFile("b.cpio", Enumerable.Repeat((byte)0xCD, 3000).ToArray());
        var k = KernelImage.Load(mem, img, Options(mem, "console=ttyS0 quiet", rd1, rd2));

        Assert.Equal(KernelFormat.LinuxBzImage, k.Format);
        Assert.Equal(0x100_0000UL, k.LoadAddress);
        var payload = new byte[PayloadSize];
        mem.Read(0x100_0000, payload);
        Assert.Equal(img.AsSpan(5 * 512).ToArray(), payload);

        const ulong zp = LinuxLoader.ZeroPageAddr;
        Assert.Equal(0xAA55, mem.ReadU16(zp + 0x1FE));
        Assert.Equal(0x5372_6448u, mem.ReadU32(zp + 0x202));
        Assert.Equal(0x5A, mem.ReadU8(zp + 0x267));
        Assert.Equal(0xFF, mem.ReadU8(zp + 0x210));
        Assert.Equal(0x81, mem.ReadU8(zp + 0x211) & 0x81);
        Assert.Equal((uint)LinuxLoader.CmdLineAddr, mem.ReadU32(zp + 0x228));
        Assert.Equal("console=ttyS0 quiet", CString(mem, LinuxLoader.CmdLineAddr));
        Assert.Equal(0xE0000UL, mem.ReadU64(zp + 0x070));

        uint rdImage = mem.ReadU32(zp + 0x218), rdSize = mem.ReadU32(zp + 0x21C);
        Assert.Equal(8000u, rdSize);
        Assert.Equal(0u, rdImage & 0xFFF);
        Assert.True(rdImage >= 0x100_0000 + 0x40_0000, "initrd must lie above the kernel's init_size");
        Assert.True(rdImage + rdSize <= 64 << 20 && rdImage + rdSize > (64 << 20) - 0x2000, "initrd goes as high as possible");
        var rd = new byte[8000];
        mem.Read(rdImage, rd);
        Assert.Equal(rd1.Data.Concat(rd2.Data).ToArray(), rd);

        var st = k.State;
        Assert.Equal(0x100_0200UL, st.Rip);
        Assert.Equal(zp, st.Gpr[6]);
        Assert.Equal(0x10, st.Segments[(int)Seg.CS].Selector);
        Assert.True(st.Segments[(int)Seg.CS].L);
        Assert.Equal(0x18, st.Segments[(int)Seg.DS].Selector);
        Assert.Equal(0UL, st.Rflags & 0x200);
        Assert.NotEqual(0UL, st.Efer & 0x400); // LMA
        Assert.NotEqual(0UL, st.Cr0 & 0x8000_0000);
    }

    [Fact]
    public void E820TableDescribesPcMemoryMap()
    {
        using var mem = new GuestMemory(64 << 20);
        KernelImage.Load(mem, BzImage(), Options(mem));
        const ulong zp = LinuxLoader.ZeroPageAddr;
        int n = mem.ReadU8(zp + 0x1E8);
        var e = Enumerable.Range(0, n).Select(i => (Base: mem.ReadU64(zp + 0x2D0 + (ulong)i * 20),
            Len: mem.ReadU64(zp + 0x2D0 + (ulong)i * 20 + 8), Type: mem.ReadU32(zp + 0x2D0 + (ulong)i * 20 + 16))).ToList();
        Assert.Equal(5, n);
        Assert.Equal((0UL, 0x9FC00UL, 1u), e[0]);
        Assert.Equal((0x9FC00UL, 0x10_0000UL - 0x9FC00, 2u), e[1]);
        Assert.Equal((0x10_0000UL, (64UL << 20) - 0x10_0000, 1u), e[2]);
        Assert.Equal((0xFEC0_0000UL, 0x1000UL, 2u), e[3]);
        Assert.Equal((0xFEE0_0000UL, 0x1000UL, 2u), e[4]);
    }

    [Fact]
    public void SmallRamRelocatesToAlignedLowAddress()
    {
        using var mem = new GuestMemory(24 << 20);
        var k = KernelImage.Load(mem, BzImage(initSize: 0x100_0000), Options(mem));
        Assert.Equal(0x20_0000UL, k.LoadAddress); // 1 MiB rounded up to kernel_alignment
        Assert.Equal(0x20_0200UL, k.State.Rip);
    }

    [Fact]
    public void NonRelocatableKernelGoesToOneMiB()
    {
        using var mem = new GuestMemory(64 << 20);
        var k = KernelImage.Load(mem, BzImage(relocatable: false), Options(mem));
        Assert.Equal(0x10_0000UL, k.LoadAddress);
    }

    [Fact]
    public void InitrdRespectsInitrdAddrMax()
    {
        using var mem = new GuestMemory(64 << 20);
        KernelImage.Load(mem, BzImage(initrdMax: 0x1FF_FFFF), Options(mem, "", new InitrdFile("r", new byte[10000])));
        uint rd = mem.ReadU32(LinuxLoader.ZeroPageAddr + 0x218);
        Assert.True(rd + 10000 <= 0x200_0000);
        Assert.Equal(0x200_0000u - 0x3000, rd);
    }

    [Theory]
    [InlineData("version")]
    [InlineData("xlf")]
    [InlineData("truncated")]
    [InlineData("cmdline")]
    [InlineData("initrd")]
    [InlineData("ram")]
    public void BadImagesAreRejectedWithLoaderException(string what)
    {
        using var mem = new GuestMemory(32 << 20);
        var img = what switch
        {
            "version" => BzImage(version: 0x20B),
            "xlf" => BzImage(xloadflags: 0),
            "truncated" => BzImage().AsSpan(0, 0x600).ToArray(),
            "ram" => BzImage(initSize: 0x400_0000),
            _ => BzImage(cmdlineSize: 16),
        };
        var opt = what switch
        {
            "cmdline" => Options(mem, "console=ttyS0 this is longer than sixteen"),
            "initrd" => Options(mem, "", new InitrdFile("big", new byte[30 << 20])),
            _ => Options(mem),
        };
        var ex = Assert.Throws<LoaderException>(() => KernelImage.Load(mem, img, opt));
        Assert.Contains(what switch
        {
            "version" => "2.12", "xlf" => "64-bit", "truncated" => "truncated", "cmdline" => "command line",
            "initrd" => "initrd", _ => "does not fit",
        }, ex.Message);
    }

    [Fact]
    public void UnknownFormatIsRejected()
    {
        using var mem = new GuestMemory(16 << 20);
        var ex = Assert.Throws<LoaderException>(() => KernelImage.Load(mem, new byte[4096], Options(mem)));
        Assert.Contains("unknown kernel image format", ex.Message);
        var bad = BzImage();
        bad[0x1FE] = 0;
        Assert.Throws<LoaderException>(() => KernelImage.Load(mem, bad, Options(mem)));
    }

    /// <summary>ELF64 executable with one PT_LOAD segment (file part + bss) and the given entry.</summary>
    internal static byte[] Elf64(ulong paddr, ulong vaddr, ulong entry, byte[] code, ulong bss, ushort machine = 62)
    {
        const int hdr = 64 + 56;
        var b = new byte[hdr + code.Length];
        var s = b.AsSpan();
        b[0] = 0x7F; b[1] = (byte)'E'; b[2] = (byte)'L'; b[3] = (byte)'F'; b[4] = 2; b[5] = 1; b[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], machine);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], entry);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(s[52..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(s[54..], 56);
        BinaryPrimitives.WriteUInt16LittleEndian(s[56..], 1);
        var p = s[64..];
        BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], 7);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], hdr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], vaddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], paddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)code.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], (ulong)code.Length + bss);
        code.CopyTo(b, hdr);
        return b;
    }

    [Fact]
    public void VmlinuxLoadsAtPhysicalAddressAndEntersStartup64()
    {
        using var mem = new GuestMemory(64 << 20);
        mem.Write(0x100_0000 + 0x100, Enumerable.Repeat((byte)0xEE, 0x100).ToArray()); // stale bytes where bss goes
        var code = Enumerable.Range(0, 0x100).Select(i => (byte)(i ^ 0x55)).ToArray();
        var img = Elf64(0x100_0000, 0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8100_0040, code, 0x1000);
        var k = KernelImage.Load(mem, img, Options(mem, "root=/dev/vda", new InitrdFile("r", [1, 2, 3])));
        Assert.Equal(KernelFormat.LinuxElf, k.Format);
        Assert.Equal(0x100_0040UL, k.State.Rip);
        Assert.Equal(LinuxLoader.ZeroPageAddr, k.State.Gpr[6]);
        var got = new byte[0x100];
        mem.Read(0x100_0000, got);
        Assert.Equal(code, got);
        Assert.Equal(0UL, mem.ReadU64(0x100_0100));
        Assert.Equal(0x5372_6448u, mem.ReadU32(LinuxLoader.ZeroPageAddr + 0x202));
        Assert.Equal(0xFF, mem.ReadU8(LinuxLoader.ZeroPageAddr + 0x210));
        Assert.Equal("root=/dev/vda", CString(mem, mem.ReadU32(LinuxLoader.ZeroPageAddr + 0x228)));
        Assert.Equal(3u, mem.ReadU32(LinuxLoader.ZeroPageAddr + 0x21C));
    }

    [Fact]
    public void ElfOverlappingBootStructuresIsRejected()
    {
        using var mem = new GuestMemory(16 << 20);
        var img = Elf64(0x7000, 0x7000, 0x7000, [0x90], 0x100);
        var ex = Assert.Throws<LoaderException>(() => KernelImage.Load(mem, img, Options(mem)));
        Assert.Contains("overlaps the boot page tables", ex.Message);
    }

    [Fact]
    public void ElfSegmentOutsideRamIsRejected()
    {
        using var mem = new GuestMemory(16 << 20);
        var img = Elf64(0x2000_0000, 0x2000_0000, 0x2000_0000, [0x90], 0);
        var ex = Assert.Throws<LoaderException>(() => KernelImage.Load(mem, img, Options(mem)));
        Assert.Contains("not in guest RAM", ex.Message);
    }
}
