using Dirigent.Inventory;
using Microsoft.Data.Sqlite;

namespace Dirigent.Tests.Inventory;

public sealed class InventoryCasTests : IDisposable
{
    private readonly InventoryDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task CreateOnlyPutRefusesAnExistingKey()
    {
        await using var inv = _dir.Open();
        var first = await inv.PutAsync("vms/web", "a".Utf8(), expectedRevision: 0);
        Assert.Equal(WriteOutcome.Done, first.Outcome);
        Assert.Equal(1, first.Revision);

        var second = await inv.PutAsync("vms/web", "b".Utf8(), expectedRevision: 0);
        Assert.Equal(WriteOutcome.RevisionMismatch, second.Outcome);
        Assert.Equal(first.Revision, second.CurrentRevision);
        Assert.Equal("a", (await inv.GetAsync("vms/web"))!.Value.Text());
    }

    [Fact]
    public async Task UpdateAtCurrentRevisionSucceedsAndAStaleRevisionIsRefused()
    {
        await using var inv = _dir.Open();
        long r1 = (await inv.PutAsync("vms/web", "v1".Utf8(), 0)).Revision;
        await inv.PutAsync("vms/db", "x".Utf8()); // another key moves the store revision too

        var update = await inv.PutAsync("vms/web", "v2".Utf8(), r1);
        Assert.True(update.Succeeded);
        Assert.Equal(r1 + 2, update.Revision);

        var stale = await inv.PutAsync("vms/web", "v3".Utf8(), r1);
        Assert.Equal(WriteOutcome.RevisionMismatch, stale.Outcome);
        Assert.Equal(update.Revision, stale.CurrentRevision);

        var entry = (await inv.GetAsync("vms/web"))!;
        Assert.Equal("v2", entry.Value.Text());
        Assert.Equal(update.Revision, entry.Revision);
        Assert.Equal(r1, entry.CreateRevision);

        // An update of an absent key at some revision is a mismatch, not an implicit create.
        var ghost = await inv.PutAsync("vms/none", "z".Utf8(), 5);
        Assert.Equal(WriteOutcome.RevisionMismatch, ghost.Outcome);
        Assert.Equal(0, ghost.CurrentRevision);
        Assert.Null(await inv.GetAsync("vms/none"));
    }

    [Fact]
    public async Task DeleteHonoursTheExpectedRevision()
    {
        await using var inv = _dir.Open();
        long r1 = (await inv.PutAsync("vms/web", "v1".Utf8())).Revision;
        long r2 = (await inv.PutAsync("vms/web", "v2".Utf8())).Revision;

        var stale = await inv.DeleteAsync("vms/web", r1);
        Assert.Equal(WriteOutcome.RevisionMismatch, stale.Outcome);
        Assert.Equal(r2, stale.CurrentRevision);
        Assert.NotNull(await inv.GetAsync("vms/web"));

        var done = await inv.DeleteAsync("vms/web", r2);
        Assert.True(done.Succeeded);
        Assert.Equal(r2 + 1, done.Revision);
        Assert.Null(await inv.GetAsync("vms/web"));

        Assert.Equal(WriteOutcome.NotFound, (await inv.DeleteAsync("vms/web")).Outcome);
        // A delete that changed nothing does not consume a revision.
        Assert.Equal(done.Revision + 1, (await inv.PutAsync("vms/web", "v3".Utf8(), 0)).Revision);
    }

    [Fact]
    public async Task ListReturnsExactlyThePrefixInKeyOrderWithItsRevision()
    {
        await using var inv = _dir.Open();
        foreach (string key in new[] { "vmsx", "vms/b", "vm", "vms/a/disk0", "vms/a", "vms_a", "hosts/h1" })
            await inv.PutAsync(key, key.Utf8());

        var vms = await inv.ListAsync("vms/");
        Assert.Equal(["vms/a", "vms/a/disk0", "vms/b"], vms.Entries.Select(e => e.Key));
        Assert.Equal(7, vms.Revision);
        Assert.All(vms.Entries, e => Assert.Equal(e.Key, e.Value.Text()));

        Assert.Equal(["vms/a", "vms/a/disk0"], (await inv.ListAsync("vms/a")).Entries.Select(e => e.Key));
        Assert.Empty((await inv.ListAsync("vms/c")).Entries);
        // SQL wildcards are plain characters in a prefix.
        Assert.Equal(["vms_a"], (await inv.ListAsync("vms_")).Entries.Select(e => e.Key));
        Assert.Empty((await inv.ListAsync("vms%")).Entries);
        Assert.Equal(7, (await inv.ListAsync("")).Entries.Count);
    }

