using System.CommandLine;
using System.Text.Json.Nodes;
using Dirigent.Cli.Client;

namespace Dirigent.Tests.Cli;

/// <summary>The daemon CLI's mapping from command-line options to request bodies, checked without a daemon.</summary>
public class CliRequestTests
{
    private static (VmSpecOptions Spec, ParseResult Result) Parse(params string[] args)
    {
        var spec = new VmSpecOptions();
        var cmd = new Command("create") { new Argument<string>("NAME") };
        spec.AddTo(cmd);
        var r = cmd.Parse(args);
        Assert.Empty(r.Errors);
        return (spec, r);
    }

    private static JsonObject Create(params string[] args)
    {
        var (spec, r) = Parse(["web", .. args]);
        return spec.CreateBody(r, "web");
    }

    [Fact]
    public void CreateWithNoOptionsSendsOnlyTheName()
    {
        Assert.Equal("""{"name":"web"}""", Create().ToJsonString());
    }

    [Fact]
    public void CreateMapsEveryOptionToTheContractFields()
    {
        string kernel = Path.GetFullPath("k.bin");
        var body = Create("--memory", "256M", "--cpus", "2", "--kernel", "k.bin", "--initrd", "a.img,/abs/b.img",
            "--append", "console=ttyS0", "--accel", "emu", "--rng", "--cpu-limit", "0.5", "--cpu-weight", "200",
            "--memory-limit", "1G", "--restart", "on-failure", "--autostart");
        var expected = new JsonObject
        {
            ["name"] = "web",
            ["spec"] = new JsonObject
            {
                ["memory_mib"] = 256,
                ["vcpus"] = 2,
                ["kernel"] = kernel,
                ["initrd"] = new JsonArray(Path.GetFullPath("a.img"), "/abs/b.img"),
                ["cmdline"] = "console=ttyS0",
                ["accel"] = "emu",
                ["rng"] = true,
            },
            ["limits"] = new JsonObject { ["cpu"] = 0.5, ["cpu_weight"] = 200, ["memory_mib"] = 1024 },
            ["restart"] = "on-failure",
            ["autostart"] = true,
        };
        Assert.True(JsonNode.DeepEquals(expected, body), body.ToJsonString());
    }

    [Fact]
    public void DisksByNameAndByPath()
    {
        var body = Create("--disk", "data", "--disk", "./root.qcow2,format=qcow2,readonly,bps=1M", "--disk", "disk=logs,iops=100");
        var disks = body["spec"]!["disks"]!.AsArray();
        Assert.Equal("""{"disk":"data"}""", disks[0]!.ToJsonString());
        var file = disks[1]!.AsObject();
        Assert.Equal(Path.GetFullPath("root.qcow2"), (string?)file["path"]);
        Assert.Equal("qcow2", (string?)file["format"]);
        Assert.True((bool)file["readonly"]!);
        Assert.Equal(1L << 20, (long)file["bps"]!);
        Assert.Equal(0L, (long)file["iops"]!);
        Assert.Equal("""{"disk":"logs","iops":100}""", disks[2]!.ToJsonString());
    }

    [Fact]
    public void NicsSendTheMacOnlyWhenGiven()
    {
        var body = Create("--net", "tap=tap0", "--net", "tap=tap1,mac=52:54:00:AA:BB:CC,bps=10M,pps=1000");
        var nics = body["spec"]!["nics"]!.AsArray();
        Assert.Equal("""{"tap":"tap0","mac":null,"netns":null,"bps":0,"pps":0}""", nics[0]!.ToJsonString());
        Assert.Equal("""{"tap":"tap1","mac":"52:54:00:aa:bb:cc","netns":null,"bps":10485760,"pps":1000}""", nics[1]!.ToJsonString());
    }

    [Fact]
    public void UserNicsSendTheirForwardsNormalised()
    {
        var body = Create("--net", "user,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-:53");
        var nics = body["spec"]!["nics"]!.AsArray();
        Assert.Equal("""{"user":true,"hostfwd":["tcp:127.0.0.1:2222-10.0.2.15:22","udp:0.0.0.0:5353-10.0.2.15:53"],"mac":null,"bps":0,"pps":0}""", nics[0]!.ToJsonString());
    }

