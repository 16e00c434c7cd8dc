using System.Diagnostics;

namespace Dirigent.Tests.Firmware;

/// <summary>
/// A host program a test needs (iasl, cpio): found on PATH, or installed with apt-get when the tests run as root;
/// otherwise the test fails saying what to install (it never skips silently).
/// </summary>
internal static class RequiredTool
{
    private static readonly object s_lock = new();

    public static string Find(string program, string aptPackage)
    {
        lock (s_lock)
        {
            string? path = Which(program);
            if (path != null) return path;
            var (rc, output) = Run("apt-get", ["install", "-y", "-q", aptPackage], Path.GetTempPath());
            path = Which(program);
            Assert.True(path != null,
                $"this test needs '{program}': install the '{aptPackage}' package (apt-get install {aptPackage}); automatic install failed (rc {rc}): {output.Trim().Split('\n').LastOrDefault()}");
            return path!;
        }
    }

    private static string? Which(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
            .Select(d => Path.Combine(d, program)).FirstOrDefault(File.Exists);

    public static (int ExitCode, string Output) Run(string file, IEnumerable<string> args, string workDir, byte[]? stdin = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin != null,
            UseShellExecute = false, WorkingDirectory = workDir,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            var err = p.StandardError.ReadToEndAsync();
            if (stdin != null) { p.StandardInput.BaseStream.Write(stdin); p.StandardInput.Close(); }
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, output + err.Result);
        }
        catch (System.ComponentModel.Win32Exception e) { return (-1, e.Message); }
    }
}
