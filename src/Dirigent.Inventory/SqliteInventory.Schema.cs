using Microsoft.Data.Sqlite;

namespace Dirigent.Inventory;

public sealed partial class SqliteInventory
{
    /// <summary>
    /// Ordered migrations: entry i brings the database from version i to i + 1. Never edit a released entry (files in
    /// the field already ran it); append a new one. The database records its version in <c>schema_version</c>.
    /// </summary>
    internal static readonly string[][] Migrations =
    [
        // 1: the initial schema.
        [
            // The store revision and the compaction point. One row each, so a CAS bumps the revision in the same
            // transaction as the write it numbers.
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
            "INSERT INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0)",
            // Current state. key is TEXT compared with BINARY collation; keys are printable ASCII, so a prefix is a
            // plain index range (see InventoryKeys).
            """
            CREATE TABLE kv (
                key TEXT PRIMARY KEY,
                value BLOB NOT NULL,
                create_revision INTEGER NOT NULL,
                mod_revision INTEGER NOT NULL,
                lease_id INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID
            """,
            "CREATE INDEX kv_lease ON kv (lease_id) WHERE lease_id <> 0",
            // The change log that watches replay: one row per revision. Kept until compacted.
            """
            CREATE TABLE events (
                revision INTEGER PRIMARY KEY,
                kind INTEGER NOT NULL,
                key TEXT NOT NULL,
                value BLOB
            )
            """,
            // AUTOINCREMENT so a revoked or expired lease id is never handed out again: a stale holder's keep-alive
            // must fail, not extend someone else's lease. Times are Unix milliseconds from the injected TimeProvider.
            """
            CREATE TABLE leases (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ttl_ms INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL
            )
            """,
            "CREATE INDEX leases_expiry ON leases (expires_at_ms)",
        ],
    ];

    /// <summary>The schema version this build writes.</summary>
    public static int LatestSchemaVersion => Migrations.Length;

    /// <summary>
    /// Brings the file to <see cref="LatestSchemaVersion"/>. Runs in one BEGIN IMMEDIATE transaction so that two
    /// processes opening a fresh file at once serialise: the second sees the first's finished schema, never half of
    /// it, and never runs a migration twice. A file from a newer build is refused rather than misread.
    /// </summary>
    private static void Migrate(SqliteConnection conn, string path)
    {
        Exec(conn, "BEGIN IMMEDIATE");
        bool committed = false;
        try
        {
            Exec(conn, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
            long version;
            using (var cmd = Command(conn, "SELECT max(version) FROM schema_version"))
                version = cmd.ExecuteScalar() is long v ? v : 0;

            if (version > LatestSchemaVersion)
                throw new InventorySchemaException(
                    $"inventory database {path} has schema version {version}, but this build knows only up to " +
                    $"{LatestSchemaVersion}; upgrade Dirigent (refusing to open rather than misread it)");

            for (long v = version; v < LatestSchemaVersion; v++)
                foreach (string sql in Migrations[v])
                    Exec(conn, sql);

            if (version < LatestSchemaVersion)
            {
                Exec(conn, "DELETE FROM schema_version");
                Exec(conn, "INSERT INTO schema_version (version) VALUES ($v)", ("$v", LatestSchemaVersion));
            }
            Exec(conn, "COMMIT");
            committed = true;
        }
        finally
        {
            if (!committed) Rollback(conn);
        }
    }
}
