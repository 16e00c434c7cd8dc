using System.Text.Json;
using System.Text.Json.Serialization;
using Dirigent.Storage;

namespace Dirigent.Vmm.Sandbox;

/// <summary>One disk of a sandbox: the base image the guest sees and the overlay that takes its writes.</summary>
public sealed class SandboxDisk
{
    [JsonPropertyName("base")] public string Base { get; set; } = "";
    [JsonPropertyName("base_format")] public string BaseFormat { get; set; } = "";
    [JsonPropertyName("overlay")] public string Overlay { get; set; } = "";
}

/// <summary>DIR/sandbox.json: what <see cref="VmSandbox.Prepare"/> set up.</summary>
public sealed class SandboxManifest
{
    [JsonPropertyName("disks")] public List<SandboxDisk> Disks { get; set; } = [];
}

/// <summary>
/// The sandbox profile (README "Introspection"): a VM whose every disk is a fresh qcow2 overlay over its base image
/// (the base is only read, never written), whose network is none or libslirp's restricted mode (nothing leaves the
/// host), with a snapshot of its start state so that it can be reverted, and after a run a report of what it changed
/// on disk (<see cref="SandboxReport"/>). Everything lives in one directory:
/// sandbox.json, diskN.qcow2 (the overlays), start/ (the snapshot, with a copy of each overlay as it was then) and
/// sandbox-report.json.
/// </summary>
public static class VmSandbox
{
    public const string ManifestFile = "sandbox.json", StartDir = "start", ReportFile = "sandbox-report.json",
        NetworkLogFile = "network.jsonl";

    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true };

    public static bool Exists(string dir) => File.Exists(Path.Combine(dir, ManifestFile));

    /// <summary>
    /// Sets up a new sandbox in <paramref name="dir"/> (missing or empty) for <paramref name="spec"/> and returns the
    /// spec to run: each disk replaced by an overlay over it, user networking restricted, TAP cards refused (a TAP is
    /// the host's network). Bad input is a <see cref="VmException"/> with one line.
    /// </summary>
    public static VmSpec Prepare(VmSpec spec, string dir)
    {
        dir = Path.GetFullPath(dir);
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
            throw new VmException($"sandbox directory {dir} is not empty", badInput: true);
        foreach (var n in spec.Nics)
            if (n.Tap != null) throw new VmException($"--sandbox: a TAP card (tap={n.Tap}) reaches the host's network; use --net user (restricted in a sandbox) or none", badInput: true);
        var manifest = new SandboxManifest();
        var disks = new List<DiskConfig>();
        try
        {
            Directory.CreateDirectory(dir);
            for (int k = 0; k < spec.Disks.Count; k++)
            {
                var d = spec.Disks[k];
                string basePath = Path.GetFullPath(d.Path);
                if (!File.Exists(basePath)) throw new VmException($"--sandbox: disk {d.Path} does not exist", badInput: true);
                string format = d.Format switch { DiskFormat.Raw => "raw", DiskFormat.Qcow2 => "qcow2", _ => DiskImage.Probe(basePath) };
                long size;
                using (var b = DiskImage.Open(basePath, format, readOnly: true)) size = b.Size;
                string overlay = Path.Combine(dir, $"disk{k}.qcow2");
                Qcow2Disk.Create(overlay, size, basePath, format);
                manifest.Disks.Add(new SandboxDisk { Base = basePath, BaseFormat = format, Overlay = overlay });
                // A read-only disk stays read-only (nothing to record), on its overlay all the same.
                disks.Add(d with { Path = overlay, Format = DiskFormat.Qcow2 });
            }
            File.WriteAllText(Path.Combine(dir, ManifestFile), JsonSerializer.Serialize(manifest, s_json));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or BlockDeviceException)
        {
            throw new VmException($"--sandbox: {e.Message}", badInput: true);
        }
        // The spec is cloned through JSON (as snapshots store it), so the caller's stays as it was.
        var sandboxed = JsonSerializer.Deserialize<VmSpec>(JsonSerializer.Serialize(spec, Snapshots.SnapshotFiles.Json), Snapshots.SnapshotFiles.Json)!;
        sandboxed.Disks = disks;
        foreach (var n in sandboxed.Nics)
        {
            if (n.User == null) continue;
            n.User.Restricted = true;
            n.User.SinkholeLog = Path.Combine(dir, NetworkLogFile);
        }
        return sandboxed;
    }

    /// <summary>
    /// Saves the start snapshot (DIR/start) of a VM built on a prepared spec, before it runs, with a copy of each
    /// overlay as it is now: <see cref="Revert"/> puts those back, so the snapshot's disk check passes again.
    /// </summary>
    public static void SaveStart(Vm vm, string dir)
    {
        string start = Path.Combine(dir, StartDir);
        vm.SaveSnapshot(start);
        var m = ReadManifest(dir);
        try
        {
            for (int k = 0; k < m.Disks.Count; k++)
            {
                // The VM holds the overlay open (and locked): read it without a lock, as the snapshot's hash did.
                using var from = Snapshots.SnapshotFiles.OpenReadUnlocked(m.Disks[k].Overlay);
                using var to = new FileStream(Path.Combine(start, $"disk{k}.qcow2"), FileMode.Create, FileAccess.Write);
                from.CopyTo(to);
            }
        }
        catch (IOException e) { throw new VmException($"sandbox {dir}: cannot keep the start overlays: {e.Message}", badInput: false); }
        vm.SandboxDirectory = Path.GetFullPath(dir);
    }

    /// <summary>Marks a VM restored from the sandbox's start snapshot (a second run of the same DIR) as this sandbox's,
    /// so that <see cref="RevertRunning"/> can put it back.</summary>
    public static void Attach(Vm vm, string dir) => vm.SandboxDirectory = Path.GetFullPath(dir);

    /// <summary>
    /// Puts a sandbox VM back to its start in one call while it runs (the API's PUT /v1/vm/revert): paused, its
    /// overlays replaced by their start copies (nothing the guest wrote remains), memory, vCPUs and devices from the
    /// start snapshot, and running on from there. A VM that is not a sandbox is a <see cref="VmStateException"/>.
    /// </summary>
    public static void RevertRunning(Vm vm)
    {
        string dir = vm.SandboxDirectory ?? throw new VmStateException("the VM is not a sandbox (only a VM run with --sandbox DIR can be reverted)");
        var m = ReadManifest(dir);
        string start = Path.Combine(dir, StartDir);
        vm.RevertInPlace(start, () =>
        {
            CopyStartOverlays(dir, m);
            File.Delete(Path.Combine(dir, ReportFile));
        });
        // The log goes on: this line tells the run before the revert from the one after.
        try { vm.NoteInNetworkLogs("revert"); }
        catch (Exception e) when (e is IOException or ObjectDisposedException) { } // the VM runs on; its log is past help
    }

    /// <summary>Each overlay replaced by its copy from the start (atomically: a copy beside it, then a rename).</summary>
    private static void CopyStartOverlays(string dir, SandboxManifest m)
    {
        string start = Path.Combine(dir, StartDir);
        for (int k = 0; k < m.Disks.Count; k++)
        {
            string saved = Path.Combine(start, $"disk{k}.qcow2");
            string tmp = m.Disks[k].Overlay + ".revert";
            File.Copy(saved, tmp, overwrite: true);
            File.Move(tmp, m.Disks[k].Overlay, overwrite: true);
        }
    }

    /// <summary>
    /// Puts the sandbox back to its start: each overlay as it was when the start snapshot was taken (so nothing the
    /// guest wrote remains) and the old report removed. Returns the start snapshot's directory, for
    /// <see cref="Vm.Restore"/>. No VM may have the overlays open.
    /// </summary>
    public static string Revert(string dir)
    {
        dir = Path.GetFullPath(dir);
        var m = ReadManifest(dir);
        string start = Path.Combine(dir, StartDir);
        if (!File.Exists(Path.Combine(start, Snapshots.SnapshotFiles.StateFile)))
            throw new VmException($"sandbox {dir} has no start snapshot (its first run did not get that far)", badInput: true);
        try
        {
            CopyStartOverlays(dir, m);
            File.Delete(Path.Combine(dir, ReportFile));
            // The run starts again: its log and report are the new run's.
            File.Delete(Path.Combine(dir, NetworkLogFile));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VmException($"cannot revert sandbox {dir}: {e.Message}", badInput: true);
        }
        return start;
    }

    public static SandboxManifest ReadManifest(string dir)
    {
        string path = Path.Combine(dir, ManifestFile);
        try
        {
            return JsonSerializer.Deserialize<SandboxManifest>(File.ReadAllText(path))
                ?? throw new VmException($"{path} is empty", badInput: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            throw new VmException($"{dir} is not a sandbox directory ({ManifestFile}: {e.Message})", badInput: true);
        }
    }
}
