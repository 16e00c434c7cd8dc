using Dirigent.Tests.Infrastructure;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Storage;
using Dirigent.Vmm;
using Dirigent.Vmm.Sandbox;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// The --sandbox profile (README "Introspection"): disks on qcow2 overlays, restricted network, a start snapshot to
/// revert to, and the report of changed clusters and files, read from the overlay after the run.
/// </summary>
public class SandboxTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(5);

    private static string? Tool(string name) =>
        new[] { "/usr/sbin/", "/sbin/", "/usr/bin/" }.Select(d => d + name).FirstOrDefault(File.Exists);

    private static string Sh(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd(), e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {e}");
        return o;
    }

    /// <summary>A 16 MiB ext4 image (4 KiB blocks) holding /victim.txt (8 KiB of 'A'); returns its first data block.</summary>
    private static long MakeBase(string dir, string image)
    {
        string mkfs = Tool("mkfs.ext4")!, debugfs = Tool("debugfs")!;
        string content = Path.Combine(dir, "victim.txt");
        File.WriteAllBytes(content, Enumerable.Repeat((byte)'A', 8192).ToArray());
        Sh(mkfs, "-q", "-F", "-b", "4096", image, "16M");
        Sh(debugfs, "-w", "-R", $"write {content} victim.txt", image);
        string bmap = Sh(debugfs, "-R", "bmap victim.txt 0", image).Trim();
        return long.Parse(bmap.Split('\n').Last());
    }

    [SkippableFact]
    [Trait("Category", "Boot")]
    public void SandboxedGuestWriteIsReportedTheBaseIsUntouchedAndRevertRestoresTheStart()
    {
        Skip.If(Tool("mkfs.ext4") == null || Tool("debugfs") == null, "e2fsprogs (mkfs.ext4, debugfs) is not installed");
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        string dir = Directory.CreateTempSubdirectory("dirigent-sandbox-").FullName;
        try
        {
            string baseImage = Path.Combine(dir, "base.img"), box = Path.Combine(dir, "box");
            long block = MakeBase(dir, baseImage);
            byte[] baseHash = SHA256.HashData(File.ReadAllBytes(baseImage));
            // The guest overwrites the file's first block through the raw device, then syncs (the init script powers off).
            string script = $"printf SANDBOXED-WRITE | dd of=/dev/vda bs=4096 seek={block} conv=notrunc 2>/dev/null; sync; echo SANDBOX-DONE";
            var spec = DefaultGuestSpec.For(img, script);
            spec.Disks.Add(VmSpec.ParseDisk($"{baseImage},format=raw"));
            var r = new Dirigent.Tests.Boot.GuestRunner();
            int rc = r.Run(spec, Guard, new RunOptions { Sandbox = box });
            Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}");
            Assert.Contains("SANDBOX-DONE", r.Output);
            Assert.Contains("sandbox report", r.Errors);

            // The base image is as it was; the overlay holds the write.
            Assert.Equal(baseHash, SHA256.HashData(File.ReadAllBytes(baseImage)));
            var report = JsonNode.Parse(File.ReadAllText(Path.Combine(box, VmSandbox.ReportFile)))!;
            var disk = report["disks"]![0]!;
            Assert.Equal(baseImage, (string?)disk["base"]);
            Assert.True((long)disk["changed_clusters"]! >= 1, disk.ToJsonString());
            long at = block * 4096;
            Assert.Contains(disk["ranges"]!.AsArray(), x => (long)x!["offset"]! <= at && at < (long)x["offset"]! + (long)x["length"]!);
            Assert.Equal(4096, (int)disk["filesystem"]!["block_size"]!);
            var victim = disk["files"]!.AsArray().SingleOrDefault(f => (string?)f!["path"] == "/victim.txt");
            Assert.True(victim != null, $"victim.txt is not among the changed files: {disk.ToJsonString()}");
            Assert.Equal(1, (int)victim!["changed_blocks"]!); // 15 bytes in its first block; its second is as it was
            Assert.True((long)disk["changed_blocks"]! >= 1);
            using (var q = Qcow2Disk.Open(Path.Combine(box, "disk0.qcow2"), readOnly: true))
            {
                var got = new byte[15];
                q.Read(at, got);
                Assert.Equal("SANDBOXED-WRITE"u8.ToArray(), got);
            }

            // Revert: the overlay is as at the start (nothing the guest wrote), and the start snapshot restores.
            string start = VmSandbox.Revert(box);
            Assert.False(File.Exists(Path.Combine(box, VmSandbox.ReportFile)));
            var after = SandboxReport.Build(box)["disks"]![0]!;
            Assert.Equal(0, (long)after["changed_clusters"]!);
            using (var q = Qcow2Disk.Open(Path.Combine(box, "disk0.qcow2"), readOnly: true))
            {
                var got = new byte[15];
                q.Read(at, got);
                Assert.Equal(Enumerable.Repeat((byte)'A', 15).ToArray(), got);
            }
            using (var vm = Vm.Restore(start, null, TextWriter.Null))
            {
                Assert.Equal(VmState.Paused, vm.State);
                Assert.Single(vm.Spec.Disks);
                Assert.Equal(Path.Combine(box, "disk0.qcow2"), vm.Spec.Disks[0].Path);
            }
            Assert.Equal(baseHash, SHA256.HashData(File.ReadAllBytes(baseImage)));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void PrepareRefusesATapAndANonEmptyDirectoryAndRestrictsUserNetworking()
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-sandbox-").FullName;
        try
        {
            var tap = new VmSpec();
            tap.Nics.Add(NicConfig.Parse("tap=tap0", 0));
            Assert.Contains("TAP", Assert.Throws<VmException>(() => VmSandbox.Prepare(tap, Path.Combine(dir, "a"))).Message);
            File.WriteAllText(Path.Combine(dir, "x"), "");
            Assert.Contains("not empty", Assert.Throws<VmException>(() => VmSandbox.Prepare(new VmSpec(), dir)).Message);

            var user = new VmSpec();
            user.Nics.Add(NicConfig.Parse("user", 0));
            Assert.False(user.Nics[0].User!.Restricted);
            var boxed = VmSandbox.Prepare(user, Path.Combine(dir, "b"));
            Assert.True(boxed.Nics[0].User!.Restricted);
            Assert.False(user.Nics[0].User!.Restricted); // the caller's spec is unchanged
            Assert.True(VmSandbox.Exists(Path.Combine(dir, "b")));

            Assert.True(NicConfig.Parse("user,restrict=on", 0).User!.Restricted);
            Assert.False(NicConfig.Parse("user,restrict=off", 0).User!.Restricted);
            Assert.Throws<FormatException>(() => NicConfig.Parse("user,restrict=maybe", 0));
            Assert.Throws<FormatException>(() => NicConfig.Parse("tap=t0,restrict=on", 0));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void BadSandboxRunsAreOneLineAndStatus2()
    {
        string home = Dirigent.Tests.Cli.Cli.TempDir("dirigent-sbbad");
        try
        {
            string box = Path.Combine(home, "box");
            void Refused(string expected, params string[] args)
            {
                var r = Dirigent.Tests.Cli.Cli.Run(home, args);
                Assert.True(r.Exit == 2, $"expected status 2\n{r}");
                string err = r.Err.Trim();
                Assert.DoesNotContain("\n", err);
                Assert.DoesNotContain("   at ", r.Err);
                Assert.Contains(expected, err);
            }
            Refused("TAP", "run", "--serial", "none", "--sandbox", box, "--net", "tap=dgsb0");
            Assert.False(Directory.Exists(box)); // refused before anything was made
            Refused("--restore", "run", "--serial", "none", "--sandbox", box, "--restore", home);
            Directory.CreateDirectory(box);
            File.WriteAllText(Path.Combine(box, VmSandbox.ManifestFile), "{\"disks\":[]}");
            Refused("existing sandbox", "run", "--serial", "none", "--sandbox", box, "--memory", "64M");
            Refused("no start snapshot", "run", "--serial", "none", "--sandbox", box);
        }
        finally { Directory.Delete(home, recursive: true); }
    }
}
