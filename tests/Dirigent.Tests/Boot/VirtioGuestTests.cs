using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Dirigent.Tests.Firmware;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;

namespace Dirigent.Tests.Boot;

/// <summary>
/// The stock Debian kernel drives our PCI bus and virtio devices with its own drivers: it finds the functions
/// through the ACPI PCI root, takes MSI-X (or INTx through the _PRT with pci=nomsi), reads /dev/hwrng and mounts,
/// writes and re-reads an ext4 disk image made on the host.
/// </summary>
[Trait("Category", "Boot")]
public class VirtioGuestTests
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);

    private static VmSpec Config(string script, IEnumerable<DiskConfig>? disks = null, bool rng = false, string extraArgs = "") => new()
    {
        Kernel = s_image.Value.Kernel,
        Initrds = [s_image.Value.Initramfs],
        Append = $"{VmLauncher.DefaultAppend} {extraArgs} {InitScript.CommandArgument(script)}",
        MemoryBytes = 256UL << 20,
        Disks = disks?.ToList() ?? [],
        Rng = rng,
    };

    private static string Run(VmSpec cfg)
    {
        var r = new GuestRunner();
        int rc = r.Run(cfg, BootTimeout);
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(r.Output)}");
        Assert.Contains($"{InitScript.ExitStatusPrefix}0", r.Output);
        return r.Output;
    }

    private static string Between(string s, string begin, string end)
    {
        int b = s.IndexOf(begin, StringComparison.Ordinal), e = s.IndexOf(end, b + 1, StringComparison.Ordinal);
        Assert.True(b >= 0 && e > b, $"markers {begin}/{end} missing:\n{GuestRunner.Tail(s)}");
        return s[(b + begin.Length)..e];
    }

    private const string DmesgScript = "echo DMESG-BEGIN; dmesg; echo DMESG-END";

    private static void AssertCleanPciDmesg(string dmesg)
    {
        Assert.Contains("ACPI: PCI Root Bridge [PCI0]", dmesg);
        Assert.Matches(new Regex(@"root bus resource \[mem 0xe0000000-0xefffffff window\]"), dmesg);
        foreach (var bad in new[] { "no space for", "can't claim", "failed to assign", "BAR 0: error", "BUG:", "WARNING:",
                     "Oops", "Call Trace", "virtio_pci: probe of", "virtio_blk: probe of", "I/O error", "DEVICE_NEEDS_RESET" })
            Assert.False(dmesg.Contains(bad, StringComparison.Ordinal), $"dmesg contains '{bad}':\n{dmesg}");
    }

    [Fact]
    public void HwrngYieldsHostRandomBytesOverMsix()
    {
        string o = Run(Config(
            "cat /sys/class/misc/hw_random/rng_current; echo RNG-BEGIN; dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -tx1 -v; echo RNG-END; " +
            "cat /proc/interrupts; " + DmesgScript, rng: true));
        Assert.Contains("virtio_rng.0", o);
        var bytes = Regex.Matches(Between(o, "RNG-BEGIN", "RNG-END"), @"\b[0-9a-f]{2}\b").Select(m => Convert.ToByte(m.Value, 16)).ToArray();
        Assert.Equal(64, bytes.Length);
        Assert.True(bytes.Distinct().Count() > 16, "64 random bytes should not repeat this much");
        Assert.Matches(new Regex(@"PCI-MSI.*virtio0-input"), o);
        string dmesg = Between(o, "DMESG-BEGIN", "DMESG-END");
        Assert.Contains("[1af4:1044] type 00 class 0x00ff00", dmesg);
        AssertCleanPciDmesg(dmesg);
    }

    private static string MakeExt4(string dir, string content, int sizeMiB = 32)
    {
        string mkfs = RequiredTool.Find("mkfs.ext4", "e2fsprogs");
        string tree = Path.Combine(dir, "tree");
        Directory.CreateDirectory(tree);
        File.WriteAllText(Path.Combine(tree, "hello.txt"), content);
        string img = Path.Combine(dir, "disk.img");
        using (var f = File.Create(img)) f.SetLength(sizeMiB << 20);
        var (rc, output) = RequiredTool.Run(mkfs, ["-q", "-F", "-d", tree, img], dir);
        Assert.True(rc == 0, $"mkfs.ext4 failed: {output}");
        return img;
    }

    [Fact]
    public void Ext4ImageFromTheHostMountsAndAGuestWriteSurvivesTheNextBoot()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-virtio-blk").FullName;
        try
        {
            string img = MakeExt4(dir, "hello-from-host\n");
            var disk = new[] { new DiskConfig(img, DiskFormat.Raw, false) };
            string o = Run(Config(
                "cat /sys/block/vda/serial; echo; mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/hello.txt && " +
                "echo from-guest-$((6*7)) > /mnt/guest.txt && umount /mnt && echo BOOT1-OK; " + DmesgScript, disk));
            Assert.Contains("dirigent-disk0", o);
            Assert.Contains("hello-from-host", o);
            Assert.Contains("BOOT1-OK", o);
            string dmesg = Between(o, "DMESG-BEGIN", "DMESG-END");
            Assert.Contains("[vda] 65536 512-byte logical blocks", dmesg);
            AssertCleanPciDmesg(dmesg);

            o = Run(Config("mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/guest.txt && umount /mnt && echo BOOT2-OK", disk));
            Assert.Contains("from-guest-42", o);
            Assert.Contains("BOOT2-OK", o);

            string debugfs = RequiredTool.Find("debugfs", "e2fsprogs");
            var (rc, output) = RequiredTool.Run(debugfs, ["-R", "cat /guest.txt", img], dir);
            Assert.True(rc == 0, output);
            Assert.Contains("from-guest-42", output);
            var (frc, fout) = RequiredTool.Run(RequiredTool.Find("e2fsck", "e2fsprogs"), ["-f", "-n", img], dir);
            Assert.True(frc == 0, $"e2fsck found problems: {fout}");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void ReadOnlyDiskRefusesWritesAndStaysUnchanged()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-virtio-ro").FullName;
        try
        {
            string img = MakeExt4(dir, "read-only-content\n", 16);
            byte[] before = SHA256.HashData(File.ReadAllBytes(img));
            string o = Run(Config(
                "echo RO=$(cat /sys/block/vda/ro); " +
                "dd if=/dev/zero of=/dev/vda bs=512 count=1 2>/dev/null && echo DD-WROTE || echo DD-REFUSED; " +
                "mkdir -p /mnt && mount -o ro /dev/vda /mnt && cat /mnt/hello.txt; " +
                "(echo x > /mnt/new.txt) 2>/dev/null && echo FILE-WROTE || echo FILE-REFUSED; umount /mnt",
                [new DiskConfig(img, DiskFormat.Raw, true)]));
            Assert.Contains("RO=1", o);
            Assert.Contains("DD-REFUSED", o);
            Assert.Contains("read-only-content", o);
            Assert.Contains("FILE-REFUSED", o);
            Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(img)));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void WithPciNoMsiTheDevicesFallBackToIntxThroughTheIoApic()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-virtio-intx").FullName;
        try
        {
            string img = Path.Combine(dir, "data.img");
            var data = new byte[256 * 1024];
            new Random(5).NextBytes(data);
            File.WriteAllBytes(img, data);
            string hash = Convert.ToHexStringLower(SHA256.HashData(data));
            string o = Run(Config(
                "dd if=/dev/vda bs=4096 2>/dev/null | sha256sum; dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1; " +
                "cat /proc/interrupts; " + DmesgScript,
                [new DiskConfig(img, DiskFormat.Raw, false)], rng: true, extraArgs: "pci=nomsi"));
            Assert.Contains(hash, o);
            // Slot 1 INTA -> GSI 17, slot 2 INTA -> GSI 18, level-triggered on the IOAPIC.
            Assert.Matches(new Regex(@"17:\s+\d+\s+IO-APIC\s+17-fasteoi\s+virtio0"), o);
            Assert.Matches(new Regex(@"18:\s+\d+\s+IO-APIC\s+18-fasteoi\s+virtio1"), o);
            Assert.DoesNotContain("PCI-MSI", o);
            AssertCleanPciDmesg(Between(o, "DMESG-BEGIN", "DMESG-END"));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
