using System.Runtime.InteropServices;
using System.Text;

namespace Dirigent.Cli;

/// <summary>
/// .NET runtime settings a VMM process needs before the runtime starts (environment variables only).
///
/// W^X: by default .NET writes every piece of machine code it makes through a second, writable mapping that it unmaps
/// afterwards. The software CPU's compiled tier makes thousands of methods while a guest boots; each unmap is a TLB
/// shootdown across the process's threads (on this project's PVM hosts an IPI to the other core, which interrupts
/// the vCPU thread), and the compiler thread spent about a fifth of its time there (bench jit-compile, boot's
/// blocks: 526-611 → 424-435 µs of thread CPU per block). A VMM process therefore runs with
/// DOTNET_EnableWriteXorExecute=0, as QEMU's TCG runs its own code buffer writable and executable. An explicit
/// DOTNET_EnableWriteXorExecute in the environment (e.g. =1) is left as it is.
/// </summary>
public static partial class RuntimeKnobs
{
    public const string WriteXorExecute = "DOTNET_EnableWriteXorExecute";

    /// <summary>
    /// When W^X is not set in the environment, replaces this process (execve of /proc/self/exe with the same argv)
    /// by one that has it off; returns only when it is already set or the exec failed (then the VMM runs with W^X on).
    /// Call first thing in Main, before anything else is started.
    /// </summary>
    public static void ExecWithoutWriteXorExecute()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable(WriteXorExecute) != null) return;
        string[] argv;
        try
        {
            byte[] raw = File.ReadAllBytes("/proc/self/cmdline");
            argv = Encoding.UTF8.GetString(raw).TrimEnd('\0').Split('\0');
        }
        catch (IOException) { return; }
        catch (UnauthorizedAccessException) { return; }
        if (argv.Length == 0) return;
        var env = new List<string?>();
        foreach (System.Collections.DictionaryEntry kv in Environment.GetEnvironmentVariables())
            env.Add($"{kv.Key}={kv.Value}");
        env.Add($"{WriteXorExecute}=0");
        env.Add(null);
        string?[] args = [.. argv, null];
        Execve("/proc/self/exe", args, [.. env]);
        // Only a failed exec returns: carry on as we are.
    }

    [LibraryImport("libc", EntryPoint = "execve", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Execve(string path, string?[] argv, string?[] envp);
}
