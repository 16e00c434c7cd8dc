namespace Dirigent.Cli.Client;

/// <summary>
/// Exit statuses of the daemon client commands (`dirigent vm|disk list|add|rm|token|events`), as the README lists them.
/// They differ from `dirigent run`'s (<see cref="Dirigent.Vmm.ExitCodes"/>) except for 0 and 2, which mean the same.
/// </summary>
public static class ClientExit
{
    public const int Ok = 0;
    /// <summary>The daemon accepted the request but the operation failed or was cancelled.</summary>
    public const int OperationFailed = 1;
    /// <summary>Bad command line, or a request the daemon rejected as malformed (400, 413, 422).</summary>
    public const int BadCommandLine = 2;
    public const int NotFound = 3;
    /// <summary>409 (wrong state, duplicate name, in use) or 412 (revision mismatch).</summary>
    public const int Conflict = 4;
    /// <summary>401 (no or bad token) or 403 (the token lacks the right).</summary>
    public const int Auth = 5;
    /// <summary>No daemon at the socket or host, a broken connection, a timeout, or a 5xx answer.</summary>
    public const int Unreachable = 6;

    /// <summary>The exit status for an HTTP error status.</summary>
    public static int ForStatus(int status) => status switch
    {
        404 or 410 => NotFound,
        409 or 412 => Conflict,
        401 or 403 => Auth,
        >= 500 => Unreachable,
        _ => BadCommandLine,
    };
}

/// <summary>A failure to report as one line on stderr with <see cref="ExitCode"/>.</summary>
public sealed class CliException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
