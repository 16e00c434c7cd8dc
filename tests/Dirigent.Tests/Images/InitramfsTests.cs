using System.IO.Compression;
using System.Text;
using Dirigent.Tests.Firmware;
using Dirigent.Images;

namespace Dirigent.Tests.Images;

public class InitramfsTests
{
    private static byte[] SampleArchive()
    {
        using var ms = new MemoryStream();
        using (var w = new CpioNewcWriter(ms, leaveOpen: true))
        {
            w.AddDirectory("bin");
            w.AddFile("/bin/tool", "abcde"u8, 0x1ED);
            w.AddSymlink("bin/sh", "tool");
            w.AddCharDevice("dev/console", 5, 1);
            w.AddFile("empty", []);
            w.AddFile("long-name-" + new string('x', 37), Enumerable.Range(0, 1001).Select(i => (byte)i).ToArray());
        }
        return ms.ToArray();
    }

    [Fact]
    public void NewcArchiveRoundTripsThroughOurReader()
    {
        var e = CpioNewcReader.Read(SampleArchive());
        Assert.Equal(["bin", "bin/tool", "bin/sh", "dev/console", "empty", "long-name-" + new string('x', 37)], e.Select(x => x.Name));
        Assert.Equal(0x41EDu, e[0].Mode);
        Assert.Equal(0x81EDu, e[1].Mode);
        Assert.Equal("abcde", Encoding.ASCII.GetString(e[1].Data));
        Assert.Equal(0xA1FFu, e[2].Mode);
        Assert.Equal("tool", Encoding.ASCII.GetString(e[2].Data));
        Assert.Equal((0x2180u, 5u, 1u), (e[3].Mode, e[3].RdevMajor, e[3].RdevMinor));
        Assert.Empty(e[4].Data);
        Assert.Equal(1001, e[5].Data.Length);
        Assert.Equal(e.Count, e.Select(x => x.Ino).Distinct().Count()); // distinct inodes: no accidental hard links
    }

