using System.CommandLine;
using System.Text.Json.Nodes;
using static Dirigent.Cli.Client.ClientAction;

namespace Dirigent.Cli.Client;

/// <summary>
/// `dirigent vm ...`: the daemon's VMs through its REST API (issue #11). Quiet on success except for what was asked
/// (listings, show, ids); every failure is one line on stderr and a <see cref="ClientExit"/> status.
/// </summary>
public static class VmCommands
{
    private const string Vms = "/api/v1/vms";

    public static Command Create()
    {
        var conn = new ConnectionOptions();
        var vm = new Command("vm", "Manage the daemon's VMs (talks to `dirigent daemon`)");
        conn.AddTo(vm);

        vm.Subcommands.Add(CreateCommand(conn));
        vm.Subcommands.Add(ListCommand(conn));
        vm.Subcommands.Add(ShowCommand(conn));
        foreach (var (action, help) in new[]
        {
            ("start", "Start a stopped or crashed VM"),
            ("stop", "Stop a VM at once (like pulling the plug)"),
            ("reboot", "Reboot a running VM"),
            ("reset", "Reset a running VM"),
            ("pause", "Pause a running VM's vCPUs"),
            ("resume", "Resume a paused VM"),
        })
            vm.Subcommands.Add(ActionCommand(conn, action, help));
        vm.Subcommands.Add(ShutdownCommand(conn));
        vm.Subcommands.Add(DeleteCommand(conn));
        vm.Subcommands.Add(SetCommand(conn));
        vm.Subcommands.Add(VmConsole.Create(conn));
        vm.Subcommands.Add(LogCommand(conn));
        vm.Subcommands.Add(SnapshotCommand(conn));
        vm.Subcommands.Add(SnapshotsCommand(conn));
        vm.Subcommands.Add(RestoreCommand(conn));
        vm.Subcommands.Add(CloneCommand(conn));
        vm.Subcommands.Add(MigrateCommand(conn));
        VmIntrospectionCommands.AddTo(vm, conn);
        return vm;
    }

    /// <summary>The table columns of `vm list`.</summary>
    public static readonly IReadOnlyList<Column> ListColumns =
    [
        new("NAME", o => Output.Text(o["name"])),
        new("STATE", o => Output.Text(o["state"])),
        new("VCPUS", o => Output.Text(o["spec"]?["vcpus"])),
        new("MEMORY", o => Output.Mib(o["spec"]?["memory_mib"])),
        new("CPU-LIMIT", o => Output.Text(o["limits"]?["cpu"])),
        new("PID", o => Output.Text(o["pid"])),
        new("EXIT", o => o["exit"] is JsonObject e ? $"{Output.Text(e["kind"])}{(e["detail"] is { } d ? ": " + Output.Text(d) : "")}" : ""),
        // Last: the cluster host the VM is placed on (shown only when some VM has one, see ListColumnsFor).
        new("HOST", o => Output.Text(o["host"])),
    ];

    /// <summary>`vm list`'s columns for these rows: HOST only in cluster mode (a one-host listing reads as before).</summary>
    public static IReadOnlyList<Column> ListColumnsFor(IEnumerable<JsonObject> rows) =>
        rows.Any(o => o["host"] is JsonValue) ? ListColumns : ListColumns.Where(c => c.Header != "HOST").ToArray();

    private static Argument<string> NameArg(string help = "The VM's name") => new("NAME") { Description = help };

    private static Option<bool> NoWait() => new("--no-wait") { Description = "Print the operation's id and return at once instead of waiting for it" };

