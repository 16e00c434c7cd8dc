using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Api;

/// <summary>
/// Strict reading of the small JSON bodies the API takes: an object with exactly the named string fields, nothing
/// missing, extra, repeated or of another type; each mistake is a 400 that names the field.
/// </summary>
internal static class ApiRequestBody
{
    /// <summary>Reads the whole body (Kestrel caps its size: a larger one is a 413).</summary>
    public static async Task<byte[]> ReadAsync(HttpContext ctx)
    {
        using var ms = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(ms, ctx.RequestAborted);
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
