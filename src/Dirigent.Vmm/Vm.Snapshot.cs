namespace Dirigent.Vmm;

public sealed partial class Vm
{
    /// <summary>
    /// Writes a snapshot of the VM into directory <paramref name="dir"/> (created; must not hold a snapshot already):
    /// pauses a running VM, flushes the disks, writes state.json and memory, resumes it if it was running. Returns when
    /// the snapshot is complete on disk. Throws <see cref="VmStateException"/> in a state that cannot be saved and
    /// <see cref="VmException"/> when the directory cannot be written.
    /// </summary>
    public void SaveSnapshot(string dir) => throw new NotImplementedException("snapshots");

    /// <summary>
    /// Builds a VM from a snapshot directory, paused where it was saved (call <see cref="Resume"/>... or
    /// <see cref="Start"/>), on <paramref name="accel"/> or the snapshot's accelerator when null. A missing, truncated,
    /// wrong-version or wrong-size snapshot, or a disk that changed since, is a <see cref="VmException"/> (bad input).
    /// </summary>
    public static Vm Restore(string dir, AccelKind? accel, TextWriter log) => throw new NotImplementedException("snapshots");
}
