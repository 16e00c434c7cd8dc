using System.Runtime.CompilerServices;
using Dirigent.Inventory;

namespace Dirigent.Tests.Daemon.Vms;

/// <summary>
/// An inventory in front of a real one that can go out like an etcd being restarted: while <see cref="Down"/> every
/// call fails with <see cref="InventoryUnavailableException"/>; <see cref="LoseAnswerOfPut"/> lets one matching put
/// land and then goes down before answering it (etcd committed, then died), which is what leaves a caller unsure.
/// </summary>
internal sealed class OutageInventory(IInventory inner) : IInventory
{
    private volatile bool _down;
    private Func<string, string, bool>? _loseAnswer;
    private readonly TaskCompletionSource _refused = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Every call fails while set.</summary>
    public bool Down { get => _down; set => _down = value; }

    /// <summary>Completes when a call was refused because the store was down.</summary>
    public Task Refused => _refused.Task;

    /// <summary>The next put for which <paramref name="match"/>(key, value as UTF-8) holds lands, then the store goes down.</summary>
    public void LoseAnswerOfPut(Func<string, string, bool> match) => Volatile.Write(ref _loseAnswer, match);

    private void Check()
    {
        if (!_down) return;
        _refused.TrySetResult();
        throw new InventoryUnavailableException("etcd at test:0 is unreachable: the test took it down", null);
    }

    public Task<InventoryEntry?> GetAsync(string key, CancellationToken ct = default)
    {
        Check();
        return inner.GetAsync(key, ct);
    }

    public Task<InventoryList> ListAsync(string prefix, CancellationToken ct = default)
    {
        Check();
        return inner.ListAsync(prefix, ct);
    }

    public async Task<WriteResult> PutAsync(string key, byte[] value, long? expectedRevision = null, long leaseId = 0, CancellationToken ct = default)
    {
        Check();
        var match = Volatile.Read(ref _loseAnswer);
        if (match == null || !match(key, System.Text.Encoding.UTF8.GetString(value)) ||
            Interlocked.CompareExchange(ref _loseAnswer, null, match) != match)
            return await inner.PutAsync(key, value, expectedRevision, leaseId, ct);
        var landed = await inner.PutAsync(key, value, expectedRevision, leaseId, ct);
        Assert.True(landed.Succeeded, $"the put whose answer is lost did not land: {landed.Outcome}");
        _down = true;
        throw new InventoryUnavailableException("etcd at test:0 is unreachable: connection reset while it answered", null);
    }

    public Task<WriteResult> DeleteAsync(string key, long? expectedRevision = null, CancellationToken ct = default)
    {
        Check();
        return inner.DeleteAsync(key, expectedRevision, ct);
    }

    public async IAsyncEnumerable<InventoryEvent> Watch(string prefix, long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        Check();
        await foreach (var e in inner.Watch(prefix, afterRevision, ct)) yield return e;
    }

    public Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct = default) { Check(); return inner.GrantLeaseAsync(ttl, ct); }
    public Task<bool> KeepAliveAsync(long leaseId, CancellationToken ct = default) { Check(); return inner.KeepAliveAsync(leaseId, ct); }
    public Task<bool> RevokeLeaseAsync(long leaseId, CancellationToken ct = default) { Check(); return inner.RevokeLeaseAsync(leaseId, ct); }
    public Task<int> ExpireLeasesAsync(CancellationToken ct = default) { Check(); return inner.ExpireLeasesAsync(ct); }
    public Task CompactAsync(long revision, CancellationToken ct = default) { Check(); return inner.CompactAsync(revision, ct); }
    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
