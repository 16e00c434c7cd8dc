namespace Dirigent.Cli;

/// <summary>
/// `--trace syscalls[,process=NAME][,output=FILE.jsonl]`: what to trace (system calls only, for now), an optional
/// process-name filter and where the JSON lines go (standard error when no output is given).
/// </summary>
public sealed record TraceOption(string? Process, string? Output)
{
    public static TraceOption Parse(string spec)
    {
        var parts = spec.Split(',');
        if (parts[0] != "syscalls") throw new FormatException($"--trace: the first item says what to trace and must be syscalls, got '{parts[0]}'");
        string? process = null, output = null;
        foreach (var p in parts.Skip(1))
        {
            int eq = p.IndexOf('=');
            string key = eq < 0 ? p : p[..eq], value = eq < 0 ? "" : p[(eq + 1)..];
            switch (key)
            {
                case "process" when value.Length > 0:
                    if (process != null) throw new FormatException("--trace: process= given twice");
                    // The kernel keeps 15 bytes of a process name (TASK_COMM_LEN 16 with its NUL).
                    if (value.Length > 15) throw new FormatException($"--trace: process={value} is longer than a Linux process name (15 bytes)");
                    process = value;
                    break;
                case "output" when value.Length > 0:
                    if (output != null) throw new FormatException("--trace: output= given twice");
                    output = value;
                    break;
                default:
                    throw new FormatException($"--trace: unknown item '{p}' (expected process=NAME or output=FILE)");
            }
        }
        return new TraceOption(process, output);
    }
}
