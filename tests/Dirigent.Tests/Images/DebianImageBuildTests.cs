using System.Diagnostics;
using Dirigent.Images;
using Dirigent.Images.Debian;
using Dirigent.Storage;
using Xunit.Abstractions;

namespace Dirigent.Tests.Images;

/// <summary>
/// One real build of the Debian system image (mmdebstrap from the Debian mirror, as root; ~3 min cold, ~1 min with
/// the package cache), shared by the tests that look at it, and removed when the test run ends.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public static class DebianTestImage
{
    private static readonly Lazy<(DebianImageResult Result, List<string> Log)> s_image = new(Build);

    /// <summary>Why the image cannot be built here, or null.</summary>
    public static string? SkipReason { get; } = FindSkipReason();

    public static (DebianImageResult Result, List<string> Log) Get() => s_image.Value;

    private static string? FindSkipReason()
    {
                if (DebianImageBuilder.HostProblem() is { } why) return why;
        foreach (var tool in new[] { "qemu-img", "debugfs", "e2fsck", "sfdisk" })
            if (!new[] { "/usr/bin", "/usr/sbin", "/sbin", "/bin" }.Any(d => File.Exists(Path.Combine(d, tool))))
                return $"{tool} is not installed (qemu-utils, e2fsprogs, fdisk)";
        // The mirror mmdebstrap will use: no point starting a 3-minute build that cannot download.
        string mirror = Environment.GetEnvironmentVariable("DIRIGENT_DEBIAN_MIRROR") is { Length: > 0 } m ? m : DebianImageOptions.DefaultMirror;
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
            using var r = http.Send(new HttpRequestMessage(HttpMethod.Head, $"{mirror}/dists/bookworm/InRelease"));
            if (!r.IsSuccessStatusCode) return $"the Debian mirror {mirror} answered {(int)r.StatusCode}";
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return $"the Debian mirror {mirror} is unreachable ({e.Message})";
        }
        return null;
    }

    private static (DebianImageResult, List<string>) Build()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-debian").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, recursive: true); } catch (IOException) { } };
        // The user's package cache (as `dirigent image build debian` uses it), so a second test run downloads little.
        string cache = Environment.GetEnvironmentVariable("DIRIGENT_CACHE") is { Length: > 0 } c ? c
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "dirigent");
        var o = DebianImageOptions.Parse(Path.Combine(dir, "dtest.qcow2"), null, "3G", null, null, null, cache);
        var log = new List<string>();
        var sw = Stopwatch.StartNew();
        var result = DebianImageBuilder.Build(o, l => { lock (log) log.Add(l); });
        log.Add($"(test) build took {sw.Elapsed.TotalSeconds:F0} s");
        return (result, log);
    }

    /// <summary>Runs a host tool; returns its exit code, stdout + stderr, and stdout alone.</summary>
    public static (int Exit, string Output, string Stdout) Tool(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + err.Result, output);
    }
}

