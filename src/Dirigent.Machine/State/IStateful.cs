namespace Dirigent.Machine.State;

/// <summary>
/// A saved-state record: a plain, versioned type kept apart from the runtime type it describes (as OpenVMM's
/// save_restore and Firecracker's persist.rs do), so a snapshot never depends on how a device is implemented today
/// and a snapshot taken under one accelerator restores under the other. Records hold only data (numbers, bools,
/// strings, arrays, nested records) and serialize to JSON as they are.
/// </summary>
public interface ISavedState
{
    /// <summary>The record's format version; <see cref="StateRegistry"/> refuses a saved record of another version.</summary>
    static abstract int FormatVersion { get; }
}

/// <summary>
/// The lifecycle every stateful part of the machine has: back to power-on state, quiesce and resume worker threads.
/// Save and restore come with <see cref="IStateful{TState}"/>.
/// </summary>
public interface ILifecycle
{
    /// <summary>System reset (a guest reboot): the power-on state, as a freshly built machine has it.</summary>
    void Reset();

    /// <summary>
    /// Quiesces the component's own threads (virtio-blk workers, TAP receive...): work in progress completes, nothing new
    /// starts, nothing touches guest memory or raises an interrupt until <see cref="Start"/>. Idempotent. The VM calls
    /// it after the vCPUs have stopped, before saving.
    /// </summary>
    void Stop() { }

    /// <summary>Resumes what <see cref="Stop"/> quiesced (and looks once at work that arrived meanwhile). Idempotent.</summary>
    void Start() { }
}

/// <summary>A component that can save its state to a <typeparamref name="TState"/> record and restore it.</summary>
public interface IStateful<TState> : ILifecycle where TState : class, ISavedState
{
    /// <summary>The component's state now; called only while the VM is paused (vCPUs and workers stopped).</summary>
    TState Save();

    /// <summary>
    /// Replaces the component's state with a saved one (on a machine built from the same spec, paused). Timers are
    /// re-armed from the record against the restored VM clock. Throws <see cref="StateRestoreException"/> when the
    /// record is inconsistent (a hostile or corrupted snapshot), leaving nothing half-applied that the guest could see.
    /// </summary>
    void Restore(TState state);
}

/// <summary>A saved state that cannot be restored: its text is one line for the user.</summary>
public sealed class StateRestoreException(string message) : Exception(message);
