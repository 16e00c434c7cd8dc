using System.Buffers.Binary;
using System.Text;

namespace Dirigent.Images;

/// <summary>
/// A raw disk image that boots a kernel through a PC BIOS: an MBR with SYSLINUX's boot code (Debian's
/// syslinux-common <c>mbr.bin</c>) and one active FAT16 partition from sector 2048, formatted with mtools and made
/// bootable with <c>syslinux --offset</c> (Debian's syslinux package), holding the kernel, the initramfs and a
/// syslinux.cfg that boots them with the given command line on the serial console. Used by the firmware boot tests
/// and `bench firmware`.
/// </summary>
public static class BiosBootDisk
{
    public const string MbrPath = "/usr/lib/syslinux/mbr/mbr.bin";
    public const long PartitionStartSector = 2048;

    /// <summary>The tools and files it needs, each with its Debian package; null when all are there, else one line.</summary>
    public static string? Missing()
    {
        var missing = new List<string>();
        foreach (var (tool, pkg) in new[] { ("mformat", "mtools"), ("mcopy", "mtools"), ("syslinux", "syslinux") })
            if (!OnPath(tool)) missing.Add($"{tool} ({pkg})");
        if (!File.Exists(MbrPath)) missing.Add($"{MbrPath} (syslinux-common)");
        return missing.Count == 0 ? null : $"missing {string.Join(", ", missing)}: apt-get install mtools syslinux syslinux-common";
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Any(d => File.Exists(Path.Combine(d, program)));

    public const string GrubDir = "/usr/lib/grub/i386-pc";

    /// <summary>What <see cref="Build"/> with <c>grub: true</c> needs beyond <see cref="Missing()"/>; null when there.</summary>
    public static string? MissingGrub() =>
        OnPath("grub-mkimage") && File.Exists(Path.Combine(GrubDir, "boot.img")) ? null
            : "missing grub-mkimage or /usr/lib/grub/i386-pc/boot.img: apt-get install grub-pc-bin";

    /// <summary>
    /// Writes the image at <paramref name="path"/> (<paramref name="sizeMiB"/> MiB, sparse). With
    /// <paramref name="grub"/> the MBR is GRUB's boot.img and GRUB's core.img (grub-mkimage: biosdisk, part_msdos,
    /// fat, linux, serial, with an embedded configuration that loads the kernel and initramfs from the partition)
    /// sits in the sectors before the partition, as grub-install embeds it; the partition then needs no SYSLINUX.
    /// </summary>
    public static void Build(string path, string kernel, string initramfs, string append, int sizeMiB = 64, bool grub = false)
    {
        if (Missing() is { } why) throw new ImageBuildException(why);
        if (grub && MissingGrub() is { } whyGrub) throw new ImageBuildException(whyGrub);
        if (sizeMiB < 8) throw new ArgumentOutOfRangeException(nameof(sizeMiB), "at least 8 MiB");
        long sectors = (long)sizeMiB * 2048, partSectors = sectors - PartitionStartSector;
        using (var f = new FileStream(path, FileMode.Create, FileAccess.ReadWrite))
        {
            f.SetLength(sectors * 512);
            var mbr = new byte[512];
            File.ReadAllBytes(grub ? Path.Combine(GrubDir, "boot.img") : MbrPath).AsSpan(0, 440).CopyTo(mbr);
            // One partition entry: active, CHS "beyond 8 GiB" (LBA only: SYSLINUX's MBR uses EDD), FAT16 (type 6).
            var e = mbr.AsSpan(446, 16);
            e[0] = 0x80;
            e[1] = 0xFE; e[2] = 0xFF; e[3] = 0xFF;
            e[4] = 0x06;
            e[5] = 0xFE; e[6] = 0xFF; e[7] = 0xFF;
            BinaryPrimitives.WriteUInt32LittleEndian(e[8..], (uint)PartitionStartSector);
            BinaryPrimitives.WriteUInt32LittleEndian(e[12..], (uint)partSectors);
            mbr[510] = 0x55; mbr[511] = 0xAA;
            f.Write(mbr);
        }
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string part = $"{path}@@{PartitionStartSector * 512}";
        const string remedy = "apt-get install mtools syslinux syslinux-common";
        HostTool.Run("mformat", ["-i", part, "-T", partSectors.ToString(), "-h", "64", "-s", "32", "-H", PartitionStartSector.ToString(), "::"], remedy, dir);
        if (grub)
        {
            InstallGrub(path, dir, append);
            HostTool.Run("mcopy", ["-i", part, kernel, "::vmlinuz"], remedy, dir);
            HostTool.Run("mcopy", ["-i", part, initramfs, "::initrd"], remedy, dir);
            return;
        }
        HostTool.Run("syslinux", ["--offset", (PartitionStartSector * 512).ToString(), "--install", path], remedy, dir);
        string cfg = Path.Combine(dir, $"syslinux-{Guid.NewGuid():N}.cfg");
        File.WriteAllText(cfg, $"SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd\n  APPEND {append}\n", Encoding.ASCII);
        try
        {
            HostTool.Run("mcopy", ["-i", part, cfg, "::syslinux.cfg"], remedy, dir);
            HostTool.Run("mcopy", ["-i", part, kernel, "::vmlinuz"], remedy, dir);
            HostTool.Run("mcopy", ["-i", part, initramfs, "::initrd"], remedy, dir);
        }
        finally { File.Delete(cfg); }
    }

    /// <summary>
    /// core.img at sector 1: boot.img's default kernel_sector (1) and diskboot's default blocklist (from sector 2,
    /// the length grub-mkimage fills in) are what grub-bios-setup would write for this layout.
    /// </summary>
    private static void InstallGrub(string path, string dir, string append)
    {
        string id = Guid.NewGuid().ToString("N");
        string cfg = Path.Combine(dir, $"grub-{id}.cfg"), core = Path.Combine(dir, $"core-{id}.img");
        File.WriteAllText(cfg, "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n" +
            $"linux (hd0,msdos1)/vmlinuz {append}\ninitrd (hd0,msdos1)/initrd\nboot\n", Encoding.ASCII);
        try
        {
            HostTool.Run("grub-mkimage", ["-O", "i386-pc", "-d", GrubDir, "-o", core, "-c", cfg, "-p", "(hd0,msdos1)/boot/grub",
                "biosdisk", "part_msdos", "fat", "linux", "serial", "terminal", "boot"], "apt-get install grub-pc-bin", dir);
            byte[] img = File.ReadAllBytes(core);
            if (img.Length > (PartitionStartSector - 1) * 512) throw new ImageBuildException($"GRUB's core.img ({img.Length} bytes) does not fit before the partition");
            using var f = new FileStream(path, FileMode.Open, FileAccess.Write);
            f.Position = 512;
            f.Write(img);
        }
        finally { File.Delete(cfg); File.Delete(core); }
    }

    /// <summary>
    /// A 1 MiB raw disk whose MBR's first instructions write <paramref name="value"/> to QEMU's isa-debug-exit port
    /// 0xF4 (<c>mov al, value; out 0xF4, al; hlt</c>): the VM ends the moment the firmware runs the MBR, on Dirigent
    /// and on QEMU with <c>-device isa-debug-exit</c> alike (what `bench firmware` times).
    /// </summary>
    public static void WriteDebugExitMbr(string path, byte value)
    {
        var disk = new byte[1 << 20];
        byte[] code = [0xB0, value, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD];
        code.CopyTo(disk, 0);
        disk[510] = 0x55; disk[511] = 0xAA;
        File.WriteAllBytes(path, disk);
    }
}
