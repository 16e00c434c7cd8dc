using System.Numerics;
using Dirigent.Machine.Memory;
using static Dirigent.Devices.Virtio.VirtioConstants;

namespace Dirigent.Devices.Virtio;

/// <summary>
/// A split virtqueue (virtio 1.2 §2.7) as the device side sees it. The driver programs size and ring addresses
/// through the transport; <see cref="TryPop"/> takes the next available descriptor chain (direct or through an
/// indirect table), <see cref="Push"/> returns it in the used ring, <see cref="NotifyGuest"/> raises the queue's
/// interrupt unless the driver suppressed it (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX).
/// <para>Anything malformed (indices beyond the queue size, loops, chains longer than their table, buffers or
/// tables outside RAM, readable after writable, misused INDIRECT) stops the queue and reports through the
/// transport, which sets DEVICE_NEEDS_RESET. Rings are reached through pointers <see cref="GuestMemory"/> handed
/// out for ranges checked to be RAM; buffers are copied with its checked accessors.</para>
/// <para>One thread at a time may pop/push a queue (the device's worker, or the vCPU thread for simple devices).</para>
/// </summary>
public sealed unsafe class Virtqueue
{
    private readonly GuestMemory _memory;
    private readonly Action<Virtqueue> _signal;
    private readonly Action<Virtqueue, string> _fail;
    private byte* _desc, _avail, _used;
    private ushort _lastAvail, _usedIdx, _signalledUsed;
    private bool _eventIdx, _indirect;
    private volatile bool _broken;

    public int Index { get; }
    public ushort MaxSize { get; }
    public ushort Size { get; internal set; }
    public ushort MsixVector { get; internal set; } = NoVector;
    public ulong DescAddress { get; internal set; }
    public ulong DriverAddress { get; internal set; }
    public ulong DeviceAddress { get; internal set; }
    public bool Enabled { get; private set; }
    /// <summary>Why the queue stopped (null while healthy).</summary>
    public string? Error { get; private set; }
    public bool IsBroken => _broken;
    public ushort LastAvailIndex => _lastAvail;
    public ushort UsedIndex => _usedIdx;

    /// <param name="signal">Raises the queue's interrupt (MSI-X vector or INTx with ISR bit 0).</param>
    /// <param name="fail">Reports a malformed queue (the transport sets DEVICE_NEEDS_RESET).</param>
    public Virtqueue(int index, ushort maxSize, GuestMemory memory, Action<Virtqueue> signal, Action<Virtqueue, string> fail)
    {
        if (maxSize == 0 || maxSize > MaxQueueSize || !BitOperations.IsPow2((uint)maxSize))
            throw new ArgumentOutOfRangeException(nameof(maxSize));
        Index = index;
        MaxSize = maxSize;
        Size = maxSize;
        _memory = memory;
        _signal = signal;
        _fail = fail;
    }

    /// <summary>Back to the state after a device reset: disabled, default size, no vector, indices 0.</summary>
    public void Reset()
    {
        Enabled = false;
        _broken = false;
        Error = null;
        Size = MaxSize;
        MsixVector = NoVector;
        DescAddress = DriverAddress = DeviceAddress = 0;
        _desc = _avail = _used = null;
        _lastAvail = _usedIdx = _signalledUsed = 0;
        _eventIdx = _indirect = false;
    }

