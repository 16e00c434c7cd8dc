using System.Runtime.CompilerServices;
using Microsoft.Data.Sqlite;

namespace Dirigent.Inventory;

/// <summary>Settings for <see cref="SqliteInventory.Open"/>.</summary>
public sealed record SqliteInventoryOptions
{
    /// <summary>The clock lease expiry is judged by. Tests inject a fake one; nothing else in the store reads time.</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>
    /// How often a background timer ends expired leases; null: never (the owner calls
    /// <see cref="IInventory.ExpireLeasesAsync"/>). Every write also ends expired leases first, so the timer only
    /// bounds how long an expired key stays visible to readers when nothing is written.
    /// </summary>
    public TimeSpan? LeaseReapInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How often an idle watch re-reads the change log. Writes through this instance wake watches at once; the poll
    /// is what notices writes from another process sharing the file.
    /// </summary>
    public TimeSpan WatchPollInterval { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary>How long a writer waits for another connection's (or process's) write lock before failing.</summary>
    public TimeSpan BusyTimeout { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>
/// <see cref="IInventory"/> on one SQLite file: the one-host inventory. Safe for concurrent callers in one process and
/// for several processes opening the same file: every operation takes its own (pooled) connection, every write is one
/// BEGIN IMMEDIATE transaction, and WAL mode lets readers and watches proceed while a writer commits.
/// </summary>
public sealed partial class SqliteInventory : IInventory
{
    private const int WatchBatch = 512;

    private readonly string _path;
    private readonly string _connectionString;
    private readonly SqliteInventoryOptions _options;
    private readonly CancellationTokenSource _disposeCts = new();
    private readonly ITimer? _reapTimer;
    private int _reaping;
    private volatile bool _disposed;

    // Completed (and replaced) after every commit that changed data, to wake this instance's watches without polling.
    private TaskCompletionSource _changed = NewSignal();

    private SqliteInventory(string path, string connectionString, SqliteInventoryOptions options)
    {
        _path = path;
        _connectionString = connectionString;
        _options = options;
        if (options.LeaseReapInterval is TimeSpan every)
            _reapTimer = options.Time.CreateTimer(_ => ReapTick(), null, every, every);
    }

    /// <summary>
    /// Opens (creating if needed) the inventory at <paramref name="path"/>, switches it to WAL and applies pending
    /// migrations. Throws <see cref="InventorySchemaException"/> for a file from a newer build.
    /// </summary>
    public static SqliteInventory Open(string path, SqliteInventoryOptions? options = null)
    {
        options ??= new SqliteInventoryOptions();
        string full = Path.GetFullPath(path);
        string cs = new SqliteConnectionStringBuilder
        {
            DataSource = full,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Pooling = true,
            DefaultTimeout = (int)Math.Ceiling(options.BusyTimeout.TotalSeconds),
        }.ToString();

        using (var conn = OpenConnection(cs, options))
        {
            // WAL: readers (Get, List, watches) never wait for a writer and a writer never waits for readers; the
            // setting is stored in the file, so every process opening it gets the same mode.
            using (var cmd = Command(conn, "PRAGMA journal_mode = WAL"))
            {
                string mode = (string)cmd.ExecuteScalar()!;
                if (!string.Equals(mode, "wal", StringComparison.OrdinalIgnoreCase))
                    throw new InvalidOperationException($"inventory {full}: cannot use WAL journal mode (got {mode})");
            }
            Migrate(conn, full);
        }
        return new SqliteInventory(full, cs, options);
    }

    public string FilePath => _path;

    public Task<InventoryEntry?> GetAsync(string key, CancellationToken ct = default)
    {
        InventoryKeys.Validate(key);
        return Run(() =>
        {
            using var conn = OpenConnection(_connectionString, _options);
            using var cmd = Command(conn,
                "SELECT key, value, mod_revision, create_revision, lease_id FROM kv WHERE key = $k", ("$k", key));
            using var r = cmd.ExecuteReader();
            return r.Read() ? ReadEntry(r) : null;
        }, ct);
    }

    public Task<InventoryList> ListAsync(string prefix, CancellationToken ct = default)
    {
        InventoryKeys.Validate(prefix, allowEmpty: true, nameof(prefix));
        return Run(() =>
        {
            using var conn = OpenConnection(_connectionString, _options);
            // A read transaction so the entries and the revision come from one WAL snapshot: watching from that
            // revision then neither misses nor repeats a change.
            Exec(conn, "BEGIN");
            try
            {
                long revision = ReadMeta(conn, "revision");
                var (where, args) = PrefixRange(prefix);
                using var cmd = Command(conn,
                    $"SELECT key, value, mod_revision, create_revision, lease_id FROM kv WHERE {where} ORDER BY key", args);
                var entries = new List<InventoryEntry>();
                using (var r = cmd.ExecuteReader())
                    while (r.Read()) entries.Add(ReadEntry(r));
                return new InventoryList(entries, revision);
            }
            finally { Exec(conn, "COMMIT"); }
        }, ct);
    }

    public Task<WriteResult> PutAsync(string key, byte[] value, long? expectedRevision = null, long leaseId = 0,
        CancellationToken ct = default)
    {
        InventoryKeys.Validate(key);
        ArgumentNullException.ThrowIfNull(value);
        if (expectedRevision < 0) throw new ArgumentOutOfRangeException(nameof(expectedRevision));
        if (leaseId < 0) throw new ArgumentOutOfRangeException(nameof(leaseId));
        return Write(t =>
        {
            var (current, created) = KeyRevisions(t.Conn, key);
            if (expectedRevision is long expected && expected != current)
                return new WriteResult(WriteOutcome.RevisionMismatch, 0, current);
            // Expired leases were ended at the start of this transaction, so "exists" means "alive".
            if (leaseId != 0 && ScalarLong(t.Conn, "SELECT count(*) FROM leases WHERE id = $id", ("$id", leaseId)) == 0)
                return new WriteResult(WriteOutcome.LeaseNotFound, 0, current);

            long rev = t.NextRevision();
            Exec(t.Conn, """
                INSERT INTO kv (key, value, create_revision, mod_revision, lease_id) VALUES ($k, $v, $c, $r, $l)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision,
                                                lease_id = excluded.lease_id
                """, ("$k", key), ("$v", value), ("$c", current == 0 ? rev : created), ("$r", rev), ("$l", leaseId));
            t.Log(rev, InventoryEventKind.Put, key, value);
            return new WriteResult(WriteOutcome.Done, rev, rev);
        }, ct);
    }

    public Task<WriteResult> DeleteAsync(string key, long? expectedRevision = null, CancellationToken ct = default)
    {
        InventoryKeys.Validate(key);
        if (expectedRevision < 0) throw new ArgumentOutOfRangeException(nameof(expectedRevision));
        return Write(t =>
        {
            var (current, _) = KeyRevisions(t.Conn, key);
            if (current == 0) return new WriteResult(WriteOutcome.NotFound, 0, 0);
            if (expectedRevision is long expected && expected != current)
                return new WriteResult(WriteOutcome.RevisionMismatch, 0, current);
            long rev = t.DeleteKey(key);
            return new WriteResult(WriteOutcome.Done, rev, 0);
        }, ct);
    }

    public async IAsyncEnumerable<InventoryEvent> Watch(string prefix, long afterRevision,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        InventoryKeys.Validate(prefix, allowEmpty: true, nameof(prefix));
        ArgumentOutOfRangeException.ThrowIfNegative(afterRevision);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _disposeCts.Token);
        CancellationToken token = linked.Token;
        long last = afterRevision;
        while (true)
        {
            // Take the wake-up signal BEFORE reading, so a commit between the read and the wait still wakes us.
            Task changed = Volatile.Read(ref _changed).Task;
            List<InventoryEvent> batch = await Run(() => ReadEvents(prefix, last), token);
            foreach (var e in batch)
            {
                last = e.Revision;
                yield return e;
            }
            if (batch.Count > 0) continue; // there may be more (a full batch) or the signal already fired

            using var wait = CancellationTokenSource.CreateLinkedTokenSource(token);
            await Task.WhenAny(changed, Task.Delay(_options.WatchPollInterval, wait.Token)).ConfigureAwait(false);
            wait.Cancel();
            token.ThrowIfCancellationRequested();
        }
    }

    public Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct = default)
    {
        long ttlMs = (long)Math.Ceiling(ttl.TotalMilliseconds);
        if (ttlMs <= 0) throw new ArgumentOutOfRangeException(nameof(ttl), "a lease needs a positive TTL");
        return Write(t => ScalarLong(t.Conn,
            "INSERT INTO leases (ttl_ms, expires_at_ms) VALUES ($ttl, $exp) RETURNING id",
            ("$ttl", ttlMs), ("$exp", t.NowMs + ttlMs)), ct);
    }

