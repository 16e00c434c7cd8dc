using System.Buffers.Binary;

namespace Dirigent.Images.Debian;

/// <summary>
/// The system image's disk: an MBR ("DOS") partition table with one Linux partition from 1 MiB to the end of the
/// disk, GRUB's boot.img in the MBR and its core.img in the gap between the MBR and the partition (what
/// grub-install calls "embedding"). We write these bytes ourselves instead of running grub-bios-setup, which wants
/// a block device (or a device map and a mounted /boot) and so a loop device; the offsets are GRUB's
/// include/grub/i386/pc/boot.h and the blocklist of diskboot.img (grub-core/boot/i386/pc/diskboot.S).
/// </summary>
public static class BiosDiskLayout
{
    public const int SectorSize = 512;
    /// <summary>The partition starts at 1 MiB like fdisk's default: aligned for any storage, and 2047 sectors of
    /// room for core.img.</summary>
    public const long PartitionStart = 1 << 20;
    public const long PartitionStartSector = PartitionStart / SectorSize;
    /// <summary>Smallest disk we build: 1 MiB gap plus a root filesystem that holds Debian's minimal system and a
    /// kernel upgrade.</summary>
    public const long MinimumSize = 2L << 30;
    /// <summary>MBR sector numbers are 32-bit: a disk past 2 TiB cannot be described.</summary>
    public const long MaximumSize = (long)uint.MaxValue * SectorSize;
    /// <summary>Partition type 0x83: Linux native.</summary>
    public const byte LinuxPartitionType = 0x83;

    // boot.h offsets inside boot.img (the MBR).
    public const int BpbStart = 0x3, BpbEnd = 0x5a;
    /// <summary>GRUB_BOOT_MACHINE_KERNEL_SECTOR: 64-bit LBA of core.img's first sector.</summary>
    public const int KernelSectorOffset = 0x5c;
    /// <summary>GRUB_BOOT_MACHINE_BOOT_DRIVE: 0xff = use the drive number the BIOS passes in DL.</summary>
    public const int BootDriveOffset = 0x64;
    /// <summary>GRUB_BOOT_MACHINE_DRIVE_CHECK: a jump that grub-setup replaces with two NOPs for hard disks, so
    /// boot.img trusts DL even on BIOSes that pass a bogus value (what grub-install does for a disk).</summary>
    public const int DriveCheckOffset = 0x66;
    /// <summary>GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC: disk signature; the partition table follows at 0x1be.</summary>
    public const int DiskSignatureOffset = 0x1b8, PartitionTableOffset = 0x1be, SignatureOffset = 0x1fe;

    /// <summary>Size of the (only) partition for a disk of <paramref name="diskSize"/> bytes, rounded down to whole MiB.</summary>
    public static long PartitionSize(long diskSize)
    {
        Validate(diskSize);
        return (diskSize - PartitionStart) & ~((1L << 20) - 1);
    }

    public static void Validate(long diskSize)
    {
        if (diskSize < MinimumSize)
            throw new ImageBuildException($"--size {diskSize} bytes is too small: the Debian system needs at least {MinimumSize >> 30} GiB");
        if (diskSize > MaximumSize)
            throw new ImageBuildException($"--size {diskSize} bytes is too large for an MBR partition table (at most 2 TiB)");
        if (diskSize % SectorSize != 0)
            throw new ImageBuildException($"--size {diskSize} bytes is not a whole number of 512-byte sectors");
    }

