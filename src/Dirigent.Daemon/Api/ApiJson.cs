using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Dirigent.Api;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Daemon.Api;

/// <summary>JSON in and out of the daemon's REST API: snake_case, strict reading with the offending field named.</summary>
internal static class ApiJson
{
    /// <summary>The one serializer setup for records (inventory) and responses: snake_case, enums as strings.</summary>
    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public static ApiRequestException Bad(string detail) => ApiRequestException.BadRequest(detail);
    public static ApiRequestException NotFound(string detail) => new(StatusCodes.Status404NotFound, detail);
    public static ApiRequestException Conflict(string detail) => new(StatusCodes.Status409Conflict, detail);

    /// <summary>Reads the whole body (Kestrel caps its size at 64 KiB: a larger one is a 413 from the reader).</summary>
    public static async Task<byte[]> ReadBodyAsync(HttpContext ctx) => await ApiRequestBody.ReadAsync(ctx);

    /// <summary>
    /// Parses a body that must be a JSON object (or, with <paramref name="optional"/>, nothing at all: then null).
    /// The returned document must be disposed by the caller.
    /// </summary>
    public static JsonDocument? ParseObject(byte[] body, bool optional = false)
    {
        bool blank = true;
        foreach (byte b in body) if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')) { blank = false; break; }
        if (blank)
        {
            if (optional) return null;
            throw Bad("request body is missing: expected a JSON object");
        }
        // JsonDocument checks the UTF-8 of names and strings only when they are read: a bad byte in a field name
        // would surface later as an InvalidOperationException (a 500). Refuse the body here instead.
        if (!System.Text.Unicode.Utf8.IsValid(body)) throw Bad("request body is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(body, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Bad($"request body is not valid JSON: {e.Message}");
        }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw Bad("request body must be a JSON object");
        }
        return doc;
    }

    /// <summary>
    /// The fields of <paramref name="obj"/>, each checked against <paramref name="allowed"/>: an unknown or repeated
    /// field is a 400 naming it with its path (e.g. "spec.disks[0].bogus").
    /// </summary>
    public static Dictionary<string, JsonElement> Fields(JsonElement obj, string path, params string[] allowed)
    {
        if (obj.ValueKind != JsonValueKind.Object) throw Bad($"field '{path}' must be an object, not {Kind(obj)}");
        var result = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var p in obj.EnumerateObject())
        {
            string full = path.Length == 0 ? p.Name : $"{path}.{p.Name}";
            if (Array.IndexOf(allowed, p.Name) < 0)
                throw Bad($"unknown field '{full}' (allowed: {string.Join(", ", allowed)})");
            if (!result.TryAdd(p.Name, p.Value)) throw Bad($"field '{full}' is given twice");
        }
        return result;
    }

    public static string Join(string path, string name) => path.Length == 0 ? name : $"{path}.{name}";

    public static string String(JsonElement e, string field)
        => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Bad($"field '{field}' must be a string, not {Kind(e)}");

    public static string? NullableString(JsonElement e, string field)
        => e.ValueKind == JsonValueKind.Null ? null : String(e, field);

    public static bool Bool(JsonElement e, string field) => e.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw Bad($"field '{field}' must be a boolean, not {Kind(e)}"),
    };

    public static long Long(JsonElement e, string field, long min, long max)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v))
            throw Bad($"field '{field}' must be an integer, not {Kind(e)}");
        if (v < min || v > max) throw Bad($"field '{field}' must be between {min} and {max}, got {v}");
        return v;
    }

    public static double Double(JsonElement e, string field, double minExclusive, double max)
    {
        if (e.ValueKind != JsonValueKind.Number) throw Bad($"field '{field}' must be a number, not {Kind(e)}");
        double v = e.GetDouble();
        if (!(v > minExclusive && v <= max)) throw Bad($"field '{field}' must be above {minExclusive} and at most {max}, got {v}");
        return v;
    }

    public static IEnumerable<JsonElement> Items(JsonElement e, string field)
        => e.ValueKind == JsonValueKind.Array ? e.EnumerateArray() : throw Bad($"field '{field}' must be an array, not {Kind(e)}");

    public static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.Number => "a number",
        JsonValueKind.String => "a string",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => e.ValueKind.ToString().ToLowerInvariant(),
    };

    /// <summary>Writes <paramref name="body"/> as application/json with <paramref name="status"/>.</summary>
    public static Task Write(HttpContext ctx, int status, JsonNode? body)
    {
        byte[] bytes = JsonSerializer.SerializeToUtf8Bytes(body, Options);
        var r = ctx.Response;
        r.StatusCode = status;
        r.ContentType = "application/json";
        r.ContentLength = bytes.Length;
        return r.Body.WriteAsync(bytes, ctx.RequestAborted).AsTask();
    }

    public static JsonNode ToNode<T>(T value) => JsonSerializer.SerializeToNode(value, Options)!;
}
