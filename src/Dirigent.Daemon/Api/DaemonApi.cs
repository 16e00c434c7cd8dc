using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Auth;
using Dirigent.Daemon.Disks;
using Dirigent.Daemon.Host;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Vms;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Api;

/// <summary>
/// The REST API under /api/v1. Every route is mapped with its method and a delegate with typed route parameters, so
/// the OpenAPI document (generated from the endpoints) lists each one; handlers write their own JSON and throw
/// <see cref="Dirigent.Api.ApiRequestException"/> for 4xx problems.
/// </summary>
internal sealed partial class DaemonApi(VmManager vms, DiskManager disks, OperationManager ops, EventHub events,
    TokenStore tokens, SessionStore sessions, MetricsHistory history, WebAssets assets, RequestMetrics metrics, DaemonPaths paths,
    Dirigent.Daemon.Cluster.ClusterNode? cluster = null)
{
    public const string Base = "/api/v1";

    private static RouteHandlerBuilder Route(IEndpointRouteBuilder app, string method, string pattern, TokenRights right, Delegate handler)
        => app.MapMethods(pattern, [method], handler).WithMetadata(new RequiredRight(right))
            // Group the OpenAPI document by resource (vms, disks, operations, events, metrics, tokens).
            .WithTags(pattern.StartsWith(Base + "/", StringComparison.Ordinal) ? pattern[(Base.Length + 1)..].Split('/')[0] : pattern.Trim('/'));

    public void Map(WebApplication app)
    {
        const TokenRights R = TokenRights.Read, O = TokenRights.Operate, A = TokenRights.Admin;
        Route(app, "GET", Base + "/vms", R, ListVms);
        Route(app, "POST", Base + "/vms", A, CreateVm);
        Route(app, "GET", Base + "/vms/{name}", R, GetVm);
        Route(app, "PATCH", Base + "/vms/{name}", A, PatchVm);
        Route(app, "DELETE", Base + "/vms/{name}", A, DeleteVm);
        Route(app, "POST", Base + "/vms/{name}/start", O, async (HttpContext c, string name) => { await NoBody(c); await Accepted(c, vms.StartAsync(name, c.RequestAborted)); });
        Route(app, "POST", Base + "/vms/{name}/stop", O, async (HttpContext c, string name) => { await NoBody(c); await Accepted(c, vms.StopAsync(name, c.RequestAborted)); });
        Route(app, "POST", Base + "/vms/{name}/shutdown", O, Shutdown);
        Route(app, "POST", Base + "/vms/{name}/reboot", O, async (HttpContext c, string name) => { await NoBody(c); await Accepted(c, vms.RebootAsync(name, c.RequestAborted)); });
        Route(app, "POST", Base + "/vms/{name}/reset", O, (HttpContext c, string name) => Simple(c, name, "reset"));
        Route(app, "POST", Base + "/vms/{name}/pause", O, (HttpContext c, string name) => Simple(c, name, "pause"));
        Route(app, "POST", Base + "/vms/{name}/resume", O, (HttpContext c, string name) => Simple(c, name, "resume"));
        Route(app, "POST", Base + "/vms/{name}/snapshots", O, CreateSnapshot);
        Route(app, "GET", Base + "/vms/{name}/snapshots", R, async (HttpContext c, string name) => await Write(c, 200, await vms.ListSnapshotsAsync(name, c.RequestAborted)));
        Route(app, "GET", Base + "/vms/{name}/snapshots/{snap}", R, async (HttpContext c, string name, string snap) => await Write(c, 200, await vms.GetSnapshotAsync(name, snap, c.RequestAborted)));
        Route(app, "DELETE", Base + "/vms/{name}/snapshots/{snap}", O, async (HttpContext c, string name, string snap) =>
        {
            await vms.DeleteSnapshotAsync(name, snap, c.RequestAborted);
            c.Response.StatusCode = StatusCodes.Status204NoContent;
        });
        Route(app, "POST", Base + "/vms/{name}/snapshots/{snap}/restore", O, async (HttpContext c, string name, string snap) =>
        {
            await NoBody(c);
            await Accepted(c, vms.RestoreAsync(name, snap, c.RequestAborted));
        });
        Route(app, "POST", Base + "/vms/{name}/clone", A, CloneVm);
        Route(app, "GET", Base + "/vms/{name}/console", O, (HttpContext c, string name) => ConsoleProxy.Serve(c, vms, name));
        Route(app, "GET", Base + "/vms/{name}/console/log", R, ConsoleLog);
        MapOthers(app, R, O, A);
        MapIntrospection(app, R, O);
        MapCluster(app, R, A);
        MapWeb(app, R);
    }

    private async Task ListVms(HttpContext c)
    {
        string? state = c.Request.Query["state"];
        if (state != null && state is not (VmStates.Stopped or VmStates.Starting or VmStates.Running or VmStates.Paused
                or VmStates.ShuttingDown or VmStates.Stopping or VmStates.Crashed or VmStates.Lost))
            throw Bad($"state must be stopped, starting, running, paused, shutting_down, stopping, crashed or lost, got '{state}'");
        var list = new JsonArray();
        foreach (var (rec, rev) in await vms.Store.ListAsync(c.RequestAborted))
            if (state == null || rec.State == state) list.Add(rec.ToApi(rev));
        await Write(c, 200, new JsonObject { ["vms"] = list });
    }

    private async Task CreateVm(HttpContext c)
    {
        using var doc = ParseObject(await ReadBodyAsync(c))!;
        var rec = await vms.CreateAsync(doc.RootElement, c.RequestAborted);
        c.Response.Headers.Location = $"{Base}/vms/{rec["name"]}";
        c.Response.Headers.ETag = $"\"{rec["revision"]}\"";
        await Write(c, StatusCodes.Status201Created, rec);
    }

    private async Task GetVm(HttpContext c, string name)
    {
        var (rec, rev) = await vms.Store.RequireAsync(name, c.RequestAborted);
        c.Response.Headers.ETag = $"\"{rev}\"";
        await Write(c, 200, rec.ToApi(rev));
    }

    private async Task PatchVm(HttpContext c, string name)
    {
        long? ifMatch = null;
        string im = c.Request.Headers.IfMatch.ToString().Trim();
        if (im.Length > 0 && im != "*")
        {
            string t = im.StartsWith("W/", StringComparison.Ordinal) ? im[2..] : im;
            if (!long.TryParse(t.Trim('"'), out long v))
                throw Bad($"If-Match must be a revision as the ETag gives it (\"17\"), got {im}");
            ifMatch = v;
        }
        using var doc = ParseObject(await ReadBodyAsync(c))!;
        var rec = await vms.PatchAsync(name, doc.RootElement, ifMatch, c.RequestAborted);
        c.Response.Headers.ETag = $"\"{rec["revision"]}\"";
        await Write(c, 200, rec);
    }

    private async Task DeleteVm(HttpContext c, string name)
    {
        string? purge = c.Request.Query["purge"];
        if (purge is not (null or "true" or "false" or "1" or "0")) throw Bad($"purge must be true or false, got '{purge}'");
        await vms.DeleteAsync(name, purge is "true" or "1", c.RequestAborted);
        c.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    private async Task Shutdown(HttpContext c, string name)
    {
        using var doc = ParseObject(await ReadBodyAsync(c), optional: true);
        await Accepted(c, vms.ShutdownAsync(name, doc?.RootElement, c.RequestAborted));
    }

    private async Task Simple(HttpContext c, string name, string action)
    {
        await NoBody(c);
        await Accepted(c, vms.SimpleActionAsync(name, action, c.RequestAborted));
    }

    private async Task CreateSnapshot(HttpContext c, string name)
    {
        using var doc = ParseObject(await ReadBodyAsync(c))!;
        await Accepted(c, vms.SnapshotAsync(name, doc.RootElement, c.RequestAborted));
    }

    private async Task CloneVm(HttpContext c, string name)
    {
        using var doc = ParseObject(await ReadBodyAsync(c))!;
        await Accepted(c, vms.CloneAsync(name, doc.RootElement, c.RequestAborted));
    }

    /// <summary>GET /console/log: the whole log, or with ?tail=N its last N bytes (the web console shows a stopped VM's last output).</summary>
    private async Task ConsoleLog(HttpContext c, string name)
    {
        long? tail = null;
        string? t = c.Request.Query["tail"];
        if (t != null)
            tail = long.TryParse(t, out long n) && n >= 0 ? n : throw Bad($"tail must be a number of bytes (0 or more), got '{t}'");
        await vms.Store.RequireAsync(name, c.RequestAborted);
        c.Response.ContentType = "application/octet-stream";
        FileStream f;
        try { f = new FileStream(paths.ConsoleLog(name), FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete); }
        catch (FileNotFoundException) { c.Response.ContentLength = 0; return; }
        catch (DirectoryNotFoundException) { c.Response.ContentLength = 0; return; }
        await using (f)
        {
            if (tail is long keep && f.Length > keep) f.Seek(-keep, SeekOrigin.End);
            await f.CopyToAsync(c.Response.Body, c.RequestAborted);
        }
    }

    /// <summary>Actions that take no arguments accept no body or an empty object.</summary>
    private static async Task NoBody(HttpContext c)
    {
        using var doc = ParseObject(await ReadBodyAsync(c), optional: true);
        if (doc != null)
            foreach (var p in doc.RootElement.EnumerateObject())
                throw Bad($"unknown field '{p.Name}' (this action takes no arguments)");
    }

    /// <summary>202 Accepted, Location of the operation, the operation as the body.</summary>
    private static async Task Accepted(HttpContext c, Task<Operation> submit)
    {
        var op = await submit;
        c.Response.Headers.Location = $"{Base}/operations/{op.Id}";
        await Write(c, StatusCodes.Status202Accepted, OperationJson(op));
    }

    public static JsonObject OperationJson(Operation o) => new()
    {
        ["id"] = o.Id,
        ["target"] = o.Target,
        ["description"] = o.Description,
        ["status"] = o.Status.ToString().ToLowerInvariant(),
        ["created_at"] = o.CreatedAt,
        ["started_at"] = o.StartedAt,
        ["finished_at"] = o.FinishedAt,
        ["error"] = o.Error,
        ["result"] = o.Result?.DeepClone(),
        ["progress"] = o.Progress,
    };
}
