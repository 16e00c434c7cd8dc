using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Auth;
using Dirigent.Daemon.Disks;
using Dirigent.Daemon.Operations;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using static Dirigent.Daemon.Api.ApiJson;

namespace Dirigent.Daemon.Api;

/// <summary>Disks, operations, events, metrics and tokens.</summary>
internal sealed partial class DaemonApi
{
    private void MapOthers(WebApplication app, TokenRights R, TokenRights O, TokenRights A)
    {
        Route(app, "GET", Base + "/disks", R, async (HttpContext c) =>
            await Write(c, 200, new JsonObject { ["disks"] = new JsonArray((await disks.ListAsync(c.RequestAborted)).Select(d => (JsonNode)DiskManager.ToApi(d)).ToArray()) }));
        Route(app, "POST", Base + "/disks", A, async (HttpContext c) =>
        {
            using var doc = ParseObject(await ReadBodyAsync(c))!;
            var d = await disks.CreateFromRequestAsync(doc.RootElement, c.RequestAborted);
            c.Response.Headers.Location = $"{Base}/disks/{d.Name}";
            await Write(c, StatusCodes.Status201Created, DiskManager.ToApi(d));
        });
        Route(app, "GET", Base + "/disks/{name}", R, async (HttpContext c, string name) =>
            await Write(c, 200, DiskManager.ToApi(await disks.RequireAsync(name, c.RequestAborted))));
        Route(app, "DELETE", Base + "/disks/{name}", A, async (HttpContext c, string name) =>
        {
            await disks.DeleteAsync(name, c.RequestAborted);
            c.Response.StatusCode = StatusCodes.Status204NoContent;
        });

        Route(app, "GET", Base + "/operations", R, (HttpContext c) =>
            Write(c, 200, new JsonObject { ["operations"] = new JsonArray(ops.List().Select(o => (JsonNode)OperationJson(o)).ToArray()) }));
        Route(app, "GET", Base + "/operations/{id}", R, (HttpContext c, string id) =>
            Write(c, 200, OperationJson(ops.Get(id) ?? throw NotFound($"no operation '{id}' (unknown or already forgotten)"))));
        Route(app, "GET", Base + "/operations/{id}/wait", R, WaitOperation);
        Route(app, "DELETE", Base + "/operations/{id}", O, (HttpContext c, string id) =>
            Write(c, 200, OperationJson(ops.Cancel(id) ?? throw NotFound($"no operation '{id}' (unknown or already forgotten)"))));

        Route(app, "GET", Base + "/events", R, (HttpContext c) => EventStream.Serve(c, events));

        Route(app, "GET", "/metrics", R, Metrics);
        Route(app, "GET", Base + "/metrics", R, Metrics);

        Route(app, "GET", Base + "/tokens", A, async (HttpContext c) =>
            await Write(c, 200, new JsonObject { ["tokens"] = new JsonArray((await tokens.ListAsync(c.RequestAborted)).Select(t => (JsonNode)TokenJson(t)).ToArray()) }));
        Route(app, "POST", Base + "/tokens", A, CreateToken);
        Route(app, "DELETE", Base + "/tokens/{name}", A, async (HttpContext c, string name) =>
        {
            if (!await tokens.RevokeAsync(name, c.RequestAborted)) throw NotFound($"no token named '{name}'");
            c.Response.StatusCode = StatusCodes.Status204NoContent;
        });
    }

    private async Task WaitOperation(HttpContext c, string id)
    {
        double timeout = 30;
        string? t = c.Request.Query["timeout"];
        if (t != null && (!double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out timeout) || timeout < 0 || timeout > 3600))
            throw Bad($"timeout must be a number of seconds between 0 and 3600, got '{t}'");
        var op = await ops.WaitAsync(id, TimeSpan.FromSeconds(timeout), c.RequestAborted)
                 ?? throw NotFound($"no operation '{id}' (unknown or already forgotten)");
        await Write(c, 200, OperationJson(op));
    }

    private async Task CreateToken(HttpContext c)
    {
        using var doc = ParseObject(await ReadBodyAsync(c))!;
        var f = Fields(doc.RootElement, "", "name", "rights");
        if (!f.TryGetValue("name", out var n)) throw Bad("missing field 'name'");
        string name = String(n, "name");
        var rights = TokenRights.None;
        if (f.TryGetValue("rights", out var r))
        {
            int i = 0;
            foreach (var x in ApiJson.Items(r, "rights"))
            {
                string s = String(x, $"rights[{i++}]");
                if (!TokenRightsExtensions.TryParseName(s, out var one)) throw Bad($"field 'rights': unknown right '{s}' (read, operate or admin)");
                rights |= one;
            }
        }
        else rights = TokenRights.Read;
        var res = await tokens.CreateAsync(name, rights, c.RequestAborted);
        switch (res.Outcome)
        {
            case CreateTokenOutcome.Conflict: throw Conflict($"a token named '{name}' already exists (revoke it first)");
            case CreateTokenOutcome.InvalidName: throw Bad($"field 'name': invalid token name '{name}' (1-64 characters of a-z, 0-9, '-' and '_')");
            case CreateTokenOutcome.InvalidRights: throw Bad("field 'rights' must name at least one right (read, operate, admin)");
        }
        var body = TokenJson(res.Token!);
        body["secret"] = res.Secret;
        c.Response.Headers.Location = $"{Base}/tokens/{name}";
        await Write(c, StatusCodes.Status201Created, body);
    }

    private static JsonObject TokenJson(TokenInfo t) => new()
    {
        ["name"] = t.Name,
        ["id"] = t.Id,
        ["rights"] = new JsonArray(t.Rights.Expand().ToNames().Select(n => (JsonNode)n).ToArray()),
        ["created_at"] = t.Created,
    };

    private async Task Metrics(HttpContext c)
    {
        var sb = new StringBuilder();
        await VmMetrics.RenderAsync(sb, vms, c.RequestAborted);
        metrics.Render(sb);
        byte[] bytes = Encoding.UTF8.GetBytes(sb.ToString());
        c.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        c.Response.ContentLength = bytes.Length;
        await c.Response.Body.WriteAsync(bytes, c.RequestAborted);
    }
}
