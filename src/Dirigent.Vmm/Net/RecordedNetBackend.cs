using Dirigent.Devices.Net;
using Dirigent.Machine.Introspection.RecordReplay;

namespace Dirigent.Vmm.Net;

/// <summary>
/// A --net card's backend during a recording (Introspection/RecordReplay): received packets arrive on the backend's
/// thread at no particular instruction, so they are queued here and handed to virtio-net on the vCPU thread at the
/// next instruction boundary (<see cref="RecordReplaySession.PostHostWork"/>); what the device then writes into guest
/// RAM is logged there, and the replay needs no network. Sending is unchanged (it already runs on the vCPU thread,
/// inside the driver's notification). Flow control is kept: a full queue, or a packet the device refuses for want
/// of receive buffers, makes the backend hold what follows until <see cref="ReceiveReady"/>.
/// </summary>
public sealed class RecordedNetBackend(INetBackend inner, RecordReplaySession session) : INetBackend, INetReceiver
{
    /// <summary>Packets queued for the vCPU at most; beyond that the backend holds them.</summary>
    public const int MaxQueued = 64;

    private readonly Queue<byte[]> _queue = new();
    private readonly object _lock = new();
    private INetReceiver? _device;
    // The backend holds a packet we refused (queue full); the device refused the queue's head (no buffers).
    private bool _backendHolds, _deviceFull, _drainPosted;

    public string Name => inner.Name;
    public NetOffloads SupportedOffloads => inner.SupportedOffloads;
    public void SetReceiveOffloads(NetOffloads offloads) => inner.SetReceiveOffloads(offloads);
    public bool Send(ReadOnlySpan<byte> packet) => inner.Send(packet);

    public void Start(INetReceiver receiver)
    {
        _device = receiver;
        inner.Start(this);
    }

    /// <summary>The backend's thread: queue the packet for the vCPU (or refuse it when the queue is full).</summary>
    public bool TryReceive(ReadOnlySpan<byte> packet)
    {
        lock (_lock)
        {
            if (_queue.Count >= MaxQueued)
            {
                _backendHolds = true;
                return false;
            }
            _queue.Enqueue(packet.ToArray());
            PostDrain();
        }
        return true;
    }

    /// <summary>The device has receive buffers again (the driver's notification, a reset, a resume).</summary>
    public void ReceiveReady()
    {
        lock (_lock)
        {
            _deviceFull = false;
            PostDrain();
        }
        inner.ReceiveReady();
    }

    // Under _lock.
    private void PostDrain()
    {
        if (_drainPosted || _deviceFull || _queue.Count == 0) return;
        _drainPosted = true;
        session.PostHostWork(Drain);
    }

    /// <summary>The vCPU thread, between instructions: offers the queued packets to the device in order.</summary>
    private void Drain()
    {
        bool release = false;
        while (true)
        {
            byte[] packet;
            lock (_lock)
            {
                if (_queue.Count == 0 || _deviceFull)
                {
                    _drainPosted = false;
                    release = _backendHolds && _queue.Count < MaxQueued;
                    if (release) _backendHolds = false;
                    break;
                }
                packet = _queue.Peek();
            }
            // Outside the lock: the device may call ReceiveReady (which takes it) while it delivers.
            bool taken = _device!.TryReceive(packet);
            lock (_lock)
            {
                if (taken) _queue.Dequeue();
                else _deviceFull = true;
            }
        }
        if (release) inner.ReceiveReady();
    }

    /// <summary>The backend belongs to the VM's set of cards, which disposes it.</summary>
    public void Dispose() { }
}

/// <summary>A --net card's backend in a replay: the device is cut off, so nothing is sent or received.</summary>
public sealed class ReplayNetBackend(string name) : INetBackend
{
    public string Name => name;
    public NetOffloads SupportedOffloads => NetOffloads.None;
    public void SetReceiveOffloads(NetOffloads offloads) { }
    public void Start(INetReceiver receiver) { }
    public bool Send(ReadOnlySpan<byte> packet) => false;
    public void ReceiveReady() { }
    public void Dispose() { }
}
