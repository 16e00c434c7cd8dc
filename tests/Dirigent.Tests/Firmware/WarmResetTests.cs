using Dirigent.Tests.Lifecycle;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Firmware;

/// <summary>
/// The warm reset old software uses to get back to real mode: write a resume vector at 40:67, the CMOS shutdown
/// status byte (0x0F) = 0x0A ("jump via 40:67"), and reset the processor with a soft reset through the PIIX3 reset
/// control register (0xCF9 = 0x04). Only INIT reaches the processor: RAM and the shadowed BIOS stay, so SeaBIOS
/// finds its POST done, takes its resume path and jumps to the vector without a second POST. The same through an INIT
/// IPI the boot processor sends itself through its local APIC: INIT sends the BSP to the reset vector (it does not
/// wait for a STARTUP IPI), with RAM and devices untouched.
/// </summary>
[Trait("Category", "Boot")]
public class WarmResetTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(4);

    // Fixed places in the boot sector (0:7C00): the main code, the resume code, the print routine, the two texts.
    private const ushort Main = 0x7C00, Resume = 0x7C80, Print = 0x7CA0, Warm = 0x7CC0, Resumed = 0x7CD0, Gdt = 0x7CE0, GdtDesc = 0x7CF0;

    private static byte[] Asm(ushort at, Action<Assembler> build)
    {
        var a = new Assembler(16);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), at);
        return ms.ToArray();
    }

    /// <summary>A boot sector (Iced, 16-bit) that prints WARM, arms the resume vector and soft-resets; the resume
    /// code prints RESUMED and spins.</summary>
    private static byte[] BootSector(bool initIpi = false)
    {
        var sector = new byte[512];
        var used = new bool[446];
        void Put(ushort at, byte[] b)
        {
            Assert.True(at - Main + b.Length <= 446, "boot code overlaps the partition table");
            for (int k = 0; k < b.Length; k++)
            {
                Assert.False(used[at - Main + k], $"piece at 0x{at:x} overlaps another");
                used[at - Main + k] = true;
            }
            b.CopyTo(sector, at - Main);
        }
        Put(Main, Asm(Main, a =>
        {
            a.cli();
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(sp, 0x7C00);
            a.mov(si, Warm);
            a.call(Print);
            a.mov(__word_ptr[0x467], Resume);  // 40:67 offset
            a.mov(__word_ptr[0x469], 0);       // 40:69 segment
            a.mov(al, 0x0F);
            a.@out(0x70, al);
            a.mov(al, 0x0A);                   // shutdown status 0Ah: jump via 40:67 (no EOI)
            a.@out(0x71, al);
            if (initIpi)
            {
                // INIT IPI to the boot processor itself (APIC ID 0) through the local APIC's ICR: protected mode just
                // long enough to load ES with a descriptor based at 0xFEE00000 (16-bit code keeps running).
                a.lgdt(__[GdtDesc]);
                a.mov(eax, cr0);
                a.or(al, 1);
                a.mov(cr0, eax);
                a.mov(ax, 0x08);
                a.mov(es, ax);
                a.mov(__dword_ptr.es[0x310], 0);           // ICR high: destination APIC ID 0
                a.mov(__dword_ptr.es[0x300], 0x0000_4500); // ICR low: INIT, level assert, physical destination
            }
            else
            {
                a.mov(dx, 0xCF9);
                a.mov(al, 0x04);               // RST_CPU with SYS_RST clear: soft reset
                a.@out(dx, al);
            }
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);
        }));
        Put(Resume, Asm(Resume, a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(si, Resumed);
            a.call(Print);
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);
        }));
        // print: the zero-terminated text at DS:SI to COM1.
        Put(Print, Asm(Print, a =>
        {
            var loop = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(dx, 0x3F8);
            a.Label(ref loop);
            a.lodsb();
            a.test(al, al);
            a.jz(done);
            a.@out(dx, al);
            a.jmp(loop);
            a.Label(ref done);
            a.ret();
        }));
        // GDT: null, then a data segment at 0xFEE00000 (the local APIC), limit 0xFFF, present, writable.
        var gdt = new byte[16];
        BitConverter.GetBytes(0xFE00_93E0_0000_0FFFUL).CopyTo(gdt, 8); // base FEE00000, limit FFF, access 93h
        Put(Gdt, gdt);
        var desc = new byte[6];
        BitConverter.GetBytes((ushort)15).CopyTo(desc, 0);
        BitConverter.GetBytes((uint)Gdt).CopyTo(desc, 2);
        Put(GdtDesc, desc);
        Put(Warm, "WARM\r\n\0"u8.ToArray());
        Put(Resumed, "RESUMED\r\n\0"u8.ToArray());
        sector[510] = 0x55;
        sector[511] = 0xAA;
        return sector;
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void ASoftResetWithShutdownStatus0AResumesAtTheVectorIn40_67WithoutAnotherPost(bool initIpiToTheBsp)
    {
        Skip.IfNot(File.Exists(Dirigent.Devices.Firmware.BiosConfig.DefaultBiosPath),
            $"{Dirigent.Devices.Firmware.BiosConfig.DefaultBiosPath} is missing: apt-get install seabios");
        using var dir = new TempDir();
        string disk = dir["boot.raw"];
        var image = new byte[1 << 20];
        BootSector(initIpiToTheBsp).CopyTo(image, 0);
        File.WriteAllBytes(disk, image);
        var spec = new VmSpec
        {
            Firmware = FirmwareKind.Bios, MemoryBytes = 64UL << 20, Accel = AccelKind.Emu, Serial = "none",
            Disks = [new DiskConfig(disk, DiskFormat.Raw, ReadOnly: false)],
        };
        using var vm = Vm.Create(spec, TextWriter.Null);
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(cap.WaitFor("RESUMED", Timeout), "no resume through 40:67: " + cap.Text[^Math.Min(3000, cap.Text.Length)..]);
        string text = cap.Text;
        Assert.True(text.IndexOf("WARM", StringComparison.Ordinal) < text.IndexOf("RESUMED", StringComparison.Ordinal), text);
        // One POST only: the soft reset did not reset the machine.
        Assert.Equal(1, text.Split("SeaBIOS (version").Length - 1);
        Assert.Equal(0, vm.Reboots);
        Assert.Equal(VmState.Running, vm.State);
        vm.Stop();
    }
}