    /// <summary>
    /// queue_enable = 1: checks size and ring placement (§2.7: alignment 16/2/4, every ring in RAM) and takes the
    /// negotiated ring features. False (and the queue reported as malformed) when the driver got it wrong.
    /// </summary>
    public bool Enable(ulong negotiatedFeatures)
    {
        if (Enabled) return true;
        if (Size == 0 || Size > MaxSize || !BitOperations.IsPow2((uint)Size))
            return Fail($"queue size {Size} is not a power of two up to {MaxSize}");
        if ((DescAddress & 15) != 0 || (DriverAddress & 1) != 0 || (DeviceAddress & 3) != 0)
            return Fail("misaligned ring address");
        _desc = _memory.TryGetHostPointer(DescAddress, (ulong)DescriptorSize * Size);
        _avail = _memory.TryGetHostPointer(DriverAddress, 6 + 2UL * Size);
        _used = _memory.TryGetHostPointer(DeviceAddress, 6 + 8UL * Size);
        if (_desc == null || _avail == null || _used == null)
        {
            _desc = _avail = _used = null;
            return Fail("ring outside guest RAM");
        }
        _eventIdx = (negotiatedFeatures & RingEventIdx) != 0;
        _indirect = (negotiatedFeatures & RingIndirectDesc) != 0;
        _lastAvail = _usedIdx = _signalledUsed = 0;
        Enabled = true;
        return true;
    }

    /// <summary>Stops the queue and reports <paramref name="reason"/>; always false, for `return Fail(...)`.</summary>
    public bool Fail(string reason)
    {
        if (!_broken)
        {
            _broken = true;
            Error = $"queue {Index}: {reason}";
            _fail(this, Error);
        }
        return false;
    }

    private ushort AvailIdx => Volatile.Read(ref *(ushort*)(_avail + 2));
    private ushort AvailFlags => Volatile.Read(ref *(ushort*)_avail);

    /// <summary>Whether the driver has made chains available that were not taken yet.</summary>
    public bool HasAvailable => Enabled && !_broken && AvailIdx != _lastAvail;

    /// <summary>Takes the next available chain into <paramref name="chain"/>; false when none (or the queue is broken).</summary>
    public bool TryPop(VirtqueueChain chain)
    {
        if (!Enabled || _broken) return false;
        ushort availIdx = AvailIdx;
        if (availIdx == _lastAvail) return false;
        if ((ushort)(availIdx - _lastAvail) > Size)
            return Fail($"avail index {availIdx} is more than {Size} ahead of {_lastAvail}");
        ushort head = Volatile.Read(ref *(ushort*)(_avail + 4 + 2 * (_lastAvail & (Size - 1))));
        chain.Start(_memory, head);
        if (!Walk(chain, head)) return false;
        _lastAvail++;
        return true;
    }

    private bool Walk(VirtqueueChain chain, ushort head)
    {
        if (head >= Size) return Fail($"head index {head} beyond queue size {Size}");
        byte* table = _desc;
        int tableSize = Size, count = 0;
        bool inIndirect = false, sawWritable = false;
        long total = 0;
        int i = head;
        while (true)
        {
            if (++count > tableSize) return Fail("descriptor chain loops or is longer than its table");
            byte* d = table + DescriptorSize * i;
            ulong addr = *(ulong*)d;
            uint len = *(uint*)(d + 8);
            ushort flags = *(ushort*)(d + 12);
            ushort next = *(ushort*)(d + 14);
            if ((flags & DescFlagIndirect) != 0)
            {
                if (!_indirect) return Fail("INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC");
                if (inIndirect) return Fail("INDIRECT descriptor inside an indirect table");
                if (count != 1) return Fail("INDIRECT descriptor that is not the chain's only one");
                if ((flags & DescFlagNext) != 0) return Fail("descriptor with both INDIRECT and NEXT");
                if (len == 0 || len % DescriptorSize != 0 || len / DescriptorSize > MaxIndirectDescriptors)
                    return Fail($"indirect table of {len} bytes");
                byte* t = _memory.TryGetHostPointer(addr, len);
                if (t == null) return Fail("indirect table outside guest RAM");
                table = t;
                tableSize = (int)(len / DescriptorSize);
                inIndirect = true;
                count = 0;
                i = 0;
                continue;
            }
            bool writable = (flags & DescFlagWrite) != 0;
            if (!writable && sawWritable) return Fail("device-readable descriptor after a device-writable one");
            sawWritable |= writable;
            if (len != 0 && !_memory.IsRam(addr, len)) return Fail($"buffer 0x{addr:x}+0x{len:x} outside guest RAM");
            total += len;
            if (total > int.MaxValue) return Fail("chain longer than 2 GiB");
            chain.Add(addr, len, writable);
            if ((flags & DescFlagNext) == 0) return true;
            if (next >= tableSize) return Fail($"next index {next} beyond table size {tableSize}");
            i = next;
        }
    }

