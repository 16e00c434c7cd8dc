using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Dirigent.Inventory;

namespace Dirigent.Daemon.Auth;

/// <summary>A token as the daemon knows it: who it is and what it may do. Never carries the secret or its hash.</summary>
public sealed record TokenInfo(string Id, string Name, TokenRights Rights, DateTimeOffset Created);

public enum CreateTokenOutcome
{
    Created,
    /// <summary>A token with that name already exists (revoke it first); nothing was written.</summary>
    Conflict,
    /// <summary>The name is not 1..64 characters of [a-z0-9-_].</summary>
    InvalidName,
    /// <summary>No right, or a bit that is not a defined right.</summary>
    InvalidRights,
}

/// <summary>
/// The result of <see cref="TokenStore.CreateAsync"/>. <see cref="Secret"/> is set only for
/// <see cref="CreateTokenOutcome.Created"/> and exists nowhere else: show it to the user once.
/// </summary>
public sealed record CreateTokenResult(CreateTokenOutcome Outcome, string? Secret, TokenInfo? Token)
{
    public bool Succeeded => Outcome == CreateTokenOutcome.Created;
}

public enum AuthStatus
{
    /// <summary>No credentials at all: 401 with a bare <c>WWW-Authenticate: Bearer</c> (RFC 6750 §3.1).</summary>
    Missing,
    /// <summary>Malformed header, unknown token, wrong secret or revoked token: 401 with <c>error="invalid_token"</c>.</summary>
    Invalid,
    Authenticated,
}

/// <summary>The result of <see cref="TokenStore.AuthenticateAsync"/>; <see cref="Identity"/> is set only when authenticated.</summary>
public sealed record AuthResult(AuthStatus Status, TokenInfo? Identity)
{
    public static readonly AuthResult Missing = new(AuthStatus.Missing, null);
    public static readonly AuthResult Invalid = new(AuthStatus.Invalid, null);
}

public enum AuthzResult
{
    Allowed,
    /// <summary>Authenticated, but the token lacks the right: 403.</summary>
    Forbidden,
}

/// <summary>
/// The management daemon's API tokens (issue #11), kept in the inventory at <c>tokens/NAME</c> as JSON, and the
/// verification of <c>Authorization: Bearer</c> headers against them.
/// </summary>
/// <remarks>
/// Secret format: <c>drg_&lt;id&gt;_&lt;secret&gt;</c>, where id is 8 random bytes as 16 lower-case hex digits and secret
/// is 32 random bytes as 43 base64url characters (64 characters in all). The id does not depend on the name, so a
/// leaked or logged token prefix says nothing about which account it belongs to; it lets an operator match a token
/// to its <see cref="TokenInfo"/> without the secret. Hex keeps '_' out of the id so the format splits unambiguously.
///
/// Only SHA-256 of the whole token string is stored. A slow, salted KDF (PBKDF2, Argon2) exists to make guessing
/// low-entropy passwords from a stolen hash expensive; these secrets are 256 uniformly random bits, so guessing is
/// infeasible at any hash speed and no precomputed table can cover them, while a fast hash keeps per-request
/// verification cheap. Comparison uses <see cref="CryptographicOperations.FixedTimeEquals"/>.
///
/// Timing: verification does not look a token up by its id. It hashes the presented token and compares that hash
/// (and the id) against every stored token, without stopping at a match, so the work depends on how many tokens exist
/// but not on whether the presented id is one of them. What remains observable is unavoidable: a header that does not
/// have the public format is rejected before hashing, and success takes a different path from failure. Nothing is
/// cached, so a revoke takes effect on the next request; tokens are few (created by hand), so reading them all per
/// request is cheap — a watch-fed table with the same full scan can replace that if it ever is not.
/// </remarks>
public sealed class TokenStore(IInventory inventory, TimeProvider? time = null)
{
    public const string KeyPrefix = "tokens/";
    public const int MaxNameLength = 64;

    private const string TokenPrefix = "drg_";
    private const int IdBytes = 8;
    private const int IdChars = IdBytes * 2;
    private const int SecretBytes = 32;
    private static readonly int SecretChars = Base64Url.GetEncodedLength(SecretBytes); // 43, unpadded
    private static readonly int TokenChars = TokenPrefix.Length + IdChars + 1 + SecretChars;
    private const string Scheme = "Bearer";

