using System.Threading.Channels;

namespace Dirigent.Daemon.Operations;

/// <summary>What happened; the hub wraps it in a <see cref="HubEvent"/> with a sequence number and timestamp.</summary>
public abstract record DaemonEvent
{
    /// <summary>The SSE "event:" name.</summary>
    public abstract string Type { get; }
}

/// <summary>An operation was submitted.</summary>
public sealed record OperationCreated(Operation Operation) : DaemonEvent
{
    public override string Type => "operation-created";
}

/// <summary>An operation started, reported progress, or finished (the snapshot says which).</summary>
public sealed record OperationUpdated(Operation Operation) : DaemonEvent
{
    public override string Type => "operation-updated";
}

/// <summary>A VM moved between lifecycle states (names are the daemon's; the hub does not interpret them).</summary>
public sealed record VmStateChanged(string Vm, string? OldState, string NewState) : DaemonEvent
{
    public override string Type => "vm-state-changed";
}

/// <summary>A VM ended; <paramref name="Reason"/> is the exit kind, <paramref name="Detail"/> anything more (one line).</summary>
public sealed record VmExited(string Vm, string Reason, string? Detail) : DaemonEvent
{
    public override string Type => "vm-exited";
}

/// <summary>
/// The last event a subscriber gets when it fell <see cref="EventHub"/>'s bound behind: its stream ends here and it
/// must resynchronise (re-read state, then subscribe again). <paramref name="LastSequence"/> is the newest event it missed.
/// </summary>
public sealed record Lagged(long LastSequence) : DaemonEvent
{
    public override string Type => "lagged";
}

/// <param name="Sequence">Strictly increasing across the hub (starts at 1), so a client can spot gaps.</param>
public sealed record HubEvent(long Sequence, DateTimeOffset Timestamp, DaemonEvent Data);

/// <summary>
/// In-process publish/subscribe for daemon events (the future GET /events). Publishing never blocks: every subscriber
/// has its own channel, and one that falls more than its bound behind is cut off with a final <see cref="Lagged"/> event
/// instead of slowing the publishers (a VM's exit must not wait for a stalled HTTP client).
/// </summary>
public sealed class EventHub
{
    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private readonly List<Subscription> _subscribers = [];
    private long _sequence;

    public EventHub(TimeProvider? time = null) => _time = time ?? TimeProvider.System;

    /// <summary>The sequence number of the last published event (0 before any).</summary>
    public long LastSequence
    {
        get { lock (_lock) return _sequence; }
    }

    public int SubscriberCount
    {
        get { lock (_lock) return _subscribers.Count; }
    }

    /// <summary>
    /// Stamps and delivers one event. Numbering and delivery happen under one lock, so every subscriber sees events
    /// in sequence order; delivery is TryWrite only, so the lock is never held across a wait.
    /// </summary>
    public HubEvent Publish(DaemonEvent data)
    {
        ArgumentNullException.ThrowIfNull(data);
        lock (_lock)
        {
            var ev = new HubEvent(++_sequence, _time.GetUtcNow(), data);
            for (int i = _subscribers.Count - 1; i >= 0; i--)
            {
                var s = _subscribers[i];
                bool wanted;
                try
                {
                    wanted = s.Filter?.Invoke(data) ?? true;
                }
                catch (Exception)
                {
                    // A broken filter must not make the publisher (e.g. the operation manager, under its lock) throw.
                    s.Dispose();
                    continue;
                }
                if (wanted && !s.Deliver(ev, _time))
                    _subscribers.RemoveAt(i);
            }
            return ev;
        }
    }

    /// <summary>
    /// Subscribes to events published from now on. <paramref name="bound"/> null is unbounded; otherwise a subscriber
    /// with that many undelivered events is dropped. <paramref name="filter"/> (optional) runs under the hub lock: keep it cheap.
    /// </summary>
    public Subscription Subscribe(int? bound = null, Func<DaemonEvent, bool>? filter = null)
    {
        if (bound is <= 0)
            throw new ArgumentOutOfRangeException(nameof(bound), "bound must be positive");
        var s = new Subscription(this, bound, filter);
        lock (_lock)
            _subscribers.Add(s);
        return s;
    }

    // Lock is reentrant, so a subscription disposed from inside Publish (broken filter) removes itself safely:
    // Publish walks the list backwards, and the removed entry is at or after the current index.
    internal void Remove(Subscription s)
    {
        lock (_lock)
            _subscribers.Remove(s);
    }
}

/// <summary>One subscriber's stream. Dispose to unsubscribe (the reader then completes).</summary>
public sealed class Subscription : IDisposable
{
    private readonly EventHub _hub;
    private readonly Channel<HubEvent> _channel;
    private readonly int? _bound;

    internal Subscription(EventHub hub, int? bound, Func<DaemonEvent, bool>? filter)
    {
        _hub = hub;
        _bound = bound;
        Filter = filter;
        // One slot beyond the bound, so the Lagged notice always fits after the bound is reached.
        _channel = bound is int b
            ? Channel.CreateBounded<HubEvent>(new BoundedChannelOptions(b + 1) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait })
            : Channel.CreateUnbounded<HubEvent>(new UnboundedChannelOptions { SingleReader = true });
    }

    internal Func<DaemonEvent, bool>? Filter { get; }

    public ChannelReader<HubEvent> Reader => _channel.Reader;

    /// <summary>True once this subscriber was dropped for falling behind.</summary>
    public bool IsLagged { get; private set; }

    /// <summary>Called under the hub lock; false means the subscriber is gone (lagged or disposed) and should be removed.</summary>
    internal bool Deliver(HubEvent ev, TimeProvider time)
    {
        // Only publishers (serialised by the hub lock) write, and the reader only shrinks Count, so the check cannot race into a full channel.
        if (_bound is int b && _channel.Reader.Count >= b)
        {
            IsLagged = true;
            _channel.Writer.TryWrite(new HubEvent(ev.Sequence, time.GetUtcNow(), new Lagged(ev.Sequence)));
            _channel.Writer.TryComplete();
            return false;
        }
        return _channel.Writer.TryWrite(ev);
    }

    public void Dispose()
    {
        _hub.Remove(this);
        _channel.Writer.TryComplete();
    }
}
