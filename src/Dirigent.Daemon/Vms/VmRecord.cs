using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Dirigent.Daemon.Api;

namespace Dirigent.Daemon.Vms;

/// <summary>VM states as the API shows them (snake_case strings in JSON).</summary>
public static class VmStates
{
    public const string Stopped = "stopped", Starting = "starting", Running = "running", Paused = "paused",
        ShuttingDown = "shutting_down", Stopping = "stopping", Crashed = "crashed",
        // Cluster mode: the VM's host died and its restart policy is "no", so nobody runs it (start it to place it anew).
        Lost = "lost";

    /// <summary>States in which a worker process exists (or is being made) for the VM.</summary>
    public static bool HasWorker(string s) => s is Starting or Running or Paused or ShuttingDown or Stopping;

    public static bool IsDown(string s) => s is Stopped or Crashed or Lost;
}

/// <summary>
/// One VM as stored in the inventory at "vms/NAME" (JSON, snake_case). The API shows it without the fields that only
/// the daemon needs (<see cref="PidStartTime"/>, <see cref="StopRequested"/>) and with the entry's revision.
/// </summary>
public sealed class VmRecord
{
    public string Name { get; set; } = "";
    public string State { get; set; } = VmStates.Stopped;
    public VmSpecModel Spec { get; set; } = new();
    public VmLimitsModel Limits { get; set; } = new();
    public string Restart { get; set; } = "no";
    public bool Autostart { get; set; }
    public VmExitInfo? Exit { get; set; }
    public int? Pid { get; set; }
    /// <summary>/proc/PID/stat start time of the worker: with the pid, it tells a re-adopted worker from a reused pid.</summary>
    public long? PidStartTime { get; set; }
    /// <summary>Set when the API stopped the VM, so restart=always leaves it down (kept across daemon restarts).</summary>
    public bool StopRequested { get; set; }
    public DateTimeOffset CreatedAt { get; set; }
    /// <summary>When the current worker started (null while down): the web console's uptime column counts from it.</summary>
    public DateTimeOffset? StartedAt { get; set; }
    /// <summary>Cluster mode: the host whose daemon runs this VM (set by the scheduler; null until placed, and always
    /// null on a one-host daemon).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Host { get; set; }
    /// <summary>Cluster mode: the placement rules (a pinned host, an anti-affinity group).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public VmPlacementModel? Placement { get; set; }
    /// <summary>Cluster mode: "running" when the VM must be started by its (new) host's daemon, e.g. after its old host
    /// failed; that daemon clears it when it starts the worker.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Want { get; set; }

    /// <summary>The record no longer names a worker: no pid, no process start time, no uptime.</summary>
    public void ClearWorker()
    {
        Pid = null;
        PidStartTime = null;
        StartedAt = null;
    }

    public VmRecord Clone() => System.Text.Json.JsonSerializer.Deserialize<VmRecord>(
        System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(this, ApiJson.Options), ApiJson.Options)!;

    /// <summary>The API's view: internal fields removed, the revision added (also the ETag).</summary>
    public JsonObject ToApi(long revision)
    {
        var o = (JsonObject)ApiJson.ToNode(this);
        o.Remove("pid_start_time");
        o.Remove("stop_requested");
        o["revision"] = revision;
        return o;
    }
}

public sealed class VmSpecModel
{
    public int MemoryMib { get; set; } = 512;
    public int Vcpus { get; set; } = 1;
    public string? Kernel { get; set; }
    public List<string> Initrd { get; set; } = [];
    public string? Cmdline { get; set; }
    public string Accel { get; set; } = "auto";
    public bool Rng { get; set; }
    /// <summary>"bios": boot the first disk through SeaBIOS (the default for a VM made from an image); "none" or
    /// absent: the kernel (or the default guest) directly.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Firmware { get; set; }
    public List<VmDiskModel> Disks { get; set; } = [];
    public List<VmNicModel> Nics { get; set; } = [];
}

/// <summary>A disk of a VM: either a disk made through the API (<see cref="Disk"/>) or a host path.</summary>
public sealed class VmDiskModel
{
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Disk { get; set; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Path { get; set; }
    public string Format { get; set; } = "auto";
    public bool Readonly { get; set; }
    public long Bps { get; set; }
    public long Iops { get; set; }
}

/// <summary>A NIC of a VM: on a TAP (<see cref="Tap"/>) or on user networking (<see cref="User"/>, libslirp).</summary>
public sealed class VmNicModel
{
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Tap { get; set; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] public bool User { get; set; }
    /// <summary>QEMU-syntax forwards of a user NIC, e.g. tcp:127.0.0.1:2222-:22.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<string>? Hostfwd { get; set; }
    public string? Mac { get; set; }
    public string? Netns { get; set; }
    public long Bps { get; set; }
    public long Pps { get; set; }
}

public sealed class VmLimitsModel
{
    public double? Cpu { get; set; }
    public int? CpuWeight { get; set; }
    public int? MemoryMib { get; set; }

    [JsonIgnore] public bool Any => Cpu != null || CpuWeight != null || MemoryMib != null;

    public Limits.ResourceLimits ToResourceLimits() => new(Cpu, CpuWeight, MemoryMib is { } m ? (long)m << 20 : null);
}

/// <summary>Cluster placement rules: <see cref="Host"/> pins the VM to that host; VMs sharing an
/// <see cref="AntiAffinity"/> group are never placed on one host.</summary>
public sealed class VmPlacementModel
{
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Host { get; set; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? AntiAffinity { get; set; }
}

/// <summary>Why the VM's last worker ended (from its exit.json, or what the daemon saw).</summary>
public sealed class VmExitInfo
{
    public string Kind { get; set; } = "";
    public string Detail { get; set; } = "";
    public int? ExitCode { get; set; }
    public DateTimeOffset At { get; set; }
}
