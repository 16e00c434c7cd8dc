using Dirigent.Inventory;

namespace Dirigent.Tests.Inventory;

public sealed class InventoryWatchTests : IDisposable
{
    private readonly InventoryDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task WatchFromAPastRevisionReplaysThenStreamsLiveChangesInOrder()
    {
        await using var inv = _dir.Open();
        long before = (await inv.PutAsync("vms/old", "o".Utf8())).Revision; // not replayed: at, not after, the start
        await inv.PutAsync("vms/a", "1".Utf8());
        await inv.PutAsync("hosts/h1", "h".Utf8()); // other prefix: never seen
        await inv.PutAsync("vmsx", "x".Utf8());     // shares the letters, not the prefix
        await inv.DeleteAsync("vms/old");

        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using var watch = inv.Watch("vms/", before, cts.Token).GetAsyncEnumerator(cts.Token);

        var replay = await watch.TakeAsync(2);
        Assert.Equal((InventoryEventKind.Put, "vms/a", "1"), (replay[0].Kind, replay[0].Key, replay[0].Value!.Text()));
        Assert.Equal((InventoryEventKind.Delete, "vms/old"), (replay[1].Kind, replay[1].Key));
        Assert.Null(replay[1].Value);

        // Live: start waiting before the writes happen, so the change signal (not the replay) delivers them.
        var pending = watch.NextAsync();
        long r1 = (await inv.PutAsync("vms/b", "2".Utf8())).Revision;
        await inv.PutAsync("hosts/h2", "h".Utf8());
        long r2 = (await inv.PutAsync("vms/a", "3".Utf8())).Revision;
        long r3 = (await inv.DeleteAsync("vms/b")).Revision;

        var live = new List<InventoryEvent> { await pending };
        live.AddRange(await watch.TakeAsync(2));
        Assert.Equal([r1, r2, r3], live.Select(e => e.Revision));
        Assert.Equal(["vms/b", "vms/a", "vms/b"], live.Select(e => e.Key));
        Assert.Equal([InventoryEventKind.Put, InventoryEventKind.Put, InventoryEventKind.Delete], live.Select(e => e.Kind));
        Assert.Equal("3", live[1].Value!.Text());

        var all = replay.Concat(live).Select(e => e.Revision).ToList();
        Assert.Equal(all.Order(), all);
    }

    [Fact]
    public async Task ListThenWatchFromItsRevisionMissesNothingWrittenInBetween()
    {
        await using var inv = _dir.Open();
        await inv.PutAsync("vms/a", "1".Utf8());
        var list = await inv.ListAsync("vms/");
        long between = (await inv.PutAsync("vms/b", "2".Utf8())).Revision; // after the list, before the watch

        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using var watch = inv.Watch("vms/", list.Revision, cts.Token).GetAsyncEnumerator(cts.Token);
        var e = await watch.NextAsync();
        Assert.Equal(("vms/b", between), (e.Key, e.Revision));
    }

    [Fact]
    public async Task AWatchSeesChangesMadeThroughAnotherInstanceOfTheFile()
    {
        // The other instance stands in for another process: its commits reach this watch only through the poll.
        await using var watcher = _dir.Open(watchPoll: TimeSpan.FromMilliseconds(20));
        await using var writer = _dir.Open();
        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using var watch = watcher.Watch("vms/", 0, cts.Token).GetAsyncEnumerator(cts.Token);

        var pending = watch.NextAsync();
        long r = (await writer.PutAsync("vms/a", "1".Utf8())).Revision;
        Assert.Equal(("vms/a", r), ((await pending).Key, (await pending).Revision));
    }

    [Fact]
    public async Task CancellingAWatchEndsIt()
    {
        await using var inv = _dir.Open();
        using var cts = new CancellationTokenSource();
        await using var watch = inv.Watch("vms/", 0, cts.Token).GetAsyncEnumerator(cts.Token);
        var pending = watch.MoveNextAsync().AsTask();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pending.WaitAsync(InventoryTestExtensions.Guard));
    }

    [Fact]
    public async Task AWatchFromBeforeACompactionFailsAndOneAfterItWorks()
    {
        await using var inv = _dir.Open();
        await inv.PutAsync("vms/a", "1".Utf8());
        long r2 = (await inv.PutAsync("vms/a", "2".Utf8())).Revision;
        long r3 = (await inv.PutAsync("vms/a", "3".Utf8())).Revision;
        await inv.CompactAsync(r2);

        using var cts = new CancellationTokenSource(InventoryTestExtensions.Guard);
        await using (var stale = inv.Watch("vms/", r2 - 1, cts.Token).GetAsyncEnumerator(cts.Token))
        {
            var ex = await Assert.ThrowsAsync<InventoryCompactedException>(async () => await stale.MoveNextAsync());
            Assert.Equal(r2, ex.CompactedRevision);
        }
        await using var ok = inv.Watch("vms/", r2, cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.Equal(r3, (await ok.NextAsync()).Revision);
    }
}