    /// <summary>Returns a chain to the driver with <paramref name="written"/> bytes written into its writable buffers.</summary>
    public void Push(ushort head, uint written)
    {
        if (!Enabled) return;
        int slot = _usedIdx & (Size - 1);
        byte* e = _used + 4 + 8 * slot;
        *(uint*)e = head;
        *(uint*)(e + 4) = written;
        _usedIdx++;
        // The element must be visible before the index that publishes it.
        Volatile.Write(ref *(ushort*)(_used + 2), _usedIdx);
        // Written through a host pointer: logged for migration (the element and used->idx).
        _memory.MarkDirty(DeviceAddress + 4 + 8 * (ulong)slot, 8);
        _memory.MarkDirty(DeviceAddress + 2, 2);
    }

    public void Push(VirtqueueChain chain, uint written) => Push(chain.Head, written);

    /// <summary>
    /// Returns several chains that the driver must see together (virtio-net's merged receive buffers: the driver
    /// takes num_buffers used elements as soon as it sees the first, §5.1.6.4): the elements are written first and
    /// one used-index store publishes them all.
    /// </summary>
    public void PushAll(ReadOnlySpan<VirtqueueChain> chains, ReadOnlySpan<uint> written)
    {
        if (!Enabled) return;
        for (int k = 0; k < chains.Length; k++)
        {
            int slot = _usedIdx & (Size - 1);
            byte* e = _used + 4 + 8 * slot;
            *(uint*)e = chains[k].Head;
            *(uint*)(e + 4) = written[k];
            _usedIdx++;
            _memory.MarkDirty(DeviceAddress + 4 + 8 * (ulong)slot, 8);
        }
        Volatile.Write(ref *(ushort*)(_used + 2), _usedIdx);
        _memory.MarkDirty(DeviceAddress + 2, 2);
    }

    /// <summary>
    /// Interrupts the driver for the chains pushed since the last call, unless it asked not to be: with EVENT_IDX
    /// when used_event was not crossed (§2.7.10), otherwise when VIRTQ_AVAIL_F_NO_INTERRUPT is set.
    /// </summary>
    public void NotifyGuest()
    {
        if (!Enabled) return;
        // Our used-index store must be ordered before we read the driver's suppression fields.
        Interlocked.MemoryBarrier();
        ushort now = _usedIdx, old = _signalledUsed;
        if (now == old) return;
        _signalledUsed = now;
        bool need;
        if (_eventIdx)
        {
            ushort usedEvent = Volatile.Read(ref *(ushort*)(_avail + 4 + 2 * Size));
            need = (ushort)(now - usedEvent - 1) < (ushort)(now - old);
        }
        else need = (AvailFlags & AvailFlagNoInterrupt) == 0;
        if (need) _signal(this);
    }

    /// <summary>
    /// Before the device goes idle: with EVENT_IDX publishes avail_event (notify me at the next new chain), then
    /// re-reads the avail index. True when chains arrived meanwhile and the device must keep going.
    /// </summary>
    public bool PrepareToSleep()
    {
        if (!Enabled || _broken) return false;
        if (_eventIdx)
        {
            Volatile.Write(ref *(ushort*)(_used + 4 + 8 * Size), _lastAvail);
            _memory.MarkDirty(DeviceAddress + 4 + 8UL * Size, 2);
        }
        Interlocked.MemoryBarrier();
        return AvailIdx != _lastAvail;
    }

