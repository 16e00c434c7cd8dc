using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Dirigent.Daemon.Auth;
using Dirigent.Inventory;
using Dirigent.Tests.Inventory;

namespace Dirigent.Tests.Daemon.Auth;

public sealed partial class TokenStoreTests : IDisposable
{
    private readonly InventoryDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [GeneratedRegex("^drg_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")]
    private static partial Regex TokenFormat();

    private static string Bearer(string secret) => "Bearer " + secret;

    [Fact]
    public async Task CreateAuthenticateRevokeRoundTrip()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);

        var created = await store.CreateAsync("ci-bot", TokenRights.Operate);
        Assert.Equal(CreateTokenOutcome.Created, created.Outcome);
        Assert.Matches(TokenFormat(), created.Secret!);
        Assert.DoesNotContain("ci-bot", created.Secret!); // the id is independent of the name
        Assert.Equal(_dir.Time.GetUtcNow(), created.Token!.Created);

        var auth = await store.AuthenticateAsync(Bearer(created.Secret!));
        Assert.Equal(AuthStatus.Authenticated, auth.Status);
        Assert.Equal(created.Token, auth.Identity);
        Assert.Equal("ci-bot", auth.Identity!.Name);
        Assert.Equal(TokenRights.Operate | TokenRights.Read, auth.Identity.Rights);
        Assert.Equal(created.Secret!.Substring(4, 16), auth.Identity.Id);

        Assert.True(await store.RevokeAsync("ci-bot"));
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer(created.Secret!))).Status);
        Assert.False(await store.RevokeAsync("ci-bot"));
        Assert.Empty(await store.ListAsync());

        // The name is free again, and the new token has a new id and secret; the old secret stays dead.
        var again = await store.CreateAsync("ci-bot", TokenRights.Read);
        Assert.True(again.Succeeded);
        Assert.NotEqual(created.Token.Id, again.Token!.Id);
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer(created.Secret!))).Status);
        Assert.Equal(AuthStatus.Authenticated, (await store.AuthenticateAsync(Bearer(again.Secret!))).Status);
    }

    [Fact]
    public async Task TheSecretIsStoredNowhereInTheInventory()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        var secrets = new List<string>();
        foreach (string name in new[] { "a", "b", "c" })
            secrets.Add((await store.CreateAsync(name, TokenRights.Admin)).Secret!);

        var all = await inv.ListAsync("");
        Assert.Equal(3, all.Entries.Count);
        foreach (var entry in all.Entries)
        {
            string text = Encoding.UTF8.GetString(entry.Value);
            foreach (string secret in secrets)
            {
                string random = secret[21..]; // the 43 base64url characters after "drg_<id>_"
                byte[] raw = Base64UrlDecode(random);
                Assert.DoesNotContain(random, text);
                Assert.DoesNotContain(Convert.ToBase64String(raw), text);
                Assert.DoesNotContain(Convert.ToHexString(raw), text, StringComparison.OrdinalIgnoreCase);
                Assert.False(entry.Value.AsSpan().IndexOf(raw) >= 0, "raw secret bytes in a stored value");
            }
            // What is stored is the SHA-256 of the token it belongs to.
            using var doc = JsonDocument.Parse(entry.Value);
            string name = doc.RootElement.GetProperty("name").GetString()!;
            string mine = secrets[name[0] - 'a'];
            Assert.Equal(Convert.ToBase64String(SHA256.HashData(Encoding.ASCII.GetBytes(mine))),
                doc.RootElement.GetProperty("sha256").GetString());
        }
    }

    [Fact]
    public async Task AWrongSecretForARealIdIsInvalid()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        string a = (await store.CreateAsync("a", TokenRights.Admin)).Secret!;
        string b = (await store.CreateAsync("b", TokenRights.Admin)).Secret!;

        // Same id, last secret character changed (still well-formed).
        string flipped = a[..^1] + (a[^1] == 'A' ? 'B' : 'A');
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer(flipped))).Status);
        // a's id with b's secret part, and the reverse: each half is real, the pair is not.
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer(a[..21] + b[21..]))).Status);
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer(b[..21] + a[21..]))).Status);
        // An unknown id with a real secret part.
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer("drg_0123456789abcdef_" + a[21..]))).Status);
        Assert.Equal("a", (await store.AuthenticateAsync(Bearer(a))).Identity!.Name);
    }

    [Theory]
    [InlineData(null, AuthStatus.Missing)]
    [InlineData("", AuthStatus.Missing)]
    [InlineData("Bearer {T}", AuthStatus.Authenticated)]
    [InlineData("bearer {T}", AuthStatus.Authenticated)] // auth-scheme is case-insensitive (RFC 7235 §2.1)
    [InlineData("BEARER {T}", AuthStatus.Authenticated)]
    [InlineData(" ", AuthStatus.Invalid)]
    [InlineData("Bearer", AuthStatus.Invalid)]
    [InlineData("Bearer ", AuthStatus.Invalid)]
    [InlineData("{T}", AuthStatus.Invalid)]
    [InlineData("Bearer  {T}", AuthStatus.Invalid)]
    [InlineData(" Bearer {T}", AuthStatus.Invalid)]
    [InlineData("Bearer {T} ", AuthStatus.Invalid)]
    [InlineData("Bearer\t{T}", AuthStatus.Invalid)]
    [InlineData("Bearer {T}\r\n", AuthStatus.Invalid)]
    [InlineData("Basic {T}", AuthStatus.Invalid)]
    [InlineData("Token {T}", AuthStatus.Invalid)]
    [InlineData("Bearer: {T}", AuthStatus.Invalid)]
    [InlineData("Bearer {T},Bearer {T}", AuthStatus.Invalid)]
    [InlineData("Bearer {T}=", AuthStatus.Invalid)]
    [InlineData("Bearer {UPPERID}", AuthStatus.Invalid)]
    [InlineData("Bearer {NONASCII}", AuthStatus.Invalid)]
    [InlineData("Bearer {NUL}", AuthStatus.Invalid)]
    [InlineData("Bearer {SHORT}", AuthStatus.Invalid)]
    [InlineData("Bearer {NOPREFIX}", AuthStatus.Invalid)]
    [InlineData("Bearer {HUGE}", AuthStatus.Invalid)]
    [InlineData("{HUGE}", AuthStatus.Invalid)]
    public async Task MalformedHeadersAreInvalidNeverExceptions(string? template, AuthStatus expected)
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        string t = (await store.CreateAsync("t", TokenRights.Read)).Secret!;

        string? header = template?
            .Replace("{T}", t)
            .Replace("{UPPERID}", t[..4] + t[4..20].ToUpperInvariant() + t[20..])
            .Replace("{NONASCII}", t[..^1] + "é")
            .Replace("{NUL}", t[..^1] + "\0")
            .Replace("{SHORT}", t[..^1])
            .Replace("{NOPREFIX}", "xrg" + t[3..])
            .Replace("{HUGE}", "drg_" + new string('A', 1 << 20));
        if (template is "Bearer {UPPERID}" && t[4..20] == t[4..20].ToUpperInvariant())
            header = "Bearer " + t[..4] + "G" + t[5..]; // all-digit id (unlikely): a non-hex letter instead

        var result = await store.AuthenticateAsync(header);
        Assert.Equal(expected, result.Status);
        Assert.Equal(expected == AuthStatus.Authenticated, result.Identity is not null);
    }

    [Fact]
    public void RightsImplyTheLowerOnes()
    {
        Assert.Equal(TokenRights.Read, TokenRights.Read.Expand());
        Assert.Equal(TokenRights.Read | TokenRights.Operate, TokenRights.Operate.Expand());
        Assert.Equal(TokenRightsExtensions.All, TokenRights.Admin.Expand());
        Assert.Equal(TokenRights.None, TokenRights.None.Expand());
        Assert.Equal(TokenRights.Read, ((TokenRights)8 | TokenRights.Read).Expand()); // undefined bits dropped
        Assert.False(TokenRightsExtensions.All.Covers((TokenRights)8)); // an undefined right is never granted
    }

    [Theory]
    [InlineData(TokenRights.Read, TokenRights.Read, AuthzResult.Allowed)]
    [InlineData(TokenRights.Read, TokenRights.Operate, AuthzResult.Forbidden)]
    [InlineData(TokenRights.Read, TokenRights.Admin, AuthzResult.Forbidden)]
    [InlineData(TokenRights.Operate, TokenRights.Read, AuthzResult.Allowed)]
    [InlineData(TokenRights.Operate, TokenRights.Operate, AuthzResult.Allowed)]
    [InlineData(TokenRights.Operate, TokenRights.Admin, AuthzResult.Forbidden)]
    [InlineData(TokenRights.Operate, TokenRights.Read | TokenRights.Operate, AuthzResult.Allowed)]
    [InlineData(TokenRights.Operate, TokenRights.Operate | TokenRights.Admin, AuthzResult.Forbidden)]
    [InlineData(TokenRights.Admin, TokenRights.Read, AuthzResult.Allowed)]
    [InlineData(TokenRights.Admin, TokenRights.Operate, AuthzResult.Allowed)]
    [InlineData(TokenRights.Admin, TokenRights.Admin, AuthzResult.Allowed)]
    public async Task AuthenticatedTokensAreAuthorizedByImpliedRights(TokenRights granted, TokenRights required, AuthzResult expected)
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        string secret = (await store.CreateAsync("t", granted)).Secret!;
        var identity = (await store.AuthenticateAsync(Bearer(secret))).Identity!;
        Assert.Equal(expected, TokenStore.Authorize(identity, required));
    }

    [Fact]
    public async Task ADuplicateNameIsAConflictAndLeavesTheFirstTokenAlone()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        var first = await store.CreateAsync("ops", TokenRights.Read);
        byte[] before = (await inv.GetAsync("tokens/ops"))!.Value;

        var second = await store.CreateAsync("ops", TokenRights.Admin);
        Assert.Equal(CreateTokenOutcome.Conflict, second.Outcome);
        Assert.Null(second.Secret);
        Assert.Null(second.Token);
        Assert.Equal(before, (await inv.GetAsync("tokens/ops"))!.Value);
        var identity = (await store.AuthenticateAsync(Bearer(first.Secret!))).Identity!;
        Assert.Equal(TokenRights.Read, identity.Rights);

        // Racing creates of one name: exactly one wins (create-only compare-and-set).
        var race = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => store.CreateAsync("race", TokenRights.Read)));
        Assert.Single(race, r => r.Succeeded);
        Assert.Equal(7, race.Count(r => r.Outcome == CreateTokenOutcome.Conflict));
    }

    [Theory]
    [InlineData("")]
    [InlineData("Ops")]
    [InlineData("has space")]
    [InlineData("dot.name")]
    [InlineData("slash/name")]
    [InlineData("../etc")]
    [InlineData("naïve")]
    [InlineData("tab\t")]
    [InlineData("x*")]
    public async Task BadNamesAreRefusedAndNothingIsWritten(string name)
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        var result = await store.CreateAsync(name, TokenRights.Read);
        Assert.Equal(CreateTokenOutcome.InvalidName, result.Outcome);
        Assert.Null(result.Secret);
        Assert.False(await store.RevokeAsync(name));
        Assert.Empty((await inv.ListAsync("")).Entries);
    }

    [Fact]
    public async Task NameLengthAndRightsLimits()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        Assert.True((await store.CreateAsync(new string('a', 64), TokenRights.Read)).Succeeded);
        Assert.Equal(CreateTokenOutcome.InvalidName, (await store.CreateAsync(new string('a', 65), TokenRights.Read)).Outcome);
        Assert.True((await store.CreateAsync("a", TokenRights.Read)).Succeeded);
        Assert.True((await store.CreateAsync("a-b_c-9", TokenRights.Read)).Succeeded);
        Assert.False((await store.CreateAsync(null!, TokenRights.Read)).Succeeded);
        Assert.Equal(CreateTokenOutcome.InvalidRights, (await store.CreateAsync("none", TokenRights.None)).Outcome);
        Assert.Equal(CreateTokenOutcome.InvalidRights, (await store.CreateAsync("bogus", (TokenRights)8)).Outcome);
        Assert.Equal(3, (await inv.ListAsync("tokens/")).Entries.Count);
    }

    [Fact]
    public async Task ListShowsEveryTokenButNoSecretOrHash()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        var b = await store.CreateAsync("bravo", TokenRights.Admin);
        _dir.Time.Advance(TimeSpan.FromMinutes(1));
        var a = await store.CreateAsync("alpha", TokenRights.Read);

        var list = await store.ListAsync();
        Assert.Equal([a.Token!, b.Token!], list);
        Assert.Equal(TokenRights.Read, list[0].Rights);
        Assert.Equal(TokenRightsExtensions.All, list[1].Rights);
        Assert.Equal(a.Token!.Created - TimeSpan.FromMinutes(1), list[1].Created);

        // TokenInfo has no place for a secret, and its serialized form carries neither secret nor hash.
        Assert.Equal(["Created", "Id", "Name", "Rights"], typeof(TokenInfo).GetProperties().Select(p => p.Name).Order());
        string shown = JsonSerializer.Serialize(list);
        foreach (string secret in new[] { a.Secret!, b.Secret! })
        {
            Assert.DoesNotContain(secret[21..], shown);
            Assert.DoesNotContain(Convert.ToBase64String(SHA256.HashData(Encoding.ASCII.GetBytes(secret))), shown);
        }
    }

    [Fact]
    public async Task TamperedOrCorruptRecordsFailClosed()
    {
        await using var inv = _dir.Open();
        var store = new TokenStore(inv, _dir.Time);
        var a = await store.CreateAsync("a", TokenRights.Read);
        byte[] value = (await inv.GetAsync("tokens/a"))!.Value;

        // A record copied under another name does not become that name, and dies with its own revocation.
        await inv.PutAsync("tokens/b", value);
        await inv.PutAsync("tokens/c", "{not json"u8.ToArray());
        await inv.PutAsync("tokens/d", Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(value).Replace("\"a\"", "\"d\"").Replace("read", "root")));
        Assert.Equal(["a"], (await store.ListAsync()).Select(t => t.Name));
        Assert.Equal("a", (await store.AuthenticateAsync(Bearer(a.Secret!))).Identity!.Name);

        Assert.True(await store.RevokeAsync("a"));
        Assert.Equal(AuthStatus.Invalid, (await store.AuthenticateAsync(Bearer(a.Secret!))).Status);
    }

    private static byte[] Base64UrlDecode(string s) => System.Buffers.Text.Base64Url.DecodeFromChars(s);
}
