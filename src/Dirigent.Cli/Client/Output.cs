using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Dirigent.Cli.Client;

public enum OutputFormat
{
    Table,
    Json,
    Yaml,
}

/// <summary>A table column: its header and how a row's JSON object gives the cell.</summary>
public sealed record Column(string Header, Func<JsonObject, string> Cell);

/// <summary>
/// The three renderings of the daemon's answers. json is the API's own objects (a listing is a JSON array of them),
/// yaml the same tree as YAML, table a fixed set of columns for people. YAML comes from a small emitter over the JSON
/// tree (below) rather than YamlDotNet: the trees are plain data (objects, arrays, strings, numbers, booleans, null),
/// and a dependency for that alone is not worth its weight in every build.
/// </summary>
public static class Output
{
    public static Option<OutputFormat> CreateOption() => new("--output", "-o")
    {
        Description = "table, json or yaml",
        DefaultValueFactory = _ => OutputFormat.Table,
        // Our own parser for a one-line error (the enum binder's lists the values on separate lines).
        CustomParser = result =>
        {
            string text = result.Tokens.Count == 1 ? result.Tokens[0].Value : "";
            switch (text)
            {
                case "table": return OutputFormat.Table;
                case "json": return OutputFormat.Json;
                case "yaml": return OutputFormat.Yaml;
                default:
                    result.AddError($"--output must be table, json or yaml, got '{text}'");
                    return OutputFormat.Table;
            }
        },
    };

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static string Json(JsonNode? node) => node?.ToJsonString(Indented) ?? "null";

    /// <summary>A list: a table with <paramref name="columns"/>, or the array in JSON/YAML.</summary>
    public static void WriteList(TextWriter w, OutputFormat format, JsonArray items, IReadOnlyList<Column> columns)
    {
        switch (format)
        {
            case OutputFormat.Json: w.WriteLine(Json(items)); break;
            case OutputFormat.Yaml: w.Write(Yaml(items)); break;
            default: w.Write(Table(items.OfType<JsonObject>(), columns)); break;
        }
    }

    /// <summary>One object: key/value lines (nested keys dotted), or the object in JSON/YAML.</summary>
    public static void WriteObject(TextWriter w, OutputFormat format, JsonNode? item)
    {
        switch (format)
        {
            case OutputFormat.Json: w.WriteLine(Json(item)); break;
            case OutputFormat.Yaml: w.Write(Yaml(item)); break;
            default: w.Write(KeyValues(item)); break;
        }
    }

    /// <summary>The array in a list answer such as <c>{"vms":[...]}</c>: the named property, else the only array.</summary>
    public static JsonArray Items(JsonNode? answer, string property)
    {
        if (answer is JsonArray a) return a;
        if (answer is JsonObject o)
        {
            if (o[property] is JsonArray named) return named;
            var arrays = o.Select(p => p.Value).OfType<JsonArray>().ToList();
            if (arrays.Count == 1) return arrays[0];
        }
        throw new CliException(ClientExit.Unreachable, $"the daemon's answer has no '{property}' list");
    }

    // ------------------------------------------------------------------ table

