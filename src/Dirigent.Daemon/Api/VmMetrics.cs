using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Vms;

namespace Dirigent.Daemon.Api;

/// <summary>
/// Per-VM Prometheus metrics: the state of every VM, and for live ones what the worker reports (GET /v1/vm/metrics)
/// plus the CPU time of its cgroup. Workers are asked in parallel with a short timeout, so one stuck worker only
/// leaves its own VM's figures out.
/// </summary>
internal static class VmMetrics
{
    private static readonly string[] States =
        [VmStates.Stopped, VmStates.Starting, VmStates.Running, VmStates.Paused, VmStates.ShuttingDown, VmStates.Stopping, VmStates.Crashed];

    public static async Task RenderAsync(StringBuilder sb, VmManager vms, CancellationToken ct)
    {
        var records = await vms.Store.ListAsync(ct);
        Head(sb, "dirigent_vm_state", "gauge", "1 for the state the VM is in.");
        foreach (var (rec, _) in records)
            foreach (var s in States)
                Line(sb, "dirigent_vm_state", $"vm=\"{rec.Name}\",state=\"{s}\"", rec.State == s ? 1 : 0);

        // Live migrations between hosts that left from here (cluster mode): the last one of each VM.
        var migrations = vms.LastMigrations.ToList();
        foreach (var (metric, field, help) in new[]
                 {
                     ("dirigent_vm_migration_downtime_seconds", "downtime_ms", "Guest downtime of the VM's last live migration from this host: the pause here to the target's report that it runs."),
                     ("dirigent_vm_migration_seconds", "total_ms", "Duration of the VM's last live migration from this host (the worker's part: first page to the target's OK)."),
                 })
        {
            Head(sb, metric, "gauge", help);
            foreach (var (name, m) in migrations)
                if (m[field] is JsonValue v && v.TryGetValue(out double ms))
                    Line(sb, metric, $"vm=\"{name}\",to=\"{m["to"]}\"", ms / 1000);
        }

        var live = vms.Live.ToList();
        var fetched = await Task.WhenAll(live.Select(async kv =>
        {
            using var t = CancellationTokenSource.CreateLinkedTokenSource(ct);
            t.CancelAfter(TimeSpan.FromSeconds(2));
            try { return (kv.Key, kv.Value, (JsonObject?)await kv.Value.Handle.Client.GetMetricsAsync(t.Token)); }
            catch (Exception) { return (kv.Key, kv.Value, (JsonObject?)null); }
        }));

        Head(sb, "dirigent_vm_cpu_seconds_total", "counter", "CPU time used by the VM's worker (its cgroup, else the worker process).");
        foreach (var (name, rt, _) in fetched)
            if (CpuSeconds(rt) is double cpu) Line(sb, "dirigent_vm_cpu_seconds_total", $"vm=\"{name}\"", cpu);
        Head(sb, "dirigent_vm_worker_rss_bytes", "gauge", "Resident memory of the VM's worker process.");
        foreach (var (name, rt, _) in fetched)
            if (ProcStat(rt.Handle.Pid)?.RssBytes is long rss) Line(sb, "dirigent_vm_worker_rss_bytes", $"vm=\"{name}\"", rss);
        Head(sb, "dirigent_vm_memory_usage_bytes", "gauge", "Memory used by the VM's worker (its cgroup).");
        foreach (var (name, rt, _) in fetched)
        {
            try { if (rt.Cgroup is { } g) Line(sb, "dirigent_vm_memory_usage_bytes", $"vm=\"{name}\"", g.MemoryUsageBytes); }
            catch (Exception) { }
        }

        var ok = fetched.Where(f => f.Item3 != null).Select(f => (Name: f.Key, M: f.Item3!)).ToList();
        Simple(sb, ok, "dirigent_vm_uptime_seconds", "gauge", "Seconds since the VM started.", "uptime_s");
        Simple(sb, ok, "dirigent_vm_instructions_total", "counter", "Instructions retired (software CPU).", "instructions_retired");
        Simple(sb, ok, "dirigent_vm_memory_bytes", "gauge", "Guest RAM.", "memory_bytes");
        Simple(sb, ok, "dirigent_vm_kvm_exits_total", "counter", "KVM exits (KVM only).", "kvm_exits");
        Head(sb, "dirigent_vm_vcpu_instructions_total", "counter", "Instructions retired per vCPU (software CPU).");
        foreach (var (name, m) in ok)
            foreach (var v in Items(m, "vcpus"))
                Line(sb, "dirigent_vm_vcpu_instructions_total", $"vm=\"{name}\",vcpu=\"{v["index"]}\"", Num(v["instructions"]));
        foreach (var (key, metric, help) in new[]
                 {
                     ("read_bytes", "dirigent_vm_disk_read_bytes_total", "Bytes read from the disk."),
                     ("write_bytes", "dirigent_vm_disk_write_bytes_total", "Bytes written to the disk."),
                     ("read_ops", "dirigent_vm_disk_read_ops_total", "Read requests."),
                     ("write_ops", "dirigent_vm_disk_write_ops_total", "Write requests."),
                 })
        {
            Head(sb, metric, "counter", help);
            foreach (var (name, m) in ok)
                foreach (var d in Items(m, "disks"))
                    Line(sb, metric, $"vm=\"{name}\",disk=\"{d["index"]}\"", Num(d[key]));
        }
        foreach (var (key, metric, help) in new[]
                 {
                     ("rx_bytes", "dirigent_vm_nic_rx_bytes_total", "Bytes received by the NIC."),
                     ("tx_bytes", "dirigent_vm_nic_tx_bytes_total", "Bytes sent by the NIC."),
                     ("rx_packets", "dirigent_vm_nic_rx_packets_total", "Packets received."),
                     ("tx_packets", "dirigent_vm_nic_tx_packets_total", "Packets sent."),
                 })
        {
            Head(sb, metric, "counter", help);
            foreach (var (name, m) in ok)
                foreach (var n in Items(m, "nics"))
                    Line(sb, metric, $"vm=\"{name}\",nic=\"{n["index"]}\"", Num(n[key]));
        }
    }

