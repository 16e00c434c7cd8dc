namespace Dirigent.Storage;

public sealed partial class Qcow2Disk
{
    /// <summary>
    /// The guest byte ranges this image itself decides — data, zero or compressed clusters — rather than leaving them
    /// to its backing file, in ascending order with adjacent clusters merged. For an overlay created empty over a base
    /// image, that is every range the guest wrote (or discarded) since: what a sandbox changed.
    /// </summary>
    public List<(long Offset, long Length)> ClustersInThisImage()
    {
        var ranges = new List<(long Offset, long Length)>();
        long clusters = (Size + _clusterSize - 1) >> _clusterBits;
        for (long l1i = 0; l1i < _l1.Length; l1i++)
        {
            // An L2 table that was never allocated covers no cluster of this image.
            if ((_l1[l1i] & OffsetMask) == 0) continue;
            long first = l1i << _l2Bits, last = Math.Min(clusters, first + L2Entries);
            for (long vc = first; vc < last; vc++)
            {
                if (Classify(LookupL2Entry(vc << _clusterBits)) == ClusterKind.Unallocated) continue;
                long off = vc << _clusterBits, len = Math.Min(_clusterSize, Size - off);
                if (ranges.Count > 0 && ranges[^1].Offset + ranges[^1].Length == off)
                    ranges[^1] = (ranges[^1].Offset, ranges[^1].Length + len);
                else ranges.Add((off, len));
            }
        }
        return ranges;
    }
}
