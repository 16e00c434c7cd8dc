using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text.Json.Nodes;

namespace Dirigent.Daemon.Operations;

/// <summary>
/// Runs the daemon's asynchronous operations (issue #11: 202 Accepted + /operations/{id}). Operations on the same
/// target run strictly one at a time in submission order, so callers never race for a VM and never see lock
/// time-outs; different targets run in parallel, up to an optional global limit. A failing or cancelled operation
/// only ends itself: the next one on its target starts as usual.
/// </summary>
public sealed class OperationManager : IDisposable
{
    /// <summary>Mutable state behind one <see cref="Operation"/>; every field is guarded by the manager's lock.</summary>
    private sealed class Entry(long order, Operation snapshot, Func<OperationContext, CancellationToken, Task<JsonNode?>> work)
    {
        public readonly long Order = order;
        public Operation Snapshot = snapshot;
        public readonly Func<OperationContext, CancellationToken, Task<JsonNode?>> Work = work;
        // Never disposed: it has no timer, and a late Cancel must not race the pruning of a just-finished operation.
        public readonly CancellationTokenSource Cancel = new();
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>One target's queue. Busy: it has an operation running or is waiting in the ready queue for a slot.</summary>
    private sealed class TargetQueue(string key)
    {
        public readonly string Key = key;
        public readonly Queue<Entry> Pending = new();
        public bool Busy;
    }

    private readonly Lock _lock = new();
    private readonly OperationManagerOptions _options;
    private readonly TimeProvider _time;
    private readonly EventHub? _events;
    private readonly Dictionary<string, Entry> _ops = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TargetQueue> _targets = new(StringComparer.Ordinal);
    // Targets whose head operation waits for a concurrency slot, in the order they became ready (fair across targets).
    private readonly Queue<TargetQueue> _ready = new();
    // Finished operations in finishing order: retention prunes from the front.
    private readonly Queue<Entry> _finished = new();
    private int _running;
    private long _submitted;
    private bool _disposed;

    public OperationManager(OperationManagerOptions? options = null, EventHub? events = null)
    {
        _options = options ?? new OperationManagerOptions();
        if (_options.MaxConcurrency is <= 0)
            throw new ArgumentOutOfRangeException(nameof(options), "MaxConcurrency must be positive");
        if (_options.MaxRetained < 0)
            throw new ArgumentOutOfRangeException(nameof(options), "MaxRetained must not be negative");
        _time = _options.Time;
        _events = events;
    }

    /// <summary>
    /// Queues <paramref name="work"/> behind everything already submitted for <paramref name="target"/> and returns at
    /// once. The work always starts on the thread pool, never inline in Submit. Its token is cancelled by
    /// <see cref="Cancel"/> or Dispose; throwing OperationCanceledException then ends it as Cancelled.
    /// </summary>
    public Operation Submit(string target, string description, Func<OperationContext, CancellationToken, Task<JsonNode?>> work)
    {
        ArgumentException.ThrowIfNullOrEmpty(target);
        ArgumentNullException.ThrowIfNull(description);
        ArgumentNullException.ThrowIfNull(work);
        List<Entry> start;
        Operation created;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Prune();
            var id = NewId();
            created = new Operation(id, target, description, OperationStatus.Pending, _time.GetUtcNow(), null, null, null, null, null);
            var e = new Entry(++_submitted, created, work);
            _ops.Add(id, e);
            if (!_targets.TryGetValue(target, out var q))
                _targets.Add(target, q = new TargetQueue(target));
            q.Pending.Enqueue(e);
            _events?.Publish(new OperationCreated(created));
            if (!q.Busy)
            {
                q.Busy = true;
                _ready.Enqueue(q);
            }
            start = Pump();
        }
        StartAll(start);
        return created;
    }

    /// <summary>The operation as it is now, or null if unknown or already forgotten.</summary>
    public Operation? Get(string id)
    {
        lock (_lock)
        {
            Prune();
            return _ops.TryGetValue(id, out var e) ? e.Snapshot : null;
        }
    }

    /// <summary>All operations still known, in submission order.</summary>
    public IReadOnlyList<Operation> List()
    {
        lock (_lock)
        {
            Prune();
            return _ops.Values.OrderBy(e => e.Order).Select(e => e.Snapshot).ToList();
        }
    }