/// <summary>
/// Builds the Debian image for real and checks it from outside: qcow2 metadata (qemu-img check), the partition
/// table (sfdisk), the filesystem (e2fsck) and the files we promise (debugfs). Skipped without root, mmdebstrap,
/// GRUB's i386-pc files or the Debian mirror.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class DebianImageBuildTests(ITestOutputHelper output)
{
    private static string Cat(string fs, string path) => DebianTestImage.Tool("debugfs", "-R", $"cat {path}", fs).Stdout;
    private static bool Exists(string fs, string path) => !DebianTestImage.Tool("debugfs", "-R", $"stat {path}", fs).Output.Contains("not found", StringComparison.OrdinalIgnoreCase);

    [SkippableFact]
    public void BuildsABootableDiskWithWhatWePromise()
    {
        Skip.If(DebianTestImage.SkipReason != null, DebianTestImage.SkipReason);
        var (img, log) = DebianTestImage.Get();
        foreach (var line in log) output.WriteLine(line);
        string all = string.Join('\n', log);
        Assert.Contains("[1/5] mmdebstrap bookworm", all);
        Assert.Contains("[5/5] writing qcow2", all);
        Assert.Contains("I: success", all); // mmdebstrap's own step lines come through, condensed
        Assert.NotNull(img.RootPassword);
        Assert.Matches(@"^\d+\.\d+\.\d+-\d+-cloud-amd64$", img.KernelVersion);
        Assert.True(File.Exists(img.Path));
        // No work directory (.NAME.build-PID) or temporary output (NAME.tmp-PID) left beside the image.
        Assert.DoesNotContain(Directory.GetFileSystemEntries(Path.GetDirectoryName(img.Path)!),
            p => Path.GetFileName(p).StartsWith('.') || p.Contains(".tmp-", StringComparison.Ordinal));

        var check = DebianTestImage.Tool("qemu-img", "check", img.Path);
        Assert.True(check.Exit == 0, check.Output);
        Assert.Contains("No errors were found", check.Output);

        string raw = img.Path + ".raw";
        try
        {
            var conv = DebianTestImage.Tool("qemu-img", "convert", "-O", "raw", img.Path, raw);
            Assert.True(conv.Exit == 0, conv.Output);
            Assert.Equal(3L << 30, new FileInfo(raw).Length);

            // Our qcow2 reader agrees with qemu-img on the boot sectors (MBR, core.img) and the superblock.
            var ours = new byte[2 << 20];
            using (var q = DiskImage.Open(img.Path, "qcow2", readOnly: true)) q.Read(0, ours);
            var theirs = new byte[ours.Length];
            using (var f = File.OpenRead(raw)) f.ReadExactly(theirs);
            Assert.True(ours.AsSpan().SequenceEqual(theirs), "Dirigent.Storage and qemu-img read the same first 2 MiB");
            var bootImg = File.ReadAllBytes(Path.Combine(DebianImageBuilder.GrubDir, "boot.img"));
            Assert.True(ours.AsSpan(0x68, 0x1b8 - 0x68).SequenceEqual(bootImg.AsSpan(0x68, 0x1b8 - 0x68)), "GRUB's boot code is in the MBR");

            var sf = DebianTestImage.Tool("sfdisk", "--json", raw);
            Assert.True(sf.Exit == 0, sf.Output);
            Assert.Contains("\"label\": \"dos\"", sf.Output);
            Assert.Contains("\"start\": 2048", sf.Output);
            Assert.Contains($"\"size\": {((3L << 30) - (1 << 20)) / 512}", sf.Output);
            Assert.Contains("\"type\": \"83\"", sf.Output);
            Assert.Contains("\"bootable\": true", sf.Output);

            string fs = $"{raw}?offset={BiosDiskLayout.PartitionStart}";
            var fsck = DebianTestImage.Tool("e2fsck", "-fn", fs);
            Assert.True(fsck.Exit == 0, fsck.Output);
            Assert.Contains(img.RootUuid.ToString(), DebianTestImage.Tool("debugfs", "-R", "stats", fs).Output);

            Assert.Equal("dtest\n", Cat(fs, "/etc/hostname"));
            Assert.Contains($"UUID={img.RootUuid} / ext4", Cat(fs, "/etc/fstab"));
            string grub = Cat(fs, "/boot/grub/grub.cfg");
            Assert.Contains($"root=UUID={img.RootUuid}", grub);
            Assert.Contains("console=ttyS0,115200", grub);
            Assert.True(Exists(fs, "/boot/grub/i386-pc/normal.mod"));
            Assert.True(Exists(fs, $"/boot/vmlinuz-{img.KernelVersion}"));
            Assert.True(Exists(fs, $"/boot/initrd.img-{img.KernelVersion}"));
            Assert.Contains("Type: symlink", DebianTestImage.Tool("debugfs", "-R", "stat /vmlinuz", fs).Output);
            Assert.True(Exists(fs, "/usr/sbin/sshd"));
            Assert.True(Exists(fs, "/lib/systemd/systemd"));
            Assert.Contains("DHCP=yes", Cat(fs, "/" + GuestConfig.NetworkUnitPath));
            Assert.True(Exists(fs, "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"), "networkd enabled");
            Assert.True(Exists(fs, "/etc/systemd/system/multi-user.target.wants/" + GuestConfig.SshKeygenUnitName), "host keys made on first boot");
            Assert.True(Exists(fs, "/etc/systemd/system/sysinit.target.wants/" + GuestConfig.HostnameUnitName), "hostname from fw_cfg at boot");
            Assert.Equal(GuestConfig.HostnameScript, Cat(fs, "/" + GuestConfig.HostnameScriptPath));
            Assert.False(Exists(fs, "/etc/ssh/ssh_host_ed25519_key"), "no SSH host keys shared by every copy");
            Assert.Contains("PermitRootLogin yes", Cat(fs, "/etc/ssh/sshd_config.d/dirigent-root-password.conf"));
            Assert.Matches(@"(?m)^root:\$[0-9a-z]+\$", Cat(fs, "/etc/shadow")); // a hashed password, not locked
            Assert.Equal("", Cat(fs, "/etc/machine-id")); // made on first boot, so clones differ
        }
        finally
        {
            File.Delete(raw);
        }
    }
}
