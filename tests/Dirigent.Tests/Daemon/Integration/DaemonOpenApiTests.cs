using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Host;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Dirigent.Tests.Daemon.Integration;

/// <summary>The OpenAPI document is generated from the endpoints: every mapped route and method must be in it.</summary>
public sealed class DaemonOpenApiTests
{
    [Fact]
    public async Task EveryMappedRouteIsInTheOpenApiDocument()
    {
        var home = Directory.CreateTempSubdirectory("dgo-").FullName;
        try
        {
            await using var host = await DaemonHost.StartAsync(new DaemonOptions { Home = home }, TextWriter.Null);
            using var http = new HttpClient(new SocketsHttpHandler
            {
                ConnectCallback = async (_, ct) =>
                {
                    var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(Path.Combine(home, "dirigent.sock")), ct);
                    return new NetworkStream(s, ownsSocket: true);
                },
            }) { BaseAddress = new Uri("http://dirigent") };
            var resp = await http.GetAsync("/api/v1/openapi.json");
            Assert.Equal(HttpStatusCode.OK, resp.StatusCode);
            var doc = JsonNode.Parse(await resp.Content.ReadAsStringAsync())!;
            Assert.StartsWith("3.1", doc["openapi"]!.GetValue<string>());
            var paths = doc["paths"]!.AsObject();

            var routes = host.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
                .Where(e => e.RoutePattern.RawText != "/api/v1/openapi.json")
                .SelectMany(e => (e.Metadata.GetMetadata<Microsoft.AspNetCore.Routing.HttpMethodMetadata>()?.HttpMethods ?? [])
                    .Select(m => (Path: "/" + e.RoutePattern.RawText!.TrimStart('/'), Method: m.ToLowerInvariant())))
                .ToList();
            Assert.True(routes.Count >= 30, $"only {routes.Count} routes mapped");
            var missing = routes.Where(r => paths[r.Path]?[r.Method] == null).Select(r => $"{r.Method.ToUpperInvariant()} {r.Path}").ToList();
            Assert.True(missing.Count == 0, "not in openapi.json: " + string.Join(", ", missing));
        }
        finally
        {
            Directory.Delete(home, recursive: true);
        }
    }
}