    // ---- saved state ------------------------------------------------------------------------------------------

    /// <summary>The queue's registers and device-side ring state (device quiesced).</summary>
    public VirtqueueState Save() =>
        new(Size, Enabled, MsixVector, (ushort)Index, DescAddress, DriverAddress, DeviceAddress,
            _lastAvail, _usedIdx, _signalledUsed, _eventIdx, _indirect, Error);

    /// <summary>
    /// Why <paramref name="s"/> cannot be this queue's state (null when it can): for an enabled queue the checks
    /// enabling makes (size, alignment, every ring in guest RAM) and at most a queue's worth of chains taken and not
    /// yet returned; a disabled queue has not moved its indices.
    /// </summary>
    public string? Check(VirtqueueState s, int msixVectors)
    {
        if (s.NotifyOff != Index) return $"queue {Index}: notify offset {s.NotifyOff}";
        if (s.MsixVector != NoVector && s.MsixVector >= msixVectors) return $"queue {Index}: MSI-X vector {s.MsixVector} of {msixVectors}";
        if (!s.Enabled)
            return s.LastAvail != 0 || s.UsedIdx != 0 || s.SignalledUsed != 0 ? $"queue {Index}: disabled queue with ring indices" : null;
        if (s.Size == 0 || s.Size > MaxSize || !BitOperations.IsPow2((uint)s.Size))
            return $"queue {Index}: size {s.Size} is not a power of two up to {MaxSize}";
        if ((s.DescAddress & 15) != 0 || (s.DriverAddress & 1) != 0 || (s.DeviceAddress & 3) != 0)
            return $"queue {Index}: misaligned ring address";
        if (!_memory.IsRam(s.DescAddress, (ulong)DescriptorSize * s.Size) || !_memory.IsRam(s.DriverAddress, 6 + 2UL * s.Size)
            || !_memory.IsRam(s.DeviceAddress, 6 + 8UL * s.Size))
            return $"queue {Index}: ring outside guest RAM";
        if ((ushort)(s.LastAvail - s.UsedIdx) > s.Size)
            return $"queue {Index}: {(ushort)(s.LastAvail - s.UsedIdx)} chains in flight in a queue of {s.Size}";
        return null;
    }

    /// <summary>
    /// Applies a state that passed <see cref="Check"/> without touching guest memory or the indices: chains made
    /// available after <see cref="VirtqueueState.LastAvail"/> are taken when the device next looks at the queue.
    /// A queue that had stopped stays stopped (the transport restores DEVICE_NEEDS_RESET itself).
    /// </summary>
    public void Restore(VirtqueueState s)
    {
        Reset();
        Size = s.Size;
        MsixVector = s.MsixVector;
        DescAddress = s.DescAddress;
        DriverAddress = s.DriverAddress;
        DeviceAddress = s.DeviceAddress;
        if (s.Enabled)
        {
            _desc = _memory.TryGetHostPointer(DescAddress, (ulong)DescriptorSize * Size);
            _avail = _memory.TryGetHostPointer(DriverAddress, 6 + 2UL * Size);
            _used = _memory.TryGetHostPointer(DeviceAddress, 6 + 8UL * Size);
            _eventIdx = s.EventIdx;
            _indirect = s.Indirect;
            _lastAvail = s.LastAvail;
            _usedIdx = s.UsedIdx;
            _signalledUsed = s.SignalledUsed;
            Enabled = true;
        }
        if (s.Error != null)
        {
            Error = s.Error;
            _broken = true;
        }
    }

    /// <summary>
    /// Gives back the chains taken since avail index <paramref name="lastAvail"/> and not returned (a device that
    /// held them across a pause): they are taken again, in the same order, when the device next looks.
    /// </summary>
    public void Unpop(ushort lastAvail)
    {
        if ((ushort)(_lastAvail - lastAvail) <= (ushort)(_lastAvail - _usedIdx)) _lastAvail = lastAvail;
    }
}