    private readonly IInventory _inventory = inventory ?? throw new ArgumentNullException(nameof(inventory));
    private readonly TimeProvider _time = time ?? TimeProvider.System;

    /// <summary>Token names: 1..64 of [a-z0-9-_], so they are safe in keys, URLs, logs and shells without quoting.</summary>
    public static bool IsValidName(string? name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > MaxNameLength) return false;
        foreach (char c in name)
            if (!(c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-' or '_'))
                return false;
        return true;
    }

    /// <summary>
    /// Creates token <paramref name="name"/> with <paramref name="rights"/> (implied rights added). A create-only
    /// compare-and-set makes a duplicate name a <see cref="CreateTokenOutcome.Conflict"/>, also under a race.
    /// </summary>
    public async Task<CreateTokenResult> CreateAsync(string name, TokenRights rights, CancellationToken ct = default)
    {
        if (!IsValidName(name)) return new(CreateTokenOutcome.InvalidName, null, null);
        if (rights == TokenRights.None || (rights & ~TokenRightsExtensions.All) != 0)
            return new(CreateTokenOutcome.InvalidRights, null, null);

        string id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(IdBytes));
        byte[] secretBytes = RandomNumberGenerator.GetBytes(SecretBytes);
        string secret = $"{TokenPrefix}{id}_{Base64Url.EncodeToString(secretBytes)}";
        CryptographicOperations.ZeroMemory(secretBytes);

        var info = new TokenInfo(id, name, rights.Expand(), _time.GetUtcNow());
        var record = new StoredToken
        {
            Id = id,
            Name = name,
            Rights = info.Rights.ToNames(),
            Created = info.Created,
            Sha256 = Convert.ToBase64String(SHA256.HashData(Encoding.ASCII.GetBytes(secret))),
        };
        var put = await _inventory.PutAsync(KeyPrefix + name, JsonSerializer.SerializeToUtf8Bytes(record),
            expectedRevision: 0, ct: ct).ConfigureAwait(false);
        return put.Outcome switch
        {
            WriteOutcome.Done => new(CreateTokenOutcome.Created, secret, info),
            WriteOutcome.RevisionMismatch => new(CreateTokenOutcome.Conflict, null, null),
            var other => throw new InvalidOperationException($"unexpected inventory outcome {other} creating token '{name}'"),
        };
    }

    /// <summary>Every token, in name order, without secrets or hashes. Unreadable records are left out (they cannot authenticate either).</summary>
    public async Task<IReadOnlyList<TokenInfo>> ListAsync(CancellationToken ct = default)
    {
        var list = await _inventory.ListAsync(KeyPrefix, ct).ConfigureAwait(false);
        var tokens = new List<TokenInfo>(list.Entries.Count);
        foreach (var entry in list.Entries)
            if (TryDecode(entry, out var token, out _))
                tokens.Add(token);
        return tokens;
    }

    /// <summary>Deletes token <paramref name="name"/>; false when there is none (including invalid names).</summary>
    public async Task<bool> RevokeAsync(string name, CancellationToken ct = default)
    {
        if (!IsValidName(name)) return false;
        var result = await _inventory.DeleteAsync(KeyPrefix + name, ct: ct).ConfigureAwait(false);
        return result.Succeeded;
    }