    public static string Table(IEnumerable<JsonObject> rows, IReadOnlyList<Column> columns)
    {
        var cells = new List<string[]> { columns.Select(c => c.Header).ToArray() };
        foreach (var row in rows) cells.Add(columns.Select(c => OneLine(c.Cell(row))).ToArray());
        var widths = new int[columns.Count];
        foreach (var line in cells)
            for (int k = 0; k < line.Length; k++) widths[k] = Math.Max(widths[k], line[k].Length);
        var sb = new StringBuilder();
        foreach (var line in cells)
        {
            for (int k = 0; k < line.Length; k++)
            {
                // Two spaces between columns; lines end without trailing blanks.
                sb.Append(k == line.Length - 1 ? line[k] : line[k].PadRight(widths[k] + 2));
            }
            // Empty last cells would leave padding behind.
            while (sb.Length > 0 && sb[^1] == ' ') sb.Length--;
            sb.Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>Every scalar leaf as "path  value" (spec.disks[0].path), aligned; empty arrays/objects show as [] / {}.</summary>
    public static string KeyValues(JsonNode? node)
    {
        var pairs = new List<(string Key, string Value)>();
        Flatten(node, "", pairs);
        int width = pairs.Count == 0 ? 0 : pairs.Max(p => p.Key.Length);
        var sb = new StringBuilder();
        foreach (var (key, value) in pairs) sb.Append(key.PadRight(width + 2)).Append(OneLine(value)).Append('\n');
        return sb.ToString();
    }

    private static void Flatten(JsonNode? node, string path, List<(string, string)> into)
    {
        switch (node)
        {
            case JsonObject o when o.Count > 0:
                foreach (var (k, v) in o) Flatten(v, path.Length == 0 ? k : $"{path}.{k}", into);
                break;
            case JsonArray a when a.Count > 0:
                for (int i = 0; i < a.Count; i++) Flatten(a[i], $"{path}[{i}]", into);
                break;
            case JsonObject: into.Add((path, "{}")); break;
            case JsonArray: into.Add((path, "[]")); break;
            default: into.Add((path, Text(node))); break;
        }
    }

    /// <summary>A scalar as text for a cell: strings bare, null as "-".</summary>
    public static string Text(JsonNode? node) => node switch
    {
        null => "-",
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        _ => node.ToJsonString(),
    };

    private static string OneLine(string s) => s.Contains('\n') || s.Contains('\r') ? DaemonClient.OneLine(s) : s;

    /// <summary>"256 MiB", "2 GiB" for a MiB count (a cell helper).</summary>
    public static string Mib(JsonNode? node)
    {
        if (node is null) return "-";
        // Through the JSON text: a parsed number and one built from an int both read back (GetValue<long> would not).
        if (!long.TryParse(node.ToJsonString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long mib)) return Text(node);
        return mib >= 1024 && mib % 1024 == 0 ? $"{mib / 1024} GiB" : $"{mib} MiB";
    }

    // ------------------------------------------------------------------ YAML

    /// <summary>
    /// YAML 1.2 block style for a JSON tree. Strings are plain when that reads back as the same string, else
    /// double-quoted with JSON escapes (a subset of YAML's double-quoted escapes); numbers, booleans and null as JSON.
    /// </summary>
    public static string Yaml(JsonNode? node)
    {
        var sb = new StringBuilder();
        switch (node)
        {
            case JsonObject o when o.Count > 0: YamlObject(sb, o, 0); break;
            case JsonArray a when a.Count > 0: YamlArray(sb, a, 0); break;
            default: sb.Append(YamlScalar(node)).Append('\n'); break;
        }
        return sb.ToString();
    }

    private static void YamlObject(StringBuilder sb, JsonObject o, int indent, bool firstInline = false)
    {
        bool first = true;
        foreach (var (key, value) in o)
        {
            if (!(first && firstInline)) sb.Append(' ', indent);
            first = false;
            sb.Append(YamlString(key)).Append(':');
            YamlValue(sb, value, indent, inSequence: false);
        }
    }

    private static void YamlArray(StringBuilder sb, JsonArray a, int indent, bool firstInline = false)
    {
        bool first = true;
        foreach (var item in a)
        {
            if (!(first && firstInline)) sb.Append(' ', indent);
            first = false;
            sb.Append('-');
            YamlValue(sb, item, indent, inSequence: true);
        }
    }

    /// <summary>After "key:" or "-": a scalar on the same line, or a nested collection.</summary>
    private static void YamlValue(StringBuilder sb, JsonNode? value, int indent, bool inSequence)
    {
        switch (value)
        {
            case JsonObject child when child.Count > 0:
                if (inSequence)
                {
                    // "- key: v" with the object's other keys under the first (the compact form people write).
                    sb.Append(' ');
                    YamlObject(sb, child, indent + 2, firstInline: true);
                }
                else
                {
                    sb.Append('\n');
                    YamlObject(sb, child, indent + 2);
                }
                break;
            case JsonArray list when list.Count > 0:
                if (inSequence)
                {
                    sb.Append(' ');
                    YamlArray(sb, list, indent + 2, firstInline: true);
                }
                else
                {
                    // A sequence under a key sits at the key's indentation, as kubectl and most tools write it.
                    sb.Append('\n');
                    YamlArray(sb, list, indent);
                }
                break;
            default:
                sb.Append(' ').Append(YamlScalar(value)).Append('\n');
                break;
        }
    }

    private static string YamlScalar(JsonNode? node) => node switch
    {
        null => "null",
        JsonObject => "{}",
        JsonArray => "[]",
        JsonValue v when v.GetValueKind() == JsonValueKind.String => YamlString(v.GetValue<string>()),
        _ => node.ToJsonString(),
    };

    /// <summary>A string as a plain scalar when that is unambiguous, else double-quoted.</summary>
    public static string YamlString(string s) => IsPlainSafe(s) ? s : Quote(s);

    /// <summary>
    /// A YAML double-quoted scalar: only '"', '\\' and control characters are escaped (YAML is UTF-8, so other text
    /// stays readable, unlike JSON's default escaping of '+', '&lt;' or non-ASCII).
    /// </summary>
    private static string Quote(string s)
    {
        var sb = new StringBuilder(s.Length + 2).Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\t': sb.Append("\\t"); break;
                case '\r': sb.Append("\\r"); break;
                default:
                    if (char.IsControl(c) || c is '\u2028' or '\u2029' or '\uFEFF') sb.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:X4}");
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }

    private static bool IsPlainSafe(string s)
    {
        if (s.Length == 0 || s != s.Trim()) return false;
        // Words that YAML 1.1 or 1.2 readers take as booleans or null, and anything that looks like a number.
        if (s.ToLowerInvariant() is "null" or "~" or "true" or "false" or "yes" or "no" or "on" or "off" or "y" or "n")
            return false;
        if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _)
            || s.StartsWith("0x", StringComparison.OrdinalIgnoreCase) || s.StartsWith("0o", StringComparison.OrdinalIgnoreCase)
            || s.StartsWith('.'))
            return false;
        // A date or time would be read back as a timestamp by YAML 1.1 readers (PyYAML): keep it a string.
        if (s.Length >= 10 && char.IsAsciiDigit(s[0]) && s[4] == '-' && s[7] == '-') return false;
        // Indicators that may not start a plain scalar, and sequences that end or comment one.
        if ("-?:,[]{}#&*!|>'\"%@`".Contains(s[0])) return false;
        if (s.Contains(": ", StringComparison.Ordinal) || s.Contains(" #", StringComparison.Ordinal) || s.EndsWith(':')) return false;
        foreach (char c in s)
            if (char.IsControl(c) || c > '~') return false;
        return true;
    }
}
