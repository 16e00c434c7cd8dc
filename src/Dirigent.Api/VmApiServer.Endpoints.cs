using System.Buffers;
using System.Globalization;
using System.Text.Json;
using Dirigent.Vmm;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Api;

public sealed partial class VmApiServer
{
    /// <summary>GET /v1/vm: state, accelerator, size, VM time, reboots, and how the VM ended once it has.</summary>
    private Task GetVm(HttpContext ctx)
    {
        var buf = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buf, ApiProblem.JsonOptions))
            WriteVmInfo(w, _vm);
        return WriteBytes(ctx, "application/json", buf.WrittenMemory);
    }

    internal static void WriteVmInfo(Utf8JsonWriter w, Vm vm)
    {
        // Read the exit reason first: a VM that has ended keeps its reason, so the pair never shows an ended state
        // without one.
        var exit = vm.ExitReason;
        var state = vm.State;
        w.WriteStartObject();
        w.WriteString("state", SnakeCase(state.ToString()));
        w.WriteString("accel", vm.AccelName);
        w.WriteNumber("vcpus", vm.Spec.Cpus);
        w.WriteNumber("memory_mib", vm.Spec.MemoryBytes >> 20);
        w.WriteNumber("uptime_s", Math.Round(vm.Uptime.TotalSeconds, 3));
        w.WriteNumber("reboots", vm.Reboots);
        if (exit != null && state is VmState.Stopped or VmState.Crashed)
        {
            w.WriteStartObject("exit");
            w.WriteString("kind", SnakeCase(exit.Kind.ToString()));
            w.WriteString("detail", exit.Detail);
            if (exit.Kind == VmExitKind.DebugExit) w.WriteNumber("debug_exit_value", exit.DebugExitValue);
            if (exit.Rip is { } rip) w.WriteString("rip", $"0x{rip:x}");
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    /// <summary>
    /// GET /v1/vm/vcpus: each vCPU's activity (running, halted, wait_for_sipi), CS:RIP, code size and instructions
    /// retired, without pausing the VM; a running vCPU the accelerator cannot look at (KVM) has only its index.
    /// </summary>
    private async Task GetVcpus(HttpContext ctx)
    {
        // The software CPU answers at each vCPU's next block boundary: wait for that off Kestrel's I/O threads.
        var list = await Task.Run(_vm.QueryVcpus);
        var buf = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buf, ApiProblem.JsonOptions))
        {
            w.WriteStartObject();
            w.WriteStartArray("vcpus");
            foreach (var v in list)
            {
                w.WriteStartObject();
                w.WriteNumber("index", v.Index);
                if (v.Live)
                {
                    w.WriteString("activity", SnakeCase(v.Activity.ToString()));
                    w.WriteString("cs", $"0x{v.Cs:x}");
                    w.WriteString("rip", $"0x{v.Rip:x}");
                    w.WriteNumber("mode", v.Mode);
                    w.WriteNumber("instructions", v.InstructionsRetired);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        await WriteBytes(ctx, "application/json", buf.WrittenMemory);
    }

    /// <summary>
    /// GET /v1/vm/metrics: counters for monitoring (the daemon's Prometheus /metrics), without pausing the VM:
    /// state, VM time, instructions per vCPU and in all, each disk's and NIC's traffic, guest RAM.
    /// </summary>
    private Task GetMetrics(HttpContext ctx)
    {
        var buf = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buf, ApiProblem.JsonOptions))
            WriteMetrics(w, _vm);
        return WriteBytes(ctx, "application/json", buf.WrittenMemory);
    }

    internal static void WriteMetrics(Utf8JsonWriter w, Vm vm)
    {
        var instructions = vm.InstructionsPerVcpu();
        var disks = vm.DiskCounters();
        var nics = vm.NicCounters();
        w.WriteStartObject();
        w.WriteString("state", SnakeCase(vm.State.ToString()));
        w.WriteNumber("uptime_s", Math.Round(vm.Uptime.TotalSeconds, 3));
        ulong total = 0;
        w.WriteStartArray("vcpus");
        for (int k = 0; k < instructions.Length; k++)
        {
            w.WriteStartObject();
            w.WriteNumber("index", k);
            w.WriteNumber("instructions", instructions[k]);
            w.WriteEndObject();
            total += instructions[k];
        }
        w.WriteEndArray();
        // 0 under KVM, which does not count them (the vCPUs' entries say 0 too).
        w.WriteNumber("instructions_retired", total);
        w.WriteStartArray("disks");
        foreach (var d in disks)
        {
            w.WriteStartObject();
            w.WriteNumber("index", d.Index);
            w.WriteNumber("read_bytes", d.ReadBytes);
            w.WriteNumber("write_bytes", d.WriteBytes);
            w.WriteNumber("read_ops", d.ReadOps);
            w.WriteNumber("write_ops", d.WriteOps);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("nics");
        foreach (var n in nics)
        {
            w.WriteStartObject();
            w.WriteNumber("index", n.Index);
            w.WriteNumber("rx_bytes", n.RxBytes);
            w.WriteNumber("tx_bytes", n.TxBytes);
            w.WriteNumber("rx_packets", n.RxPackets);
            w.WriteNumber("tx_packets", n.TxPackets);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteNumber("memory_bytes", vm.Spec.MemoryBytes);
        if (vm.KvmExits() is { } exits) w.WriteNumber("kvm_exits", exits);
        w.WriteEndObject();
    }

    /// <summary>GET /v1/vm/console: the console's recent output (its ring buffer), raw bytes.</summary>
    private Task GetConsole(HttpContext ctx) => WriteBytes(ctx, "application/octet-stream", _vm.Console.Recent());

    /// <summary>PUT pause/resume/power-button/reset/stop: no arguments, 204 once done.</summary>
    private async Task Lifecycle(HttpContext ctx, Action action)
    {
        ApiRequestBody.RequireEmpty(await ApiRequestBody.ReadAsync(ctx), $"PUT {ctx.Request.Path}");
        // Pausing joins the vCPU threads: wait for it on the thread pool, not on Kestrel's I/O threads.
        await Task.Run(action);
        ctx.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    /// <summary>PUT /v1/vm/snapshot {"path":"DIR"}: 204 once the snapshot is complete on disk.</summary>
    private async Task PutSnapshot(HttpContext ctx)
    {
        const string example = "{\"path\": \"/absolute/snapshot/dir\"}";
        string path = ApiRequestBody.ParseStrings(await ApiRequestBody.ReadAsync(ctx), example, "path")[0];
        CheckPath(path, "path");
        await RunLong(() => _vm.SaveSnapshot(path));
        ctx.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    /// <summary>
    /// PUT /v1/vm/revert (no body): a sandbox VM back to its start snapshot, overlays included, running on from there
    /// if it ran; 204 once done. 409 for a VM that is not a sandbox or not running or paused.
    /// </summary>
    private async Task PutRevert(HttpContext ctx)
    {
        ApiRequestBody.RequireEmpty(await ApiRequestBody.ReadAsync(ctx), $"PUT {ctx.Request.Path}");
        await RunLong(() => Dirigent.Vmm.Sandbox.VmSandbox.RevertRunning(_vm));
        ctx.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    /// <summary>How long the source waits after the target's OK for its word that the VM runs there (the downtime's end).</summary>
    private static readonly TimeSpan ResumeReportWait = TimeSpan.FromSeconds(10);

    /// <summary>
    /// PUT /v1/vm/migrate {"to":"unix:PATH"|"tcp:HOST:PORT"}: 200 once the VM runs in the target, with the figures:
    /// total_ms, downtime_ms (the source's pause to the target's report that it runs, or to its OK where no report
    /// came: downtime_end says "target_resumed" or "target_ack"), ack_ms, target_resume_ms, rounds, pages, bytes.
    /// </summary>
    private async Task PutMigrate(HttpContext ctx)
    {
        const string example = "{\"to\": \"unix:/path/of/target.sock\"} or {\"to\": \"tcp:HOST:PORT\"}";
        string to = ApiRequestBody.ParseStrings(await ApiRequestBody.ReadAsync(ctx), example, "to")[0];
        CheckMigrationTarget(to);
        // The target here is another process that starts the VM by itself: wait for its resume report (bounded; the
        // VM here stays paused meanwhile and ends only after, so this answer is written before the worker stops).
        await RunLong(() => _vm.Migrate(to, ResumeReportWait));
        var st = _vm.LastMigration!;
        var buf = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buf, ApiProblem.JsonOptions))
        {
            w.WriteStartObject();
            w.WriteNumber("total_ms", Math.Round(st.TotalMs, 3));
            w.WriteNumber("downtime_ms", Math.Round(st.DowntimeMs, 3));
            w.WriteString("downtime_end", st.ResumeSeen ? "target_resumed" : "target_ack");
            w.WriteNumber("ack_ms", Math.Round(st.AckMs, 3));
            if (st.TargetResumeMs is { } tr) w.WriteNumber("target_resume_ms", Math.Round(tr, 3));
            w.WriteNumber("rounds", st.Rounds);
            w.WriteNumber("pages", st.PagesSent);
            w.WriteNumber("bytes", st.BytesSent);
            w.WriteEndObject();
        }
        await WriteBytes(ctx, "application/json", buf.WrittenMemory);
    }

    /// <summary>
    /// Validates a migration target: <c>unix:/ABSOLUTE/PATH</c> or <c>tcp:HOST:PORT</c> (an IPv6 host in brackets).
    /// </summary>
    internal static void CheckMigrationTarget(string to)
    {
        if (to.StartsWith("unix:", StringComparison.Ordinal))
        {
            CheckPath(to["unix:".Length..], "to: unix:PATH's PATH");
            return;
        }
        if (to.StartsWith("tcp:", StringComparison.Ordinal))
        {
            string rest = to["tcp:".Length..];
            int colon = rest.LastIndexOf(':');
            string host = colon < 0 ? rest : rest[..colon], port = colon < 0 ? "" : rest[(colon + 1)..];
            if (host.Length == 0 || colon < 0)
                throw ApiRequestException.BadRequest($"migration target '{to}': expected tcp:HOST:PORT");
            bool bracketed = host.StartsWith('[') && host.EndsWith(']') && host.Length > 2;
            if (!bracketed && host.Contains(':'))
                throw ApiRequestException.BadRequest($"migration target '{to}': write an IPv6 host in brackets, tcp:[ADDR]:PORT");
            if (host.Any(char.IsWhiteSpace) || host.Contains('/'))
                throw ApiRequestException.BadRequest($"migration target '{to}': invalid host '{host}'");
            if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int p) || p is < 1 or > 65535)
                throw ApiRequestException.BadRequest($"migration target '{to}': port must be 1-65535");
            return;
        }
        throw ApiRequestException.BadRequest($"migration target '{to}': expected unix:PATH or tcp:HOST:PORT");
    }

    /// <summary>
    /// Paths come from a client that may run elsewhere than the VMM's working directory: only absolute ones are
    /// unambiguous.
    /// </summary>
    private static void CheckPath(string path, string field)
    {
        if (path.Length == 0) throw ApiRequestException.BadRequest($"{field} is empty");
        if (path.Contains('\0')) throw ApiRequestException.BadRequest($"{field} contains a NUL character");
        if (!Path.IsPathFullyQualified(path)) throw ApiRequestException.BadRequest($"{field} '{path}' is not an absolute path");
    }

    /// <summary>Snapshots and migrations take seconds: a thread of their own, not a pool thread.</summary>
    private static Task RunLong(Action action) =>
        Task.Factory.StartNew(action, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private static Task WriteBytes(HttpContext ctx, string contentType, ReadOnlyMemory<byte> bytes)
    {
        ctx.Response.StatusCode = StatusCodes.Status200OK;
        ctx.Response.ContentType = contentType;
        ctx.Response.ContentLength = bytes.Length;
        ctx.Response.Headers.CacheControl = "no-store";
        return ctx.Response.Body.WriteAsync(bytes, ctx.RequestAborted).AsTask();
    }

    /// <summary>ShuttingDown → shutting_down, StoppedByRequest → stopped_by_request.</summary>
    internal static string SnakeCase(string pascal)
    {
        var sb = new System.Text.StringBuilder(pascal.Length + 4);
        for (int i = 0; i < pascal.Length; i++)
        {
            char c = pascal[i];
            if (char.IsUpper(c) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }
}