    [Fact]
    public async Task KeysOutsidePrintableAsciiAreRejected()
    {
        await using var inv = _dir.Open();
        await Assert.ThrowsAsync<ArgumentException>(() => inv.PutAsync("vms/wéb", [1]));
        await Assert.ThrowsAsync<ArgumentException>(() => inv.PutAsync("", [1]));
        await Assert.ThrowsAsync<ArgumentException>(() => inv.GetAsync("vms/\n"));
    }

    [Fact]
    public async Task TwentyConcurrentIncrementsFromParallelTasksEndExact()
    {
        await using var inv = _dir.Open();
        await RunIncrementers(20, _ => inv);
        Assert.Equal("20", (await inv.GetAsync("counter"))!.Value.Text());
    }

    [Fact]
    public async Task TwentyConcurrentIncrementsFromTwoInstancesOnOneFileEndExact()
    {
        await using var a = _dir.Open();
        await using var b = _dir.Open();
        int retries = await RunIncrementers(20, i => i % 2 == 0 ? a : b);
        Assert.Equal("20", (await a.GetAsync("counter"))!.Value.Text());
        Assert.Equal("20", (await b.GetAsync("counter"))!.Value.Text());
        Assert.True(retries >= 0);
    }

    /// <summary>Each task does one read-modify-CAS increment, retrying on conflict; returns the number of conflicts.</summary>
    private static async Task<int> RunIncrementers(int count, Func<int, IInventory> pick)
    {
        int conflicts = 0;
        var tasks = Enumerable.Range(0, count).Select(i => Task.Run(async () =>
        {
            var inv = pick(i);
            while (true)
            {
                var entry = await inv.GetAsync("counter");
                int n = entry is null ? 0 : int.Parse(entry.Value.Text());
                var result = await inv.PutAsync("counter", (n + 1).ToString().Utf8(), entry?.Revision ?? 0);
                if (result.Succeeded) return;
                Assert.Equal(WriteOutcome.RevisionMismatch, result.Outcome);
                Interlocked.Increment(ref conflicts);
            }
        })).ToArray();
        await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(120));
        return conflicts;
    }

    [Fact]
    public async Task ReopeningTheFileKeepsDataAndContinuesTheRevision()
    {
        long last;
        await using (var inv = _dir.Open())
        {
            await inv.PutAsync("vms/web", "kept".Utf8());
            last = (await inv.PutAsync("vms/db", "also".Utf8())).Revision;
        }
        await using (var inv = _dir.Open())
        {
            var entry = (await inv.GetAsync("vms/web"))!;
            Assert.Equal("kept", entry.Value.Text());
            Assert.Equal(last, (await inv.ListAsync("")).Revision);
            Assert.Equal(last + 1, (await inv.PutAsync("vms/web", "next".Utf8(), entry.Revision)).Revision);
        }
    }

    [Fact]
    public async Task OpenSetsWalAndRecordsTheSchemaVersionAndRefusesANewerOne()
    {
        await (_dir.Open()).DisposeAsync();
        using (var raw = new SqliteConnection($"Data Source={_dir.File};Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "PRAGMA journal_mode";
            Assert.Equal("wal", (string)cmd.ExecuteScalar()!);
            cmd.CommandText = "SELECT version FROM schema_version";
            Assert.Equal((long)SqliteInventory.LatestSchemaVersion, (long)cmd.ExecuteScalar()!);
            cmd.CommandText = "UPDATE schema_version SET version = version + 1";
            cmd.ExecuteNonQuery();
        }
        var ex = Assert.Throws<InventorySchemaException>(() => _dir.Open());
        Assert.Contains($"schema version {SqliteInventory.LatestSchemaVersion + 1}", ex.Message);
    }

    [Fact]
    public async Task MigrationsRunOnceAndAnUpToDateFileIsLeftAlone()
    {
        await (_dir.Open()).DisposeAsync();
        await using var inv = _dir.Open(); // second open: nothing to migrate, no "table exists" errors
        Assert.True((await inv.PutAsync("k", [1], 0)).Succeeded);
    }
}
