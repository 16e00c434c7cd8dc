using System.CommandLine;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Auth;
using Dirigent.Inventory;
using static Dirigent.Cli.Client.ClientAction;

namespace Dirigent.Cli.Client;

/// <summary>
/// `dirigent token create|list|rm`: API tokens for the daemon's TCP listeners. Through the daemon's API when one
/// answers; with no daemon listening on the home's socket (and no --host), directly on HOME/inventory.db through the
/// daemon's own <see cref="TokenStore"/> — so the first token can be made before the daemon ever starts, and the
/// SQLite inventory is safe to share with a daemon that starts meanwhile (WAL, one transaction per write).
/// </summary>
public static class TokenCommands
{
    private const string Tokens = "/api/v1/tokens";

    public static readonly IReadOnlyList<Column> ListColumns =
    [
        new("NAME", o => Output.Text(o["name"])),
        new("RIGHTS", o => o["rights"] is JsonArray a ? string.Join(',', a.Select(Output.Text)) : Output.Text(o["rights"])),
        new("ID", o => Output.Text(o["id"])),
        new("CREATED", o => Output.Text(o["created_at"] ?? o["created"])),
    ];

    public static Command Create()
    {
        var conn = new ConnectionOptions();
        var token = new Command("token", "API tokens for the daemon's TCP listeners (--listen)");
        conn.AddTo(token);
        token.Subcommands.Add(CreateCommand(conn));
        token.Subcommands.Add(ListCommand(conn));
        token.Subcommands.Add(RemoveCommand(conn));
        return token;
    }

    /// <summary>"read,operate" → the rights' names, checked (each right implies the lower ones; the daemon expands them).</summary>
    public static string[] ParseRights(string text)
    {
        var names = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (names.Length == 0) throw new FormatException("--rights needs at least one of read, operate, admin");
        foreach (string n in names)
            if (!TokenRightsExtensions.TryParseName(n, out _))
                throw new FormatException($"--rights: unknown right '{n}' (use read, operate, admin)");
        return names;
    }

