using System.Diagnostics;
using Dirigent.Tests.Lifecycle;

namespace Dirigent.Tests.Cli;

/// <summary>
/// `dirigent run` is a VMM whose software CPU compiles thousands of methods: it runs with .NET's W^X off and a
/// larger gen0 budget (Dirigent.Cli.RuntimeKnobs), set before the runtime starts by re-executing itself (same
/// process, same arguments) when the environment does not say, and each left as it is when it does.
/// </summary>
public class CliRuntimeKnobsTests
{
    [Theory]
    [InlineData("DOTNET_EnableWriteXorExecute", null, "0")]
    [InlineData("DOTNET_EnableWriteXorExecute", "1", "1")]
    [InlineData("DOTNET_GCgen0size", null, "0x2000000")]
    [InlineData("DOTNET_GCgen0size", "0x1000000", "0x1000000")]
    public void RunSetsItsRuntimeSettingsUnlessTheEnvironmentSays(string variable, string? given, string expected)
    {
        string dir = Cli.TempDir("wx");
        try
        {
            // A guest that keeps running (its own tick count is far away), killed once the process was looked at.
            string kernel = TinyGuest.WriteKernel(dir, ticks: 1_000_000);
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
            foreach (string a in (string[])["run", "--kernel", kernel, "-m", "16M", "--serial", "none", "--accel", "emu"]) psi.ArgumentList.Add(a);
            psi.Environment["DIRIGENT_HOME"] = dir;
            // Neither set: the process re-executes itself once and must come back with both.
            psi.Environment.Remove("DOTNET_EnableWriteXorExecute");
            psi.Environment.Remove("DOTNET_GCgen0size");
            if (given != null) psi.Environment[variable] = given;
            using var p = Process.Start(psi)!;
            try
            {
                string? value = null;
                // After the exec the process (same PID) has both variables; before it, at most the one given.
                bool seen = SpinWait.SpinUntil(() => p.HasExited ||
                    (ReadVariable(p.Id, "DOTNET_EnableWriteXorExecute") != null && ReadVariable(p.Id, "DOTNET_GCgen0size") != null
                     && (value = ReadVariable(p.Id, variable)) != null), TimeSpan.FromSeconds(60));
                Assert.True(seen && !p.HasExited, $"the VMM ended or never showed the variable; stderr: {(p.HasExited ? p.StandardError.ReadToEnd() : "")}");
                Assert.Equal(expected, value);
                // Still the VMM, running (the exec kept the arguments).
                Assert.Contains("run\0--kernel\0", File.ReadAllText($"/proc/{p.Id}/cmdline"));
            }
            finally
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.WaitForExit();
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    private static string? ReadVariable(int pid, string variable)
    {
        try
        {
            foreach (string kv in File.ReadAllText($"/proc/{pid}/environ").Split('\0'))
                if (kv.StartsWith(variable + "=", StringComparison.Ordinal)) return kv[(variable.Length + 1)..];
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
