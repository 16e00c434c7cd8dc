using System.ComponentModel;
using System.Diagnostics;

namespace Dirigent.Images;

/// <summary>
/// An image cannot be built; the message says what to install or to pass --kernel/--initrd. <see cref="BadInput"/>
/// marks the caller's mistake (a bad option or file) as opposed to what the host lacks or a failed step.
/// </summary>
public sealed class ImageBuildException(string message, bool badInput = false) : Exception(message)
{
    public bool BadInput { get; } = badInput;
}

/// <summary>Runs a host program (apt-get, tar...) and reports failures as one-line <see cref="ImageBuildException"/>s.</summary>
internal static class HostTool
{
    public static string Run(string file, IReadOnlyList<string> args, string remedy, string? workDir = null, bool check = true)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            WorkingDirectory = workDir ?? Environment.CurrentDirectory,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi) ?? throw new ImageBuildException($"cannot start {file}: {remedy}"); }
        catch (Win32Exception) { throw new ImageBuildException($"{file} is not available: {remedy}"); }
        using (p)
        {
            var errTask = p.StandardError.ReadToEndAsync();
            string stdout = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            string stderr = errTask.Result;
            if (check && p.ExitCode != 0)
            {
                string why = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .LastOrDefault(l => !l.StartsWith("W:", StringComparison.Ordinal)) ?? $"exit code {p.ExitCode}";
                throw new ImageBuildException($"{file} {string.Join(' ', args)} failed ({why}): {remedy}");
            }
            return stdout;
        }
    }
}