    private static Command CreateCommand(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The token's name: 1..64 of a-z, 0-9, '-', '_'" };
        var rights = new Option<string>("--rights") { Description = "read, operate and/or admin, comma-separated (admin implies operate, operate implies read)", DefaultValueFactory = _ => "read" };
        var cmd = new Command("create", "Create a token and print its secret (shown this once only)") { name, rights };
        Set(cmd, "token create", async (r, ct) =>
        {
            string n = r.GetValue(name)!;
            string[] wanted = ParseRights(r.GetValue(rights)!);
            if (!TokenStore.IsValidName(n)) throw new FormatException($"'{n}' is not a token name (1..64 of a-z, 0-9, '-', '_')");
            string secret;
            string[] granted;
            if (await UseApi(conn, r, ct))
            {
                using var client = conn.Connect(r);
                var answer = await client.JsonAsync(HttpMethod.Post, Tokens, new JsonObject { ["name"] = n, ["rights"] = new JsonArray(wanted.Select(w => (JsonNode)w).ToArray()) }, ct);
                secret = (string?)answer?["secret"] ?? (string?)answer?["token"]
                    ?? throw new CliException(ClientExit.Unreachable, "the daemon's answer has no secret");
                granted = answer?["rights"] is JsonArray a ? a.Select(Output.Text).ToArray() : wanted;
            }
            else
            {
                await using var store = OpenOffline(conn, r);
                var rightsValue = wanted.Aggregate(TokenRights.None, (acc, w) => TokenRightsExtensions.TryParseName(w, out var x) ? acc | x : acc);
                var result = await store.Tokens.CreateAsync(n, rightsValue, ct);
                if (result.Outcome == CreateTokenOutcome.Conflict) throw new CliException(ClientExit.Conflict, $"a token named '{n}' already exists (token rm it first)");
                if (!result.Succeeded) throw new FormatException($"cannot create token '{n}': {result.Outcome}");
                secret = result.Secret!;
                granted = result.Token!.Rights.ToNames();
            }
            // The secret alone on stdout, so `T=$(dirigent token create ci)` works; the note goes to stderr.
            Console.WriteLine(secret);
            Console.Error.WriteLine($"dirigent: token '{n}' ({string.Join(", ", granted)}): this is the only time its secret is shown");
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command ListCommand(ConnectionOptions conn)
    {
        var output = Output.CreateOption();
        var cmd = new Command("list", "List the tokens (names and rights; secrets are never shown again)") { output };
        cmd.Aliases.Add("ls");
        Set(cmd, "token list", async (r, ct) =>
        {
            JsonArray items;
            if (await UseApi(conn, r, ct))
            {
                using var client = conn.Connect(r);
                items = Output.Items(await client.GetAsync(Tokens, ct), "tokens");
            }
            else
            {
                await using var store = OpenOffline(conn, r);
                items = new JsonArray((await store.Tokens.ListAsync(ct)).Select(t => (JsonNode)new JsonObject
                {
                    ["name"] = t.Name,
                    ["id"] = t.Id,
                    ["rights"] = new JsonArray(t.Rights.ToNames().Select(x => (JsonNode)x).ToArray()),
                    ["created_at"] = t.Created.ToString("o", System.Globalization.CultureInfo.InvariantCulture),
                }).ToArray());
            }
            Output.WriteList(Console.Out, r.GetValue(output), items, ListColumns);
            return ClientExit.Ok;
        });
        return cmd;
    }

    private static Command RemoveCommand(ConnectionOptions conn)
    {
        var name = new Argument<string>("NAME") { Description = "The token to revoke (takes effect on the next request)" };
        var cmd = new Command("rm", "Revoke a token") { name };
        Set(cmd, "token rm", async (r, ct) =>
        {
            string n = r.GetValue(name)!;
            if (await UseApi(conn, r, ct))
            {
                using var client = conn.Connect(r);
                using var _ = await client.SendAsync(HttpMethod.Delete, $"{Tokens}/{Seg(n)}", null, ct);
            }
            else
            {
                await using var store = OpenOffline(conn, r);
                if (!await store.Tokens.RevokeAsync(n, ct)) throw new CliException(ClientExit.NotFound, $"no token named '{n}'");
            }
            return ClientExit.Ok;
        });
        return cmd;
    }

    /// <summary>
    /// The API with --host, or when something accepts connections on the home's socket; the inventory directly
    /// otherwise (no socket file, or a stale one left by a daemon that died).
    /// </summary>
    private static async Task<bool> UseApi(ConnectionOptions conn, ParseResult r, CancellationToken ct)
    {
        if (r.GetValue(conn.Host) != null) return true;
        string socket = Path.Combine(conn.ResolveHome(r), "dirigent.sock");
        if (!File.Exists(socket)) return false;
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private sealed class OfflineStore(SqliteInventory inventory) : IAsyncDisposable
    {
        public TokenStore Tokens { get; } = new(inventory);
        public ValueTask DisposeAsync() => inventory.DisposeAsync();
    }

    private static OfflineStore OpenOffline(ConnectionOptions conn, ParseResult r)
    {
        string home = conn.ResolveHome(r);
        try
        {
            // rwxr-x---: the daemon's socket is mode 0660 for a group of operators, who must be able to reach it.
            if (OperatingSystem.IsWindows()) Directory.CreateDirectory(home);
            else if (!Directory.Exists(home))
                Directory.CreateDirectory(home, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
                    | UnixFileMode.GroupRead | UnixFileMode.GroupExecute);
            // No lease reaping from a short-lived CLI: leases are the daemon's business.
            var inventory = SqliteInventory.Open(Path.Combine(home, "inventory.db"), new SqliteInventoryOptions { LeaseReapInterval = null });
            Console.Error.WriteLine($"dirigent: no daemon listening at {Path.Combine(home, "dirigent.sock")}; using {inventory.FilePath} directly");
            return new OfflineStore(inventory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or Microsoft.Data.Sqlite.SqliteException or InventorySchemaException)
        {
            throw new CliException(ClientExit.Unreachable, $"no daemon, and the inventory in {home} cannot be opened: {DaemonClient.OneLine(e.Message)}");
        }
    }
}
