using System.ComponentModel;
using System.Diagnostics;
using Dirigent.Storage;

namespace Dirigent.Images.Debian;

/// <summary>What a build produced: the image, the root filesystem's UUID, and the root password when no SSH key was given.</summary>
public sealed record DebianImageResult(string Path, Guid RootUuid, string? RootPassword, string KernelVersion);

/// <summary>
/// Builds a bootable Debian system disk without loop devices or mounts (which CI containers often lack):
/// mmdebstrap installs the system into a directory, we write our configuration into it, mkfs.ext4 -d turns the
/// directory into a filesystem at the partition's offset inside the disk file, and <see cref="BiosDiskLayout"/>
/// writes the partition table with GRUB's boot.img and core.img (from grub-mkimage) in front of it. A qcow2 image
/// is then written from the raw disk by Dirigent.Storage.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")] // mmdebstrap, chroot and Unix file modes
public static class DebianImageBuilder
{
    public const string GrubDir = "/usr/lib/grub/i386-pc";
    private const string Packages = "install mmdebstrap, grub-pc-bin, e2fsprogs (on Debian: apt-get install mmdebstrap grub-pc-bin e2fsprogs)";

    /// <summary>What the system gets beyond mmdebstrap's "apt" variant (Essential packages and apt).</summary>
    public static readonly string[] IncludedPackages =
    [
        "systemd-sysv", "udev", "dbus", "systemd-resolved", "linux-image-cloud-amd64", "initramfs-tools",
        "openssh-server", "iproute2", "iputils-ping", "procps", "less", "netbase", "ca-certificates", "kmod",
    ];

    /// <summary>The host side: running as root (mmdebstrap's root mode keeps file owners right for mkfs -d) and the
    /// tools present. Returns why not, or null.</summary>
    public static string? HostProblem()
    {
        if (Environment.UserName != "root" && geteuid() != 0)
            return "building a Debian image needs root (mmdebstrap installs the packages as root into a directory; no loop devices are used)";
        foreach (var tool in new[] { "mmdebstrap", "mkfs.ext4", "grub-mkimage", "chroot" })
            if (FindOnPath(tool) == null) return $"{tool} is not installed: {Packages}";
        foreach (var f in new[] { "boot.img", "diskboot.img", "kernel.img" })
            if (!File.Exists(Path.Combine(GrubDir, f))) return $"{GrubDir}/{f} is missing: {Packages}";
        return null;
    }

