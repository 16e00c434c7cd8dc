using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using static Dirigent.Cli.Client.ClientAction;

namespace Dirigent.Cli.Client;

/// <summary>
/// `dirigent vm trace|dump|ps`: introspection of a daemon's running VM (README "Introspection"), through the
/// daemon's /api/v1/vms/NAME/{trace,memory-dump,processes}.
/// </summary>
public static class VmIntrospectionCommands
{
    private const string Vms = "/api/v1/vms";

    public static void AddTo(Command vm, ConnectionOptions conn)
    {
        vm.Subcommands.Add(TraceCommand(conn));
        vm.Subcommands.Add(DumpCommand(conn));
        vm.Subcommands.Add(PsCommand(conn));
    }

    private static Command TraceCommand(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The VM's name" };
        var process = new Option<string?>("--process") { Description = "Only the system calls of processes with this name (comm)" };
        var output = new Option<string?>("--output") { Description = "Append the JSON lines to this file instead of standard output" };
        var cmd = new Command("trace", "Stream the VM's system calls as JSON lines until Ctrl-C (software CPU only)") { name, process, output };
        Set(cmd, "vm trace", async (r, ct) =>
        {
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            void OnSignal(PosixSignalContext c) { c.Cancel = true; stop.Cancel(); }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            ct = stop.Token;
            string path = $"{Vms}/{Seg(r.GetValue(name)!)}/trace";
            if (r.GetValue(process) is { } p) path += $"?process={Uri.EscapeDataString(p)}";
            using var client = conn.Connect(r);
            using var response = await client.SendAsync(HttpMethod.Get, path, null, ct, HttpCompletionOption.ResponseHeadersRead);
            Stream sink;
            try { sink = r.GetValue(output) is { } file ? new FileStream(file, FileMode.Append, FileAccess.Write) : Console.OpenStandardOutput(); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                throw new CliException(ClientExit.BadCommandLine, $"--output: {DaemonClient.OneLine(e.Message)}");
            }
            await using (sink)
            {
                await using var body = await response.Content.ReadAsStreamAsync(ct);
                var buf = new byte[16 * 1024];
                try
                {
                    int n;
                    while ((n = await body.ReadAsync(buf, ct)) > 0)
                    {
                        await sink.WriteAsync(buf.AsMemory(0, n), ct);
                        await sink.FlushAsync(ct);
                    }
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested) { return ClientExit.Ok; } // Ctrl-C
                catch (Exception e) when (e is IOException or HttpRequestException)
                {
                    throw new CliException(ClientExit.Unreachable, $"the trace stream broke: {DaemonClient.OneLine(e.Message)}");
                }
            }
            return ClientExit.Ok; // the VM ended
        });
        return cmd;
    }

    private static Command DumpCommand(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The VM's name" };
        var file = new Argument<string>("PATH") { Description = "Where to write guest RAM (created or truncated)" };
        var format = new Option<string>("--format") { Description = "raw (file offset = guest-physical address) or elf (an ELF64 core, as QEMU's dump-guest-memory)", DefaultValueFactory = _ => "raw" };
        format.AcceptOnlyFromAmong("raw", "elf");
        var cmd = new Command("dump", "Write the VM's guest RAM to a file (the VM is paused for the copy)") { name, file, format };
        Set(cmd, "vm dump", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            using var response = await client.SendAsync(HttpMethod.Post, $"{Vms}/{Seg(r.GetValue(name)!)}/memory-dump",
                new JsonObject { ["format"] = r.GetValue(format) }, ct, HttpCompletionOption.ResponseHeadersRead);
            string path = r.GetValue(file)!;
            try
            {
                await using var body = await response.Content.ReadAsStreamAsync(ct);
                await using var f = new FileStream(path, FileMode.Create, FileAccess.Write);
                await body.CopyToAsync(f, ct);
            }
            catch (Exception e) when (e is UnauthorizedAccessException or DirectoryNotFoundException or ArgumentException or NotSupportedException)
            {
                throw new CliException(ClientExit.BadCommandLine, $"{path}: {DaemonClient.OneLine(e.Message)}");
            }
            catch (Exception e) when (e is IOException or HttpRequestException)
            {
                throw new CliException(ClientExit.Unreachable, $"the dump stream broke: {DaemonClient.OneLine(e.Message)}");
            }
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static readonly IReadOnlyList<Column> PsColumns =
    [
        new("PID", o => Output.Text(o["pid"])),
        new("COMM", o => Output.Text(o["comm"])),
    ];

    private static Command PsCommand(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The VM's name" };
        var output = Output.CreateOption();
        var cmd = new Command("ps", "List the guest's processes from its kernel's task list (needs the kernel's System.map)") { name, output };
        Set(cmd, "vm ps", async (r, ct) =>
        {
            using var client = conn.Connect(r);
            var answer = await client.GetAsync($"{Vms}/{Seg(r.GetValue(name)!)}/processes", ct);
            Output.WriteList(Console.Out, r.GetValue(output), Output.Items(answer, "processes"), PsColumns);
            return ClientExit.Ok;
        });
        return cmd;
    }
}
