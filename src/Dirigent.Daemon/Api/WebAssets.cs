using System.Reflection;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Daemon.Api;

/// <summary>
/// The web console's files, embedded in this assembly at build time (our own page from src/Dirigent.Daemon/Web, and
/// xterm.js and its fit addon from Web/node_modules, which the build fills with `npm ci`): the daemon serves them
/// itself, whatever directory it runs from, with nothing else to install.
/// </summary>
internal sealed class WebAssets
{
    private const string Prefix = "web/";

    private sealed record Asset(byte[] Bytes, string ContentType, string ETag);

    private readonly Dictionary<string, Asset> _assets = new(StringComparer.Ordinal);

    // The page loads only its own files and talks only to this origin (fetch, EventSource, the console WebSocket).
    // xterm.js sets inline styles on its elements, hence 'unsafe-inline' for styles only.
    private const string Csp = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; " +
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'";

    public WebAssets()
    {
        var asm = typeof(WebAssets).Assembly;
        foreach (string name in asm.GetManifestResourceNames())
        {
            if (!name.StartsWith(Prefix, StringComparison.Ordinal)) continue;
            using var s = asm.GetManifestResourceStream(name)!;
            using var ms = new MemoryStream();
            s.CopyTo(ms);
            byte[] bytes = ms.ToArray();
            string etag = "\"" + Convert.ToHexStringLower(SHA256.HashData(bytes))[..16] + "\"";
            _assets[name[Prefix.Length..]] = new Asset(bytes, ContentType(name), etag);
        }
    }

    /// <summary>Whether the build embedded the page (false only for a build that skipped the web step).</summary>
    public bool Has(string file) => _assets.ContainsKey(file);

    public IEnumerable<string> Files => _assets.Keys;

    private static string ContentType(string name) => Path.GetExtension(name) switch
    {
        ".html" => "text/html; charset=utf-8",
        ".js" or ".mjs" => "text/javascript; charset=utf-8",
        ".css" => "text/css; charset=utf-8",
        ".svg" => "image/svg+xml",
        ".png" => "image/png",
        _ => "text/plain; charset=utf-8",
    };

    /// <summary>Writes one file (200, or 304 when the browser's copy is current); a 404 problem for an unknown one.</summary>
    public async Task Serve(HttpContext c, string file)
    {
        if (!_assets.TryGetValue(file, out var a))
            throw ApiJson.NotFound($"no web console file '{file}'");
        var h = c.Response.Headers;
        h.ContentSecurityPolicy = Csp;
        h.XContentTypeOptions = "nosniff";
        h["Referrer-Policy"] = "no-referrer";
        // Revalidated each time (cheap 304s): a rebuilt daemon's page is never mixed with cached old modules.
        h.CacheControl = "no-cache";
        h.ETag = a.ETag;
        if (c.Request.Headers.IfNoneMatch.ToString() == a.ETag)
        {
            c.Response.StatusCode = StatusCodes.Status304NotModified;
            return;
        }
        c.Response.StatusCode = 200;
        c.Response.ContentType = a.ContentType;
        c.Response.ContentLength = a.Bytes.Length;
        if (!HttpMethods.IsHead(c.Request.Method)) await c.Response.Body.WriteAsync(a.Bytes, c.RequestAborted);
    }
}