    public Task<bool> KeepAliveAsync(long leaseId, CancellationToken ct = default)
        // An expired lease was already ended by this transaction's reap, so it cannot be revived here.
        => Write(t => Exec(t.Conn, "UPDATE leases SET expires_at_ms = $now + ttl_ms WHERE id = $id",
            ("$now", t.NowMs), ("$id", leaseId)) == 1, ct);

    public Task<bool> RevokeLeaseAsync(long leaseId, CancellationToken ct = default)
        => Write(t => t.EndLease(leaseId), ct);

    public Task<int> ExpireLeasesAsync(CancellationToken ct = default) => Write(t => t.Reaped, ct);

    /// <summary>
    /// Drops change-log entries up to <paramref name="revision"/> (the log otherwise grows without bound); a watch
    /// from before it then fails with <see cref="InventoryCompactedException"/>. Current values are untouched.
    /// </summary>
    public Task CompactAsync(long revision, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(revision);
        return Write(t =>
        {
            long current = ReadMeta(t.Conn, "revision");
            if (revision > current)
                throw new ArgumentOutOfRangeException(nameof(revision), $"revision {revision} is in the future (store is at {current})");
            Exec(t.Conn, "DELETE FROM events WHERE revision <= $r", ("$r", revision));
            Exec(t.Conn, "UPDATE meta SET value = max(value, $r) WHERE name = 'compacted'", ("$r", revision));
            return 0;
        }, ct);
    }

