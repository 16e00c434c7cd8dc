namespace Dirigent.Inventory;

/// <summary>
/// The management daemon's inventory: a small, strongly consistent key-value store modelled on etcd's v3 API
/// (compare-and-set on revisions, prefix watch, leases), so that the one-host SQLite implementation can later be
/// swapped for an etcd-backed one without changing callers.
/// </summary>
/// <remarks>
/// Revisions: the store has one revision counter that every successful put or delete increments by one (as etcd's
/// store revision); an entry's <see cref="InventoryEntry.Revision"/> is the store revision of its last change
/// (etcd's mod_revision). Revision 0 means "absent" in compare-and-set.
/// Keys are printable ASCII (see <see cref="InventoryKeys"/>) so that byte order, string order and prefix ranges agree
/// in every backend.
/// </remarks>
public interface IInventory : IAsyncDisposable
{
    /// <summary>The entry at <paramref name="key"/>, or null when absent.</summary>
    Task<InventoryEntry?> GetAsync(string key, CancellationToken ct = default);

    /// <summary>
    /// All entries whose key starts with <paramref name="prefix"/> (ordinal), in key order, with the store revision
    /// they were read at: pass that revision to <see cref="Watch"/> to follow changes without a gap.
    /// </summary>
    Task<InventoryList> ListAsync(string prefix, CancellationToken ct = default);

    /// <summary>
    /// Writes <paramref name="value"/> at <paramref name="key"/> if the key's current revision equals
    /// <paramref name="expectedRevision"/> (0: the key must not exist; null: unconditional). A lost race is a
    /// <see cref="WriteOutcome.RevisionMismatch"/> result, not an exception. <paramref name="leaseId"/> (0: none)
    /// attaches the key to a lease; a put without a lease detaches it from any earlier one (as etcd).
    /// </summary>
    Task<WriteResult> PutAsync(string key, byte[] value, long? expectedRevision = null, long leaseId = 0,
        CancellationToken ct = default);

    /// <summary>Deletes <paramref name="key"/> if its revision equals <paramref name="expectedRevision"/> (null: any).</summary>
    Task<WriteResult> DeleteAsync(string key, long? expectedRevision = null, CancellationToken ct = default);

    /// <summary>
    /// Changes to keys under <paramref name="prefix"/> with a revision greater than <paramref name="afterRevision"/>,
    /// in revision order: first those already made (so a client that read at revision R and then watches from R
    /// misses nothing), then live ones until <paramref name="ct"/> is cancelled.
    /// </summary>
    IAsyncEnumerable<InventoryEvent> Watch(string prefix, long afterRevision, CancellationToken ct = default);

    /// <summary>Grants a lease that expires <paramref name="ttl"/> after now unless kept alive; returns its id (never 0).</summary>
    Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct = default);

    /// <summary>Renews the lease for its full TTL; false when it is unknown or already expired (its keys are gone or going).</summary>
    Task<bool> KeepAliveAsync(long leaseId, CancellationToken ct = default);

    /// <summary>Ends the lease now and deletes its keys (with delete events); false when it was unknown.</summary>
    Task<bool> RevokeLeaseAsync(long leaseId, CancellationToken ct = default);

    /// <summary>Ends every lease whose expiry time has passed, deleting its keys; returns how many leases ended.</summary>
    Task<int> ExpireLeasesAsync(CancellationToken ct = default);

    /// <summary>Discards change history up to and including <paramref name="revision"/>; watches from before it fail.</summary>
    Task CompactAsync(long revision, CancellationToken ct = default);
}

/// <summary>One key's current value. <see cref="Revision"/> is the store revision of its last change.</summary>
public sealed record InventoryEntry(string Key, byte[] Value, long Revision, long CreateRevision, long LeaseId);

/// <summary>A prefix listing and the store revision it is a consistent snapshot of.</summary>
public sealed record InventoryList(IReadOnlyList<InventoryEntry> Entries, long Revision);

public enum InventoryEventKind { Put = 1, Delete = 2 }

/// <summary>One change. <see cref="Value"/> is null for a delete.</summary>
public sealed record InventoryEvent(InventoryEventKind Kind, string Key, byte[]? Value, long Revision);

public enum WriteOutcome
{
    /// <summary>The write happened at <see cref="WriteResult.Revision"/>.</summary>
    Done,
    /// <summary>The key's revision was not the expected one; <see cref="WriteResult.CurrentRevision"/> says what it is (0: absent).</summary>
    RevisionMismatch,
    /// <summary>Delete of an absent key: nothing changed, no event.</summary>
    NotFound,
    /// <summary>The lease named in a put is unknown or expired: nothing changed.</summary>
    LeaseNotFound,
}

/// <summary>The result of a put or delete; conflicts are values, because losing a CAS race is the normal case.</summary>
public readonly record struct WriteResult(WriteOutcome Outcome, long Revision, long CurrentRevision)
{
    public bool Succeeded => Outcome == WriteOutcome.Done;
}

/// <summary>The database file was written by a newer (or unknown) schema version than this build knows.</summary>
public sealed class InventorySchemaException(string message) : Exception(message);

/// <summary>A watch asked for history that <c>Compact</c> has already discarded; re-list and watch from the list's revision.</summary>
public sealed class InventoryCompactedException(long requested, long compacted)
    : Exception($"revision {requested} is compacted (history is kept after revision {compacted}); list again and watch from its revision")
{
    public long CompactedRevision { get; } = compacted;
}

/// <summary>Key rules shared by every backend.</summary>
public static class InventoryKeys
{
    public const int MaxLength = 1024;

    /// <summary>
    /// Keys are 1..1024 printable ASCII characters (0x20..0x7E). Why: in that range UTF-8 byte order, UTF-16 ordinal
    /// order and SQLite's BINARY collation agree, so a prefix is exactly the half-open range [prefix, PrefixEnd) in any
    /// backend (etcd compares bytes) and no LIKE/GLOB wildcard can leak into a match.
    /// </summary>
    public static void Validate(string key, bool allowEmpty = false, string name = "key")
    {
        ArgumentNullException.ThrowIfNull(key, name);
        if (key.Length == 0 && !allowEmpty) throw new ArgumentException("an inventory key must not be empty", name);
        if (key.Length > MaxLength) throw new ArgumentException($"an inventory key is at most {MaxLength} characters", name);
        foreach (char c in key)
            if (c < 0x20 || c > 0x7E)
                throw new ArgumentException($"inventory keys are printable ASCII; '{key}' has U+{(int)c:X4}", name);
    }

    /// <summary>
    /// The smallest string greater than every key starting with <paramref name="prefix"/>, or null for the empty
    /// prefix (no upper bound). Incrementing the last character stays within the checked range (at most 0x7F).
    /// </summary>
    public static string? PrefixEnd(string prefix)
        => prefix.Length == 0 ? null : string.Concat(prefix.AsSpan(0, prefix.Length - 1), [(char)(prefix[^1] + 1)]);
}
