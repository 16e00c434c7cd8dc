using System.Runtime.CompilerServices;
using System.Text;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Mvccpb;

namespace Dirigent.Inventory;

/// <summary>
/// <see cref="IInventory"/> on an etcd v3 cluster: the cluster inventory. Each call maps one to one onto etcd's API
/// (the interface was cut to its shape): a compare-and-set put or delete is one Txn comparing the key's mod_revision
/// (0: create_revision == 0, "absent"), a prefix list is a range read at the header's revision, a watch is an etcd
/// watch from after + 1, leases are etcd leases (etcd expires them itself). Every key lives under
/// <see cref="KeyPrefix"/>, so several clusters (or tests) can share one etcd.
/// </summary>
public sealed class EtcdInventory : IInventory
{
    private readonly GrpcChannel[] _channels;
    private readonly string _root;
    private readonly ByteString _rootBytes;
    private readonly CancellationTokenSource _disposeCts = new();
    private int _current;
    private int _disposed;

    /// <summary>How long one call waits before trying the next endpoint (and failing after the last).</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public string KeyPrefix => _root;

    public IReadOnlyList<string> Endpoints { get; }

    /// <param name="endpoints">host:port of etcd's client URLs (plain HTTP/2; put TLS in front for anything but a trusted link).</param>
    /// <param name="keyPrefix">Every key is stored under it, e.g. "/dirigent/v1/".</param>
    public EtcdInventory(IReadOnlyList<string> endpoints, string keyPrefix = "/dirigent/v1/")
    {
        if (endpoints.Count == 0) throw new ArgumentException("at least one etcd endpoint is needed", nameof(endpoints));
        Endpoints = endpoints;
        _root = keyPrefix;
        _rootBytes = ByteString.CopyFromUtf8(keyPrefix);
        _channels = endpoints.Select(e => GrpcChannel.ForAddress("http://" + e, new GrpcChannelOptions
        {
            // After an outage the channel retries its connection with a growing backoff, and every call in between
            // fails at once: gRPC's default cap (120 s) would keep a daemon "unavailable" for up to two minutes
            // after etcd is back. A short cap lets it see etcd again within a couple of seconds.
            InitialReconnectBackoff = TimeSpan.FromMilliseconds(200),
            MaxReconnectBackoff = TimeSpan.FromSeconds(2),
            // Watches and keep-alives are long-lived streams; etcd answers on HTTP/2 without TLS.
            HttpHandler = new SocketsHttpHandler
            {
                EnableMultipleHttp2Connections = true,
                KeepAlivePingDelay = TimeSpan.FromSeconds(5),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
                ConnectTimeout = TimeSpan.FromSeconds(3),
            },
        })).ToArray();
    }

    /// <summary>
    /// Parses "etcd://HOST:PORT[,HOST:PORT...]" (the daemon's --cluster value) into endpoints; null with the reason
    /// in <paramref name="error"/> when it is not one.
    /// </summary>
    public static IReadOnlyList<string>? ParseUrl(string url, out string? error)
    {
        error = null;
        const string scheme = "etcd://";
        if (!url.StartsWith(scheme, StringComparison.Ordinal))
        {
            error = $"'{url}' is not an etcd URL: expected etcd://HOST:PORT[,HOST:PORT...]";
            return null;
        }
        var list = new List<string>();
        foreach (string part in url[scheme.Length..].TrimEnd('/').Split(','))
        {
            int colon = part.LastIndexOf(':');
            if (colon <= 0 || !int.TryParse(part.AsSpan(colon + 1), out int port) || port is < 1 or > 65535 ||
                part[..colon].Any(c => char.IsWhiteSpace(c) || c == '/' || c == '@'))
            {
                error = $"'{part}' in '{url}' is not HOST:PORT";
                return null;
            }
            list.Add(part);
        }
        return list;
    }

    private ByteString K(string key) => ByteString.CopyFromUtf8(_root + key);