    /// <summary>CPU time of a live VM's worker: its cgroup's, else the process's own user+system time.</summary>
    internal static double? CpuSeconds(VmRuntime rt)
    {
        try { if (rt.Cgroup is { } g) return g.CpuUsage.TotalSeconds; }
        catch (Exception) { /* the group went away with the worker */ }
        // Without a cgroup (no limits, or none on this host) the worker's own user+system time is the figure.
        return ProcStat(rt.Handle.Pid)?.CpuSeconds;
    }

    /// <summary>utime+stime (fields 14, 15, in USER_HZ = 100 ticks on Linux) and rss (field 24, pages) of /proc/PID/stat.</summary>
    internal static (double CpuSeconds, long RssBytes)? ProcStat(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
            var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            double cpu = (long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture)) / 100.0;
            long rss = long.Parse(f[21], CultureInfo.InvariantCulture) * Environment.SystemPageSize;
            return (cpu, rss);
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static void Simple(StringBuilder sb, List<(string Name, JsonObject M)> ok, string metric, string type, string help, string key)
    {
        Head(sb, metric, type, help);
        foreach (var (name, m) in ok)
            if (m[key] is JsonValue v) Line(sb, metric, $"vm=\"{name}\"", Num(v));
    }

    private static IEnumerable<JsonObject> Items(JsonObject m, string key)
        => m[key] is JsonArray a ? a.OfType<JsonObject>() : [];

    private static double Num(JsonNode? n)
    {
        try { return n?.GetValue<double>() ?? 0; }
        catch (Exception) { return 0; }
    }

    private static void Head(StringBuilder sb, string metric, string type, string help)
        => sb.Append("# HELP ").Append(metric).Append(' ').Append(help).Append("\n# TYPE ").Append(metric).Append(' ').Append(type).Append('\n');

    private static void Line(StringBuilder sb, string metric, string labels, double value)
        => sb.Append(metric).Append('{').Append(labels).Append("} ").Append(value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
}