    public static DebianImageResult Build(DebianImageOptions o, Action<string> log)
    {
        if (HostProblem() is { } why) throw new ImageBuildException(why);
        string outDir = Path.GetDirectoryName(o.OutPath)!;
        string work = Path.Combine(outDir, $".{Path.GetFileName(o.OutPath)}.build-{Environment.ProcessId}");
        string root = Path.Combine(work, "root"), raw = Path.Combine(work, "disk.raw");
        string tmpOut = o.OutPath + $".tmp-{Environment.ProcessId}";
        var total = Stopwatch.StartNew();
        Directory.CreateDirectory(work);
        try
        {
            string archives = Path.Combine(o.CacheDir, "debian", "archives", o.Release);
            Directory.CreateDirectory(archives);
            using (AcquireCacheLock(archives, log))
            {
                log($"[1/5] mmdebstrap {o.Release} from {o.Mirror} (package cache {archives}, {Directory.GetFiles(archives, "*.deb").Length} packages cached)");
                RunMmdebstrap(o, root, archives, log);
            }

            log("[2/5] configuring: hostname, fstab, network, serial console, SSH, GRUB menu");
            var uuid = Guid.NewGuid();
            string? password = Configure(o, root, uuid, log);
            string kernel = KernelVersion(root);

            log($"[3/5] mkfs.ext4 -d: {DiskInfoHuman(BiosDiskLayout.PartitionSize(o.Size))} root filesystem at offset 1 MiB");
            MakeFilesystem(root, raw, o.Size, uuid, work);
            Directory.Delete(root, recursive: true); // the filesystem has it now; frees the space before conversion

            log("[4/5] GRUB: grub-mkimage core.img into the MBR gap, boot.img and the partition table into the MBR");
            InstallGrub(raw, o.Size, work);

            log(o.Format == "qcow2" ? $"[5/5] writing qcow2 {o.OutPath}" : $"[5/5] writing raw {o.OutPath}");
            if (o.Format == "qcow2") ConvertToQcow2(raw, tmpOut);
            else File.Move(raw, tmpOut);
            File.Move(tmpOut, o.OutPath);
            log($"image ready in {total.Elapsed.TotalSeconds:F0} s: {o.OutPath} (Debian {o.Release}, kernel {kernel}, hostname {o.Hostname})");
            return new DebianImageResult(o.OutPath, uuid, password, kernel);
        }
        finally
        {
            try { File.Delete(tmpOut); } catch (IOException) { }
            try { Directory.Delete(work, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>Builds may share the package cache of a release one at a time (mmdebstrap's sync-out rewrites it).</summary>
    private static FileStream AcquireCacheLock(string archives, Action<string> log)
    {
        string lockFile = archives + ".lock";
        for (int i = 0; ; i++)
        {
            try { return new FileStream(lockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) when (i < 3600)
            {
                if (i == 0) log($"waiting for another build using {archives}");
                Thread.Sleep(1000); // another process holds the lock: nothing to wait on but the file itself
            }
        }
    }

    private static void RunMmdebstrap(DebianImageOptions o, string root, string archives, Action<string> log)
    {
        var args = new List<string>
        {
            "--mode=root", "--variant=apt", "--format=directory",
            "--include=" + string.Join(',', IncludedPackages),
            // Keep every downloaded .deb (Essential ones too) in /var/cache/apt/archives until the customize
            // hook copies them out; the next build copies them in and apt downloads only what changed.
            "--skip=essential/unlink",
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
            $"--setup-hook=sync-in '{archives}' /var/cache/apt/archives/",
            $"--customize-hook=sync-out /var/cache/apt/archives '{archives}'",
            o.Release, root,
            $"deb {o.Mirror} {o.Release} main",
        };
        if (o.Mirror == DebianImageOptions.DefaultMirror)
        {
            args.Add($"deb {o.Mirror} {o.Release}-updates main");
            args.Add($"deb http://deb.debian.org/debian-security {o.Release}-security main");
        }
        var tail = new Queue<string>();
        int rc = Stream("mmdebstrap", args, line =>
        {
            // Condensed progress: mmdebstrap's own step lines; apt's and dpkg's chatter only on failure.
            if (line.StartsWith("I: ", StringComparison.Ordinal) || line.StartsWith("E: ", StringComparison.Ordinal))
                log("      " + line);
            tail.Enqueue(line);
            if (tail.Count > 30) tail.Dequeue();
        });
        if (rc != 0)
        {
            string why = tail.LastOrDefault(l => l.StartsWith("E: ", StringComparison.Ordinal)) ?? tail.LastOrDefault() ?? $"exit code {rc}";
            throw new ImageBuildException($"mmdebstrap failed ({why.Trim()}); is {o.Mirror} reachable?");
        }
    }

    /// <summary>Writes our files into the root; returns the root password when there is no SSH key.</summary>
    private static string? Configure(DebianImageOptions o, string root, Guid uuid, Action<string> log)
    {
        void Write(string rel, string text, int mode = 0x1A4)
        {
            string p = Path.Combine(root, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(p)!);
            File.WriteAllText(p, text);
            File.SetUnixFileMode(p, (UnixFileMode)mode);
        }
        Write("etc/hostname", o.Hostname + "\n");
        Write("etc/hosts", GuestConfig.Hosts(o.Hostname));
        Write("etc/fstab", GuestConfig.Fstab(uuid));
        Write(GuestConfig.NetworkUnitPath, GuestConfig.NetworkUnit);
        Write("etc/systemd/system/" + GuestConfig.SshKeygenUnitName, GuestConfig.SshKeygenUnit);
        Write("etc/systemd/system/" + GuestConfig.HostnameUnitName, GuestConfig.HostnameUnit);
        Write(GuestConfig.HostnameScriptPath, GuestConfig.HostnameScript, 0x1ED);
        Write("boot/grub/grub.cfg", GuestConfig.GrubCfg(uuid, o.Hostname));
        // GRUB's modules beside grub.cfg, so `insmod` works at GRUB's prompt for what core.img does not carry.
        string mods = Path.Combine(root, "boot", "grub", "i386-pc");
        Directory.CreateDirectory(mods);
        foreach (var f in Directory.GetFiles(GrubDir).Where(f => f.EndsWith(".mod") || f.EndsWith(".lst")))
            File.Copy(f, Path.Combine(mods, Path.GetFileName(f)), overwrite: true);
        // Host keys made by openssh-server's postinst would be shared by every clone: made on first boot instead.
        foreach (var k in Directory.GetFiles(Path.Combine(root, "etc", "ssh"), "ssh_host_*")) File.Delete(k);
        Chroot(root, ["systemctl", "enable", "systemd-networkd.service", "systemd-resolved.service", GuestConfig.SshKeygenUnitName, GuestConfig.HostnameUnitName]);
        // Nothing in the image waits for the network; wait-online would hold boot for 2 minutes on a VM without a NIC.
        Chroot(root, ["systemctl", "disable", "systemd-networkd-wait-online.service"]);

        if (o.SshKeys != null)
        {
            Directory.CreateDirectory(Path.Combine(root, "root", ".ssh"));
            File.SetUnixFileMode(Path.Combine(root, "root", ".ssh"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            Write("root/.ssh/authorized_keys", o.SshKeys, 0x180);
            return null;
        }
        string password = GuestConfig.RandomPassword();
        Chroot(root, ["chpasswd"], stdin: $"root:{password}\n");
        // Without a key the printed password is the only way in, over SSH too (Debian allows root keys only).
        Write("etc/ssh/sshd_config.d/dirigent-root-password.conf",
            "# Written by `dirigent image build debian` without --ssh-key: root logs in with the printed password.\nPermitRootLogin yes\n");
        return password;
    }

    private static string KernelVersion(string root)
    {
        string? target = new FileInfo(Path.Combine(root, "vmlinuz")).LinkTarget;
        if (target == null || !File.Exists(Path.Combine(root, target.TrimStart('/'))))
            throw new ImageBuildException("the installed system has no /vmlinuz (did linux-image-cloud-amd64 install?)");
        if (!File.Exists(Path.Combine(root, "initrd.img")))
            throw new ImageBuildException("the installed system has no /initrd.img (did initramfs-tools run?)");
        string name = Path.GetFileName(target);
        return name.StartsWith("vmlinuz-", StringComparison.Ordinal) ? name["vmlinuz-".Length..] : name;
    }

    /// <summary>
    /// ext4 with a fixed feature set (our own mke2fs.conf), so the result does not depend on the host's e2fsprogs
    /// defaults: newer ones enable orphan_file and metadata_csum_seed, which bookworm's GRUB 2.06 and older e2fsck
    /// do not know.
    /// </summary>
    public const string Mke2fsConf = """
        [defaults]
        	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
        	default_mntopts = acl,user_xattr
        	blocksize = 4096
        	inode_size = 256
        	inode_ratio = 16384
        [fs_types]
        	ext4 = {
        		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
        	}

        """;

    private static void MakeFilesystem(string root, string raw, long diskSize, Guid uuid, string work)
    {
        using (var f = new FileStream(raw, FileMode.CreateNew, FileAccess.Write)) f.SetLength(diskSize);
        string conf = Path.Combine(work, "mke2fs.conf");
        File.WriteAllText(conf, Mke2fsConf);
        long partKiB = BiosDiskLayout.PartitionSize(diskSize) >> 10;
        var output = new List<string>();
        int rc = Stream("mkfs.ext4", ["-F", "-q", "-t", "ext4", "-L", "root", "-U", uuid.ToString(),
            "-E", $"offset={BiosDiskLayout.PartitionStart}", "-d", root, raw, $"{partKiB}k"], output.Add,
            env: new() { ["MKE2FS_CONFIG"] = conf });
        if (rc != 0) throw new ImageBuildException($"mkfs.ext4 -d failed: {output.LastOrDefault() ?? $"exit code {rc}"}");
    }

    private static void InstallGrub(string raw, long diskSize, string work)
    {
        string core = Path.Combine(work, "core.img");
        var output = new List<string>();
        int rc = Stream("grub-mkimage", ["-O", "i386-pc", "-d", GrubDir, "-o", core, "-p", GuestConfig.GrubPrefix, .. GuestConfig.GrubModules], output.Add);
        if (rc != 0) throw new ImageBuildException($"grub-mkimage failed: {output.LastOrDefault() ?? $"exit code {rc}"}");
        byte[] mbr = BiosDiskLayout.BuildMbr(File.ReadAllBytes(Path.Combine(GrubDir, "boot.img")), diskSize,
            (uint)Random.Shared.NextInt64(1, uint.MaxValue));
        byte[] coreImg = BiosDiskLayout.PrepareCoreImage(File.ReadAllBytes(core));
        using var f = new FileStream(raw, FileMode.Open, FileAccess.Write);
        f.Position = BiosDiskLayout.SectorSize;
        f.Write(coreImg);
        f.Position = 0;
        f.Write(mbr);
    }

    /// <summary>raw → qcow2 with Dirigent.Storage; all-zero clusters are left unallocated, so the file stays small.</summary>
    public static void ConvertToQcow2(string raw, string qcow2)
    {
        long size = new FileInfo(raw).Length;
        DiskImage.Create(qcow2, "qcow2", size);
        using var dst = DiskImage.Open(qcow2, "qcow2", readOnly: false);
        using var src = new FileStream(raw, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        var buf = new byte[1 << 16];
        for (long off = 0; off < size; off += buf.Length)
        {
            int n = (int)Math.Min(buf.Length, size - off);
            src.ReadExactly(buf, 0, n);
            if (buf.AsSpan(0, n).ContainsAnyExcept((byte)0)) dst.Write(off, buf.AsSpan(0, n));
        }
        dst.Flush();
    }

    private static void Chroot(string root, IReadOnlyList<string> command, string? stdin = null)
    {
        var output = new List<string>();
        int rc = Stream("chroot", [root, .. command], output.Add, stdin: stdin);
        if (rc != 0)
            throw new ImageBuildException($"chroot {string.Join(' ', command)} failed: {output.LastOrDefault() ?? $"exit code {rc}"}");
    }

    /// <summary>Runs a tool, giving each line of its stdout and stderr to <paramref name="onLine"/>; returns its exit code.</summary>
    private static int Stream(string file, IReadOnlyList<string> args, Action<string> onLine,
        Dictionary<string, string>? env = null, string? stdin = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        psi.Environment["DEBIAN_FRONTEND"] = "noninteractive";
        Process p;
        try { p = Process.Start(psi) ?? throw new ImageBuildException($"cannot start {file}: {Packages}"); }
        catch (Win32Exception) { throw new ImageBuildException($"{file} is not available: {Packages}"); }
        using (p)
        {
            var gate = new object();
            p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (gate) onLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (gate) onLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            if (stdin != null) p.StandardInput.Write(stdin);
            p.StandardInput.Close();
            p.WaitForExit();
            return p.ExitCode;
        }
    }

    private static string? FindOnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").Split(':')
            .Concat(["/usr/sbin", "/sbin"])
            .Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists);

    private static string DiskInfoHuman(long bytes) => bytes >= 1L << 30 && bytes % (1L << 30) == 0
        ? $"{bytes >> 30} GiB" : $"{bytes >> 20} MiB";

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = false)]
    private static extern uint geteuid();
}
