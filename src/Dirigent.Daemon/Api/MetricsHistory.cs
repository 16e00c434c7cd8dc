using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Vms;

namespace Dirigent.Daemon.Api;

/// <summary>One point of a VM's graphs. Rates are per second since the previous sample, null on a worker's first one.</summary>
internal sealed record MetricsSample(DateTimeOffset At, double? Cpu, long? MemoryBytes, long? GuestMemoryBytes,
    double? DiskReadBps, double? DiskWriteBps, double? NetRxBps, double? NetTxBps, double? InstructionsPerSecond, double? UptimeS)
{
    public JsonObject ToJson() => new()
    {
        ["at"] = At,
        // Host cores the worker used (1.0 = one core busy): its cgroup's or its own CPU time, as /metrics counts it.
        ["cpu"] = Round(Cpu),
        ["memory_bytes"] = MemoryBytes,
        ["guest_memory_bytes"] = GuestMemoryBytes,
        ["disk_read_bps"] = Round(DiskReadBps),
        ["disk_write_bps"] = Round(DiskWriteBps),
        ["net_rx_bps"] = Round(NetRxBps),
        ["net_tx_bps"] = Round(NetTxBps),
        ["instructions_per_s"] = Round(InstructionsPerSecond),
        ["uptime_s"] = UptimeS,
    };

    private static double? Round(double? v) => v is double d ? Math.Round(d, 4) : null;
}

/// <summary>
/// The recent past of every VM's metrics, for the web console's graphs (GET /vms/{name}/metrics and its SSE stream):
/// every <see cref="Interval"/> each live worker is asked for its counters (as /metrics does) and the differences
/// become rates. <see cref="Capacity"/> samples (10 minutes) are kept per VM in memory: a daemon restart starts the
/// graphs afresh, the workers' own counters are not lost. A stopped VM keeps its history until it is deleted.
/// </summary>
internal sealed class MetricsHistory : IAsyncDisposable
{
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(2);
    public const int Capacity = 300;

    private readonly VmManager _vms;
    private readonly EventHub _events;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Series> _series = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stop = new();
    private Task _loop = Task.CompletedTask;
    private Task _deletes = Task.CompletedTask;

    private sealed class Series
    {
        public readonly Queue<MetricsSample> Samples = new();
        public Counters? Last;
        public readonly List<Channel<MetricsSample>> Subscribers = [];
    }

    /// <summary>The raw counters of one sample, to difference against the next (same worker pid only).</summary>
    private sealed record Counters(int Pid, long Timestamp, double? CpuSeconds, long DiskRead, long DiskWrite, long NetRx, long NetTx, long Instructions);

    public MetricsHistory(VmManager vms, EventHub events)
    {
        _vms = vms;
        _events = events;
    }

    public void Start()
    {
        _loop = Task.Run(LoopAsync);
        _deletes = Task.Run(ForgetDeletedAsync);
    }

    /// <summary>The VM's samples, oldest first, and (atomically with them) a channel of the ones to come.</summary>
    public (List<MetricsSample> History, ChannelReader<MetricsSample> Next, IDisposable Subscription) Subscribe(string vm)
    {
        var ch = Channel.CreateBounded<MetricsSample>(new BoundedChannelOptions(64) { FullMode = BoundedChannelFullMode.DropOldest });
        lock (_lock)
        {
            var s = Get(vm);
            s.Subscribers.Add(ch);
            return ([.. s.Samples], ch.Reader, new Unsubscribe(this, vm, ch));
        }
    }

    public List<MetricsSample> History(string vm)
    {
        lock (_lock) return _series.TryGetValue(vm, out var s) ? [.. s.Samples] : [];
    }

    private sealed class Unsubscribe(MetricsHistory h, string vm, Channel<MetricsSample> ch) : IDisposable
    {
        public void Dispose()
        {
            lock (h._lock)
                if (h._series.TryGetValue(vm, out var s)) s.Subscribers.Remove(ch);
        }
    }