    public ValueTask DisposeAsync()
    {
        if (_disposed) return ValueTask.CompletedTask;
        _disposed = true;
        _reapTimer?.Dispose();
        _disposeCts.Cancel(); // ends this instance's watches
        // Close pooled connections so the file (and its -wal/-shm) is released: tests delete their directories, and
        // the last connection to close checkpoints the WAL back into the database.
        using (var conn = new SqliteConnection(_connectionString))
            SqliteConnection.ClearPool(conn);
        _disposeCts.Dispose();
        return ValueTask.CompletedTask;
    }

    private List<InventoryEvent> ReadEvents(string prefix, long after)
    {
        using var conn = OpenConnection(_connectionString, _options);
        // One snapshot for the compaction check and the read, so a concurrent compaction cannot open a silent gap.
        Exec(conn, "BEGIN");
        try
        {
            long compacted = ReadMeta(conn, "compacted");
            if (after < compacted) throw new InventoryCompactedException(after, compacted);
            var (where, args) = PrefixRange(prefix);
            using var cmd = Command(conn,
                $"SELECT revision, kind, key, value FROM events WHERE revision > $after AND {where} ORDER BY revision LIMIT {WatchBatch}",
                [("$after", after), .. args]);
            var list = new List<InventoryEvent>();
            using var r = cmd.ExecuteReader();
            while (r.Read())
                list.Add(new InventoryEvent((InventoryEventKind)r.GetInt64(1), r.GetString(2),
                    r.IsDBNull(3) ? null : (byte[])r[3], r.GetInt64(0)));
            return list;
        }
        finally { Exec(conn, "COMMIT"); }
    }

    /// <summary>
    /// Runs <paramref name="body"/> in one BEGIN IMMEDIATE transaction. IMMEDIATE takes the write lock up front
    /// (waiting up to the busy timeout for another connection or process): a deferred transaction that read and then
    /// tried to write could fail with SQLITE_BUSY_SNAPSHOT in WAL mode, which the busy handler does not retry. Holding
    /// the lock from the read of the key's revision to the commit is what makes the compare-and-set atomic.
    /// Expired leases are ended first, inside the same transaction, so no write ever sees (or attaches to) a dead lease.
    /// </summary>
    private Task<T> Write<T>(Func<WriteTxn, T> body, CancellationToken ct) => Run(() =>
    {
        using var conn = OpenConnection(_connectionString, _options);
        Exec(conn, "BEGIN IMMEDIATE");
        bool committed = false;
        try
        {
            // Read the clock after taking the lock, so lease times are ordered like the transactions.
            var t = new WriteTxn(conn, _options.Time.GetUtcNow().ToUnixTimeMilliseconds());
            t.ReapExpired();
            T result = body(t);
            Exec(conn, "COMMIT");
            committed = true;
            if (t.Changed) Interlocked.Exchange(ref _changed, NewSignal()).TrySetResult();
            return result;
        }
        finally
        {
            // Never hand a connection back to the pool inside a transaction.
            if (!committed) Rollback(conn);
        }
    }, ct);

    /// <summary>
    /// Microsoft.Data.Sqlite's async methods complete synchronously; running the (possibly lock-waiting) work on the
    /// pool keeps callers' threads free and makes cancellation before start work.
    /// </summary>
    private Task<T> Run<T>(Func<T> work, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Task.Run(work, ct);
    }

    private void ReapTick()
    {
        // Ticks must not pile up behind a slow disk; the next write reaps anyway.
        if (_disposed || Interlocked.Exchange(ref _reaping, 1) == 1) return;
        Task<int> reap;
        try { reap = ExpireLeasesAsync(_disposeCts.Token); }
        catch (ObjectDisposedException)
        {
            // Disposed between the check and the call; an exception here would escape a timer callback and end the process.
            return;
        }
        _ = reap.ContinueWith(task =>
        {
            // A failed background reap is not lost work: the next write (or tick) retries it in its transaction.
            _ = task.Exception;
            Volatile.Write(ref _reaping, 0);
        }, TaskScheduler.Default);
    }

