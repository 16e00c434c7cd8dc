using Dirigent.Cli.Client;
using Dirigent.Daemon.Auth;
using Dirigent.Inventory;

namespace Dirigent.Tests.Cli;

/// <summary>The daemon CLI as a real process with no daemon: unreachable is status 6, tokens work on the inventory directly.</summary>
public sealed class CliOfflineTests : IDisposable
{
    private readonly string _home = Cli.TempDir("dcli");

    public void Dispose() => Directory.Delete(_home, recursive: true);

    [Theory]
    [InlineData("vm", "list")]
    [InlineData("vm", "start", "web")]
    [InlineData("disk", "list")]
    [InlineData("events")]
    public void NoDaemonIsStatus6WithOneLine(params string[] args)
    {
        var r = Cli.Run(_home, args);
        Assert.True(r.Exit == ClientExit.Unreachable, r.ToString());
        Assert.Equal("", r.Out);
        string line = Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(Path.Combine(_home, "dirigent.sock"), line);
    }

    [Fact]
    public void ClosedTcpPortIsStatus6()
    {
        // Port 1 (tcpmux) is never served on a test host: the connection is refused at once.
        var r = Cli.Run(_home, "vm", "list", "--host", "127.0.0.1:1", "--token", "x");
        Assert.True(r.Exit == ClientExit.Unreachable, r.ToString());
        Assert.Contains("cannot reach the daemon at http://127.0.0.1:1", r.Err);
    }

    [Theory]
    [InlineData("vm", "create", "web", "--memory", "3")]
    [InlineData("vm", "create", "web", "--cpu-limit", "lots")]
    [InlineData("vm", "start")]
    [InlineData("vm", "list", "--output", "xml")]
    [InlineData("vm", "set", "web")]
    [InlineData("token", "create", "ci", "--rights", "root")]
    [InlineData("vm", "list", "--host", "ftp://x:1")]
    public void BadCommandLinesAreStatus2BeforeAnyRequest(params string[] args)
    {
        var r = Cli.Run(_home, args);
        Assert.True(r.Exit == ClientExit.BadCommandLine, r.ToString());
        Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task TokenCreateWorksWithoutADaemonAndTheSecretAuthenticates()
    {
        var created = Cli.Run(_home, "token", "create", "ci", "--rights", "operate");
        Assert.True(created.Exit == 0, created.ToString());
        string secret = created.Out.Trim();
        Assert.StartsWith("drg_", secret);
        Assert.Contains("only time", created.Err);

        var again = Cli.Run(_home, "token", "create", "ci");
        Assert.True(again.Exit == ClientExit.Conflict, again.ToString());

        var list = Cli.Run(_home, "token", "list", "--output", "json");
        Assert.True(list.Exit == 0, list.ToString());
        var tokens = System.Text.Json.Nodes.JsonNode.Parse(list.Out)!.AsArray();
        Assert.Equal("ci", (string?)Assert.Single(tokens)!["name"]);
        Assert.DoesNotContain(secret, list.Out);

        // What the daemon will check: the same inventory file, the same store.
        await using (var inventory = SqliteInventory.Open(Path.Combine(_home, "inventory.db"), new SqliteInventoryOptions { LeaseReapInterval = null }))
        {
            var auth = await new TokenStore(inventory).AuthenticateAsync("Bearer " + secret);
            Assert.Equal(AuthStatus.Authenticated, auth.Status);
            Assert.Equal(TokenRights.Read | TokenRights.Operate, auth.Identity!.Rights);
        }

        Assert.Equal(0, Cli.Run(_home, "token", "rm", "ci").Exit);
        Assert.Equal(ClientExit.NotFound, Cli.Run(_home, "token", "rm", "ci").Exit);
    }

    [Fact]
    public void LocalDiskVerbsStillWork()
    {
        string img = Path.Combine(_home, "a.qcow2");
        var r = Cli.Run(_home, "disk", "create", img, "--size", "1M");
        Assert.True(r.Exit == 0, r.ToString());
        var info = Cli.Run(_home, "disk", "info", img);
        Assert.True(info.Exit == 0, info.ToString());
        Assert.Contains("qcow2", info.Out);
    }
}
