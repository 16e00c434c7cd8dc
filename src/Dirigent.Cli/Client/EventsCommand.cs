using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;

namespace Dirigent.Cli.Client;

/// <summary>
/// `dirigent events [--vm NAME]`: the daemon's Server-Sent Events stream (GET /api/v1/events), one line per event
/// until interrupted. Text: "SEQ TYPE key=value ..." (nested fields dotted, nulls left out); --output json: one JSON
/// object per line, <c>{"id":SEQ,"event":TYPE,"data":{...}}</c>. Ctrl-C, SIGTERM or SIGHUP stop it with status 0;
/// the stream ending (daemon stopped) is status 6; a
/// "lagged" event (we fell too far behind and the daemon cut us off) is printed, then status 1.
/// </summary>
public static class EventsCommand
{
    public static Command Create()
    {
        var conn = new ConnectionOptions();
        var vm = new Option<string?>("--vm") { Description = "Only events about this VM" };
        var output = new Option<string>("--output", "-o") { Description = "text or json (one object per line)", DefaultValueFactory = _ => "text" };
        var cmd = new Command("events", "Follow the daemon's events: VM state changes, exits, operations") { vm, output };
        conn.AddTo(cmd);
        ClientAction.Set(cmd, "events", async (r, ct) =>
        {
            string format = r.GetValue(output)!;
            if (format is not ("text" or "json" or "table")) throw new FormatException($"--output must be text or json, got '{format}'");
            string? filter = r.GetValue(vm);
            // SIGTERM/SIGHUP end the stream like Ctrl-C does: status 0, nothing half-written.
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            void OnSignal(PosixSignalContext c)
            {
                c.Cancel = true;
                stop.Cancel();
            }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, OnSignal);
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            ct = stop.Token;
            using var client = conn.Connect(r);
            // No client timeout on a stream that is meant to stay open: only the headers are awaited under it.
            using var response = await client.SendAsync(HttpMethod.Get,
                filter == null ? "/api/v1/events" : $"/api/v1/events?vm={Uri.EscapeDataString(filter)}", null, ct,
                HttpCompletionOption.ResponseHeadersRead);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct), Encoding.UTF8);
            // The daemon subscribes before it answers: from here on no event is missed (scripts can wait for this line).
            Console.Error.WriteLine($"dirigent: following events from {client.Endpoint}{(filter != null ? $" about {filter}" : "")}");
            var parser = new SseParser();
            try
            {
                while (await reader.ReadLineAsync(ct) is { } line)
                {
                    if (parser.Feed(line) is not { } ev) continue;
                    Console.WriteLine(format == "json" ? ev.ToJson() : ev.ToText());
                    Console.Out.Flush();
                    if (ev.Type == "lagged")
                        throw new CliException(ClientExit.OperationFailed, "the daemon dropped this stream (it fell behind); events were lost");
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return ClientExit.Ok; // Ctrl-C: the normal way to stop following
            }
            catch (IOException e)
            {
                throw new CliException(ClientExit.Unreachable, $"the event stream broke: {DaemonClient.OneLine(e.Message)}");
            }
            catch (HttpRequestException e)
            {
                throw new CliException(ClientExit.Unreachable, $"the event stream broke: {DaemonClient.OneLine(e.Message)}");
            }
            throw new CliException(ClientExit.Unreachable, "the daemon ended the event stream");
        });
        return cmd;
    }
}

/// <summary>One Server-Sent Event: its id (the daemon's sequence number), type and JSON data.</summary>
public sealed record SseEvent(string? Id, string Type, string Data)
{
    public string ToJson()
    {
        JsonNode? data;
        try { data = JsonNode.Parse(Data); }
        catch (System.Text.Json.JsonException) { data = JsonValue.Create(Data); }
        var o = new JsonObject
        {
            ["id"] = long.TryParse(Id, out long n) ? JsonValue.Create(n) : JsonValue.Create(Id),
            ["event"] = Type,
            ["data"] = data,
        };
        return o.ToJsonString();
    }

    public string ToText()
    {
        var sb = new StringBuilder();
        if (Id != null) sb.Append(Id).Append(' ');
        sb.Append(Type);
        JsonNode? data = null;
        try { data = JsonNode.Parse(Data); }
        catch (System.Text.Json.JsonException) { }
        if (data is JsonObject o) Append(sb, o, "");
        else if (Data.Length > 0) sb.Append(' ').Append(DaemonClient.OneLine(Data));
        return sb.ToString();
    }

    private static void Append(StringBuilder sb, JsonObject o, string prefix)
    {
        foreach (var (k, v) in o)
        {
            switch (v)
            {
                case null: break;
                case JsonObject child: Append(sb, child, $"{prefix}{k}."); break;
                default:
                    string text = DaemonClient.OneLine(Output.Text(v));
                    sb.Append(' ').Append(prefix).Append(k).Append('=');
                    // Quote values with spaces (error details) so a line still splits into key=value fields.
                    sb.Append(text.Contains(' ') || text.Length == 0 ? System.Text.Json.JsonSerializer.Serialize(text) : text);
                    break;
            }
        }
    }
}

/// <summary>
/// The text/event-stream format (WHATWG HTML, "Server-sent events"): "field: value" lines, an empty line dispatches;
/// data lines join with '\n'; lines starting with ':' are comments (keep-alives); the default type is "message".
/// </summary>
public sealed class SseParser
{
    private string? _id;
    private string? _type;
    private readonly StringBuilder _data = new();
    private bool _hasData;

    /// <summary>Feeds one line (without its line break); returns the event an empty line completes.</summary>
    public SseEvent? Feed(string line)
    {
        if (line.Length == 0)
        {
            if (!_hasData)
            {
                _type = null;
                return null;
            }
            var ev = new SseEvent(_id, _type ?? "message", _data.ToString());
            _type = null;
            _data.Clear();
            _hasData = false;
            return ev; // the id persists as the "last event id", as the spec says
        }
        if (line[0] == ':') return null;
        int colon = line.IndexOf(':');
        string field = colon < 0 ? line : line[..colon];
        string value = colon < 0 ? "" : line[(colon + 1)..];
        if (value.StartsWith(' ')) value = value[1..];
        switch (field)
        {
            case "event": _type = value; break;
            case "id": if (!value.Contains('\0')) _id = value; break;
            case "data":
                if (_hasData) _data.Append('\n');
                _data.Append(value);
                _hasData = true;
                break;
        }
        return null;
    }
}
