using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Virtio;

/// <summary>
/// A virtio device type (net, block, entropy, ...) independent of the transport. The transport owns feature
/// negotiation, the queues' registers and interrupts; the device owns its configuration layout and what happens
/// to the buffers. Calls arrive on the vCPU thread; a device may hand queue work to its own thread.
/// </summary>
public interface IVirtioDevice
{
    /// <summary>Virtio device ID (§5): 1 net, 2 block, 4 entropy.</summary>
    ushort DeviceType { get; }
    /// <summary>PCI class code (class &lt;&lt; 16 | subclass &lt;&lt; 8 | programming interface).</summary>
    uint PciClassCode { get; }
    /// <summary>Device-specific feature bits offered (the transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX).</summary>
    ulong DeviceFeatures { get; }
    int QueueCount { get; }
    /// <summary>Largest size of queue <paramref name="queue"/> (a power of two).</summary>
    ushort QueueMaxSize(int queue);

    /// <summary>Length of the device-specific configuration structure in bytes.</summary>
    int ConfigLength { get; }
    /// <summary>Reads 1, 2 or 4 bytes at <paramref name="offset"/> &lt; <see cref="ConfigLength"/>.</summary>
    uint ReadConfig(int offset, int size);
    void WriteConfig(int offset, int size, uint value);

    /// <summary>DRIVER_OK: the negotiated features and the enabled queues are final; the device may start.</summary>
    void Activate(IVirtioTransport transport);
    /// <summary>The driver notified queue <paramref name="queue"/> (only after <see cref="Activate"/>).</summary>
    void QueueNotify(int queue);
    /// <summary>Device reset (status 0 or system reset): returns once the device no longer touches its queues.</summary>
    void Reset();

    /// <summary>
    /// Quiesces the device's own threads: a request in progress completes and is published, nothing new starts,
    /// and once this returns no device thread touches guest memory or raises an interrupt until <see cref="Start"/>.
    /// Idempotent.
    /// </summary>
    void Stop() { }

    /// <summary>Resumes after <see cref="Stop"/> and looks at the queues for work that arrived meanwhile. Idempotent.</summary>
    void Start() { }

    /// <summary>Returns <paramref name="state"/> with the device type's own field filled in (device stopped).</summary>
    VirtioPciState SaveState(VirtioPciState state) => state;

    /// <summary>Throws <see cref="Dirigent.Machine.State.StateRestoreException"/> unless the record's device part fits this device; changes nothing.</summary>
    void CheckState(VirtioPciState state) { }

    /// <summary>
    /// Applies the record's device part (checked by <see cref="CheckState"/>), after the transport and the queues
    /// were restored and the device re-activated if it was active.
    /// </summary>
    void RestoreState(VirtioPciState state) { }
}

/// <summary>What a device sees of its transport.</summary>
public interface IVirtioTransport
{
    GuestMemory Memory { get; }
    ulong NegotiatedFeatures { get; }
    Virtqueue Queue(int index);
    /// <summary>The device configuration changed: bumps config_generation and raises the configuration interrupt.</summary>
    void SignalConfigChange();
    /// <summary>The device hit something it cannot recover from: DEVICE_NEEDS_RESET plus a configuration interrupt.</summary>
    void SetNeedsReset(string reason);
}
