using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Net;

namespace Dirigent.Vmm;

/// <summary>A disk's completed transfers since the VM was built in this process (index = --disk order).</summary>
public sealed record DiskMetrics(int Index, long ReadBytes, long WriteBytes, long ReadOps, long WriteOps);

/// <summary>A NIC's frames delivered to and sent by the guest since the VM was built in this process (index = --net order).</summary>
public sealed record NicMetrics(int Index, long RxBytes, long TxBytes, long RxPackets, long TxPackets);

public sealed partial class Vm
{
    /// <summary>
    /// Instructions each vCPU has retired (0 where the accelerator does not count them: KVM). Read without stopping
    /// the vCPUs (the software CPU adds to its counter at each block's end): cheap enough to poll for metrics, and a
    /// paused or ended VM answers too.
    /// </summary>
    public ulong[] InstructionsPerVcpu()
    {
        var r = new ulong[Vcpus.Length];
        for (int k = 0; k < r.Length; k++) r[k] = Vcpus[k].InstructionsRetired;
        return r;
    }

    /// <summary>Each virtio-blk disk's counters, in attach order. Lock-free: the devices count with Interlocked.</summary>
    public IReadOnlyList<DiskMetrics> DiskCounters()
    {
        if (_disposed) throw new ObjectDisposedException(nameof(Vm));
        var list = new List<DiskMetrics>();
        // The board's function list is fixed once built (Blocks is not: migration swaps the images it holds).
        foreach (var fn in Board.Virtio)
            if (fn.Device is VirtioBlock b)
            {
                var c = b.Counters;
                list.Add(new DiskMetrics(list.Count, c.ReadBytes, c.WriteBytes, c.ReadOps, c.WriteOps));
            }
        return list;
    }

    /// <summary>Each virtio-net card's counters, in attach order (values may be a request apart from each other).</summary>
    public IReadOnlyList<NicMetrics> NicCounters()
    {
        if (_disposed) throw new ObjectDisposedException(nameof(Vm));
        var list = new List<NicMetrics>();
        foreach (var fn in Board.Virtio)
            if (fn.Device is VirtioNet n)
                list.Add(new NicMetrics(list.Count, Volatile.Read(ref n.RxBytes), Volatile.Read(ref n.TxBytes),
                    Volatile.Read(ref n.RxPackets), Volatile.Read(ref n.TxPackets)));
        return list;
    }
}
