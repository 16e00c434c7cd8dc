using Dirigent.Inventory;

namespace Dirigent.Tests.Inventory;

public sealed class InventoryLeaseTests : IDisposable
{
    private readonly InventoryDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task AnExpiredLeaseDeletesItsKeysWithDeleteEventsAndKeepAliveDefersIt()
    {
        await using var inv = _dir.Open();
        long lease = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(10));
        Assert.NotEqual(0, lease);
        await inv.PutAsync("hosts/h1/alive", "1".Utf8(), leaseId: lease);
        await inv.PutAsync("hosts/h1/vm", "web".Utf8(), leaseId: lease);
        long start = (await inv.PutAsync("hosts/h1/static", "s".Utf8())).Revision;

        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using var watch = inv.Watch("hosts/", start, cts.Token).GetAsyncEnumerator(cts.Token);

        _dir.Time.Advance(TimeSpan.FromSeconds(9));
        Assert.Equal(0, await inv.ExpireLeasesAsync());
        Assert.True(await inv.KeepAliveAsync(lease)); // now expires at 19 s

        _dir.Time.Advance(TimeSpan.FromSeconds(9)); // 18 s: would have expired without the keep-alive
        Assert.Equal(0, await inv.ExpireLeasesAsync());
        Assert.NotNull(await inv.GetAsync("hosts/h1/alive"));

        _dir.Time.Advance(TimeSpan.FromSeconds(1)); // 19 s: the TTL has fully elapsed
        Assert.Equal(1, await inv.ExpireLeasesAsync());
        Assert.Equal(["hosts/h1/static"], (await inv.ListAsync("hosts/")).Entries.Select(e => e.Key));

        var events = await watch.TakeAsync(2);
        Assert.All(events, e => Assert.Equal(InventoryEventKind.Delete, e.Kind));
        Assert.Equal(["hosts/h1/alive", "hosts/h1/vm"], events.Select(e => e.Key));
        Assert.Equal([start + 1, start + 2], events.Select(e => e.Revision));

        Assert.False(await inv.KeepAliveAsync(lease));
        Assert.Equal(WriteOutcome.LeaseNotFound, (await inv.PutAsync("hosts/h1/alive", [1], leaseId: lease)).Outcome);
        Assert.Null(await inv.GetAsync("hosts/h1/alive"));
    }

    [Fact]
    public async Task AnyWriteEndsExpiredLeasesFirst()
    {
        await using var inv = _dir.Open();
        long lease = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(5));
        long put = (await inv.PutAsync("locks/a", "me".Utf8(), 0, lease)).Revision;
        _dir.Time.Advance(TimeSpan.FromSeconds(6));

        // The lock's key is gone before this create-only CAS looks, so a second owner can take it.
        var take = await inv.PutAsync("locks/a", "you".Utf8(), 0);
        Assert.True(take.Succeeded);
        Assert.Equal(put + 2, take.Revision); // put + 1 was the expiry's delete
        Assert.Equal(0, await inv.ExpireLeasesAsync());
    }

    [Fact]
    public async Task RevokeDeletesTheKeysAtOnceAndOnlyOnce()
    {
        await using var inv = _dir.Open();
        long lease = await inv.GrantLeaseAsync(TimeSpan.FromMinutes(1));
        long other = await inv.GrantLeaseAsync(TimeSpan.FromMinutes(1));
        long start = (await inv.PutAsync("vms/a", "1".Utf8(), leaseId: lease)).Revision;
        await inv.PutAsync("vms/b", "2".Utf8(), leaseId: other);

        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using var watch = inv.Watch("vms/", start, cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.Equal("vms/b", (await watch.NextAsync()).Key);

        Assert.True(await inv.RevokeLeaseAsync(lease));
        var e = await watch.NextAsync();
        Assert.Equal((InventoryEventKind.Delete, "vms/a"), (e.Kind, e.Key));
        Assert.Null(await inv.GetAsync("vms/a"));
        Assert.NotNull(await inv.GetAsync("vms/b"));
        Assert.False(await inv.RevokeLeaseAsync(lease));
        Assert.False(await inv.KeepAliveAsync(lease));
    }

    [Fact]
    public async Task APutWithoutALeaseDetachesTheKeyAndLeaseIdsAreNotReused()
    {
        await using var inv = _dir.Open();
        long lease = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(5));
        await inv.PutAsync("vms/a", "1".Utf8(), leaseId: lease);
        await inv.PutAsync("vms/a", "2".Utf8()); // now permanent
        Assert.Equal(0, (await inv.GetAsync("vms/a"))!.LeaseId);

        Assert.True(await inv.RevokeLeaseAsync(lease));
        Assert.Equal("2", (await inv.GetAsync("vms/a"))!.Value.Text());
        Assert.NotEqual(lease, await inv.GrantLeaseAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task LeasesSurviveReopeningAndExpireByTheClockNotTheProcess()
    {
        long lease;
        await using (var inv = _dir.Open())
        {
            lease = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(10));
            await inv.PutAsync("hosts/h1", "1".Utf8(), leaseId: lease);
        }
        await using (var inv = _dir.Open())
        {
            Assert.True(await inv.KeepAliveAsync(lease));
            _dir.Time.Advance(TimeSpan.FromSeconds(10));
            Assert.Equal(1, await inv.ExpireLeasesAsync());
            Assert.Null(await inv.GetAsync("hosts/h1"));
        }
    }
}

public sealed class InventoryLeaseReaperTests : IDisposable
{
    private readonly InventoryDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task TheBackgroundReaperEndsAnExpiredLeaseWithoutAnyWrite()
    {
        // Expiry is still judged by the fake clock; only the tick that looks is a real timer, so the test waits for
        // the delete event (hang guard only), never for a duration.
        await using var inv = SqliteInventory.Open(_dir.File, new SqliteInventoryOptions
        {
            Time = _dir.Time,
            LeaseReapInterval = TimeSpan.FromMilliseconds(10),
        });
        long lease = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(10));
        long start = (await inv.PutAsync("hosts/h1", "1".Utf8(), leaseId: lease)).Revision;

        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using var watch = inv.Watch("hosts/", start, cts.Token).GetAsyncEnumerator(cts.Token);
        var pending = watch.NextAsync();
        _dir.Time.Advance(TimeSpan.FromSeconds(10));

        var e = await pending;
        Assert.Equal((InventoryEventKind.Delete, "hosts/h1", start + 1), (e.Kind, e.Key, e.Revision));
        Assert.Null(await inv.GetAsync("hosts/h1"));
    }
}
