namespace Dirigent.Vmm;

/// <summary>
/// The .NET runtime settings a process that runs VMs needs before the runtime starts (environment variables only),
/// in one place for every host that starts such a process: `dirigent run` and the bench re-execute themselves with
/// them (Dirigent.Cli.RuntimeKnobs, where the measurements behind each are), the daemon gives them to its workers.
/// The `dirigent` launcher script exports the same values so that `run` needs no re-execution.
/// </summary>
public static class VmmProcessSettings
{
    public const string WriteXorExecute = "DOTNET_EnableWriteXorExecute";
    public const string Gen0Size = "DOTNET_GCgen0size";

    /// <summary>Each setting, applied unless the environment already names it.</summary>
    public static readonly IReadOnlyList<(string Name, string Value)> All = [(WriteXorExecute, "0"), (Gen0Size, "0x2000000")];
}
