using System.Text.Json;
using Dirigent.Api;
using Dirigent.Daemon.Vms;
using Dirigent.Vmm;

namespace Dirigent.Tests.Daemon.Vms;

/// <summary>
/// A VM made from a system image boots that image through SeaBIOS (spec.firmware "bios" by default), and its worker
/// hands the guest the VM's name as hostname through fw_cfg; other VMs keep direct boot unless they ask for bios.
/// </summary>
public class ImageFirmwareRequestTests
{
    private static VmRecord Parse(string json, out string? image) =>
        VmRequestParser.ParseCreate(JsonDocument.Parse(json).RootElement, out image);

    [Fact]
    public async Task AVmFromAnImageBootsThroughTheBiosWithItsNameAsHostname()
    {
        var rec = Parse("""{"name":"web-1","image":"debian"}""", out string? image);
        Assert.Equal("debian", image);
        Assert.Equal("bios", rec.Spec.Firmware);
        var args = await WorkerArgs.BuildAsync(rec.Spec, rec.Name, null!, CancellationToken.None);
        Assert.Equal("bios", args[args.IndexOf("--firmware") + 1]);
        Assert.Equal($"name={FwCfgFileConfig.GuestHostnameFile},string=web-1", args[args.IndexOf("--fw-cfg") + 1]);
        // What the worker's command line parser makes of it: the file the guest reads.
        var file = FwCfgFileConfig.Parse(args[args.IndexOf("--fw-cfg") + 1]);
        Assert.Equal("opt/org.dirigent/hostname", file.Name);
        Assert.Equal("web-1"u8.ToArray(), file.Data);
        // The image builder's unit reads the same name.
        Assert.Equal(Dirigent.Images.Debian.GuestConfig.HostnameFwCfgName, FwCfgFileConfig.GuestHostnameFile);
    }

    [Fact]
    public async Task WithoutAnImageTheWorkerBootsDirectlyUnlessTheSpecSaysBios()
    {
        var plain = Parse("""{"name":"a"}""", out _);
        Assert.Null(plain.Spec.Firmware);
        var args = await WorkerArgs.BuildAsync(plain.Spec, plain.Name, null!, CancellationToken.None);
        Assert.Equal("none", args[args.IndexOf("--firmware") + 1]);
        Assert.DoesNotContain("--fw-cfg", args);

        var bios = Parse("""{"name":"b","spec":{"firmware":"bios","disks":[{"path":"/srv/b.qcow2"}]}}""", out _);
        args = await WorkerArgs.BuildAsync(bios.Spec, bios.Name, null!, CancellationToken.None);
        Assert.Equal("bios", args[args.IndexOf("--firmware") + 1]);

        // An image VM may still ask for direct boot of the default guest.
        var direct = Parse("""{"name":"c","image":"debian","spec":{"firmware":"none"}}""", out _);
        Assert.Equal("none", direct.Spec.Firmware);
    }

    [Theory]
    [InlineData("""{"name":"a","spec":{"firmware":"uefi"}}""", "field 'spec.firmware' must be bios or none")]
    [InlineData("""{"name":"a","spec":{"firmware":"bios","kernel":"/boot/vmlinuz"}}""", "cannot be combined with 'spec.kernel'")]
    [InlineData("""{"name":"a","spec":{"firmware":1}}""", "spec.firmware")]
    // Guest RAM must end below the 40 physical address bits the CPU models advertise (as `run --memory`).
    [InlineData("""{"name":"a","spec":{"memory_mib":1048576}}""", "spec.memory_mib")]
    public void BadFirmwareIsA400(string json, string expected)
    {
        var e = Assert.Throws<ApiRequestException>(() => Parse(json, out _));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("name=opt/x,string=a,b", "unknown option 'b'")]
    [InlineData("string=abc", "name=opt/... is required")]
    [InlineData("name=etc/e820,string=x", "must start with opt/")]
    [InlineData("name=opt/a,string=x,file=/etc/hostname", "exactly one of string= and file=")]
    [InlineData("name=opt/a,file=/nonexistent/file", "no such file")]
    [InlineData("name=opt/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,string=x", "at most 55")]
    public void BadFwCfgOptionsAreOneLine(string value, string expected)
    {
        var e = Assert.Throws<FormatException>(() => FwCfgFileConfig.Parse(value));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }
}