    /// <summary>
    /// Checks an <c>Authorization</c> header value. Null or empty is <see cref="AuthStatus.Missing"/>; anything other
    /// than exactly <c>Bearer</c> (scheme case-insensitive, RFC 7235 §2.1), one space and a well-formed token that
    /// matches a stored one is <see cref="AuthStatus.Invalid"/>. Malformed input never throws; inventory failures do
    /// (they are the server's fault, not the client's).
    /// </summary>
    public async Task<AuthResult> AuthenticateAsync(string? authorizationHeader, CancellationToken ct = default)
    {
        if (string.IsNullOrEmpty(authorizationHeader)) return AuthResult.Missing;
        // The exact-length check first: a huge or truncated value is rejected without being scanned or hashed.
        if (authorizationHeader.Length != Scheme.Length + 1 + TokenChars
            || !authorizationHeader.AsSpan(0, Scheme.Length).Equals(Scheme, StringComparison.OrdinalIgnoreCase)
            || authorizationHeader[Scheme.Length] != ' ')
            return AuthResult.Invalid;
        string token = authorizationHeader[(Scheme.Length + 1)..];
        if (!IsWellFormed(token)) return AuthResult.Invalid;

        // Well-formed tokens are pure ASCII, so these byte forms are exact.
        byte[] presentedHash = SHA256.HashData(Encoding.ASCII.GetBytes(token));
        byte[] presentedId = Encoding.ASCII.GetBytes(token.Substring(TokenPrefix.Length, IdChars));

        var list = await _inventory.ListAsync(KeyPrefix, ct).ConfigureAwait(false);
        TokenInfo? match = null;
        foreach (var entry in list.Entries)
        {
            if (!TryDecode(entry, out var info, out byte[] hash)) continue;
            // Non-short-circuit '&' and no break: every stored token costs the same whether or not it matches.
            bool hit = CryptographicOperations.FixedTimeEquals(hash, presentedHash)
                & CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(info.Id), presentedId);
            if (hit) match = info;
        }
        return match is null ? AuthResult.Invalid : new AuthResult(AuthStatus.Authenticated, match);
    }

    /// <summary>Whether <paramref name="identity"/> may do something that needs <paramref name="required"/> (with implication).</summary>
    public static AuthzResult Authorize(TokenInfo identity, TokenRights required)
    {
        ArgumentNullException.ThrowIfNull(identity);
        return identity.Rights.Covers(required) ? AuthzResult.Allowed : AuthzResult.Forbidden;
    }

    /// <summary><c>drg_</c>, 16 lower-case hex digits, <c>_</c>, 43 base64url characters; the length is already checked.</summary>
    private static bool IsWellFormed(ReadOnlySpan<char> token)
    {
        if (token.Length != TokenChars || !token.StartsWith(TokenPrefix, StringComparison.Ordinal)) return false;
        foreach (char c in token.Slice(TokenPrefix.Length, IdChars))
            if (!(c is >= '0' and <= '9' or >= 'a' and <= 'f'))
                return false;
        if (token[TokenPrefix.Length + IdChars] != '_') return false;
        foreach (char c in token[(TokenPrefix.Length + IdChars + 1)..])
            if (!(c is >= 'A' and <= 'Z' or >= 'a' and <= 'z' or >= '0' and <= '9' or '-' or '_'))
                return false;
        return true;
    }

    /// <summary>
    /// Reads one stored record, failing closed: bad JSON, an unknown right, a hash of the wrong size, or a name that
    /// differs from the key (a record copied under another name) make it unusable rather than an exception.
    /// </summary>
    private static bool TryDecode(InventoryEntry entry, out TokenInfo info, out byte[] hash)
    {
        info = null!;
        hash = [];
        StoredToken? record;
        try { record = JsonSerializer.Deserialize<StoredToken>(entry.Value); }
        catch (JsonException) { return false; }
        if (record is null || record.Name != entry.Key[KeyPrefix.Length..] || record.Id is not { Length: IdChars }
            || record.Rights is null || record.Sha256 is null)
            return false;

        var rights = TokenRights.None;
        foreach (string name in record.Rights)
        {
            if (!TokenRightsExtensions.TryParseName(name, out var right)) return false;
            rights |= right;
        }
        if (rights == TokenRights.None) return false;

        var decoded = new byte[SHA256.HashSizeInBytes];
        if (!Convert.TryFromBase64String(record.Sha256, decoded, out int written) || written != decoded.Length) return false;

        info = new TokenInfo(record.Id, record.Name, rights.Expand(), record.Created);
        hash = decoded;
        return true;
    }

    /// <summary>The JSON value at <c>tokens/NAME</c>. Rights are stored by name so the record reads well in etcdctl.</summary>
    private sealed class StoredToken
    {
        [JsonPropertyName("id")] public string? Id { get; init; }
        [JsonPropertyName("name")] public string? Name { get; init; }
        [JsonPropertyName("rights")] public string[]? Rights { get; init; }
        [JsonPropertyName("created")] public DateTimeOffset Created { get; init; }
        [JsonPropertyName("sha256")] public string? Sha256 { get; init; }
    }
}
