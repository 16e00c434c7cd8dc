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
/// DOTNET_EnableWriteXorExecute=0, as QEMU's TCG runs its own code buffer writable and executable.
///
/// Gen0 budget: a booting guest makes ~110 MiB of .NET objects (decoded blocks, the compiler's IL), most of them
/// long-lived, and every collection stops the vCPUs while VM time runs on. With .NET's default budget (sized from
/// the host's cache) a boot and four shell loops took 19-20 gen0, 10-11 gen1 and 4 gen2 collections, 225-265 ms
/// paused (DIRIGENT_STATS=1). DOTNET_GCgen0size=0x2000000 (32 MiB; .NET reads it from the environment only) cuts
/// that to a handful: eight alternating `bench boot-one` pairs, uptime at /init 2.06 s against 2.23 s (better in 7
/// of 8), wall time to /init 3.14 against 3.30 s (7 of 8), the rest unchanged; at the price of up to 32 MiB more
/// resident memory per VMM process (a booted 96 MiB guest: 241-242 against 218-229 MiB).
///
/// Either variable already in the environment (e.g. DOTNET_EnableWriteXorExecute=1) is left as it is. The names and
/// values are Dirigent.Vmm.VmmProcessSettings, shared with the daemon's workers.
/// </summary>
public static partial class RuntimeKnobs
{
    /// <summary>
    /// When a setting of <see cref="Dirigent.Vmm.VmmProcessSettings"/> is not in the environment, replaces this process (execve of
    /// /proc/self/exe with the same argv) by one that has them; returns only when all are already set or the exec
    /// failed (then the VMM runs with .NET's defaults). Call first thing in Main, before anything else is started.
    /// </summary>
    public static void ExecWithVmmSettings()
    {
        if (!OperatingSystem.IsLinux()) return;
        var missing = Dirigent.Vmm.VmmProcessSettings.All.Where(s => Environment.GetEnvironmentVariable(s.Name) == null).ToList();
        if (missing.Count == 0) return;
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
        foreach (var (name, value) in missing) env.Add($"{name}={value}");
        env.Add(null);
        string?[] args = [.. argv, null];
        Execve("/proc/self/exe", args, [.. env]);
        // Only a failed exec returns: carry on as we are.
    }

    [LibraryImport("libc", EntryPoint = "execve", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Execve(string path, string?[] argv, string?[] envp);
}
