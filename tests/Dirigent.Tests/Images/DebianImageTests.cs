using System.Buffers.Binary;
using Dirigent.Images;
using Dirigent.Images.Debian;

namespace Dirigent.Tests.Images;

/// <summary>
/// The Debian system image's pieces that need no mirror and no root: option checking, the files we write into the
/// guest, the partition layout and GRUB's MBR and core.img patching, and the CLI's bad-input lines.
/// </summary>
public sealed class DebianImageTests : IDisposable
{
    private readonly string _dir = Cli.Cli.TempDir("dimg");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private DebianImageOptions Parse(string? size = null, string? release = null, string? format = null,
        string? sshKey = null, string? hostname = null, string outName = "web-1.qcow2") =>
        DebianImageOptions.Parse(Path.Combine(_dir, outName), release, size, format, sshKey, hostname, _dir, mirror: "http://mirror.invalid/debian");

    [Fact]
    public void DefaultsAreBookwormFourGigQcow2NamedAfterTheFile()
    {
        var o = Parse();
        Assert.Equal("bookworm", o.Release);
        Assert.Equal(4L << 30, o.Size);
        Assert.Equal("qcow2", o.Format);
        Assert.Equal("web-1", o.Hostname);
        Assert.Null(o.SshKeys);
    }

    [Theory]
    [InlineData("1G", null, null, "too small")]
    [InlineData("3T", null, null, "too large")]
    [InlineData("4x", null, null, "not a size")]
    [InlineData(null, "sid", null, "unknown --release 'sid'")]
    [InlineData(null, null, "vmdk", "--format must be qcow2 or raw")]
    public void BadOptionsAreOneLineNamingTheOption(string? size, string? release, string? format, string expected)
    {
        var e = Assert.Throws<ImageBuildException>(() => Parse(size, release, format));
        Assert.True(e.BadInput);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void SshKeyFileIsCheckedAndAPrivateKeyRefused()
    {
        Assert.Contains("no such file", Assert.Throws<ImageBuildException>(() => Parse(sshKey: Path.Combine(_dir, "none.pub"))).Message);
        string priv = Path.Combine(_dir, "id");
        File.WriteAllText(priv, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n");
        Assert.Contains("private key", Assert.Throws<ImageBuildException>(() => Parse(sshKey: priv)).Message);
        string junk = Path.Combine(_dir, "junk.pub");
        File.WriteAllText(junk, "hello world\n");
        Assert.Contains("not an OpenSSH public key", Assert.Throws<ImageBuildException>(() => Parse(sshKey: junk)).Message);
        string pub = Path.Combine(_dir, "id.pub");
        File.WriteAllText(pub, "# mine\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMh6b1D7rC0Xx4a8tFr9Y1r3l2Q6Xk0mY0E8hZ1n2s3t me@host");
        Assert.EndsWith("me@host\n", Parse(sshKey: pub).SshKeys);
    }

    [Fact]
    public void OutputMustNotExistAndItsDirectoryMust()
    {
        File.WriteAllText(Path.Combine(_dir, "taken.qcow2"), "");
        Assert.Contains("already exists", Assert.Throws<ImageBuildException>(() => Parse(outName: "taken.qcow2")).Message);
        Assert.Contains("does not exist", Assert.Throws<ImageBuildException>(() => Parse(outName: "no/such/dir/x.qcow2")).Message);
    }

    [Theory]
    [InlineData("web-1.qcow2", "web-1")]
    [InlineData("My_VM.img", "my-vm")]
    [InlineData("_.qcow2", "debian")]
    [InlineData("--", "debian")]
    public void HostnameFromTheFileName(string file, string expected)
    {
        Assert.Equal(expected, GuestConfig.HostnameFromPath("/tmp/" + file));
        Assert.True(GuestConfig.IsValidHostname(expected));
    }

    [Theory]
    [InlineData("-web")]
    [InlineData("web_1")]
    [InlineData("Web")]
    [InlineData("")]
    public void BadHostnamesAreRefused(string name)
    {
        Assert.False(GuestConfig.IsValidHostname(name));
        if (name.Length > 0) Assert.Contains("--hostname", Assert.Throws<ImageBuildException>(() => Parse(hostname: name)).Message);
    }

    [Fact]
    public void GrubMenuAndFstabFindRootByUuidAndUseTheSerialConsole()
    {
        var uuid = Guid.Parse("8e02e906-776a-47f5-a8fe-d6f034c10e02");
        string cfg = GuestConfig.GrubCfg(uuid, "web-1");
        Assert.Contains("serial --unit=0 --speed=115200", cfg);
        Assert.Contains("terminal_output serial console", cfg);
        Assert.Contains($"search --no-floppy --fs-uuid --set=root {uuid}", cfg);
        Assert.Contains($"linux /vmlinuz root=UUID={uuid} ro console=ttyS0,115200n8", cfg);
        Assert.Contains("initrd /initrd.img\n", cfg);
        Assert.Contains($"UUID={uuid} / ext4 errors=remount-ro 0 1", GuestConfig.Fstab(uuid));
        Assert.Contains("127.0.1.1\tweb-1", GuestConfig.Hosts("web-1"));
        Assert.Contains("Type=ether", GuestConfig.NetworkUnit);
        Assert.Contains("Name=en* eth*", GuestConfig.NetworkUnit);
        Assert.Contains("DHCP=yes", GuestConfig.NetworkUnit);
        Assert.Contains("ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key", GuestConfig.SshKeygenUnit);
    }

    [Fact]
    public void RandomPasswordsDiffer()
    {
        string a = GuestConfig.RandomPassword(), b = GuestConfig.RandomPassword();
        Assert.Equal(20, a.Length);
        Assert.NotEqual(a, b);
    }

    [Theory]
    [InlineData(4L << 30, (4L << 30) - (1 << 20))]
    [InlineData((2L << 30) + 512 * 3, (2L << 30) - (1 << 20))] // a partial MiB at the end is left unused
    public void PartitionFillsTheDiskFromOneMiBInWholeMiB(long disk, long expected) =>
        Assert.Equal(expected, BiosDiskLayout.PartitionSize(disk));

    [Fact]
    public void ChsUsesFdiskGeometryAndSaturates()
    {
        var chs = new byte[3];
        BiosDiskLayout.WriteChs(chs, 2048); // fdisk writes 20 21 00 for a partition at 1 MiB
        Assert.Equal(new byte[] { 0x20, 0x21, 0x00 }, chs);
        BiosDiskLayout.WriteChs(chs, 1024L * 255 * 63); // past cylinder 1023: 1023/254/63
        Assert.Equal(new byte[] { 0xFE, 0xFF, 0xFF }, chs);
    }

    /// <summary>A stand-in for GRUB's boot.img: code bytes, the default kernel sector 1, drive 0xff, the drive-check jump.</summary>
    private static byte[] FakeBootImg()
    {
        var b = new byte[512];
        new Random(14).NextBytes(b);
        b[0x66] = 0xEB; b[0x67] = 0x05;
        b[0x1fe] = 0x55; b[0x1ff] = 0xAA;
        return b;
    }

    [Fact]
    public void MbrKeepsGrubCodeAndDescribesOnePartition()
    {
        var boot = FakeBootImg();
        long disk = 4L << 30;
        var mbr = BiosDiskLayout.BuildMbr(boot, disk, 0xA5AFF854);
        Assert.Equal(boot.AsSpan(0, 3).ToArray(), mbr.AsSpan(0, 3).ToArray()); // the jump over the BPB
        Assert.True(mbr.AsSpan(0x3, 0x5a - 0x3).IndexOfAnyExcept((byte)0) < 0, "BPB cleared");
        Assert.Equal(boot.AsSpan(0x68, 0x1b8 - 0x68).ToArray(), mbr.AsSpan(0x68, 0x1b8 - 0x68).ToArray()); // boot code
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(mbr.AsSpan(0x5c)));
        Assert.Equal(0xff, mbr[0x64]);
        Assert.Equal(new byte[] { 0x90, 0x90 }, mbr[0x66..0x68]);
        Assert.Equal(0xA5AFF854u, BinaryPrimitives.ReadUInt32LittleEndian(mbr.AsSpan(0x1b8)));
        Assert.Equal(0x80, mbr[0x1be]);
        Assert.Equal(0x83, mbr[0x1be + 4]);
        Assert.Equal(2048u, BinaryPrimitives.ReadUInt32LittleEndian(mbr.AsSpan(0x1be + 8)));
        Assert.Equal((uint)(((4L << 30) - (1 << 20)) / 512), BinaryPrimitives.ReadUInt32LittleEndian(mbr.AsSpan(0x1be + 12)));
        Assert.True(mbr.AsSpan(0x1ce, 48).IndexOfAnyExcept((byte)0) < 0, "entries 2-4 empty");
        Assert.Equal(new byte[] { 0x55, 0xAA }, mbr[0x1fe..]);
        Assert.Throws<ImageBuildException>(() => BiosDiskLayout.BuildMbr(new byte[512], disk, 1)); // no 55 AA
        Assert.Throws<ImageBuildException>(() => BiosDiskLayout.BuildMbr(new byte[100], disk, 1));
    }

    [Fact]
    public void CoreImageBlocklistPointsAtTheSectorsAfterItsFirst()
    {
        var core = new byte[512 * 60 + 100]; // grub-mkimage's output is not sector-padded
        core[0] = 0xEA;
        var padded = BiosDiskLayout.PrepareCoreImage(core);
        Assert.Equal(61 * 512, padded.Length);
        Assert.Equal(0xEA, padded[0]);
        Assert.Equal(2UL, BinaryPrimitives.ReadUInt64LittleEndian(padded.AsSpan(500)));
        Assert.Equal(60, BinaryPrimitives.ReadUInt16LittleEndian(padded.AsSpan(508)));
        Assert.Equal(0x820, BinaryPrimitives.ReadUInt16LittleEndian(padded.AsSpan(510)));
        Assert.Contains("more than the 2047", Assert.Throws<ImageBuildException>(() => BiosDiskLayout.PrepareCoreImage(new byte[2048 * 512])).Message);
    }

    [Theory]
    [InlineData("1G", "too small")]
    [InlineData("--release", "unknown --release")]
    [InlineData("--ssh-key", "no such file")]
    public void CliBadInputIsStatus2AndOneLine(string what, string expected)
    {
        string outPath = Path.Combine(_dir, "x.qcow2");
        string[] args = what switch
        {
            "1G" => ["image", "build", "debian", "--size", "1G", "--out", outPath],
            "--release" => ["image", "build", "debian", "--release", "hamm", "--out", outPath],
            _ => ["image", "build", "debian", "--ssh-key", Path.Combine(_dir, "none.pub"), "--out", outPath],
        };
        var r = Cli.Cli.Run(_dir, args);
        Assert.True(r.Exit == 2, r.ToString());
        string line = Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("dirigent image build debian: ", line);
        Assert.Contains(expected, line);
        Assert.False(File.Exists(outPath));
    }
}
