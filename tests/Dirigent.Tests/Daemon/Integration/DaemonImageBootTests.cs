using System.Net;
using Dirigent.Devices.Firmware;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>
/// A VM made from a system image boots that image through SeaBIOS under the real daemon and worker: a stand-in image
/// whose MBR ends the VM through the debug-exit port (BiosBootDisk.WriteDebugExitMbr), so reaching it proves the
/// clone was booted by the firmware, not the default guest's kernel.
/// </summary>
public sealed class DaemonImageBootTests
{
    [SkippableFact]
    public async Task AVmFromAnImageBootsItsCloneThroughSeaBios()
    {
        Skip.IfNot(File.Exists(BiosConfig.DefaultBiosPath), $"{BiosConfig.DefaultBiosPath} is missing (apt-get install seabios)");
        await using var d = await DaemonProcess.StartAsync();
        string image = Path.Combine(d.Home, "images", "mbr.raw");
        Directory.CreateDirectory(Path.GetDirectoryName(image)!);
        Dirigent.Images.BiosBootDisk.WriteDebugExitMbr(image, 0x2A);
        var rec = await d.PostAsync("/api/v1/vms", new { name = "mbr-1", image = "mbr", spec = new { memory_mib = 64, accel = "emu" } }, HttpStatusCode.Created);
        Assert.Equal("bios", rec["spec"]!["firmware"]!.GetValue<string>());

        await using var events = await EventReader.OpenAsync(d, "?vm=mbr-1");
        await d.ActAsync("mbr-1", "start");
        var exited = await events.NextAsync((t, _) => t == "vm-exited");
        string log = await d.Http.GetStringAsync("/api/v1/vms/mbr-1/console/log");
        Assert.Contains("SeaBIOS", log);
        Assert.Contains("Booting from Hard Disk", log);
        // The MBR's debug-exit write (value 0x2A) ended the worker: the firmware ran the clone's boot sector.
        var vm = await d.GetAsync("/api/v1/vms/mbr-1");
        Assert.True(vm["exit"]?["kind"]?.GetValue<string>() == "debug_exit",
            $"the VM did not end through the MBR's debug-exit write: {vm["exit"]?.ToJsonString()} {exited.Data.ToJsonString()}");
        Assert.Equal(HttpStatusCode.NoContent, (await d.SendAsync(HttpMethod.Delete, "/api/v1/vms/mbr-1?purge=true")).Status);
        Assert.True(File.Exists(image), "the image itself stays");
    }
}
