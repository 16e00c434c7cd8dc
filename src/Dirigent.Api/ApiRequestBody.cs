using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Api;

/// <summary>
/// Strict reading of the small JSON bodies the API takes: an object with exactly the named string fields, nothing
/// missing, extra, repeated or of another type; each mistake is a 400 that names the field.
/// </summary>
internal static class ApiRequestBody
{
    /// <summary>The most of an over-limit body read and thrown away so that the client hears the 413.</summary>
    public const int DrainLimit = 1024 * 1024;

    /// <summary>
    /// Reads the whole body; one larger than the server's limit is a 413. Kestrel would answer the 413 and close
    /// while the client is still sending, and a client that writes the whole body before reading (HttpClient does)
    /// then sees a broken pipe instead of the answer: so the limit is enforced here, and an over-limit body of up
    /// to <see cref="DrainLimit"/> bytes is read and dropped before answering.
    /// </summary>
    public static async Task<byte[]> ReadAsync(HttpContext ctx)
    {
        var feature = ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>();
        long? max = feature?.MaxRequestBodySize;
        if (max is not long limit || feature!.IsReadOnly)
        {
            using var all = new MemoryStream();
            await ctx.Request.Body.CopyToAsync(all, ctx.RequestAborted);
            return all.ToArray();
        }
        string tooLarge = $"Request body too large. The max request body size is {limit} bytes.";
        long? declared = ctx.Request.ContentLength;
        if (declared > DrainLimit) throw new BadHttpRequestException(tooLarge, StatusCodes.Status413PayloadTooLarge);
        feature.MaxRequestBodySize = DrainLimit;
        using var ms = new MemoryStream();
        var buffer = new byte[16 * 1024];
        long total = 0;
        int n;
        while ((n = await ctx.Request.Body.ReadAsync(buffer, ctx.RequestAborted)) > 0)
        {
            total += n;
            if (total <= limit) ms.Write(buffer, 0, n);
        }
        if (total > limit) throw new BadHttpRequestException(tooLarge, StatusCodes.Status413PayloadTooLarge);
        return ms.ToArray();
    }

    /// <summary>The string fields of a JSON object body, in the order of <paramref name="fields"/>.</summary>
    public static string[] ParseStrings(ReadOnlyMemory<byte> body, string example, params string[] fields)
    {
        if (IsBlank(body)) throw ApiRequestException.BadRequest($"request body is missing: expected {example}");
        var values = new string?[fields.Length];
        using (var doc = Parse(body))
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw ApiRequestException.BadRequest($"request body must be a JSON object: expected {example}");
            foreach (var p in root.EnumerateObject())
            {
                int k = Array.IndexOf(fields, p.Name);
                if (k < 0)
                    throw ApiRequestException.BadRequest($"unknown field '{p.Name}' (expected {example})");
                if (values[k] != null) throw ApiRequestException.BadRequest($"field '{p.Name}' is given twice");
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw ApiRequestException.BadRequest($"field '{p.Name}' must be a string, not {Kind(p.Value.ValueKind)}");
                values[k] = p.Value.GetString()!;
            }
        }
        for (int k = 0; k < fields.Length; k++)
            if (values[k] == null) throw ApiRequestException.BadRequest($"missing field '{fields[k]}' (expected {example})");
        return values!;
    }

    /// <summary>Endpoints that take no arguments accept no body, or an empty object (what some clients always send).</summary>
    public static void RequireEmpty(ReadOnlyMemory<byte> body, string endpoint)
    {
        if (IsBlank(body)) return;
        using var doc = Parse(body);
        var root = doc.RootElement;
        if (root.ValueKind == JsonValueKind.Object && !root.EnumerateObject().Any()) return;
        throw ApiRequestException.BadRequest($"{endpoint} takes no request body (send none, or {{}})");
    }

    private static JsonDocument Parse(ReadOnlyMemory<byte> body)
    {
        // JsonDocument checks the UTF-8 of names and strings only when they are read (an InvalidOperationException,
        // a 500, from a field name): refuse a body that is not UTF-8 up front.
        if (!System.Text.Unicode.Utf8.IsValid(body.Span)) throw ApiRequestException.BadRequest("request body is not valid UTF-8");
        try
        {
            // The whole body must be one value: trailing bytes after it are an error too.
            return JsonDocument.Parse(body, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw ApiRequestException.BadRequest($"request body is not valid JSON: {e.Message}");
        }
    }

    private static bool IsBlank(ReadOnlyMemory<byte> body)
    {
        foreach (byte b in body.Span) if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')) return false;
        return true;
    }

    private static string Kind(JsonValueKind k) => k switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => k.ToString().ToLowerInvariant(),
    };
}
