using System.CommandLine;

namespace Dirigent.Cli.Client;

/// <summary>
/// Runs a client command's body and turns its failures into one line on stderr and the README's exit status:
/// <see cref="CliException"/> carries its own status, a <see cref="FormatException"/> from checking a value is a bad
/// command line (2).
/// </summary>
internal static class ClientAction
{
    public static void Set(Command command, string what, Func<ParseResult, CancellationToken, Task<int>> body)
    {
        command.SetAction(async (r, ct) =>
        {
            try
            {
                return await body(r, ct).ConfigureAwait(false);
            }
            catch (CliException e)
            {
                Console.Error.WriteLine($"dirigent {what}: {e.Message}");
                return e.ExitCode;
            }
            catch (FormatException e)
            {
                Console.Error.WriteLine($"dirigent {what}: {DaemonClient.OneLine(e.Message)}");
                return ClientExit.BadCommandLine;
            }
        });
    }

    /// <summary>A path segment for a name from the command line (names are restricted, but a typo must not change the route).</summary>
    public static string Seg(string name) => Uri.EscapeDataString(name);
}