    /// <summary>
    /// The MBR: GRUB's boot.img patched as grub-setup patches it for a hard disk, the disk signature, one
    /// partition entry (bootable, type 0x83, LBA start and length) and 0x55AA.
    /// </summary>
    public static byte[] BuildMbr(ReadOnlySpan<byte> bootImg, long diskSize, uint diskSignature)
    {
        if (bootImg.Length != SectorSize)
            throw new ImageBuildException($"GRUB's boot.img is {bootImg.Length} bytes, not one 512-byte sector");
        if (bootImg[SignatureOffset] != 0x55 || bootImg[SignatureOffset + 1] != 0xAA)
            throw new ImageBuildException("GRUB's boot.img has no 55 AA boot signature");
        long partSectors = PartitionSize(diskSize) / SectorSize;
        var mbr = bootImg.ToArray();
        mbr.AsSpan(BpbStart, BpbEnd - BpbStart).Clear(); // no DOS BPB on a partitioned disk
        BinaryPrimitives.WriteUInt64LittleEndian(mbr.AsSpan(KernelSectorOffset), 1); // core.img right after the MBR
        mbr[BootDriveOffset] = 0xff;
        mbr[DriveCheckOffset] = 0x90;
        mbr[DriveCheckOffset + 1] = 0x90;
        mbr.AsSpan(DiskSignatureOffset, PartitionTableOffset - DiskSignatureOffset).Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(mbr.AsSpan(DiskSignatureOffset), diskSignature);
        mbr.AsSpan(PartitionTableOffset, SignatureOffset - PartitionTableOffset).Clear();
        var e = mbr.AsSpan(PartitionTableOffset, 16);
        e[0] = 0x80; // active: some BIOSes boot only a disk with an active partition
        WriteChs(e[1..4], PartitionStartSector);
        e[4] = LinuxPartitionType;
        WriteChs(e[5..8], PartitionStartSector + partSectors - 1);
        BinaryPrimitives.WriteUInt32LittleEndian(e[8..], (uint)PartitionStartSector);
        BinaryPrimitives.WriteUInt32LittleEndian(e[12..], (uint)partSectors);
        mbr[SignatureOffset] = 0x55;
        mbr[SignatureOffset + 1] = 0xAA;
        return mbr;
    }

    /// <summary>CHS in the 255-head, 63-sector geometry fdisk uses; past cylinder 1023 the maximum (1023, 254, 63)
    /// as the MBR convention says (everyone uses the LBA fields then).</summary>
    internal static void WriteChs(Span<byte> chs, long lba)
    {
        const int heads = 255, sectors = 63;
        long c = lba / (heads * sectors);
        int h, s;
        if (c > 1023) { c = 1023; h = 254; s = 63; }
        else { h = (int)(lba / sectors % heads); s = (int)(lba % sectors) + 1; }
        chs[0] = (byte)h;
        chs[1] = (byte)(s | (int)((c >> 2) & 0xC0));
        chs[2] = (byte)c;
    }

    /// <summary>
    /// Checks grub-mkimage's core.img and fills in diskboot.img's blocklist (the last 12 bytes of core.img's first
    /// sector: start LBA, sector count, load segment) for core.img embedded at sector 1: the rest of core.img then
    /// starts at sector 2 and is loaded at segment 0x820, right after diskboot.img at 0x8000.
    /// </summary>
    public static byte[] PrepareCoreImage(ReadOnlySpan<byte> coreImg)
    {
        if (coreImg.Length < 2 * SectorSize)
            throw new ImageBuildException($"GRUB's core.img is only {coreImg.Length} bytes");
        long sectors = (coreImg.Length + SectorSize - 1) / SectorSize;
        if (sectors > PartitionStartSector - 1)
            throw new ImageBuildException($"GRUB's core.img needs {sectors} sectors, more than the {PartitionStartSector - 1} before the partition");
        var core = new byte[sectors * SectorSize];
        coreImg.CopyTo(core);
        var block = core.AsSpan(SectorSize - 12, 12);
        BinaryPrimitives.WriteUInt64LittleEndian(block, 2);
        BinaryPrimitives.WriteUInt16LittleEndian(block[8..], (ushort)(sectors - 1));
        BinaryPrimitives.WriteUInt16LittleEndian(block[10..], 0x820);
        return core;
    }
}
