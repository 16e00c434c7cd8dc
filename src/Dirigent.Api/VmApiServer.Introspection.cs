using System.Buffers;
using System.Text.Json;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Api;

/// <summary>
/// Introspection endpoints (README "Introspection"): PUT /v1/vm/trace starts or stops the system-call trace (JSON
/// lines into a file), PUT /v1/vm/memory-dump writes guest RAM to a file, GET /v1/vm/processes lists the guest's
/// processes (after a System.map was given).
/// </summary>
public sealed partial class VmApiServer
{
    private const string TraceExample = "{\"action\": \"start\", \"output\": \"/abs/trace.jsonl\", \"process\": \"NAME\" (optional), \"system_map\": \"/abs/System.map\" (optional)} or {\"action\": \"stop\"}";
    private const string DumpExample = "{\"path\": \"/abs/guest.mem\", \"format\": \"raw\" | \"elf\" (optional, raw)}";

    /// <summary>The string fields of a JSON object body; optional ones may be absent (null).</summary>
    private static Dictionary<string, string> ParseFields(ReadOnlyMemory<byte> body, string example, string[] required, string[] optional)
    {
        if (body.IsEmpty) throw ApiRequestException.BadRequest($"request body is missing: expected {example}");
        if (!System.Text.Unicode.Utf8.IsValid(body.Span)) throw ApiRequestException.BadRequest("request body is not valid UTF-8");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(body); }
        catch (JsonException) { throw ApiRequestException.BadRequest($"request body is not JSON: expected {example}"); }
        var r = new Dictionary<string, string>(StringComparer.Ordinal);
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw ApiRequestException.BadRequest($"request body must be a JSON object: expected {example}");
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (!required.Contains(p.Name) && !optional.Contains(p.Name)) throw ApiRequestException.BadRequest($"unknown field '{p.Name}' (expected {example})");
                if (r.ContainsKey(p.Name)) throw ApiRequestException.BadRequest($"field '{p.Name}' is given twice");
                if (p.Value.ValueKind != JsonValueKind.String) throw ApiRequestException.BadRequest($"field '{p.Name}' must be a string");
                r[p.Name] = p.Value.GetString()!;
            }
        }
        foreach (var f in required) if (!r.ContainsKey(f)) throw ApiRequestException.BadRequest($"missing field '{f}' (expected {example})");
        return r;
    }

    /// <summary>PUT /v1/vm/trace: start → 204; stop → 200 {"events": N}.</summary>
    private async Task PutTrace(HttpContext ctx)
    {
        var f = ParseFields(await ApiRequestBody.ReadAsync(ctx), TraceExample, ["action"], ["output", "process", "system_map"]);
        var intro = _vm.Introspection;
        switch (f["action"])
        {
            case "start":
                if (!f.TryGetValue("output", out var output)) throw ApiRequestException.BadRequest($"start needs 'output' (expected {TraceExample})");
                CheckPath(output, "output");
                if (f.TryGetValue("system_map", out var map))
                {
                    CheckPath(map, "system_map");
                    intro.LoadSystemMap(map);
                }
                intro.StartSyscallTrace(output, f.GetValueOrDefault("process"));
                ctx.Response.StatusCode = StatusCodes.Status204NoContent;
                return;
            case "stop":
                if (f.Count > 1) throw ApiRequestException.BadRequest("stop takes no other field");
                long n = intro.StopSyscallTrace();
                var buf = new ArrayBufferWriter<byte>(64);
                using (var w = new Utf8JsonWriter(buf)) { w.WriteStartObject(); w.WriteNumber("events", n); w.WriteEndObject(); }
                await WriteBytes(ctx, "application/json", buf.WrittenMemory);
                return;
            default:
                throw ApiRequestException.BadRequest($"action must be start or stop, not '{f["action"]}'");
        }
    }

    /// <summary>
    /// GET /v1/vm/trace/stream[?process=NAME][&system_map=/ABS/System.map]: 200 application/x-ndjson, chunked, one system call per line (the file
    /// trace's format) until the client closes the connection or the VM ends.
    /// </summary>
    private async Task GetTraceStream(HttpContext ctx)
    {
        string? process = null, map = null;
        foreach (var (k, v) in ctx.Request.Query)
        {
            if (k is not ("process" or "system_map")) throw ApiRequestException.BadRequest($"unknown query parameter '{k}' (process=NAME, system_map=/ABS/System.map)");
            if (v.Count != 1 || string.IsNullOrEmpty(v[0])) throw ApiRequestException.BadRequest($"{k} must be given once, not empty");
            if (k == "process") process = v[0]; else map = v[0];
        }
        if (_vm.ExitReason != null) throw new VmStateException("the VM has ended: nothing to trace");
        if (map != null)
        {
            CheckPath(map, "system_map");
            _vm.Introspection.LoadSystemMap(map);
        }
        var stream = new TraceStream();
        // Attached before the headers go out, so a refusal (a KVM VM) is still a problem answer.
        using var tracer = _vm.Introspection.NewSyscallTracer(stream, process);
        ctx.Response.StatusCode = StatusCodes.Status200OK;
        ctx.Response.ContentType = "application/x-ndjson";
        ctx.Response.Headers.CacheControl = "no-cache";
        await ctx.Response.StartAsync(ctx.RequestAborted);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, _stopping.Token);
        await stream.PumpAsync(ctx.Response, _vm.Completion, cts.Token);
    }

    /// <summary>PUT /v1/vm/memory-dump: 204 once the file is written (a running VM is paused for the copy).</summary>
    private async Task PutMemoryDump(HttpContext ctx)
    {
        var f = ParseFields(await ApiRequestBody.ReadAsync(ctx), DumpExample, ["path"], ["format"]);
        CheckPath(f["path"], "path");
        var format = f.GetValueOrDefault("format", "raw") switch
        {
            "raw" => MemoryDumpFormat.Raw,
            "elf" => MemoryDumpFormat.Elf,
            var x => throw ApiRequestException.BadRequest($"format must be raw or elf, not '{x}'"),
        };
        await RunLong(() => _vm.Introspection.DumpMemory(f["path"], format));
        ctx.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    /// <summary>GET /v1/vm/processes: [{"pid", "comm"}] from the guest kernel's task list.</summary>
    private Task GetProcesses(HttpContext ctx)
    {
        var list = _vm.Introspection.ListProcesses();
        var buf = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buf))
        {
            w.WriteStartArray();
            foreach (var p in list) { w.WriteStartObject(); w.WriteNumber("pid", p.Pid); w.WriteString("comm", p.Comm); w.WriteEndObject(); }
            w.WriteEndArray();
        }
        return WriteBytes(ctx, "application/json", buf.WrittenMemory);
    }
}
