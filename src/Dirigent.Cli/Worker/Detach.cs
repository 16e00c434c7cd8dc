using System.Runtime.InteropServices;

namespace Dirigent.Cli.Worker;

/// <summary>`--detach`: the worker leaves the daemon's session and process group (setsid(2)), so the daemon's death,
/// its terminal's hang-up or a Ctrl-C to its process group never reaches the VM.</summary>
internal static partial class Detach
{
    [LibraryImport("libc", SetLastError = true)]
    private static partial int setsid();

    /// <summary>
    /// Starts a new session. Fails (EPERM) only for a process that already leads a process group, e.g. one started
    /// by a shell with job control or by setsid(1): then it is detached enough; returns whether a new session began.
    /// </summary>
    public static bool NewSession() => !OperatingSystem.IsWindows() && setsid() >= 0;
}