    private string Unroot(ByteString key)
    {
        string s = key.ToStringUtf8();
        return s.StartsWith(_root, StringComparison.Ordinal) ? s[_root.Length..] : s;
    }

    private (ByteString Key, ByteString End) Range(string prefix)
    {
        string? end = InventoryKeys.PrefixEnd(_root + prefix);
        return (K(prefix), ByteString.CopyFromUtf8(end!));
    }

    /// <summary>
    /// Runs one unary call on the current endpoint, moving on to the next one when it is unreachable (each endpoint
    /// once). Why not a load balancer: etcd members are equal, and this keeps one connection's ordering.
    /// </summary>
    private async Task<T> Call<T>(Func<CallInvoker, CallOptions, Task<T>> call, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        RpcException? last = null;
        for (int i = 0; i < _channels.Length; i++)
        {
            int idx = (Volatile.Read(ref _current) + i) % _channels.Length;
            var opts = new CallOptions(deadline: DateTime.UtcNow + CallTimeout, cancellationToken: ct);
            try
            {
                var r = await call(_channels[idx].CreateCallInvoker(), opts).ConfigureAwait(false);
                Volatile.Write(ref _current, idx);
                return r;
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded && !ct.IsCancellationRequested)
            {
                last = e;
            }
        }
        throw new InventoryUnavailableException($"etcd at {string.Join(",", Endpoints)} is unreachable: {last?.Status.Detail}", last);
    }

    public async Task<InventoryEntry?> GetAsync(string key, CancellationToken ct = default)
    {
        InventoryKeys.Validate(key);
        var r = await Call((c, o) => new KV.KVClient(c).RangeAsync(new RangeRequest { Key = K(key) }, o).ResponseAsync, ct);
        return r.Kvs.Count == 0 ? null : Entry(r.Kvs[0]);
    }

    public async Task<InventoryList> ListAsync(string prefix, CancellationToken ct = default)
    {
        InventoryKeys.Validate(prefix, allowEmpty: true, nameof(prefix));
        var (key, end) = Range(prefix);
        var r = await Call((c, o) => new KV.KVClient(c).RangeAsync(new RangeRequest
        {
            Key = key, RangeEnd = end, SortOrder = RangeRequest.Types.SortOrder.Ascend, SortTarget = RangeRequest.Types.SortTarget.Key,
        }, o).ResponseAsync, ct);
        return new InventoryList(r.Kvs.Select(Entry).ToList(), r.Header.Revision);
    }

    private InventoryEntry Entry(KeyValue kv) =>
        new(Unroot(kv.Key), kv.Value.ToByteArray(), kv.ModRevision, kv.CreateRevision, kv.Lease);

    private static Compare RevisionIs(ByteString key, long expected) => expected == 0
        ? new Compare { Key = key, Target = Compare.Types.CompareTarget.Create, Result = Compare.Types.CompareResult.Equal, CreateRevision = 0 }
        : new Compare { Key = key, Target = Compare.Types.CompareTarget.Mod, Result = Compare.Types.CompareResult.Equal, ModRevision = expected };