    [Fact]
    public void SetSendsOnlyWhatChangesAndNoneClearsALimit()
    {
        var (spec, r) = Parse("web", "--cpu-limit", "none", "--memory-limit", "512M", "--autostart", "false", "--rng", "false");
        var body = spec.PatchBody(r);
        Assert.Equal("""{"spec":{"rng":false},"limits":{"cpu":null,"memory_mib":512},"autostart":false}""", body.ToJsonString());
    }

    [Theory]
    [InlineData("--memory", "3")]
    [InlineData("--memory", "12X")]
    [InlineData("--cpus", "0")]
    [InlineData("--accel", "hvf")]
    [InlineData("--cpu-limit", "0")]
    [InlineData("--cpu-limit", "half")]
    [InlineData("--cpu-weight", "0")]
    [InlineData("--cpu-weight", "10001")]
    [InlineData("--restart", "sometimes")]
    [InlineData("--disk", "data,format=raw")]
    [InlineData("--disk", "/x.img,bogus")]
    [InlineData("--net", "mac=52:54:00:00:00:01")]
    [InlineData("--net", "tap=tap0,mac=01:00:00:00:00:01")]
    public void BadValuesAreFormatErrorsBeforeAnyRequest(string option, string value)
    {
        var (spec, r) = Parse("web", option, value);
        Assert.Throws<FormatException>(() => spec.CreateBody(r, "web"));
    }

    [Fact]
    public void DiskAddSendsTheSizeInBytes()
    {
        Assert.Equal("""{"name":"d1","format":"qcow2","size":8589934592}""", DaemonDiskCommands.AddBody("d1", "8G", null, null).ToJsonString());
        Assert.Equal("""{"name":"d2","format":"qcow2","backing":"d1"}""", DaemonDiskCommands.AddBody("d2", null, null, "d1").ToJsonString());
        Assert.Equal("""{"name":"r","format":"raw","size":1024}""", DaemonDiskCommands.AddBody("r", "1K", "raw", null).ToJsonString());
        Assert.Throws<FormatException>(() => DaemonDiskCommands.AddBody("x", null, null, null));
        Assert.Throws<FormatException>(() => DaemonDiskCommands.AddBody("x", "1G", "vmdk", null));
        Assert.Throws<FormatException>(() => DaemonDiskCommands.AddBody("x", "1G", "raw", "d1"));
    }

    [Fact]
    public void TokenRightsAreCheckedByName()
    {
        Assert.Equal(["read", "admin"], TokenCommands.ParseRights("read, admin"));
        Assert.Throws<FormatException>(() => TokenCommands.ParseRights("root"));
        Assert.Throws<FormatException>(() => TokenCommands.ParseRights(","));
    }

    [Theory]
    [InlineData(400, ClientExit.BadCommandLine)]
    [InlineData(413, ClientExit.BadCommandLine)]
    [InlineData(404, ClientExit.NotFound)]
    [InlineData(409, ClientExit.Conflict)]
    [InlineData(412, ClientExit.Conflict)]
    [InlineData(401, ClientExit.Auth)]
    [InlineData(403, ClientExit.Auth)]
    [InlineData(500, ClientExit.Unreachable)]
    [InlineData(503, ClientExit.Unreachable)]
    public void HttpStatusesMapToTheDocumentedExitCodes(int status, int exit)
    {
        Assert.Equal(exit, ClientExit.ForStatus(status));
    }

    [Fact]
    public void HostTakesHostPortOrAnHttpUri()
    {
        using (var c = DaemonClient.ForHost("127.0.0.1:8006", null)) Assert.Equal("http://127.0.0.1:8006", c.Endpoint);
        using (var c = DaemonClient.ForHost("http://[::1]:8006/", "t")) Assert.Equal("http://[::1]:8006", c.Endpoint);
        var e = Assert.Throws<CliException>(() => DaemonClient.ForHost("ftp://x:1", null));
        Assert.Equal(ClientExit.BadCommandLine, e.ExitCode);
        Assert.Throws<CliException>(() => DaemonClient.ForHost("http://x:1/api", null));
    }
}
