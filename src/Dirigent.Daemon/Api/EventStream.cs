using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Operations;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Daemon.Api;

/// <summary>
/// GET /events as Server-Sent Events: "id: SEQ", "event: TYPE", "data: JSON" per event from the hub, optionally only
/// those about one VM (?vm=NAME). A client too slow to keep up gets a "lagged" event and the stream ends.
/// </summary>
internal static class EventStream
{
    private const int Bound = 4096;

    public static async Task Serve(HttpContext c, EventHub hub)
    {
        string? vm = c.Request.Query["vm"];
        string? target = vm != null ? Vms.VmStore.Key(vm) : null;
        using var sub = hub.Subscribe(Bound, vm == null ? null : e => e switch
        {
            VmStateChanged s => s.Vm == vm,
            VmExited x => x.Vm == vm,
            OperationCreated o => o.Operation.Target == target,
            OperationUpdated o => o.Operation.Target == target,
            _ => true,
        });
        c.Response.StatusCode = 200;
        c.Response.ContentType = "text/event-stream";
        c.Response.Headers.CacheControl = "no-cache";
        // The headers go out now: a client waits for them before it knows the subscription exists.
        await c.Response.WriteAsync(": subscribed\n\n", c.RequestAborted);
        await c.Response.Body.FlushAsync(c.RequestAborted);
        await foreach (var ev in sub.Reader.ReadAllAsync(c.RequestAborted))
        {
            var sb = new StringBuilder();
            sb.Append("id: ").Append(ev.Sequence).Append('\n');
            sb.Append("event: ").Append(ev.Data.Type).Append('\n');
            var data = Data(ev.Data);
            data["at"] = ev.Timestamp;
            sb.Append("data: ").Append(data.ToJsonString(ApiJson.Options)).Append("\n\n");
            await c.Response.WriteAsync(sb.ToString(), c.RequestAborted);
            await c.Response.Body.FlushAsync(c.RequestAborted);
        }
    }

    private static JsonObject Data(DaemonEvent e) => e switch
    {
        OperationCreated o => DaemonApi.OperationJson(o.Operation),
        OperationUpdated o => DaemonApi.OperationJson(o.Operation),
        VmStateChanged s => new JsonObject { ["vm"] = s.Vm, ["old_state"] = s.OldState, ["new_state"] = s.NewState },
        VmExited x => new JsonObject { ["vm"] = x.Vm, ["reason"] = x.Reason, ["detail"] = x.Detail },
        Lagged l => new JsonObject { ["last_sequence"] = l.LastSequence },
        _ => new JsonObject { ["type"] = e.Type },
    };
}
