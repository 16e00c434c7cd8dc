using System.Text.Json;
using Dirigent.Daemon.Api;
using Dirigent.Daemon.Auth;
using Dirigent.Daemon.Vms;
using Dirigent.Inventory;

namespace Dirigent.Daemon.Cluster;

/// <summary>What `dirigent daemon --cluster ...` adds.</summary>
public sealed class ClusterOptions
{
    /// <summary>etcd client endpoints (HOST:PORT).</summary>
    public IReadOnlyList<string> Endpoints { get; init; } = [];
    public string HostName { get; init; } = "";
    /// <summary>ADDR:PORT where the other daemons reach this one's TCP API.</summary>
    public string Advertise { get; init; } = "";
    /// <summary>The host lease's TTL: how long after this daemon stops renewing it the others take it for dead.</summary>
    public TimeSpan LeaseTtl { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>The key prefix in etcd (one cluster per prefix).</summary>
    public string KeyPrefix { get; init; } = "/dirigent/v1/";
}

/// <summary>
/// This daemon as one host of a cluster: its host record under a lease it keeps alive, leader election on a
/// lease-bound key (the leader runs the <see cref="Scheduler"/>), and a watch on the VM records that starts the workers
/// of VMs assigned here and kills those of VMs that are no longer this host's (fencing).
/// </summary>
internal sealed class ClusterNode : IAsyncDisposable
{
    public const string HostsPrefix = "hosts/", MembersPrefix = "members/", LeaderKey = "cluster/leader";

    private readonly IInventory _inv;
    private readonly ClusterOptions _opt;
    private readonly TokenStore _tokens;
    private readonly TextWriter _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _loops = [];
    private readonly DateTimeOffset _joined = DateTimeOffset.UtcNow;
    private VmManager _vms = null!;
    private Scheduler _scheduler = null!;
    private volatile bool _leader;
    private volatile string? _leaderName;
    private volatile bool _sitOut;
    private long _lease;
    // Wakes the leader loop to re-campaign at once (a resign, a new lease).
    private TaskCompletionSource _leaderKick = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ClusterNode(IInventory inventory, ClusterOptions options, TokenStore tokens, TextWriter log)
    {
        _inv = inventory;
        _opt = options;
        _tokens = tokens;
        _log = log;
    }

    public string HostName => _opt.HostName;
    public string Advertise => _opt.Advertise;
    public IReadOnlyList<string> Endpoints => _opt.Endpoints;
    public bool IsLeader => _leader;
    public string? LeaderName => _leaderName;
    public TimeSpan LeaseTtl => _opt.LeaseTtl;
    public IInventory Inventory => _inv;
    /// <summary>The bearer token this daemon uses towards the other daemons (an admin token "_host-NAME" made at join).</summary>
    public string PeerToken { get; private set; } = "";

    public static string TokenName(string host) => "_host-" + host;

    /// <summary>
    /// Joins: refuses a host name that a live daemon holds, registers the member and host records under a new lease,
    /// makes this host's peer token, and kills local workers of VMs that are not (or no longer) this host's — before the
    /// daemon adopts or starts anything.
    /// </summary>
    public async Task JoinAsync(VmManager vms, CancellationToken ct)
    {
        _vms = vms;
        _scheduler = new Scheduler(_inv, vms.Store, _log);
        var live = await _inv.GetAsync(HostsPrefix + HostName, ct);
        if (live != null)
        {
            // Our own lease from a previous run (SIGKILLed within the TTL) cannot be told from another daemon by the
            // record alone: the address can. Another address means two daemons claim one name.
            var other = Decode(live.Value);
            if (other.Address != Advertise)
                throw new Host.DaemonStartException($"host name '{HostName}' is in use by a live daemon at {other.Address}");
        }
        await RegisterAsync(ct);
        // Renew from now on: adopting workers and starting the listeners can take longer than a short TTL.
        _loops.Add(Task.Run(() => KeepAliveLoopAsync(_stop.Token)));
        await _tokens.RevokeAsync(TokenName(HostName), ct);
        var t = await _tokens.CreateAsync(TokenName(HostName), TokenRights.Admin, ct);
        PeerToken = t.Secret ?? throw new Host.DaemonStartException($"cannot make the peer token '{TokenName(HostName)}': {t.Outcome}");
        await FenceAsync(ct);
    }

