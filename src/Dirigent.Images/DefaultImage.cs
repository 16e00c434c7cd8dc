using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;

namespace Dirigent.Images;

/// <summary>Paths of a built default guest image.</summary>
public sealed record GuestImage(string Kernel, string Initramfs, string KernelVersion);

/// <summary>
/// Builds the default guest: Debian's cloud kernel (linux-image-*-cloud-amd64) and an initramfs of our own with
/// busybox-static, the virtio modules and <see cref="InitScript"/>. Packages come from the host's apt; the result
/// is cached in a directory and rebuilt only when a file is missing.
/// </summary>
public static partial class DefaultImage
{
    public const string KernelFile = "vmlinuz", InitramfsFile = "initramfs.cpio.gz", VersionFile = "kernel-version";
    /// <summary>Bumped whenever the initramfs layout or /init changes, so cached images are rebuilt.</summary>
    public const string LayoutVersion = "4";
    private const string LayoutFile = "layout-version";
    private const string Remedy = "install apt (Debian/Ubuntu host with network) or pass --kernel/--initrd";

    /// <summary>Module files taken from lib/modules/VERSION/kernel (the virtio drivers and what they depend on).</summary>
    public static readonly string[] ModulePaths =
    [
        "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_modern_dev",
        "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci", "drivers/block/virtio_blk",
        "net/core/failover", "drivers/net/net_failover", "drivers/net/virtio_net",
        "drivers/char/hw_random/virtio-rng", "drivers/char/virtio_console",
        // The ACPI button driver: it enables the fixed-feature power button (PM1_EN.PWRBTN_EN) and turns presses
        // into input/netlink events, so a VM's PowerButton reaches the guest as on a real PC.
        "drivers/acpi/button",
        // evdev gives the button a /dev/input node, which busybox acpid reads to power the guest off.
        "drivers/input/evdev",
    ];

    /// <summary>Applet links present before /init runs busybox --install (the kernel needs /bin/sh for /init).</summary>
    public static readonly string[] Applets =
    [
        "sh", "mount", "umount", "insmod", "lsmod", "poweroff", "reboot", "cat", "echo", "ls", "uname", "dmesg", "dd",
        "sha256sum", "seq", "base64", "setsid", "cttyhack", "sync", "mkdir", "sleep", "head", "tail", "grep",
    ];

    private static readonly object s_buildLock = new();

    public static GuestImage EnsureBuilt(string cacheDir, Action<string> log)
    {
        // Several VMs (or test classes) in one process may ask at once; one builds, the others wait for it.
        lock (s_buildLock) return EnsureBuiltLocked(cacheDir, log);
    }

