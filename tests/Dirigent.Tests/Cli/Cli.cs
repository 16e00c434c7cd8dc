using System.Diagnostics;

namespace Dirigent.Tests.Cli;

/// <summary>One finished run of the real CLI: its status and everything it printed.</summary>
public sealed record CliResult(int Exit, string Out, string Err)
{
    public override string ToString() => $"exit {Exit}\nstdout:\n{Out}\nstderr:\n{Err}";
}

/// <summary>
/// Runs `dotnet dirigent.dll ARGS` (the CLI built beside the tests) as a child process, with DIRIGENT_HOME and
/// DIRIGENT_TOKEN under the test's control (never the developer's own), stdin empty, and a hang guard.
/// </summary>
public static class Cli
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(120);

    public static CliResult Run(string home, params string[] args) => RunWithToken(home, null, args);

    public static CliResult RunWithToken(string home, string? token, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["DIRIGENT_HOME"] = home;
        if (token != null) psi.Environment["DIRIGENT_TOKEN"] = token;
        else psi.Environment.Remove("DIRIGENT_TOKEN");
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(HangGuard))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"dirigent {string.Join(' ', args)} did not finish in {HangGuard.TotalSeconds} s");
        }
        p.WaitForExit(); // drains the redirected streams
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>A fresh temporary directory; deleted by the caller.</summary>
    public static string TempDir(string prefix)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)]);
        Directory.CreateDirectory(dir);
        return dir;
    }
}
