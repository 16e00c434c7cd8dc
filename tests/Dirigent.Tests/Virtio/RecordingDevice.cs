using Dirigent.Devices.Virtio;

namespace Dirigent.Tests.Virtio;

/// <summary>A virtio device that takes every chain, records its buffers and returns it with a fixed length.</summary>
public sealed class RecordingDevice(ushort queueSize = 16) : IVirtioDevice
{
    private readonly VirtqueueChain _chain = new();
    private IVirtioTransport? _t;
    public readonly List<VirtqueueChain.Segment[]> Chains = new();
    public uint WrittenPerChain = 0;
    public int Notifies, Resets, Activations;

    public ushort DeviceType => 99;
    public uint PciClassCode => 0xFF0000;
    public ulong DeviceFeatures => 1UL << 3;
    public int QueueCount => 1;
    public ushort QueueMaxSize(int queue) => queueSize;
    public int ConfigLength => 8;
    public uint ReadConfig(int offset, int size) => 0x11223344u >> (8 * (offset & 3));
    public void WriteConfig(int offset, int size, uint value) { }
    public void Activate(IVirtioTransport transport) { _t = transport; Activations++; }
    public void Reset() { _t = null; Resets++; }

    public void QueueNotify(int queue)
    {
        Notifies++;
        if (_t == null) return;
        var q = _t.Queue(queue);
        do
        {
            while (q.TryPop(_chain))
            {
                Chains.Add(_chain.Segments.ToArray());
                q.Push(_chain, WrittenPerChain);
            }
            q.NotifyGuest();
        } while (q.PrepareToSleep());
    }
}
