using Dirigent.Storage;
using Dirigent.Cli;
using Dirigent.Vmm;

namespace Dirigent.Tests.Virtio;

public class DiskOptionTests
{
    [Fact]
    public void DiskSpecParsesPathFormatAndReadOnly()
    {
        Assert.Equal(new DiskConfig("/a/b.img", DiskFormat.Auto, false), VmSpec.ParseDisk("/a/b.img"));
        Assert.Equal(new DiskConfig("x.qcow2", DiskFormat.Qcow2, true), VmSpec.ParseDisk("x.qcow2,format=qcow2,readonly"));
        Assert.Equal(new DiskConfig("x", DiskFormat.Raw, true), VmSpec.ParseDisk("x,readonly=on,format=raw"));
        Assert.Contains("unknown option 'format=vmdk'", Assert.Throws<FormatException>(() => VmSpec.ParseDisk("x,format=vmdk")).Message);
        Assert.Contains("missing image path", Assert.Throws<FormatException>(() => VmSpec.ParseDisk(",readonly")).Message);
    }

    [Fact]
    public void FactoryOpensRawAndQcow2ProbesTheFormatAndRefusesMissingFilesWithOneLine()
    {
        string f = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(f, new byte[4096]);
            using (var d = DiskFactory.Open(f, DiskFormat.Raw, readOnly: true))
            {
                Assert.Equal(4096, d.Size);
                Assert.True(d.ReadOnly);
            }
            var q = Assert.Throws<BlockDeviceException>(() => DiskFactory.Open(f, DiskFormat.Qcow2, false));
            Assert.DoesNotContain('\n', q.Message);
            DiskImage.Create(f + ".qcow2", "qcow2", 1 << 20);
            try
            {
                using (var d = DiskFactory.Open(f + ".qcow2", DiskFormat.Auto, readOnly: false))
                {
                    Assert.IsType<Qcow2Disk>(d);
                    Assert.Equal(1 << 20, d.Size);
                }
                using (var d = DiskFactory.Open(f, DiskFormat.Auto, readOnly: true)) Assert.IsType<RawDisk>(d);
            }
            finally { File.Delete(f + ".qcow2"); }
            var m = Assert.Throws<BlockDeviceException>(() => DiskFactory.Open(f + ".missing", DiskFormat.Raw, false));
            Assert.DoesNotContain('\n', m.Message);
        }
        finally { File.Delete(f); }
    }

    [Fact]
    public void RunWithAnUnopenableDiskFailsWithStatus2BeforeStartingTheVm()
    {
        var cfg = new VmSpec { Disks = [new DiskConfig("/nonexistent/disk.img", DiskFormat.Raw, false)], Accel = AccelKind.Emu };
        var err = new StringWriter();
        int rc = VmLauncher.Run(cfg, err, Stream.Null, Stream.Null, useTerminal: false);
        Assert.Equal(ExitCodes.BadInput, rc);
        Assert.Matches(@"^dirigent run: cannot open disk image '/nonexistent/disk.img': .*\n$", err.ToString());
    }
}
