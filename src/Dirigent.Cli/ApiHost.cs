using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>Starts the per-VM API server for `--api-socket`.</summary>
internal static class ApiHost
{
    public static IAsyncDisposable Start(Vm vm, string socketPath, TextWriter err) =>
        throw new InvalidOperationException("the API socket is not available in this build");
}
