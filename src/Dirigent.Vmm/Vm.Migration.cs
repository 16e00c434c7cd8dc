namespace Dirigent.Vmm;

public sealed partial class Vm
{
    /// <summary>
    /// Live-migrates the VM to a target process listening at <paramref name="to"/> (<c>unix:PATH</c> or
    /// <c>tcp:HOST:PORT</c>): pre-copy of RAM while the guest runs, then a short pause for the last pages and the
    /// device and CPU state. On success the VM here ends with <see cref="VmExitKind.Migrated"/>; on failure it throws
    /// <see cref="VmException"/> and the VM keeps running here.
    /// </summary>
    public void Migrate(string to) => throw new NotImplementedException("migration");

    /// <summary>
    /// Waits at <paramref name="from"/> (<c>unix:PATH</c> or <c>tcp:HOST:PORT</c>) for one incoming migration and
    /// returns the VM it brings, ready to <see cref="Start"/> where the source stopped.
    /// </summary>
    public static Vm Incoming(string from, AccelKind? accel, TextWriter log, CancellationToken cancel) =>
        throw new NotImplementedException("migration");
}