    [Fact]
    public void SystemCpioListsAndExtractsTheArchive()
    {
        string cpio = RequiredTool.Find("cpio", "cpio");
        var archive = SampleArchive();
        var (rc, list) = RequiredTool.Run(cpio, ["-t", "--quiet"], Path.GetTempPath(), archive);
        Assert.True(rc == 0, list);
        Assert.Equal(["bin", "bin/tool", "bin/sh", "dev/console", "empty", "long-name-" + new string('x', 37)],
            list.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        string dir = Directory.CreateTempSubdirectory("dirigent-cpio").FullName;
        try
        {
            // Device nodes need privileges; extract the rest.
            var (xrc, xout) = RequiredTool.Run(cpio, ["-i", "-d", "--quiet", "--no-absolute-filenames", "bin/*", "empty"], dir, archive);
            Assert.True(xrc == 0, xout);
            Assert.Equal("abcde", File.ReadAllText(Path.Combine(dir, "bin/tool")));
            Assert.Equal("tool", new FileInfo(Path.Combine(dir, "bin/sh")).LinkTarget);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void InitramfsIsGzippedCpioWithInitBusyboxAndModules()
    {
        var busybox = "\x7F" + "ELF fake busybox";
        var gz = DefaultImage.BuildInitramfs(Encoding.ASCII.GetBytes(busybox), [("virtio_blk.ko", [1, 2, 3])]);
        Assert.Equal(new byte[] { 0x1F, 0x8B }, gz[..2]);
        using var raw = new MemoryStream();
        using (var z = new GZipStream(new MemoryStream(gz), CompressionMode.Decompress)) z.CopyTo(raw);
        var e = CpioNewcReader.Read(raw.ToArray()).ToDictionary(x => x.Name);

        Assert.Equal(busybox, Encoding.ASCII.GetString(e["bin/busybox"].Data));
        Assert.Equal(0x81EDu, e["bin/busybox"].Mode);
        Assert.Equal("busybox", Encoding.ASCII.GetString(e["bin/sh"].Data));
        Assert.Equal(new byte[] { 1, 2, 3 }, e["lib/modules/virtio_blk.ko"].Data);
        Assert.Equal((5u, 1u), (e["dev/console"].RdevMajor, e["dev/console"].RdevMinor));
        foreach (var d in new[] { "proc", "sys", "dev", "tmp" }) Assert.Equal(0x4000u, e[d].Mode & 0xF000);
        Assert.Equal(0x81EDu, e["init"].Mode);
        Assert.Equal(InitScript.Text, Encoding.UTF8.GetString(e["init"].Data));
        // Every applet link must come after its directory so the kernel can create it while unpacking.
        var names = e.Keys.ToList();
        Assert.True(names.IndexOf("bin") < names.IndexOf("bin/sh"));
    }

    [Fact]
    public void InitScriptLoadsModulesInDependencyOrderAndHandlesTheCommand()
    {
        string s = InitScript.Text;
        Assert.StartsWith("#!/bin/sh\n", s);
        foreach (var m in new[] { "mount -t proc", "mount -t sysfs", "mount -t devtmpfs", "poweroff -f", "setsid cttyhack sh", "base64 -d" })
            Assert.Contains(m, s);
        var order = InitScript.ModuleOrder.ToList();
        // depends= of the Debian 6.1 modules: each must come after what it needs.
        foreach (var (mod, dep) in new[] { ("virtio", "virtio_ring"), ("virtio_pci", "virtio"), ("virtio_pci", "virtio_pci_modern_dev"),
                     ("virtio_pci", "virtio_pci_legacy_dev"), ("virtio_blk", "virtio"), ("net_failover", "failover"),
                     ("virtio_net", "net_failover"), ("virtio-rng", "virtio") })
            Assert.True(order.IndexOf(dep) < order.IndexOf(mod), $"{dep} before {mod}");
        Assert.Contains("for m in " + string.Join(' ', order) + "; do", s);
        Assert.Equal("dirigent.cmd=ZWNobyBoaSAmJiBleGl0IDM=", InitScript.CommandArgument("echo hi && exit 3"));
    }

    /// <summary>Runs /init's logic with the host's sh and stub commands (a fake root), checking what it would do.</summary>
    [Theory]
    [InlineData("console=ttyS0 dirigent.cmd=ZWNobyBoaSAmJiBleGl0IDM= quiet", "hi\ndirigent: exit status 3\n")]
    [InlineData("console=ttyS0", "SHELL\n")]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void InitScriptRunsTheCommandOrAShellThenPowersOff(string cmdline, string expectedOut)
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-init").FullName;
        try
        {
            string bin = Path.Combine(dir, "stub");
            Directory.CreateDirectory(bin);
            void Stub(string name, string body) { File.WriteAllText(Path.Combine(bin, name), "#!/bin/sh\n" + body + "\n"); File.SetUnixFileMode(Path.Combine(bin, name), (UnixFileMode)0x1ED); }
            foreach (var n in new[] { "mount", "insmod", "sync", "uname" }) Stub(n, "true");
            Stub("acpid", $"echo \"ACPID $*\" >> {dir}/log");
            Stub("poweroff", $"echo POWEROFF >> {dir}/log");
            Stub("setsid", "echo SHELL");
            Stub("cat", $"[ \"$1\" = /proc/cmdline ] && echo '{cmdline}' || /bin/cat \"$@\"");
            // Point /init's absolute paths into the fake root, and keep stubs first on PATH.
            string script = InitScript.Text.Replace("export PATH=/bin:/sbin:/usr/bin:/usr/sbin", $"export PATH={bin}:/usr/bin:/bin")
                .Replace("/bin/busybox --install -s", "true").Replace("/etc/acpi", dir + "/etc/acpi").Replace("echo \"dirigent: $(uname -r)", "true \"");
            File.WriteAllText(Path.Combine(dir, "init"), script);
            var (rc, output) = RequiredTool.Run("/bin/sh", [Path.Combine(dir, "init")], dir);
            Assert.True(rc == 0, output);
            Assert.Equal(expectedOut, output);
            Assert.Equal("ACPID -l /dev/null\nPOWEROFF\n", File.ReadAllText(Path.Combine(dir, "log")));
            // The power-button handler acpid runs for KEY_POWER: executable, announces itself, powers off.
            string handler = Path.Combine(dir, "etc/acpi/PWRF/00000080");
            Assert.Contains(InitScript.PowerButtonLine, File.ReadAllText(handler));
            Assert.EndsWith("poweroff -f\n", File.ReadAllText(handler));
            Assert.True((File.GetUnixFileMode(handler) & UnixFileMode.UserExecute) != 0);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}

public class DefaultImageHelperTests
{
    [Fact]
    public void VersionedPackageNamesCompareNumerically()
    {
        Assert.True(DefaultImage.CompareVersionNames("linux-image-6.1.0-10-cloud-amd64", "linux-image-6.1.0-9-cloud-amd64") > 0);
        Assert.True(DefaultImage.CompareVersionNames("linux-image-5.10.0-30-cloud-amd64", "linux-image-6.1.0-1-cloud-amd64") < 0);
    }

    [Fact]
    public void ArReaderSplitsMembersWithOddPadding()
    {
        static byte[] Member(string name, string data)
        {
            var h = $"{name,-16}{"0",-12}{"0",-6}{"0",-6}{"100644",-8}{data.Length,-10}`\n";
            return Encoding.ASCII.GetBytes(h + data + (data.Length % 2 == 1 ? "\n" : ""));
        }
        var ar = Encoding.ASCII.GetBytes("!<arch>\n").Concat(Member("debian-binary", "2.0\n")).Concat(Member("control.tar.xz", "abc"))
            .Concat(Member("data.tar.xz", "hello")).ToArray();
        var m = DebArchive.ReadAr(ar).ToList();
        Assert.Equal(["debian-binary", "control.tar.xz", "data.tar.xz"], m.Select(x => x.Name));
        Assert.Equal("hello", Encoding.ASCII.GetString(m[2].Data));
        Assert.Throws<InvalidDataException>(() => DebArchive.ReadAr(Encoding.ASCII.GetBytes("not an archive")).ToList());
    }
}
