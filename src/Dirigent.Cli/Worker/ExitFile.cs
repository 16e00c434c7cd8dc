using System.Text.Json;
using Dirigent.Vmm;

namespace Dirigent.Cli.Worker;

/// <summary>
/// `--exit-file PATH`: how the VM ended, for the daemon that may not be the worker's parent (it re-adopts workers
/// after its own restart, so it cannot always collect the exit status):
/// <c>{"state":"stopped"|"crashed","kind":"power_off|...|signal|start_failed","detail":"one line","exit_code":N,"rip":"0x..."}</c>
/// (rip only when known, debug_exit_value only for debug_exit). Written just before the process exits, to a
/// temporary file renamed over PATH, so a reader sees the whole record or none.
/// </summary>
internal static class ExitFile
{
    /// <summary>The record of a VM that ran and ended.</summary>
    public static Record Of(VmExitReason exit, VmState state, int exitCode) =>
        new(state == VmState.Crashed ? "crashed" : "stopped", SnakeCase(exit.Kind.ToString()), exit.ToString(), exitCode,
            exit.Rip, exit.Kind == VmExitKind.DebugExit ? exit.DebugExitValue : null);

    public sealed record Record(string State, string Kind, string Detail, int ExitCode, ulong? Rip = null, int? DebugExitValue = null);

    /// <summary>Writes the record; a failure is one line on <paramref name="err"/> (the exit status still tells).</summary>
    public static void Write(string path, Record r, TextWriter err)
    {
        string tmp = $"{path}.tmp.{Environment.ProcessId}";
        try
        {
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                using (var w = new Utf8JsonWriter(f))
                {
                    w.WriteStartObject();
                    w.WriteString("state", r.State);
                    w.WriteString("kind", r.Kind);
                    w.WriteString("detail", OneLine(r.Detail));
                    w.WriteNumber("exit_code", r.ExitCode);
                    if (r.Rip is { } rip) w.WriteString("rip", $"0x{rip:x}");
                    if (r.DebugExitValue is { } v) w.WriteNumber("debug_exit_value", v);
                    w.WriteEndObject();
                }
                f.WriteByte((byte)'\n');
                // On disk before the rename: a host crash right after leaves the old file or the new one, whole.
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            err.WriteLine($"dirigent: --exit-file {path}: {e.Message}");
            try { File.Delete(tmp); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
        }
    }

    private static string OneLine(string s) =>
        string.Join(' ', s.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    /// <summary>StoppedByRequest → stopped_by_request (as the API writes VM states and exit kinds).</summary>
    internal static string SnakeCase(string pascal)
    {
        var sb = new System.Text.StringBuilder(pascal.Length + 4);
        for (int i = 0; i < pascal.Length; i++)
        {
            if (char.IsUpper(pascal[i]) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(pascal[i]));
        }
        return sb.ToString();
    }
}
