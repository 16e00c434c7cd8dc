using System.Buffers;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.WebUtilities;

namespace Dirigent.Api;

/// <summary>A request the API refuses, with the status and the one line that says why (a 4xx problem).</summary>
internal sealed class ApiRequestException(int status, string detail) : Exception(detail)
{
    public int Status { get; } = status;

    public static ApiRequestException BadRequest(string detail) => new(StatusCodes.Status400BadRequest, detail);
}

/// <summary>RFC 9457 problem details: every error the API answers is one of these.</summary>
internal static class ApiProblem
{
    public const string ContentType = "application/problem+json";

    /// <summary>Plain quotes and angle brackets in messages (the default escapes them for HTML, which this never is).</summary>
    public static readonly JsonWriterOptions JsonOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static Task Write(HttpContext ctx, int status, string detail)
    {
        var buf = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buf, JsonOptions))
        {
            w.WriteStartObject();
            w.WriteString("type", "about:blank");
            w.WriteString("title", ReasonPhrases.GetReasonPhrase(status));
            w.WriteNumber("status", status);
            w.WriteString("detail", OneLine(detail));
            w.WriteEndObject();
        }
        var r = ctx.Response;
        r.StatusCode = status;
        r.ContentType = ContentType;
        r.ContentLength = buf.WrittenCount;
        return r.Body.WriteAsync(buf.WrittenMemory).AsTask();
    }

    /// <summary>Messages go out as one line: the client shows it as is, and the log stays one line per request.</summary>
    public static string OneLine(string s)
    {
        s = s.Trim();
        return s.Contains('\n') || s.Contains('\r') ? string.Join(" ", s.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries)) : s;
    }
}