    private async Task RegisterAsync(CancellationToken ct)
    {
        long lease = await _inv.GrantLeaseAsync(_opt.LeaseTtl, ct);
        var rec = HostRecord.Measure(HostName, Advertise, _joined);
        await _inv.PutAsync(MembersPrefix + HostName, Encode(rec), ct: ct);
        var w = await _inv.PutAsync(HostsPrefix + HostName, Encode(rec), leaseId: lease, ct: ct);
        if (!w.Succeeded) throw new InvalidOperationException($"registering host '{HostName}': {w.Outcome}");
        Interlocked.Exchange(ref _lease, lease);
    }

    /// <summary>Kills the workers of VMs whose record does not give them to this host (fencing).</summary>
    public async Task FenceAsync(CancellationToken ct)
    {
        var records = (await _vms.Store.ListAsync(ct)).ToDictionary(r => r.Record.Name, r => r.Record, StringComparer.Ordinal);
        foreach (var (name, pid) in _vms.LocalWorkerProcesses())
        {
            if (records.TryGetValue(name, out var rec) && rec.Host == HostName) continue;
            _log.WriteLine($"daemon: fencing: VM '{name}' is {(rec == null ? "gone" : rec.Host == null ? "unplaced" : $"on host '{rec.Host}'")} now: killing its stale worker {pid} here");
            await _vms.KillStaleWorkerAsync(name, pid);
        }
    }

    /// <summary>Starts the keep-alive, leader and VM-watch loops.</summary>
    public void Start()
    {
        _loops.Add(Task.Run(() => LeaderLoopAsync(_stop.Token)));
        _loops.Add(Task.Run(() => WatchVmsLoopAsync(_stop.Token)));
    }

    /// <summary>
    /// Renews the lease at a third of its TTL and refreshes the host record (free memory). A lease found expired
    /// means the others have taken this host for dead (and may have placed its VMs elsewhere): register anew and fence.
    /// </summary>
    private async Task KeepAliveLoopAsync(CancellationToken ct)
    {
        var every = _opt.LeaseTtl / 3;
        int tick = 0;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(every, ct);
                long lease = Interlocked.Read(ref _lease);
                if (!await _inv.KeepAliveAsync(lease, ct))
                {
                    _log.WriteLine($"daemon: cluster: host lease {lease:x} expired: registering again and fencing");
                    _leader = false;
                    await RegisterAsync(ct);
                    await FenceAsync(ct);
                    Kick();
                    continue;
                }
                if (++tick % 3 == 0)
                    await _inv.PutAsync(HostsPrefix + HostName, Encode(HostRecord.Measure(HostName, Advertise, _joined)), leaseId: lease, ct: ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is InventoryUnavailableException or Grpc.Core.RpcException or InvalidOperationException)
            {
                _log.WriteLine($"daemon: cluster: keep-alive: {Dirigent.Api.ApiProblem.OneLine(e.Message)}");
            }
        }
    }

