using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Dirigent.Inventory;

namespace Dirigent.Daemon.Auth;

/// <summary>
/// Web console logins (issue #13): a browser that logged in with an API token gets a session cookie instead of
/// keeping the token in script-readable storage. A session is a random 256-bit id; the inventory keeps only its
/// SHA-256 at <c>sessions/HEX</c> with the token's name and id, never the token. Every request with the cookie
/// re-reads the token it came from, so revoking the token ends its sessions at once and the session carries the
/// token's rights as they are now. Sessions live in the inventory (not in memory) so that a daemon restart does not
/// log the browser out: the console reconnects by itself.
/// </summary>
public sealed class SessionStore(IInventory inventory, TokenStore tokens, TimeProvider? time = null)
{
    public const string KeyPrefix = "sessions/";
    public const string CookieName = "dirigent_session";

    /// <summary>A session ends this long after login (the cookie itself ends with the browser session).</summary>
    public static readonly TimeSpan Lifetime = TimeSpan.FromHours(12);

    private const int IdBytes = 32;
    private static readonly int IdChars = Base64Url.GetEncodedLength(IdBytes);
    private readonly TimeProvider _time = time ?? TimeProvider.System;

    /// <summary>Logs in with a bearer token: a new session id (for the cookie) and who it is, or null for a bad token.</summary>
    public async Task<(string Id, TokenInfo Token, DateTimeOffset Expires)?> LoginAsync(string token, CancellationToken ct = default)
    {
        var auth = await tokens.AuthenticateAsync("Bearer " + token, ct).ConfigureAwait(false);
        if (auth.Status != AuthStatus.Authenticated) return null;
        await ForgetExpiredAsync(ct).ConfigureAwait(false);
        byte[] raw = RandomNumberGenerator.GetBytes(IdBytes);
        string id = Base64Url.EncodeToString(raw);
        CryptographicOperations.ZeroMemory(raw);
        var now = _time.GetUtcNow();
        var rec = new StoredSession { TokenName = auth.Identity!.Name, TokenId = auth.Identity.Id, Created = now, Expires = now + Lifetime };
        await inventory.PutAsync(Key(id), JsonSerializer.SerializeToUtf8Bytes(rec), expectedRevision: 0, ct: ct).ConfigureAwait(false);
        return (id, auth.Identity, rec.Expires);
    }

    /// <summary>
    /// The token behind a session cookie, or null when the cookie is malformed, unknown, expired, or its token was
    /// revoked (or re-created under the same name: the id differs).
    /// </summary>
    public async Task<TokenInfo?> AuthenticateAsync(string? cookie, CancellationToken ct = default)
    {
        if (cookie is null || cookie.Length != IdChars) return null;
        foreach (char c in cookie)
            if (!(c is >= 'A' and <= 'Z' or >= 'a' and <= 'z' or >= '0' and <= '9' or '-' or '_'))
                return null;
        // Looked up by hash: the stored key says nothing usable about the cookie, and 256 random bits cannot be guessed.
        var entry = await inventory.GetAsync(Key(cookie), ct).ConfigureAwait(false);
        if (entry is null || !TryDecode(entry.Value, out var rec)) return null;
        if (rec.Expires <= _time.GetUtcNow())
        {
            await inventory.DeleteAsync(entry.Key, entry.Revision, ct).ConfigureAwait(false);
            return null;
        }
        foreach (var t in await tokens.ListAsync(ct).ConfigureAwait(false))
            if (t.Name == rec.TokenName && t.Id == rec.TokenId) return t;
        await inventory.DeleteAsync(entry.Key, entry.Revision, ct).ConfigureAwait(false);
        return null;
    }

    /// <summary>Logout: the session is gone for every browser holding the cookie.</summary>
    public async Task LogoutAsync(string? cookie, CancellationToken ct = default)
    {
        if (cookie is null || cookie.Length != IdChars) return;
        await inventory.DeleteAsync(Key(cookie), ct: ct).ConfigureAwait(false);
    }

    /// <summary>Deletes sessions past their end (done at each login, so the prefix stays small without a timer).</summary>
    private async Task ForgetExpiredAsync(CancellationToken ct)
    {
        var now = _time.GetUtcNow();
        foreach (var e in (await inventory.ListAsync(KeyPrefix, ct).ConfigureAwait(false)).Entries)
            if (!TryDecode(e.Value, out var rec) || rec.Expires <= now)
                await inventory.DeleteAsync(e.Key, e.Revision, ct).ConfigureAwait(false);
    }

    private static string Key(string id) => KeyPrefix + Convert.ToHexStringLower(SHA256.HashData(Encoding.ASCII.GetBytes(id)));

    private static bool TryDecode(byte[] value, out StoredSession rec)
    {
        rec = null!;
        try { rec = JsonSerializer.Deserialize<StoredSession>(value)!; }
        catch (JsonException) { return false; }
        return rec is { TokenName: not null, TokenId: not null };
    }

    private sealed class StoredSession
    {
        [JsonPropertyName("token_name")] public string? TokenName { get; init; }
        [JsonPropertyName("token_id")] public string? TokenId { get; init; }
        [JsonPropertyName("created")] public DateTimeOffset Created { get; init; }
        [JsonPropertyName("expires")] public DateTimeOffset Expires { get; init; }
    }
}