    private Series Get(string vm)
    {
        if (!_series.TryGetValue(vm, out var s)) _series[vm] = s = new Series();
        return s;
    }

    private async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(Interval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
                await Task.WhenAll(_vms.Live.ToList().Select(kv => SampleAsync(kv.Key, kv.Value, _stop.Token)));
        }
        catch (OperationCanceledException) { }
    }

    private async Task SampleAsync(string vm, VmRuntime rt, CancellationToken ct)
    {
        JsonObject? m = null;
        using (var t = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            // A worker that does not answer in time (busy, paused mid-request, going away) just has no point this round.
            t.CancelAfter(Interval);
            try { m = await rt.Handle.Client.GetMetricsAsync(t.Token); }
            catch (Exception) when (!ct.IsCancellationRequested) { }
        }
        if (ct.IsCancellationRequested) return;
        var proc = VmMetrics.ProcStat(rt.Handle.Pid);
        var now = new Counters(rt.Handle.Pid, Stopwatch.GetTimestamp(), VmMetrics.CpuSeconds(rt),
            Sum(m, "disks", "read_bytes"), Sum(m, "disks", "write_bytes"), Sum(m, "nics", "rx_bytes"), Sum(m, "nics", "tx_bytes"),
            Long(m?["instructions_retired"]) ?? 0);
        lock (_lock)
        {
            var s = Get(vm);
            var prev = s.Last is { } p && p.Pid == now.Pid ? p : null;
            double dt = prev == null ? 0 : Stopwatch.GetElapsedTime(prev.Timestamp, now.Timestamp).TotalSeconds;
            double? Rate(double? a, double? b) => prev == null || dt <= 0 || a is null || b is null || a < b ? null : (a - b) / dt;
            var sample = new MetricsSample(DateTimeOffset.UtcNow,
                Rate(now.CpuSeconds, prev?.CpuSeconds), proc?.RssBytes, Long(m?["memory_bytes"]),
                Rate(now.DiskRead, prev?.DiskRead), Rate(now.DiskWrite, prev?.DiskWrite),
                Rate(now.NetRx, prev?.NetRx), Rate(now.NetTx, prev?.NetTx),
                Rate(now.Instructions, prev?.Instructions), m?["uptime_s"] is JsonValue u ? u.GetValue<double>() : null);
            s.Last = now;
            s.Samples.Enqueue(sample);
            while (s.Samples.Count > Capacity) s.Samples.Dequeue();
            foreach (var ch in s.Subscribers) ch.Writer.TryWrite(sample);
        }
    }

    /// <summary>A deleted VM's graphs go with it (a new VM of that name starts empty); its streams end.</summary>
    private async Task ForgetDeletedAsync()
    {
        using var sub = _events.Subscribe(256, e => e is VmStateChanged { NewState: "deleted" });
        try
        {
            await foreach (var ev in sub.Reader.ReadAllAsync(_stop.Token))
            {
                if (ev.Data is not VmStateChanged c) continue;
                lock (_lock)
                {
                    if (!_series.Remove(c.Vm, out var s)) continue;
                    foreach (var ch in s.Subscribers) ch.Writer.TryComplete();
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    private static long Sum(JsonObject? m, string list, string key)
    {
        long total = 0;
        if (m?[list] is JsonArray a)
            foreach (var item in a) total += Long(item?[key]) ?? 0;
        return total;
    }

    private static long? Long(JsonNode? n)
    {
        try { return n is JsonValue v ? (long)v.GetValue<double>() : null; }
        catch (Exception e) when (e is FormatException or InvalidOperationException) { return null; }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await Task.WhenAll(_loop, _deletes);
        lock (_lock)
            foreach (var s in _series.Values)
                foreach (var ch in s.Subscribers) ch.Writer.TryComplete();
        _stop.Dispose();
    }
}
