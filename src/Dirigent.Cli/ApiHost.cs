using Dirigent.Api;
using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>Starts the per-VM API server for `--api-socket` (src/Dirigent.Api).</summary>
internal static class ApiHost
{
    /// <summary>Throws <see cref="InvalidOperationException"/> with one line when the socket cannot be served.</summary>
    public static IAsyncDisposable Start(Vm vm, string socketPath, TextWriter err)
    {
        try { return VmApiServer.StartAsync(vm, socketPath, err).GetAwaiter().GetResult(); }
        catch (ApiSocketException e) { throw new InvalidOperationException(e.Message); }
    }
}
