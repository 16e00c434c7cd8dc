using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Operations;
using static Dirigent.Daemon.Api.ApiJson;
using S = Dirigent.Daemon.Vms.VmStates;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// Snapshots (directories under vms/NAME/snapshots, written by the worker's Vm.SaveSnapshot) and linked clones
/// (each disk becomes a qcow2 overlay on the original).
/// </summary>
internal sealed partial class VmManager
{
    public async Task<Operation> SnapshotAsync(string name, JsonElement body, CancellationToken ct)
    {
        var f = Fields(body, "", "name");
        if (!f.TryGetValue("name", out var n)) throw Bad("missing field 'name'");
        string snap = String(n, "name");
        VmRequestParser.RequireValidName(snap, "name");
        await PrecheckAsync(name, "snapshot", ct, S.Running, S.Paused);
        string dir = _paths.SnapshotDir(name, snap);
        if (Directory.Exists(dir)) throw Conflict($"VM '{name}' already has a snapshot named '{snap}'");
        return Submit(name, $"snapshot {name} as {snap}", async (_, c) =>
        {
            await RequireStateAsync(name, "snapshot", c, S.Running, S.Paused);
            if (!_live.TryGetValue(name, out var rt)) throw new InvalidOperationException($"VM '{name}' has no worker");
            if (Directory.Exists(dir)) throw new InvalidOperationException($"VM '{name}' already has a snapshot named '{snap}'");
            Directory.CreateDirectory(_paths.SnapshotsDir(name));
            await rt.Handle.Client.SnapshotAsync(dir, c);
            return SnapshotInfo(name, snap);
        });
    }

    public async Task<JsonObject> ListSnapshotsAsync(string name, CancellationToken ct)
    {
        await _store.RequireAsync(name, ct);
        var dir = new DirectoryInfo(_paths.SnapshotsDir(name));
        var list = new JsonArray();
        if (dir.Exists)
            foreach (var d in dir.GetDirectories().OrderBy(d => d.CreationTimeUtc).ThenBy(d => d.Name, StringComparer.Ordinal))
                list.Add(SnapshotInfo(name, d.Name));
        return new JsonObject { ["snapshots"] = list };
    }

    public async Task<JsonObject> GetSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        await _store.RequireAsync(name, ct);
        return SnapshotInfo(name, RequireSnapshot(name, snap));
    }

    public async Task DeleteSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        await _store.RequireAsync(name, ct);
        Directory.Delete(_paths.SnapshotDir(name, RequireSnapshot(name, snap)), recursive: true);
    }

    /// <summary>restore: the VM's worker (if any) is stopped, and a new one resumes the snapshot (--restore).</summary>
    public async Task<Operation> RestoreAsync(string name, string snap, CancellationToken ct)
    {
        await _store.RequireAsync(name, ct);
        string dir = _paths.SnapshotDir(name, RequireSnapshot(name, snap));
        return Submit(name, $"restore {name} from {snap}", async (_, c) =>
        {
            var (rec, _) = await _store.RequireAsync(name, c);
            if (!S.IsDown(rec.State)) await StopWorkAsync(name, c);
            return await StartWorkAsync(name, dir, c);
        });
    }

    private string RequireSnapshot(string name, string snap)
    {
        if (!VmRequestParser.IsValidName(snap) || !Directory.Exists(_paths.SnapshotDir(name, snap)))
            throw NotFound($"VM '{name}' has no snapshot named '{snap}'");
        return snap;
    }

    private JsonObject SnapshotInfo(string name, string snap)
    {
        var d = new DirectoryInfo(_paths.SnapshotDir(name, snap));
        long size = d.Exists ? d.EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length) : 0;
        return new JsonObject
        {
            ["name"] = snap,
            ["vm"] = name,
            ["created_at"] = d.CreationTimeUtc.ToString("O"),
            ["size_bytes"] = size,
        };
    }

    /// <summary>clone {"name"}: a stopped VM's copy whose disks are qcow2 overlays on the originals (owned by the clone).</summary>
    public async Task<Operation> CloneAsync(string name, JsonElement body, CancellationToken ct)
    {
        var f = Fields(body, "", "name");
        if (!f.TryGetValue("name", out var n)) throw Bad("missing field 'name'");
        string target = String(n, "name");
        VmRequestParser.RequireValidName(target, "name");
        await PrecheckAsync(name, "clone", ct, S.Stopped, S.Crashed);
        if (await _store.GetAsync(target, ct) != null) throw Conflict($"a VM named '{target}' already exists");
        return Submit(name, $"clone {name} to {target}", async (_, c) =>
        {
            var src = await RequireStateAsync(name, "clone", c, S.Stopped, S.Crashed);
            var rec = new VmRecord
            {
                Name = target, Spec = src.Clone().Spec, Limits = src.Clone().Limits, Restart = src.Restart,
                CreatedAt = DateTimeOffset.UtcNow,
            };
            var made = new List<string>();
            try
            {
                for (int i = 0; i < rec.Spec.Disks.Count; i++)
                {
                    var d = rec.Spec.Disks[i];
                    string path, format;
                    string? backingName = null;
                    long size;
                    if (d.Disk != null)
                    {
                        var disk = await _disks.RequireAsync(d.Disk, c);
                        (path, format, backingName, size) = (disk.Path, disk.Format, disk.Name, disk.SizeBytes);
                    }
                    else
                    {
                        path = d.Path!;
                        using var img = Dirigent.Storage.DiskImage.Open(path, d.Format == "auto" ? null : d.Format, readOnly: true);
                        size = img.Size;
                        format = img is Dirigent.Storage.Qcow2Disk ? "qcow2" : "raw";
                    }
                    string diskName = $"{target}-disk{i}";
                    if (diskName.Length > 63) diskName = $"{target[..Math.Min(target.Length, 50)]}-disk{i}";
                    await _disks.CreateAsync(diskName, "qcow2", size, backingName, path, format, owner: target, c);
                    made.Add(diskName);
                    rec.Spec.Disks[i] = new VmDiskModel { Disk = diskName, Readonly = d.Readonly, Bps = d.Bps, Iops = d.Iops, Format = "auto" };
                }
                Directory.CreateDirectory(_paths.VmDir(target));
                long rev = await _store.CreateAsync(rec, c) ?? throw new InvalidOperationException($"a VM named '{target}' already exists");
                _events.Publish(new VmStateChanged(target, null, rec.State));
                return rec.ToApi(rev);
            }
            catch
            {
                foreach (var d in made)
                {
                    try { await _disks.DeleteAsync(d, CancellationToken.None); } catch (Exception) { }
                }
                throw;
            }
        });
    }
}