    /// <summary>
    /// Waits until the operation finishes or <paramref name="timeout"/> passes, and returns it as it is then (still
    /// Pending/Running on timeout: that is an answer, not an error). Null if the id is unknown.
    /// </summary>
    public async Task<Operation?> WaitAsync(string id, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        Entry? e;
        lock (_lock)
        {
            Prune();
            if (!_ops.TryGetValue(id, out e))
                return null;
        }
        try
        {
            await e.Done.Task.WaitAsync(timeout, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        // Read the entry, not the table: a timeout right as the operation is pruned still gets an answer.
        lock (_lock)
            return e.Snapshot;
    }

    /// <summary>
    /// Cancels: a pending operation ends Cancelled without ever running; a running one has its token cancelled and ends
    /// when its work notices (it may still succeed if it finishes first). Returns the operation as it is after the
    /// request, or null if unknown; a finished operation is left as it is.
    /// </summary>
    public Operation? Cancel(string id)
    {
        Entry? e;
        lock (_lock)
        {
            if (!_ops.TryGetValue(id, out e))
                return null;
            if (e.Snapshot.Status == OperationStatus.Pending)
            {
                // Left in its target queue; Pump skips entries that are no longer pending.
                Finish(e, OperationStatus.Cancelled, "cancelled before it started", null);
                return e.Snapshot;
            }
            if (e.Snapshot.Status != OperationStatus.Running)
                return e.Snapshot;
        }
        // Outside the lock: token callbacks run inline and may call back into the manager.
        e.Cancel.Cancel();
        lock (_lock)
            return e.Snapshot;
    }

    internal void ReportProgress(string id, string progress)
    {
        lock (_lock)
        {
            if (!_ops.TryGetValue(id, out var e) || e.Snapshot.Status != OperationStatus.Running)
                return;
            e.Snapshot = e.Snapshot with { Progress = OneLine(progress) };
            _events?.Publish(new OperationUpdated(e.Snapshot));
        }
    }

    /// <summary>Picks the operations that may start now; the caller starts them after leaving the lock.</summary>
    private List<Entry> Pump()
    {
        var start = new List<Entry>();
        while (_ready.Count > 0 && (_options.MaxConcurrency is not int max || _running < max))
        {
            var q = _ready.Dequeue();
            Entry? next = null;
            while (q.Pending.TryDequeue(out var e))
            {
                if (e.Snapshot.Status == OperationStatus.Pending)
                {
                    next = e;
                    break;
                }
            }
            if (next is null)
            {
                // Everything left was cancelled while waiting.
                q.Busy = false;
                _targets.Remove(q.Key);
                continue;
            }
            _running++;
            next.Snapshot = next.Snapshot with { Status = OperationStatus.Running, StartedAt = _time.GetUtcNow() };
            _events?.Publish(new OperationUpdated(next.Snapshot));
            start.Add(next);
        }
        return start;
    }

    private void StartAll(List<Entry> start)
    {
        foreach (var e in start)
            _ = Task.Run(() => RunAsync(e));
    }

    private async Task RunAsync(Entry e)
    {
        OperationStatus status;
        string? error = null;
        JsonNode? result = null;
        try
        {
            var context = new OperationContext(this, e.Snapshot.Id, e.Snapshot.Target);
            result = await e.Work(context, e.Cancel.Token).ConfigureAwait(false);
            status = OperationStatus.Succeeded;
        }
        catch (OperationCanceledException) when (e.Cancel.IsCancellationRequested)
        {
            status = OperationStatus.Cancelled;
            error = "cancelled";
        }
        catch (Exception ex)
        {
            status = OperationStatus.Failed;
            error = OneLine(ex.Message);
        }

        List<Entry> start;
        lock (_lock)
        {
            _running--;
            Finish(e, status, error, result);
            if (_targets.TryGetValue(e.Snapshot.Target, out var q))
            {
                if (q.Pending.Count > 0)
                    _ready.Enqueue(q); // stays Busy: its next operation waits for a slot in turn
                else
                {
                    q.Busy = false;
                    _targets.Remove(q.Key);
                }
            }
            start = Pump();
        }
        StartAll(start);
    }

    /// <summary>Ends an operation (under the lock): records it, announces it, wakes its waiters, schedules its forgetting.</summary>
    private void Finish(Entry e, OperationStatus status, string? error, JsonNode? result)
    {
        e.Snapshot = e.Snapshot with { Status = status, FinishedAt = _time.GetUtcNow(), Error = error, Result = result };
        _finished.Enqueue(e);
        _events?.Publish(new OperationUpdated(e.Snapshot));
        e.Done.TrySetResult();
        Prune();
    }

    /// <summary>Forgets finished operations older than the retention period or beyond the count limit (under the lock).</summary>
    private void Prune()
    {
        var cutoff = _time.GetUtcNow() - _options.Retention;
        while (_finished.TryPeek(out var e) && (_finished.Count > _options.MaxRetained || e.Snapshot.FinishedAt <= cutoff))
        {
            _finished.Dequeue();
            _ops.Remove(e.Snapshot.Id);
        }
    }

    /// <summary>Cancels everything: pending operations end Cancelled, running ones get their token cancelled. No new submits.</summary>
    public void Dispose()
    {
        List<Entry> running;
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            running = [];
            foreach (var e in _ops.Values.ToList())
            {
                if (e.Snapshot.Status == OperationStatus.Pending)
                    Finish(e, OperationStatus.Cancelled, "daemon shutting down", null);
                else if (e.Snapshot.Status == OperationStatus.Running)
                    running.Add(e);
            }
        }
        foreach (var e in running)
            e.Cancel.Cancel();
    }

    private static string NewId()
    {
        Span<byte> bytes = stackalloc byte[16];
        RandomNumberGenerator.Fill(bytes);
        return Base64Url.EncodeToString(bytes);
    }

    private static string OneLine(string s)
    {
        var line = s.ReplaceLineEndings(" ").Trim();
        return line.Length == 0 ? "failed" : line;
    }
}
