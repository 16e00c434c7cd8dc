using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Api;
using Dirigent.Daemon.Host;
using Dirigent.Daemon.Vms;
using Dirigent.Inventory;
using Dirigent.Storage;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Disks;

/// <summary>A disk image made through the API, stored at "disks/NAME"; its file is DIR/disks/NAME.FORMAT.</summary>
public sealed class DiskRecord
{
    public string Name { get; set; } = "";
    public string Format { get; set; } = "qcow2";
    public long SizeBytes { get; set; }
    public string Path { get; set; } = "";
    /// <summary>The disk this one is a qcow2 overlay of (by name), or null.</summary>
    public string? Backing { get; set; }
    /// <summary>The VM that owns it (a clone's disks): DELETE /vms/NAME?purge=true removes them with the VM.</summary>
    public string? Owner { get; set; }
    public DateTimeOffset CreatedAt { get; set; }
}

/// <summary>
/// Disks made through the API: created with the storage library (qcow2 or raw, optionally a qcow2 overlay of another
/// disk), listed and deleted — never while a VM's spec or another disk's backing still refers to them.
/// </summary>
internal sealed class DiskManager(IInventory inventory, DaemonPaths paths, VmStore vms)
{
    public const string Prefix = "disks/";

    public async Task<DiskRecord?> GetAsync(string name, CancellationToken ct = default)
    {
        var e = await inventory.GetAsync(Prefix + name, ct);
        return e == null ? null : JsonSerializer.Deserialize<DiskRecord>(e.Value, ApiJson.Options);
    }

    public async Task<DiskRecord> RequireAsync(string name, CancellationToken ct = default)
        => await GetAsync(name, ct) ?? throw NotFound($"no disk named '{name}'");

    public async Task<List<DiskRecord>> ListAsync(CancellationToken ct = default)
        => (await inventory.ListAsync(Prefix, ct)).Entries
            .Select(e => JsonSerializer.Deserialize<DiskRecord>(e.Value, ApiJson.Options)!).ToList();

    /// <summary>POST /disks: {"name","format","size","backing"}.</summary>
    public async Task<DiskRecord> CreateFromRequestAsync(JsonElement body, CancellationToken ct)
    {
        var f = Fields(body, "", "name", "format", "size", "backing");
        if (!f.TryGetValue("name", out var n)) throw Bad("missing field 'name'");
        string name = String(n, "name");
        VmRequestParser.RequireValidName(name, "name");
        string format = f.TryGetValue("format", out var fm) ? String(fm, "format") : "qcow2";
        if (format is not ("qcow2" or "raw")) throw Bad($"field 'format' must be qcow2 or raw, got '{format}'");
        string? backing = f.TryGetValue("backing", out var b) ? NullableString(b, "backing") : null;
        long? size = f.TryGetValue("size", out var s) && s.ValueKind != JsonValueKind.Null ? ParseSize(s) : null;
        DiskRecord? back = null;
        if (backing != null)
        {
            if (format != "qcow2") throw Bad("field 'backing' needs format qcow2 (a raw image cannot have a backing file)");
            back = await GetAsync(backing, ct) ?? throw Bad($"field 'backing': no disk named '{backing}'");
            size ??= back.SizeBytes;
        }
        if (size == null) throw Bad("missing field 'size' (e.g. \"8G\" or a number of bytes)");
        return await CreateAsync(name, format, size.Value, back?.Name, back?.Path, back?.Format, owner: null, ct);
    }

    /// <summary>Creates the image file, then its record; a lost race on the name removes the file again.</summary>
    public async Task<DiskRecord> CreateAsync(string name, string format, long size, string? backingName, string? backingPath,
        string? backingFormat, string? owner, CancellationToken ct)
    {
        if (await GetAsync(name, ct) != null) throw Conflict($"a disk named '{name}' already exists");
        string path = paths.DiskFile(name, format);
        if (File.Exists(path)) throw Conflict($"disk file '{path}' already exists (left over from an earlier disk?)");
        try { DiskImage.Create(path, format, size, backingPath, backingFormat is "raw" or "qcow2" ? backingFormat : null); }
        catch (Exception e) when (e is IOException or ArgumentException or InvalidDataException or UnauthorizedAccessException or NotSupportedException or BlockDeviceException)
        {
            TryDelete(path);
            throw Bad($"cannot create disk '{name}': {e.Message}");
        }
        var rec = new DiskRecord
        {
            Name = name, Format = format, SizeBytes = size, Path = path, Backing = backingName, Owner = owner,
            CreatedAt = DateTimeOffset.UtcNow,
        };
        var w = await inventory.PutAsync(Prefix + name, JsonSerializer.SerializeToUtf8Bytes(rec, ApiJson.Options), 0, ct: ct);
        if (!w.Succeeded)
        {
            TryDelete(path);
            throw Conflict($"a disk named '{name}' already exists");
        }
        return rec;
    }

    /// <summary>DELETE /disks/NAME: refused (409) while a VM's spec or another disk's backing refers to it.</summary>
    public async Task DeleteAsync(string name, CancellationToken ct)
    {
        var e = await inventory.GetAsync(Prefix + name, ct) ?? throw NotFound($"no disk named '{name}'");
        var rec = JsonSerializer.Deserialize<DiskRecord>(e.Value, ApiJson.Options)!;
        var users = (await vms.ListAsync(ct)).Where(v => v.Record.Spec.Disks.Any(d => d.Disk == name)).Select(v => v.Record.Name).ToList();
        if (users.Count > 0) throw Conflict($"disk '{name}' is used by VM {string.Join(", ", users.Select(u => $"'{u}'"))}");
        var over = (await ListAsync(ct)).Where(d => d.Backing == name).Select(d => d.Name).ToList();
        if (over.Count > 0) throw Conflict($"disk '{name}' is the backing file of disk {string.Join(", ", over.Select(u => $"'{u}'"))}");
        if (!(await inventory.DeleteAsync(Prefix + name, e.Revision, ct)).Succeeded)
            throw Conflict($"disk '{name}' changed meanwhile: try again");
        TryDelete(rec.Path);
    }

    public static JsonObject ToApi(DiskRecord d) => (JsonObject)ToNode(d);

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>"8G", "512M", "100K", "1T" (binary units) or a plain number of bytes; a multiple of 512.</summary>
    private static long ParseSize(JsonElement s)
    {
        long size;
        if (s.ValueKind == JsonValueKind.Number) size = Long(s, "size", 1, long.MaxValue);
        else
        {
            string t = String(s, "size").Trim();
            long mult = 1;
            if (t.Length > 0 && char.ToUpperInvariant(t[^1]) is 'K' or 'M' or 'G' or 'T')
            {
                mult = char.ToUpperInvariant(t[^1]) switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1L << 40 };
                t = t[..^1];
            }
            if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n <= 0 || n > long.MaxValue / mult)
                throw Bad($"field 'size' must be a size such as \"8G\", \"512M\" or a number of bytes, got '{s.GetString()}'");
            size = n * mult;
        }
        if (size % 512 != 0) throw Bad($"field 'size' must be a multiple of 512 bytes, got {size}");
        return size;
    }
}
