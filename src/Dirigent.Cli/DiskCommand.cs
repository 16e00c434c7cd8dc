using System.CommandLine;
using Dirigent.Storage;
using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>`dirigent disk create|info`: qcow2 and raw images (like qemu-img create/info); list|add|rm go to the daemon.</summary>
internal static class DiskCommand
{
    public static Command Create()
    {
        var disk = new Command("disk", "Disk images: local files (create, info) and the daemon's disks (list, add, rm)");

        var format = new Option<string>("--format", "-f") { Description = "qcow2 or raw", DefaultValueFactory = _ => "qcow2" };
        var size = new Option<string?>("--size", "-s") { Description = "Virtual size: 8G, 512M, 100K or bytes (default with --backing: the backing file's size)" };
        var backing = new Option<string?>("--backing", "-b") { Description = "Backing file (qcow2 only); a relative path is relative to the new image's directory" };
        var backingFormat = new Option<string?>("--backing-format", "-F") { Description = "raw or qcow2 (default: probed)" };
        var clusterSize = new Option<string>("--cluster-size") { Description = "qcow2 cluster size, a power of two from 512 to 2M", DefaultValueFactory = _ => "64K" };
        var createPath = new Argument<string>("PATH") { Description = "The image file to create" };
        var create = new Command("create", "Create a disk image") { format, size, backing, backingFormat, clusterSize, createPath };
        create.SetAction(r => Guard("disk create", () =>
        {
            string path = r.GetValue(createPath)!;
            string fmt = r.GetValue(format)!;
            string? back = r.GetValue(backing);
            string? sizeText = r.GetValue(size);
            if (File.Exists(path)) throw new FormatException($"'{path}' already exists");
            long bytes;
            if (sizeText != null) bytes = DiskInfo.ParseSize(sizeText);
            else if (back != null)
            {
                string dir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
                using var b = DiskImage.Open(Path.IsPathRooted(back) ? back : Path.Combine(dir, back), r.GetValue(backingFormat), readOnly: true);
                bytes = b.Size;
            }
            else throw new FormatException("--size is required without --backing");
            long cs = DiskInfo.ParseSize(r.GetValue(clusterSize)!);
            if (cs < 512 || cs > 2 << 20 || (cs & (cs - 1)) != 0)
                throw new FormatException($"--cluster-size must be a power of two from 512 to 2M, got {r.GetValue(clusterSize)}");
            DiskImage.Create(path, fmt, bytes, back, r.GetValue(backingFormat), System.Numerics.BitOperations.Log2((ulong)cs));
            Console.WriteLine($"created {path}: {fmt}, {DiskInfo.Human(bytes)}{(back != null ? $", backing {back}" : "")}");
        }));

        var infoFormat = new Option<string?>("--format", "-f") { Description = "raw or qcow2 (default: probed)" };
        var infoPath = new Argument<string>("PATH") { Description = "The image file" };
        var info = new Command("info", "Describe a disk image and its backing chain") { infoFormat, infoPath };
        info.SetAction(r =>
        {
            Qcow2CheckResult? check = null;
            string path = r.GetValue(infoPath)!;
            int rc = Guard("disk info", () =>
            {
                Console.Write(DiskInfo.Describe(path, r.GetValue(infoFormat), out check));
            });
            if (rc != ExitCodes.Ok || check == null || (check.Corruptions == 0 && check.CheckErrors == 0)) return rc;
            // A corrupt image is not described as if it were fine: one line on stderr and status 2 (as `disk check`).
            Console.Error.WriteLine($"dirigent disk info: '{path}' is corrupt: {check.Corruptions} error(s) (details: dirigent disk check {path})");
            return ExitCodes.BadInput;
        });

        var checkOutput = new Option<string>("--output", "-o") { Description = "human or json (qemu-img check's fields)", DefaultValueFactory = _ => "human" };
        var checkPath = new Argument<string>("PATH") { Description = "The qcow2 image" };
        var check = new Command("check", "Check a qcow2 image's metadata like qemu-img check (read-only). Exit status: 0 clean, 2 corrupt, 3 leaks only, 1 the check could not run")
            { checkOutput, checkPath };
        check.SetAction(r => Check(r.GetValue(checkPath)!, r.GetValue(checkOutput)!));

        disk.Subcommands.Add(create);
        disk.Subcommands.Add(info);
        disk.Subcommands.Add(check);
        Client.DaemonDiskCommands.AddTo(disk); // list|add|rm: the daemon's disks
        return disk;
    }

    /// <summary>qemu-img check's exit statuses: 0 clean, 1 could not check, 2 corruptions, 3 leaked clusters only.</summary>
    private static int Check(string path, string output)
    {
        if (output is not ("human" or "json"))
        {
            Console.Error.WriteLine($"dirigent disk check: --output must be human or json, got '{output}'");
            return 1;
        }
        Qcow2CheckResult result;
        try
        {
            if (DiskImage.Probe(path) != "qcow2") throw new BlockDeviceException($"'{path}' is not a qcow2 image (raw images have no metadata to check)");
            result = Qcow2Check.Run(path);
        }
        catch (Exception e) when (e is BlockDeviceException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"dirigent disk check: {e.Message}");
            return 1;
        }
        Console.Write(output == "json" ? Client.Output.Json(result.ToJson()) + "\n" : result.ToText());
        return result.ExitStatus;
    }

    private static int Guard(string what, Action action)
    {
        try
        {
            action();
            return ExitCodes.Ok;
        }
        catch (Exception e) when (e is BlockDeviceException or FormatException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"dirigent {what}: {e.Message}");
            return ExitCodes.BadInput;
        }
    }
}
