using System.CommandLine;
using System.Text.Json.Nodes;
using Dirigent.Storage;
using static Dirigent.Cli.Client.ClientAction;

namespace Dirigent.Cli.Client;

/// <summary>
/// `dirigent disk list|add|rm`: disks kept by the daemon (DIR/disks/NAME.qcow2|.raw), beside the local-file verbs
/// `disk create|info PATH` of <see cref="DiskCommand"/>, which stay as they are.
/// </summary>
public static class DaemonDiskCommands
{
    private const string Disks = "/api/v1/disks";

    public static readonly IReadOnlyList<Column> ListColumns =
    [
        new("NAME", o => Output.Text(o["name"])),
        new("FORMAT", o => Output.Text(o["format"])),
        new("SIZE", o => o["size_bytes"] is JsonValue v && v.TryGetValue(out long n) ? DiskInfo.Human(n) : Output.Text(o["size_bytes"])),
        new("BACKING", o => Output.Text(o["backing"])),
        new("OWNER", o => Output.Text(o["owner"])),
    ];

    /// <summary>Adds the daemon's verbs to the existing `disk` command.</summary>
    public static void AddTo(Command disk)
    {
        var conn = new ConnectionOptions();
        disk.Subcommands.Add(List(conn));
        disk.Subcommands.Add(Add(conn));
        disk.Subcommands.Add(Remove(conn));
    }

    private static Command List(ConnectionOptions conn)
    {
        var output = Output.CreateOption();
        var cmd = new Command("list", "List the daemon's disks") { output };
        cmd.Aliases.Add("ls");
        conn.AddTo(cmd);
        Set(cmd, "disk list", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            var answer = await client.GetAsync(Disks, ct);
            Output.WriteList(Console.Out, r.GetValue(output), Output.Items(answer, "disks"), ListColumns);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command Add(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The disk's name: a-z, 0-9 and '-'" };
        var size = new Option<string?>("--size", "-s") { Description = "Virtual size: 8G, 512M or bytes (default with --backing: the backing disk's)" };
        var format = new Option<string?>("--format", "-f") { Description = "qcow2 (default) or raw" };
        var backing = new Option<string?>("--backing", "-b") { Description = "Another daemon disk to overlay (qcow2 only)" };
        var output = Output.CreateOption();
        var cmd = new Command("add", "Create a disk in the daemon's store (use it with `vm create --disk NAME`)") { name, size, format, backing, output };
        conn.AddTo(cmd);
        Set(cmd, "disk add", async (r, ct) =>
        {
            var body = AddBody(r.GetValue(name)!, r.GetValue(size), r.GetValue(format), r.GetValue(backing));
            using var client = conn.Connect(r);
            var record = await client.JsonAsync(HttpMethod.Post, Disks, body, ct);
            if (r.GetResult(output) is { Implicit: false }) Output.WriteObject(Console.Out, r.GetValue(output), record);
            return ClientExit.Ok;
        });
        return cmd;
    }

    /// <summary>POST /disks body. The size goes as bytes so the daemon and the CLI cannot read "8G" differently.</summary>
    public static JsonObject AddBody(string name, string? size, string? format, string? backing)
    {
        if (format is not (null or "qcow2" or "raw")) throw new FormatException($"--format must be qcow2 or raw, got '{format}'");
        if (backing != null && format == "raw") throw new FormatException("--backing needs --format qcow2");
        if (size == null && backing == null) throw new FormatException("--size is required without --backing");
        var body = new JsonObject { ["name"] = name, ["format"] = format ?? "qcow2" };
        if (size != null)
        {
            long bytes = DiskInfo.ParseSize(size);
            if (bytes <= 0) throw new FormatException($"--size must be above 0, got '{size}'");
            body["size"] = bytes;
        }
        if (backing != null) body["backing"] = backing;
        return body;
    }

    private static Command Remove(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The disk to delete (refused while a VM's spec uses it)" };
        var cmd = new Command("rm", "Delete a disk from the daemon's store") { name };
        conn.AddTo(cmd);
        Set(cmd, "disk rm", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            using var _ = await client.SendAsync(HttpMethod.Delete, $"{Disks}/{Seg(r.GetValue(name)!)}", null, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }
}