    public async Task<WriteResult> PutAsync(string key, byte[] value, long? expectedRevision = null, long leaseId = 0,
        CancellationToken ct = default)
    {
        InventoryKeys.Validate(key);
        ArgumentNullException.ThrowIfNull(value);
        var k = K(key);
        var txn = new TxnRequest();
        if (expectedRevision is long exp) txn.Compare.Add(RevisionIs(k, exp));
        txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = k, Value = ByteString.CopyFrom(value), Lease = leaseId } });
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = k, KeysOnly = true } });
        TxnResponse r;
        try { r = await Call((c, o) => new KV.KVClient(c).TxnAsync(txn, o).ResponseAsync, ct); }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound && leaseId != 0)
        {
            // "etcdserver: requested lease not found": an expired or revoked lease; nothing was written.
            return new WriteResult(WriteOutcome.LeaseNotFound, 0, 0);
        }
        if (r.Succeeded) return new WriteResult(WriteOutcome.Done, r.Header.Revision, r.Header.Revision);
        var kvs = r.Responses[0].ResponseRange.Kvs;
        return new WriteResult(WriteOutcome.RevisionMismatch, 0, kvs.Count == 0 ? 0 : kvs[0].ModRevision);
    }

    public async Task<WriteResult> DeleteAsync(string key, long? expectedRevision = null, CancellationToken ct = default)
    {
        InventoryKeys.Validate(key);
        var k = K(key);
        var txn = new TxnRequest();
        if (expectedRevision is long exp) txn.Compare.Add(RevisionIs(k, exp));
        txn.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = k } });
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = k, KeysOnly = true } });
        var r = await Call((c, o) => new KV.KVClient(c).TxnAsync(txn, o).ResponseAsync, ct);
        if (!r.Succeeded)
        {
            var kvs = r.Responses[0].ResponseRange.Kvs;
            // As the SQLite store: an absent key is NotFound whatever revision was expected.
            return kvs.Count == 0 ? new WriteResult(WriteOutcome.NotFound, 0, 0)
                : new WriteResult(WriteOutcome.RevisionMismatch, 0, kvs[0].ModRevision);
        }
        return r.Responses[0].ResponseDeleteRange.Deleted == 0
            ? new WriteResult(WriteOutcome.NotFound, 0, 0)
            : new WriteResult(WriteOutcome.Done, r.Header.Revision, r.Header.Revision);
    }

    /// <summary>
    /// An etcd watch from <paramref name="afterRevision"/> + 1. When the stream breaks (etcd restarted, a member
    /// lost), it is re-created from the last revision delivered, so the caller sees every change once and in order;
    /// a history compacted meanwhile ends the watch with <see cref="InventoryCompactedException"/>.
    /// </summary>
    public async IAsyncEnumerable<InventoryEvent> Watch(string prefix, long afterRevision,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        InventoryKeys.Validate(prefix, allowEmpty: true, nameof(prefix));
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _disposeCts.Token);
        var token = linked.Token;
        var (key, end) = Range(prefix);
        long last = afterRevision;
        int attempt = 0;
        while (!token.IsCancellationRequested)
        {
            var channel = _channels[(Volatile.Read(ref _current) + attempt) % _channels.Length];
            var batch = new List<InventoryEvent>();
            AsyncDuplexStreamingCall<WatchRequest, WatchResponse>? call = null;
            IAsyncStreamReader<WatchResponse>? reader = null;
            try
            {
                call = new Etcdserverpb.Watch.WatchClient(channel).Watch(cancellationToken: token);
                await call.RequestStream.WriteAsync(new WatchRequest
                {
                    CreateRequest = new WatchCreateRequest { Key = key, RangeEnd = end, StartRevision = last + 1 },
                }, token).ConfigureAwait(false);
                reader = call.ResponseStream;
            }
            catch (Exception e) when (e is RpcException or IOException or InvalidOperationException or OperationCanceledException)
            {
                call?.Dispose();
                call = null;
            }
            if (token.IsCancellationRequested)
            {
                call?.Dispose();
                yield break;
            }
            if (call == null)
            {
                attempt++;
                try { await Task.Delay(Backoff(attempt), token).ConfigureAwait(false); } catch (OperationCanceledException) { yield break; }
                continue;
            }
            using (call)
            {
                while (true)
                {
                    batch.Clear();
                    bool broke = false;
                    try
                    {
                        if (!await reader!.MoveNext(token).ConfigureAwait(false)) broke = true;
                        else
                        {
                            var resp = reader.Current;
                            if (resp.CompactRevision != 0) throw new InventoryCompactedException(last, resp.CompactRevision - 1);
                            if (resp.Canceled) broke = true;
                            foreach (var ev in resp.Events)
                            {
                                var kind = ev.Type == Event.Types.EventType.Put ? InventoryEventKind.Put : InventoryEventKind.Delete;
                                batch.Add(new InventoryEvent(kind, Unroot(ev.Kv.Key),
                                    kind == InventoryEventKind.Put ? ev.Kv.Value.ToByteArray() : null, ev.Kv.ModRevision));
                            }
                            attempt = 0;
                        }
                    }
                    catch (RpcException) when (!token.IsCancellationRequested) { broke = true; }
                    catch (IOException) when (!token.IsCancellationRequested) { broke = true; }
                    catch (OperationCanceledException) when (token.IsCancellationRequested) { yield break; }
                    catch (RpcException) when (token.IsCancellationRequested) { yield break; }
                    foreach (var ev in batch)
                    {
                        last = ev.Revision;
                        yield return ev;
                    }
                    if (broke) break;
                }
            }
            attempt++;
            try { await Task.Delay(Backoff(attempt), token).ConfigureAwait(false); } catch (OperationCanceledException) { yield break; }
        }
    }

    private static TimeSpan Backoff(int attempt) => TimeSpan.FromMilliseconds(Math.Min(2000, 100 * (1 << Math.Min(attempt, 5))));

    public async Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct = default)
    {
        long seconds = Math.Max(1, (long)Math.Ceiling(ttl.TotalSeconds));
        var r = await Call((c, o) => new Lease.LeaseClient(c).LeaseGrantAsync(new LeaseGrantRequest { TTL = seconds }, o).ResponseAsync, ct);
        if (!string.IsNullOrEmpty(r.Error)) throw new InventoryUnavailableException($"etcd refused a lease: {r.Error}", null);
        return r.ID;
    }

    public async Task<bool> KeepAliveAsync(long leaseId, CancellationToken ct = default)
    {
        // One request on etcd's keep-alive stream; a TTL of 0 in the answer means the lease is gone.
        return await Call(async (c, o) =>
        {
            using var call = new Lease.LeaseClient(c).LeaseKeepAlive(o);
            await call.RequestStream.WriteAsync(new LeaseKeepAliveRequest { ID = leaseId }).ConfigureAwait(false);
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
            if (!await call.ResponseStream.MoveNext(o.CancellationToken).ConfigureAwait(false)) return false;
            return call.ResponseStream.Current.TTL > 0;
        }, ct);
    }

    public async Task<bool> RevokeLeaseAsync(long leaseId, CancellationToken ct = default)
    {
        try
        {
            await Call((c, o) => new Lease.LeaseClient(c).LeaseRevokeAsync(new LeaseRevokeRequest { ID = leaseId }, o).ResponseAsync, ct);
            return true;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound) { return false; }
    }

    /// <summary>etcd ends expired leases itself: nothing to do here.</summary>
    public Task<int> ExpireLeasesAsync(CancellationToken ct = default) => Task.FromResult(0);

    /// <summary>
    /// etcd's compaction keeps the given revision and discards older ones, while this interface discards up to and
    /// including it: compact at revision + 1 (or at the store's revision when that is the newest).
    /// </summary>
    public async Task CompactAsync(long revision, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(revision);
        var head = await Call((c, o) => new KV.KVClient(c).RangeAsync(new RangeRequest { Key = _rootBytes, CountOnly = true }, o).ResponseAsync, ct);
        if (revision > head.Header.Revision)
            throw new ArgumentOutOfRangeException(nameof(revision), $"revision {revision} is in the future (store is at {head.Header.Revision})");
        long at = Math.Min(revision + 1, head.Header.Revision);
        await Call((c, o) => new KV.KVClient(c).CompactAsync(new CompactionRequest { Revision = at, Physical = true }, o).ResponseAsync, ct);
    }

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return ValueTask.CompletedTask;
        _disposeCts.Cancel();
        foreach (var c in _channels) c.Dispose();
        _disposeCts.Dispose();
        return ValueTask.CompletedTask;
    }

    public override string ToString() => "etcd://" + string.Join(",", Endpoints) + " " + Encoding.ASCII.GetString(_rootBytes.Span);
}

/// <summary>The store cannot be reached (every endpoint failed or timed out): one line for the user.</summary>
public sealed class InventoryUnavailableException(string message, Exception? inner) : Exception(message, inner);
