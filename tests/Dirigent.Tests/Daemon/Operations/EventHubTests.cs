using System.Text.Json.Nodes;
using System.Threading.Channels;
using Dirigent.Daemon.Operations;
using Dirigent.Tests.Inventory;

namespace Dirigent.Tests.Daemon.Operations;

/// <summary>The event bus behind GET /events: ordering, stamping, and that a stalled subscriber never holds up publishers.</summary>
public sealed class EventHubTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);

    private static async Task<HubEvent> Next(ChannelReader<HubEvent> r) => await r.ReadAsync().AsTask().WaitAsync(Hang);

    [Fact]
    public async Task OperationEventsArriveInOrderWithIncreasingSequence()
    {
        var time = new FakeTime();
        var hub = new EventHub(time);
        using var sub = hub.Subscribe();
        using var m = new OperationManager(new OperationManagerOptions { Time = time }, hub);

        var op = m.Submit("vms/web", "start", (_, _) => Task.FromResult<JsonNode?>(null));
        await m.WaitAsync(op.Id, Hang);
        hub.Publish(new VmStateChanged("web", "stopped", "running"));
        hub.Publish(new VmExited("web", "triple-fault", null));

        var events = new List<HubEvent>();
        for (int i = 0; i < 5; i++)
            events.Add(await Next(sub.Reader));

        Assert.Equal(["operation-created", "operation-updated", "operation-updated", "vm-state-changed", "vm-exited"],
            events.Select(e => e.Data.Type));
        Assert.Equal([1L, 2, 3, 4, 5], events.Select(e => e.Sequence));
        Assert.All(events, e => Assert.Equal(time.GetUtcNow(), e.Timestamp));
        Assert.Equal(
            [OperationStatus.Pending, OperationStatus.Running, OperationStatus.Succeeded],
            events.Take(3).Select(e => e.Data switch
            {
                OperationCreated c => c.Operation.Status,
                OperationUpdated u => u.Operation.Status,
                _ => throw new InvalidOperationException(),
            }));
        Assert.Equal(5, hub.LastSequence);
    }

    [Fact]
    public async Task ConcurrentPublishersAreSeenInTheSameOrderByEverySubscriber()
    {
        var hub = new EventHub();
        using var a = hub.Subscribe();
        using var b = hub.Subscribe();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(t => Task.Run(() =>
        {
            for (int i = 0; i < 100; i++)
                hub.Publish(new VmStateChanged($"vm{t}", null, i.ToString()));
        }))).WaitAsync(Hang);

        var seqA = new List<long>();
        var seqB = new List<long>();
        for (int i = 0; i < 800; i++)
        {
            seqA.Add((await Next(a.Reader)).Sequence);
            seqB.Add((await Next(b.Reader)).Sequence);
        }
        Assert.Equal(Enumerable.Range(1, 800).Select(i => (long)i), seqA);
        Assert.Equal(seqA, seqB);
    }

    [Fact]
    public async Task SlowSubscriberIsDroppedWithLaggedInsteadOfBlocking()
    {
        var hub = new EventHub();
        using var slow = hub.Subscribe(bound: 2);
        using var fast = hub.Subscribe();
        Assert.Equal(2, hub.SubscriberCount);

        // Publish never waits: the slow subscriber reads nothing at all.
        for (int i = 0; i < 5; i++)
            hub.Publish(new VmStateChanged("web", null, $"s{i}"));

        Assert.Equal("s0", ((VmStateChanged)(await Next(slow.Reader)).Data).NewState);
        Assert.Equal("s1", ((VmStateChanged)(await Next(slow.Reader)).Data).NewState);
        var lagged = await Next(slow.Reader);
        Assert.Equal(new Lagged(3), lagged.Data);
        Assert.True(slow.IsLagged);
        await slow.Reader.Completion.WaitAsync(Hang);
        Assert.Equal(1, hub.SubscriberCount);

        for (int i = 0; i < 5; i++)
            Assert.Equal($"s{i}", ((VmStateChanged)(await Next(fast.Reader)).Data).NewState);
        Assert.False(fast.IsLagged);
    }

    [Fact]
    public async Task FilterAndDisposeLimitWhatASubscriberSees()
    {
        var hub = new EventHub();
        var onlyExits = hub.Subscribe(filter: e => e is VmExited);
        hub.Publish(new VmStateChanged("web", null, "running"));
        hub.Publish(new VmExited("web", "shutdown", "exit code 0"));
        var ev = await Next(onlyExits.Reader);
        Assert.Equal(2, ev.Sequence);
        Assert.IsType<VmExited>(ev.Data);

        onlyExits.Dispose();
        Assert.Equal(0, hub.SubscriberCount);
        hub.Publish(new VmExited("web", "shutdown", null));
        await onlyExits.Reader.Completion.WaitAsync(Hang);
        Assert.False(onlyExits.Reader.TryRead(out _));
    }
}
