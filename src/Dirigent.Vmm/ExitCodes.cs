namespace Dirigent.Vmm;

/// <summary>
/// Exit statuses of `dirigent run`. Even numbers only, so they never collide with the debug-exit device's
/// (value &lt;&lt; 1) | 1, which is always odd.
/// </summary>
public static class ExitCodes
{
    /// <summary>The guest powered off (or rebooted under --no-reboot).</summary>
    public const int Ok = 0;
    /// <summary>Bad command line, unreadable or corrupt kernel/initrd/disk: no VM was started.</summary>
    public const int BadInput = 2;
    /// <summary>The guest triple-faulted, or halted with interrupts disabled so that it can never run again.</summary>
    public const int GuestDied = 4;
    /// <summary>The VMM failed (a bug or a host error), or the requested feature is not available on this host.</summary>
    public const int VmmFailure = 6;
}