    private static Command CreateCommand(ConnectionOptions conn)
    {
        var name = NameArg("The new VM's name: a-z, 0-9 and '-', up to 63 characters");
        var spec = new VmSpecOptions();
        var output = Output.CreateOption();
        var image = new Option<string?>("--image")
        {
            Description = "Boot disk: a linked clone (qcow2 overlay, removed by `vm delete --purge`) of the daemon's image NAME (HOME/images/NAME.qcow2, see `image build debian`)",
        };
        var pin = new Option<string?>("--pin") { Description = "Cluster: place the VM on this host only (a host name)" };
        var anti = new Option<string?>("--anti-affinity") { Description = "Cluster: never place two VMs of this group on one host (a group name)" };
        var cmd = new Command("create", "Define a VM (stopped; `vm start` runs it)") { name, output, image, pin, anti };
        spec.AddTo(cmd);
        Set(cmd, "vm create", async (r, ct) =>
        {
            string n = r.GetValue(name)!;
            var body = spec.CreateBody(r, n);
            if (r.GetValue(image) is { } img) body["image"] = img;
            if (r.GetValue(pin) != null || r.GetValue(anti) != null)
                body["placement"] = new JsonObject { ["host"] = r.GetValue(pin), ["anti_affinity"] = r.GetValue(anti) };
            using var client = conn.Connect(r);
            var record = await client.JsonAsync(HttpMethod.Post, Vms, body, ct);
            // Quiet unless asked: the record is what `vm show` prints.
            if (r.GetResult(output) is { Implicit: false }) Output.WriteObject(Console.Out, r.GetValue(output), record);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command ListCommand(ConnectionOptions conn)
    {
        var state = new Option<string?>("--state") { Description = "Only VMs in this state (running, stopped, crashed, ...)" };
        var output = Output.CreateOption();
        var cmd = new Command("list", "List the VMs") { state, output };
        cmd.Aliases.Add("ls");
        Set(cmd, "vm list", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            string? s = r.GetValue(state);
            var answer = await client.GetAsync(s == null ? Vms : $"{Vms}?state={Uri.EscapeDataString(s)}", ct);
            var items = Output.Items(answer, "vms");
            Output.WriteList(Console.Out, r.GetValue(output), items, ListColumnsFor(items.OfType<JsonObject>()));
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command ShowCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var output = Output.CreateOption();
        var cmd = new Command("show", "Show a VM's record: state, spec, limits, last exit") { name, output };
        Set(cmd, "vm show", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            var record = await client.GetAsync($"{Vms}/{Seg(r.GetValue(name)!)}", ct);
            Output.WriteObject(Console.Out, r.GetValue(output), record);
            return ClientExit.Ok;
        });
        return cmd;
    }

    /// <summary>POST /vms/{name}/ACTION: 202 and an operation, waited for unless --no-wait.</summary>
    private static Command ActionCommand(ConnectionOptions conn, string action, string help)
    {
        var name = NameArg();
        var noWait = NoWait();
        var cmd = new Command(action, help) { name, noWait };
        Set(cmd, $"vm {action}", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            await client.SubmitAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/{action}", null, r.GetValue(noWait), Console.Out, Console.Error, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command ShutdownCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var timeout = new Option<int?>("--timeout") { Description = "Seconds to wait for the guest to power off (daemon default: 60)" };
        var force = new Option<bool>("--force") { Description = "Stop the VM when the guest has not powered off by the timeout" };
        var noWait = NoWait();
        var cmd = new Command("shutdown", "Press the VM's power button and wait for the guest to power off") { name, timeout, force, noWait };
        Set(cmd, "vm shutdown", async (r, ct) =>
        {
            var body = new JsonObject();
            if (r.GetValue(timeout) is { } t)
            {
                if (t < 0) throw new FormatException($"--timeout must be 0 or more seconds, got {t}");
                body["timeout_s"] = t;
            }
            if (r.GetValue(force)) body["force"] = true;
            using var client = conn.Connect(r);
            await client.SubmitAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/shutdown", body.Count > 0 ? body : null,
                r.GetValue(noWait), Console.Out, Console.Error, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command MigrateCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var to = new Option<string>("--to") { Description = "The host to move the running VM to (cluster mode)", Required = true };
        var noWait = NoWait();
        var cmd = new Command("migrate", "Live-migrate a running VM to another host of the cluster") { name, to, noWait };
        Set(cmd, "vm migrate", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            await client.SubmitAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/migrate", new JsonObject { ["host"] = r.GetValue(to) },
                r.GetValue(noWait), Console.Out, Console.Error, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command DeleteCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var purge = new Option<bool>("--purge") { Description = "Also delete the disks the VM owns (those made for it by `vm clone` and `vm create --image`)" };
        var cmd = new Command("delete", "Delete a stopped or crashed VM") { name, purge };
        cmd.Aliases.Add("rm");
        Set(cmd, "vm delete", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            string path = $"{Vms}/{Seg(r.GetValue(name)!)}{(r.GetValue(purge) ? "?purge=true" : "")}";
            using var _ = await client.SendAsync(HttpMethod.Delete, path, null, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command SetCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var spec = new VmSpecOptions();
        var output = Output.CreateOption();
        var cmd = new Command("set", "Change a VM: any spec option while it is stopped; limits, --restart and --autostart also while it runs") { name, output };
        spec.AddTo(cmd);
        Set(cmd, "vm set", async (r, ct) =>
        {
            var body = spec.PatchBody(r);
            if (body.Count == 0) throw new CliException(ClientExit.BadCommandLine, "nothing to change: give at least one option (see --help)");
            using var client = conn.Connect(r);
            var record = await client.JsonAsync(HttpMethod.Patch, $"{Vms}/{Seg(r.GetValue(name)!)}", body, ct);
            if (r.GetResult(output) is { Implicit: false }) Output.WriteObject(Console.Out, r.GetValue(output), record);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command LogCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var cmd = new Command("log", "Print the VM's persisted console log (its serial output, also from earlier runs)") { name };
        Set(cmd, "vm log", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            using var response = await client.SendAsync(HttpMethod.Get, $"{Vms}/{Seg(r.GetValue(name)!)}/console/log", null, ct,
                HttpCompletionOption.ResponseHeadersRead);
            // The guest's bytes as they are: no decoding, so a binary-ish console survives a pipe.
            await using var body = await response.Content.ReadAsStreamAsync(ct);
            await using var stdout = Console.OpenStandardOutput();
            try { await body.CopyToAsync(stdout, ct); }
            catch (IOException e) { throw new CliException(ClientExit.Unreachable, $"the log stream broke: {DaemonClient.OneLine(e.Message)}"); }
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command SnapshotCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var snap = new Argument<string>("SNAP") { Description = "The snapshot's name" };
        var noWait = NoWait();
        var cmd = new Command("snapshot", "Snapshot a running or paused VM (memory, devices, disks)") { name, snap, noWait };
        Set(cmd, "vm snapshot", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            await client.SubmitAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/snapshots", new JsonObject { ["name"] = r.GetValue(snap) },
                r.GetValue(noWait), Console.Out, Console.Error, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command SnapshotsCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var output = Output.CreateOption();
        var cmd = new Command("snapshots", "List a VM's snapshots") { name, output };
        Set(cmd, "vm snapshots", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            var answer = await client.GetAsync($"{Vms}/{Seg(r.GetValue(name)!)}/snapshots", ct);
            Output.WriteList(Console.Out, r.GetValue(output), Output.Items(answer, "snapshots"),
            [
                new("NAME", o => Output.Text(o["name"])),
                new("CREATED", o => Output.Text(o["created_at"])),
                new("SIZE", o => o["size_bytes"] is JsonValue v && v.TryGetValue(out long n) ? Dirigent.Storage.DiskInfo.Human(n) : Output.Text(o["size_bytes"])),
            ]);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command RestoreCommand(ConnectionOptions conn)
    {
        var name = NameArg();
        var snap = new Argument<string>("SNAP") { Description = "The snapshot to resume" };
        var noWait = NoWait();
        var cmd = new Command("restore", "Run the VM from one of its snapshots (a running VM is replaced)") { name, snap, noWait };
        Set(cmd, "vm restore", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            await client.SubmitAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/snapshots/{Seg(r.GetValue(snap)!)}/restore", null,
                r.GetValue(noWait), Console.Out, Console.Error, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command CloneCommand(ConnectionOptions conn)
    {
        var name = NameArg("The stopped VM to clone");
        var newName = new Argument<string>("NEW") { Description = "The clone's name" };
        var noWait = NoWait();
        var cmd = new Command("clone", "Make a linked clone of a stopped VM (each disk becomes a qcow2 overlay on the original)") { name, newName, noWait };
        Set(cmd, "vm clone", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            await client.SubmitAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/clone", new JsonObject { ["name"] = r.GetValue(newName) },
                r.GetValue(noWait), Console.Out, Console.Error, ct);
            return ClientExit.Ok;
        });
        return cmd;
    }
}
