using System.Text;
using Dirigent.Inventory;

namespace Dirigent.Tests.Inventory;

/// <summary>A clock that moves only when a test says so: lease expiry is tested without sleeping.</summary>
internal sealed class FakeTime : TimeProvider
{
    private long _ticks = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero).UtcTicks;

    public override DateTimeOffset GetUtcNow() => new(Interlocked.Read(ref _ticks), TimeSpan.Zero);

    public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);
}

/// <summary>A temporary directory holding one inventory file; removed (with -wal/-shm) on dispose.</summary>
internal sealed class InventoryDir : IDisposable
{
    public string Dir { get; } = Path.Combine(Path.GetTempPath(), $"dirigent-inv-{Guid.NewGuid():N}");
    public string File => Path.Combine(Dir, "inventory.db");
    public FakeTime Time { get; } = new();

    public InventoryDir() => Directory.CreateDirectory(Dir);

    /// <summary>Opens the file with the fake clock and no background reaper, so only the test decides when leases end.</summary>
    public SqliteInventory Open(TimeSpan? watchPoll = null) => SqliteInventory.Open(File, new SqliteInventoryOptions
    {
        Time = Time,
        LeaseReapInterval = null,
        WatchPollInterval = watchPoll ?? TimeSpan.FromMilliseconds(250),
    });

    public void Dispose()
    {
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }
}

internal static class InventoryTestExtensions
{
    /// <summary>Hang guard for waits on watch events: generous, and only a failure path.</summary>
    public static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    public static byte[] Utf8(this string s) => Encoding.UTF8.GetBytes(s);
    public static string Text(this byte[] b) => Encoding.UTF8.GetString(b);

    public static async Task<InventoryEvent> NextAsync(this IAsyncEnumerator<InventoryEvent> watch)
    {
        Assert.True(await watch.MoveNextAsync(), "watch ended");
        return watch.Current;
    }

    public static async Task<List<InventoryEvent>> TakeAsync(this IAsyncEnumerator<InventoryEvent> watch, int count)
    {
        var list = new List<InventoryEvent>();
        for (int i = 0; i < count; i++) list.Add(await watch.NextAsync());
        return list;
    }
}
