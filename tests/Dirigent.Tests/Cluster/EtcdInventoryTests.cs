using Dirigent.Inventory;
using Dirigent.Tests.Inventory;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// <see cref="EtcdInventory"/> against a real etcd: the same contract as the SQLite store (compare-and-set on
/// revisions, prefix list + watch without a gap, leases), plus what only a network store has (a watch that outlives
/// an etcd restart, key prefixes that keep clusters apart).
/// </summary>
public sealed class EtcdInventoryTests
{
    [SkippableFact]
    public async Task CompareAndSetOnRevisionsLetsOneWriterWin()
    {
        EtcdServer.SkipIfMissing();
        await using var etcd = await EtcdServer.StartAsync();
        await using var inv = etcd.Client();

        var first = await inv.PutAsync("vms/web", "a".Utf8(), expectedRevision: 0);
        Assert.True(first.Succeeded);
        var second = await inv.PutAsync("vms/web", "b".Utf8(), expectedRevision: 0);
        Assert.Equal(WriteOutcome.RevisionMismatch, second.Outcome);
        Assert.Equal(first.Revision, second.CurrentRevision);

        var e = await inv.GetAsync("vms/web");
        Assert.Equal("a", e!.Value.Text());
        Assert.Equal(first.Revision, e.Revision);
        Assert.Equal(first.Revision, e.CreateRevision);

        // Two writers that read the same revision: exactly one update lands.
        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => inv.PutAsync("vms/web", $"w{i}".Utf8(), first.Revision)));
        Assert.Single(results, r => r.Succeeded);
        Assert.All(results.Where(r => !r.Succeeded), r => Assert.Equal(WriteOutcome.RevisionMismatch, r.Outcome));

        long now = (await inv.GetAsync("vms/web"))!.Revision;
        Assert.Equal(WriteOutcome.RevisionMismatch, (await inv.DeleteAsync("vms/web", first.Revision)).Outcome);
        Assert.True((await inv.DeleteAsync("vms/web", now)).Succeeded);
        Assert.Equal(WriteOutcome.NotFound, (await inv.DeleteAsync("vms/web")).Outcome);
        Assert.Equal(WriteOutcome.NotFound, (await inv.DeleteAsync("vms/web", 5)).Outcome);
        Assert.Null(await inv.GetAsync("vms/web"));
    }

    [SkippableFact]
    public async Task ListThenWatchFromItsRevisionMissesNothingAndPrefixesKeepClustersApart()
    {
        EtcdServer.SkipIfMissing();
        await using var etcd = await EtcdServer.StartAsync();
        await using var inv = etcd.Client("/a/");
        await using var other = etcd.Client("/b/");
        await inv.PutAsync("vms/one", "1".Utf8());
        await inv.PutAsync("vmsx", "not under vms/".Utf8());
        await other.PutAsync("vms/foreign", "x".Utf8());

        var list = await inv.ListAsync("vms/");
        Assert.Equal(["vms/one"], list.Entries.Select(e => e.Key));
        Assert.Equal(["vms/foreign"], (await other.ListAsync("")).Entries.Select(e => e.Key));

        // Written between the list and the watch: still delivered, because the watch starts at the list's revision.
        var put = await inv.PutAsync("vms/two", "2".Utf8());
        using var cts = new CancellationTokenSource(EtcdServer.Hang);
        await using var watch = inv.Watch("vms/", list.Revision, cts.Token).GetAsyncEnumerator(cts.Token);
        await other.PutAsync("vms/foreign", "y".Utf8());
        var del = await inv.DeleteAsync("vms/one");

        var events = await watch.TakeAsync(2);
        Assert.Equal((InventoryEventKind.Put, "vms/two", "2", put.Revision), (events[0].Kind, events[0].Key, events[0].Value!.Text(), events[0].Revision));
        Assert.Equal((InventoryEventKind.Delete, "vms/one", (byte[]?)null, del.Revision), (events[1].Kind, events[1].Key, events[1].Value, events[1].Revision));
    }

    [SkippableFact]
    public async Task AnExpiredLeaseDeletesItsKeysAndARevokedOneRefusesPuts()
    {
        EtcdServer.SkipIfMissing();
        await using var etcd = await EtcdServer.StartAsync();
        await using var inv = etcd.Client();
        long lease = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(1));
        Assert.NotEqual(0, lease);
        var put = await inv.PutAsync("hosts/h1", "alive".Utf8(), leaseId: lease);
        Assert.True(put.Succeeded);
        Assert.Equal(lease, (await inv.GetAsync("hosts/h1"))!.LeaseId);
        Assert.True(await inv.KeepAliveAsync(lease));

        // Nobody keeps it alive any more: etcd deletes the key, and the watch says so.
        using var cts = new CancellationTokenSource(EtcdServer.Hang);
        await using var watch = inv.Watch("hosts/", put.Revision, cts.Token).GetAsyncEnumerator(cts.Token);
        var gone = await watch.NextAsync();
        Assert.Equal((InventoryEventKind.Delete, "hosts/h1"), (gone.Kind, gone.Key));
        Assert.False(await inv.KeepAliveAsync(lease));
        Assert.Equal(WriteOutcome.LeaseNotFound, (await inv.PutAsync("hosts/h1", [1], leaseId: lease)).Outcome);

        long second = await inv.GrantLeaseAsync(TimeSpan.FromSeconds(60));
        await inv.PutAsync("hosts/h2", [2], leaseId: second);
        Assert.True(await inv.RevokeLeaseAsync(second));
        Assert.Null(await inv.GetAsync("hosts/h2"));
        Assert.False(await inv.RevokeLeaseAsync(second));
    }

    [SkippableFact]
    public async Task AWatchResumesAfterEtcdRestartsAndCompactionIsReported()
    {
        EtcdServer.SkipIfMissing();
        await using var etcd = await EtcdServer.StartAsync();
        await using var inv = etcd.Client();
        long start = (await inv.PutAsync("vms/a", "1".Utf8())).Revision;
        using var cts = new CancellationTokenSource(EtcdServer.Hang);
        await using var watch = inv.Watch("vms/", start, cts.Token).GetAsyncEnumerator(cts.Token);
        var before = await inv.PutAsync("vms/a", "2".Utf8());
        Assert.Equal(before.Revision, (await watch.NextAsync()).Revision);

        await etcd.KillAsync();
        await etcd.StartProcessAsync();
        var after = await inv.PutAsync("vms/b", "3".Utf8());
        var ev = await watch.NextAsync();
        Assert.Equal(("vms/b", after.Revision), (ev.Key, ev.Revision));

        await inv.PutAsync("vms/c", "4".Utf8());
        await inv.CompactAsync(after.Revision);
        await Assert.ThrowsAsync<InventoryCompactedException>(async () =>
        {
            await foreach (var _ in inv.Watch("vms/", start, cts.Token)) { }
        });
    }

    [Theory]
    [InlineData("etcd://127.0.0.1:2379", "127.0.0.1:2379")]
    [InlineData("etcd://a:1,b:2/", "a:1|b:2")]
    [InlineData("http://127.0.0.1:2379", null)]
    [InlineData("etcd://127.0.0.1", null)]
    [InlineData("etcd://127.0.0.1:0", null)]
    [InlineData("etcd://a:1,", null)]
    public void ClusterUrlsAreParsedOrRefusedWithAReason(string url, string? expected)
    {
        var eps = EtcdInventory.ParseUrl(url, out string? error);
        if (expected == null)
        {
            Assert.Null(eps);
            Assert.Contains(url.Contains("etcd://") ? "HOST:PORT" : "not an etcd URL", error);
        }
        else Assert.Equal(expected, string.Join("|", eps!));
    }
}
