using System.Security.Cryptography;

namespace Dirigent.Devices.Virtio.Rng;

/// <summary>
/// virtio entropy device (virtio 1.2 §5.4): one request queue whose device-writable buffers are filled with bytes
/// from the host's CSPRNG (RandomNumberGenerator, getrandom(2) on Linux). Cheap enough to run on the vCPU thread;
/// at most <see cref="MaxBytesPerRequest"/> bytes per buffer so a huge buffer cannot stall the vCPU (the spec lets
/// the device return fewer bytes than the buffer holds).
/// </summary>
public sealed class VirtioRng : IVirtioDevice
{
    public const ushort QueueSize = 64;
    public const int MaxBytesPerRequest = 64 * 1024;

    private readonly object _lock = new();
    private readonly byte[] _buffer = new byte[4096];
    private readonly VirtqueueChain _chain = new();
    private IVirtioTransport? _transport;

    public ushort DeviceType => VirtioConstants.DeviceEntropy;
    public uint PciClassCode => 0x00_FF_00; // unclassified device, as QEMU's virtio-rng-pci
    public ulong DeviceFeatures => 0;
    public int QueueCount => 1;
    public ushort QueueMaxSize(int queue) => QueueSize;
    public int ConfigLength => 0;
    public uint ReadConfig(int offset, int size) => 0;
    public void WriteConfig(int offset, int size, uint value) { }

    /// <summary>Bytes handed to the guest so far.</summary>
    public long BytesProvided { get; private set; }

    public void Activate(IVirtioTransport transport)
    {
        lock (_lock) _transport = transport;
    }

    public void Reset()
    {
        lock (_lock) _transport = null;
    }

    public void QueueNotify(int queue)
    {
        lock (_lock)
        {
            if (_transport == null || queue != 0) return;
            var q = _transport.Queue(0);
            do
            {
                while (q.TryPop(_chain))
                {
                    int want = (int)Math.Min(_chain.WritableLength, MaxBytesPerRequest), done = 0;
                    while (done < want)
                    {
                        var chunk = _buffer.AsSpan(0, Math.Min(_buffer.Length, want - done));
                        RandomNumberGenerator.Fill(chunk);
                        int n = _chain.Write(done, chunk);
                        done += n;
                        if (n < chunk.Length) break;
                    }
                    BytesProvided += done;
                    q.Push(_chain, (uint)done);
                }
                q.NotifyGuest();
            } while (q.PrepareToSleep());
        }
    }
}