    private static GuestImage EnsureBuiltLocked(string cacheDir, Action<string> log)
    {
        Directory.CreateDirectory(cacheDir);
        string kernel = Path.Combine(cacheDir, KernelFile), initramfs = Path.Combine(cacheDir, InitramfsFile);
        string versionFile = Path.Combine(cacheDir, VersionFile), layoutFile = Path.Combine(cacheDir, LayoutFile);
        if (File.Exists(kernel) && File.Exists(initramfs) && File.Exists(versionFile)
            && File.Exists(layoutFile) && File.ReadAllText(layoutFile).Trim() == LayoutVersion)
            return new GuestImage(kernel, initramfs, File.ReadAllText(versionFile).Trim());

        string pkg = FindKernelPackage(log);
        string work = Path.Combine(cacheDir, "work");
        if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
        Directory.CreateDirectory(work);
        try
        {
            log($"downloading {pkg} and busybox-static with apt-get");
            HostTool.Run("apt-get", ["download", pkg, "busybox-static"], Remedy, work);
            string kdeb = Directory.GetFiles(work, pkg + "_*.deb").SingleOrDefault()
                ?? throw new ImageBuildException($"apt-get download gave no {pkg} package: {Remedy}");
            string bdeb = Directory.GetFiles(work, "busybox-static_*.deb").SingleOrDefault()
                ?? throw new ImageBuildException($"apt-get download gave no busybox-static package: {Remedy}");
            log("unpacking packages");
            string kdir = Path.Combine(work, "kernel"), bdir = Path.Combine(work, "busybox");
            DebArchive.Extract(kdeb, kdir);
            DebArchive.Extract(bdeb, bdir);

            string vmlinuz = Directory.GetFiles(Path.Combine(kdir, "boot"), "vmlinuz-*").SingleOrDefault()
                ?? throw new ImageBuildException($"{pkg} contains no boot/vmlinuz-*");
            string version = Path.GetFileName(vmlinuz)["vmlinuz-".Length..];
            string modDir = Path.Combine(kdir, "lib", "modules", version, "kernel");
            string busybox = Path.Combine(bdir, "bin", "busybox");
            if (!File.Exists(busybox)) throw new ImageBuildException("busybox-static contains no bin/busybox");

            var modules = new List<(string Name, byte[] Data)>();
            foreach (var rel in ModulePaths)
            {
                var m = ReadModule(Path.Combine(modDir, rel));
                if (m == null) { log($"module {rel} not in {pkg}; skipped"); continue; }
                modules.Add((Path.GetFileName(rel) + ".ko", m));
            }
            log($"writing initramfs with {modules.Count} modules");
            byte[] cpioGz = BuildInitramfs(File.ReadAllBytes(busybox), modules);

            // Write to temporary names first so an interrupted build never leaves a complete-looking cache.
            File.WriteAllBytes(initramfs + ".tmp", cpioGz);
            File.Copy(vmlinuz, kernel + ".tmp", overwrite: true);
            File.Move(initramfs + ".tmp", initramfs, overwrite: true);
            File.Move(kernel + ".tmp", kernel, overwrite: true);
            File.WriteAllText(versionFile, version + "\n");
            File.WriteAllText(layoutFile, LayoutVersion + "\n");
            log($"default image ready: kernel {version}");
            return new GuestImage(kernel, initramfs, version);
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>The versioned cloud kernel package the linux-image-cloud-amd64 metapackage points at.</summary>
    internal static string FindKernelPackage(Action<string> log)
    {
        string? pkg = QueryKernelPackage();
        if (pkg == null)
        {
            log("apt-cache knows no cloud kernel; running apt-get update");
            HostTool.Run("apt-get", ["update"], Remedy);
            pkg = QueryKernelPackage();
        }
        return pkg ?? throw new ImageBuildException($"apt has no linux-image-*-cloud-amd64 package: {Remedy}");
    }

    private static string? QueryKernelPackage()
    {
        string deps = HostTool.Run("apt-cache", ["depends", "linux-image-cloud-amd64"], Remedy, check: false);
        var m = DependsRegex().Match(deps);
        if (m.Success) return m.Groups[1].Value;
        // No metapackage: take the highest versioned package by name.
        string found = HostTool.Run("apt-cache", ["search", "--names-only", "^linux-image-[0-9].*-cloud-amd64$"], Remedy, check: false);
        return found.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ')[0])
            .Where(n => !n.Contains("-dbg", StringComparison.Ordinal) && !n.Contains("unsigned", StringComparison.Ordinal))
            .OrderBy(n => n, Comparer<string>.Create(CompareVersionNames))
            .LastOrDefault();
    }

    /// <summary>Compares names like linux-image-6.1.0-9-cloud-amd64 by their numeric parts.</summary>
    internal static int CompareVersionNames(string a, string b)
    {
        var na = NumberRegex().Matches(a).Select(x => long.Parse(x.Value)).ToArray();
        var nb = NumberRegex().Matches(b).Select(x => long.Parse(x.Value)).ToArray();
        for (int i = 0; i < Math.Min(na.Length, nb.Length); i++)
            if (na[i] != nb[i]) return na[i].CompareTo(nb[i]);
        return na.Length.CompareTo(nb.Length);
    }

    /// <summary>A module as plain ELF: Debian 12 ships .ko, later releases .ko.xz/.ko.zst, which busybox insmod cannot read.</summary>
    private static byte[]? ReadModule(string pathWithoutExt)
    {
        if (File.Exists(pathWithoutExt + ".ko")) return File.ReadAllBytes(pathWithoutExt + ".ko");
        foreach (var (ext, tool, pkg) in new[] { (".ko.xz", "xz", "xz-utils"), (".ko.zst", "zstd", "zstd") })
        {
            string f = pathWithoutExt + ext;
            if (!File.Exists(f)) continue;
            string outFile = pathWithoutExt + ".ko";
            HostTool.Run(tool, ["-d", "-k", "-f", "-q", f], $"install {pkg} to decompress kernel modules");
            return File.ReadAllBytes(outFile);
        }
        return null;
    }

    /// <summary>The gzip-compressed newc cpio initramfs.</summary>
    public static byte[] BuildInitramfs(byte[] busybox, IReadOnlyList<(string Name, byte[] Data)> modules)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Optimal, leaveOpen: true))
        using (var cpio = new CpioNewcWriter(gz, leaveOpen: true))
        {
            foreach (var d in new[] { "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "lib", "lib/modules", "mnt" })
                cpio.AddDirectory(d);
            cpio.AddCharDevice("dev/console", 5, 1);
            cpio.AddCharDevice("dev/null", 1, 3, 0x1B6);
            cpio.AddFile("bin/busybox", busybox, 0x1ED);
            foreach (var a in Applets) cpio.AddSymlink("bin/" + a, "busybox");
            foreach (var (name, data) in modules) cpio.AddFile("lib/modules/" + name, data);
            cpio.AddFile("init", Encoding.UTF8.GetBytes(InitScript.Text), 0x1ED);
        }
        return ms.ToArray();
    }

    [GeneratedRegex(@"Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)\b")]
    private static partial Regex DependsRegex();
    [GeneratedRegex(@"\d+")]
    private static partial Regex NumberRegex();
}