    /// <summary>The work of one write transaction: revision numbering, the change log and lease endings.</summary>
    private sealed class WriteTxn(SqliteConnection conn, long nowMs)
    {
        public SqliteConnection Conn { get; } = conn;
        public long NowMs { get; } = nowMs;
        public bool Changed { get; private set; }
        public int Reaped { get; private set; }

        public long NextRevision()
            => ScalarLong(Conn, "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value");

        public void Log(long revision, InventoryEventKind kind, string key, byte[]? value)
        {
            Exec(Conn, "INSERT INTO events (revision, kind, key, value) VALUES ($r, $k, $key, $v)",
                ("$r", revision), ("$k", (long)kind), ("$key", key), ("$v", value));
            Changed = true;
        }

        public long DeleteKey(string key)
        {
            long rev = NextRevision();
            Exec(Conn, "DELETE FROM kv WHERE key = $k", ("$k", key));
            Log(rev, InventoryEventKind.Delete, key, null);
            return rev;
        }

        /// <summary>Deletes the lease's keys in key order (one revision and event each), then the lease.</summary>
        public bool EndLease(long leaseId)
        {
            var keys = new List<string>();
            using (var cmd = Command(Conn, "SELECT key FROM kv WHERE lease_id = $id ORDER BY key", ("$id", leaseId)))
            using (var r = cmd.ExecuteReader())
                while (r.Read()) keys.Add(r.GetString(0));
            foreach (string key in keys) DeleteKey(key);
            return Exec(Conn, "DELETE FROM leases WHERE id = $id", ("$id", leaseId)) == 1;
        }

        public void ReapExpired()
        {
            var due = new List<long>();
            using (var cmd = Command(Conn,
                "SELECT id FROM leases WHERE expires_at_ms <= $now ORDER BY expires_at_ms, id", ("$now", NowMs)))
            using (var r = cmd.ExecuteReader())
                while (r.Read()) due.Add(r.GetInt64(0));
            foreach (long id in due) EndLease(id);
            Reaped = due.Count;
        }
    }

    // ---- SQL helpers ----

    private static SqliteConnection OpenConnection(string connectionString, SqliteInventoryOptions options)
    {
        var conn = new SqliteConnection(connectionString);
        conn.Open();
        // Per-connection settings (pooled connections keep them; setting again is cheap). busy_timeout makes SQLite
        // wait for another writer instead of failing at once; synchronous=FULL makes an acknowledged CAS survive
        // power loss, because the daemon acts on it.
        Exec(conn, $"PRAGMA busy_timeout = {(long)options.BusyTimeout.TotalMilliseconds}; PRAGMA synchronous = FULL");
        return conn;
    }

    private static (string Where, (string, object?)[] Args) PrefixRange(string prefix)
        => InventoryKeys.PrefixEnd(prefix) is string end
            ? ("key >= $p AND key < $end", [("$p", prefix), ("$end", end)])
            : ("1 = 1", []);

    private static (long Mod, long Create) KeyRevisions(SqliteConnection conn, string key)
    {
        using var cmd = Command(conn, "SELECT mod_revision, create_revision FROM kv WHERE key = $k", ("$k", key));
        using var r = cmd.ExecuteReader();
        return r.Read() ? (r.GetInt64(0), r.GetInt64(1)) : (0, 0);
    }

    private static long ReadMeta(SqliteConnection conn, string name)
        => ScalarLong(conn, "SELECT value FROM meta WHERE name = $n", ("$n", name));

    private static InventoryEntry ReadEntry(SqliteDataReader r)
        => new(r.GetString(0), (byte[])r[1], r.GetInt64(2), r.GetInt64(3), r.GetInt64(4));

    private static SqliteCommand Command(SqliteConnection conn, string sql, params (string Name, object? Value)[] args)
    {
        var cmd = conn.CreateCommand();
        cmd.CommandText = sql;
        foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value ?? DBNull.Value);
        return cmd;
    }

    private static int Exec(SqliteConnection conn, string sql, params (string Name, object? Value)[] args)
    {
        using var cmd = Command(conn, sql, args);
        return cmd.ExecuteNonQuery();
    }

    private static long ScalarLong(SqliteConnection conn, string sql, params (string Name, object? Value)[] args)
    {
        using var cmd = Command(conn, sql, args);
        return (long)cmd.ExecuteScalar()!;
    }

    private static void Rollback(SqliteConnection conn)
    {
        // Best effort: SQLite may already have rolled back (e.g. after SQLITE_FULL); the original error matters more.
        try { Exec(conn, "ROLLBACK"); } catch (SqliteException) { }
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