    private void Kick() => Interlocked.Exchange(ref _leaderKick, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

    /// <summary>
    /// Campaigns for <see cref="LeaderKey"/> with a create-only put under this host's lease: exactly one daemon holds
    /// it, and it vanishes with its holder's lease. The holder runs the scheduler until the key changes or goes.
    /// </summary>
    private async Task LeaderLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            using var round = CancellationTokenSource.CreateLinkedTokenSource(ct);
            Task? scheduling = null;
            try
            {
                var kick = _leaderKick.Task;
                var list = await _inv.ListAsync(LeaderKey, ct);
                var cur = list.Entries.FirstOrDefault(e => e.Key == LeaderKey);
                long rev = list.Revision;
                long lease = Interlocked.Read(ref _lease);
                if (cur == null && !_sitOut)
                {
                    var w = await _inv.PutAsync(LeaderKey, System.Text.Encoding.UTF8.GetBytes(HostName), expectedRevision: 0, leaseId: lease, ct: ct);
                    if (w.Succeeded)
                    {
                        cur = new InventoryEntry(LeaderKey, System.Text.Encoding.UTF8.GetBytes(HostName), w.Revision, w.Revision, lease);
                        rev = w.Revision;
                    }
                    else continue; // someone else won: read who
                }
                string? holder = cur == null ? null : System.Text.Encoding.UTF8.GetString(cur.Value);
                if (holder != null && holder != HostName) _sitOut = false;
                _leaderName = holder;
                _leader = holder == HostName && cur!.LeaseId == lease;
                if (_leader)
                {
                    _log.WriteLine($"daemon: cluster: host '{HostName}' is the leader (scheduler)");
                    scheduling = Task.Run(() => _scheduler.RunAsync(round.Token));
                }
                // Wait for the key to change (or a kick, or the sit-out to end), then decide again.
                using var watchCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                var changed = WaitForChangeAsync(LeaderKey, rev, watchCts.Token);
                var timeout = _sitOut ? Task.Delay(_opt.LeaseTtl, ct) : Task.Delay(Timeout.Infinite, ct);
                var done = await Task.WhenAny(changed, kick, timeout, scheduling ?? Task.Delay(Timeout.Infinite, ct));
                if (done == timeout) _sitOut = false;
                watchCts.Cancel();
                try { await changed; } catch (OperationCanceledException) { }
                if (done == scheduling) await scheduling; // its failure is reported below
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is InventoryUnavailableException or Grpc.Core.RpcException or InventoryCompactedException or InvalidOperationException)
            {
                if (ct.IsCancellationRequested) return;
                _log.WriteLine($"daemon: cluster: leader election: {Dirigent.Api.ApiProblem.OneLine(e.Message)}");
                try { await Task.Delay(TimeSpan.FromSeconds(1), ct); } catch (OperationCanceledException) { return; }
            }
            finally
            {
                _leader = false;
                round.Cancel();
                if (scheduling != null)
                    try { await scheduling; } catch (Exception) { }
            }
        }
    }

    private async Task WaitForChangeAsync(string prefix, long after, CancellationToken ct)
    {
        await foreach (var _ in _inv.Watch(prefix, after, ct)) return;
    }

    /// <summary>Gives up leadership (if held) and sits out the next election, so that another host leads.</summary>
    public async Task<bool> ResignAsync(CancellationToken ct)
    {
        var cur = await _inv.GetAsync(LeaderKey, ct);
        if (cur == null || System.Text.Encoding.UTF8.GetString(cur.Value) != HostName) return false;
        _sitOut = true;
        _leader = false;
        var w = await _inv.DeleteAsync(LeaderKey, cur.Revision, ct);
        return w.Succeeded;
    }

    /// <summary>
    /// Follows the VM records (a watch from the listing's revision, so nothing is missed): a VM given to this host is
    /// handed to the VM manager (to start it when it is wanted running), a VM taken away is fenced.
    /// </summary>
    private async Task WatchVmsLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var list = await _inv.ListAsync(VmStore.Prefix, ct);
                foreach (var e in list.Entries) await _vms.OnClusterRecordAsync(VmStore.DecodeRecord(e.Value), HostName);
                await foreach (var ev in _inv.Watch(VmStore.Prefix, list.Revision, ct))
                {
                    if (ev.Kind == InventoryEventKind.Put) await _vms.OnClusterRecordAsync(VmStore.DecodeRecord(ev.Value!), HostName);
                    else await _vms.OnClusterRecordDeletedAsync(ev.Key[VmStore.Prefix.Length..], HostName);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is InventoryUnavailableException or Grpc.Core.RpcException or InventoryCompactedException or JsonException)
            {
                _log.WriteLine($"daemon: cluster: VM watch: {Dirigent.Api.ApiProblem.OneLine(e.Message)}");
                try { await Task.Delay(TimeSpan.FromSeconds(1), ct); } catch (OperationCanceledException) { return; }
            }
        }
    }

    /// <summary>The live hosts (keys under the hosts' leases).</summary>
    public async Task<List<HostRecord>> UpHostsAsync(CancellationToken ct)
        => (await _inv.ListAsync(HostsPrefix, ct)).Entries.Select(e => Decode(e.Value)).ToList();

    /// <summary>Every host that ever joined, with whether it is up now.</summary>
    public async Task<List<(HostRecord Host, bool Up)>> MembersAsync(CancellationToken ct)
    {
        var up = (await UpHostsAsync(ct)).ToDictionary(h => h.Name, StringComparer.Ordinal);
        var all = (await _inv.ListAsync(MembersPrefix, ct)).Entries.Select(e => Decode(e.Value)).ToList();
        return all.Select(m => up.TryGetValue(m.Name, out var live) ? (live, true) : (m, false)).ToList();
    }

    public async Task<HostRecord?> UpHostAsync(string name, CancellationToken ct)
        => await _inv.GetAsync(HostsPrefix + name, ct) is { } e ? Decode(e.Value) : null;

    private readonly HttpClient _peers = new(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(5) }) { Timeout = TimeSpan.FromMinutes(2) };

    /// <summary>POSTs <paramref name="body"/> to another host's daemon with this host's token; its JSON answer, or its
    /// problem's detail as an <see cref="InvalidOperationException"/>.</summary>
    public async Task<System.Text.Json.Nodes.JsonNode?> PostPeerAsync(HostRecord host, string path, System.Text.Json.Nodes.JsonObject body, CancellationToken ct)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, $"http://{host.Address}{path}")
        {
            Content = new StringContent(body.ToJsonString(), System.Text.Encoding.UTF8, "application/json"),
        };
        req.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", PeerToken);
        req.Headers.Add("Dirigent-Forwarded", HostName);
        HttpResponseMessage r;
        try { r = await _peers.SendAsync(req, ct); }
        catch (HttpRequestException e) { throw new PeerRequestException(null, $"host '{host.Name}' at {host.Address} did not answer: {Dirigent.Api.ApiProblem.OneLine(e.Message)}"); }
        catch (TaskCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new PeerRequestException(null, $"host '{host.Name}' at {host.Address} did not answer within {_peers.Timeout.TotalSeconds:0} s", e);
        }
        using (r)
        {
            string text = await r.Content.ReadAsStringAsync(ct);
            System.Text.Json.Nodes.JsonNode? json;
            try { json = text.Length > 0 ? System.Text.Json.Nodes.JsonNode.Parse(text) : null; }
            catch (JsonException) { json = null; }
            if (!r.IsSuccessStatusCode)
                throw new PeerRequestException((int)r.StatusCode, $"host '{host.Name}': {(int)r.StatusCode} {Dirigent.Api.ApiProblem.OneLine(json?["detail"]?.GetValue<string>() ?? text)}");
            return json;
        }
    }

    public static HostRecord Decode(byte[] v) => JsonSerializer.Deserialize<HostRecord>(v, ApiJson.Options)!;
    private static byte[] Encode(HostRecord h) => JsonSerializer.SerializeToUtf8Bytes(h, ApiJson.Options);

    /// <summary>
    /// Stops the loops. The lease is not revoked: a daemon restarted within its TTL (an upgrade) takes its host back
    /// without the others noticing; one that stays away longer is a failed host (its VMs are placed elsewhere).
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        foreach (var t in _loops)
            try { await t.WaitAsync(TimeSpan.FromSeconds(5)); } catch (Exception) { }
        _stop.Dispose();
    }
}

/// <summary>A call to another host's daemon failed: <see cref="Status"/> is its answer's status, or null when it did not answer.</summary>
internal sealed class PeerRequestException(int? status, string message, Exception? inner = null) : InvalidOperationException(message, inner)
{
    public int? Status { get; } = status;
}
