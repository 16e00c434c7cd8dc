using System.Globalization;
using System.Reflection;
using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>
/// What the CLI does with an exception nothing else handled (a bug in Dirigent, or a host failure no code expected):
/// one line on stderr naming a report file with the details (version, command line, the exception with its stack), and
/// <see cref="ExitCodes.VmmFailure"/>. Never a .NET stack trace on the terminal.
/// </summary>
internal static class CrashReport
{
    public static int Write(object? exception, string[] args)
    {
        string what = exception is Exception e ? $"{e.GetType().Name}: {OneLine(e.Message)}" : "unknown error";
        string? path = null;
        try
        {
            string dir = Path.Combine(VmLauncher.CacheDir, "crash");
            Directory.CreateDirectory(dir);
            path = Path.Combine(dir, $"crash-{DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)}-{Environment.ProcessId}.txt");
            File.WriteAllText(path,
                $"dirigent {Assembly.GetExecutingAssembly().GetName().Version}\n" +
                $"time: {DateTime.UtcNow:O}\n" +
                $"command: dirigent {string.Join(' ', args)}\n\n" +
                $"{exception}\n");
        }
        catch (Exception) { path = null; }
        Console.Error.WriteLine($"dirigent: internal error: {what}" + (path != null ? $" (details: {path})" : ""));
        return ExitCodes.VmmFailure;
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();
}
