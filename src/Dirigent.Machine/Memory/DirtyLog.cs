namespace Dirigent.Machine.Memory;

/// <summary>
/// Which guest pages were written since the last harvest, one bit per 4 KiB page of RAM, for live migration's
/// pre-copy rounds. Devices and loaders mark their writes here (<see cref="GuestMemory.TryWrite"/> does it, DMA through
/// host pointers calls <see cref="GuestMemory.MarkDirty"/>); the accelerator adds the vCPUs' writes when asked
/// (<c>IAccelerator.CollectDirtyPages</c>). Marking costs one test of <see cref="Enabled"/> while logging is off.
/// </summary>
public sealed class DirtyLog
{
    private readonly GuestMemory _mem;
    // One bitmap per RAM region, indexed by page within the region.
    private readonly ulong[][] _bits;
    private volatile bool _enabled;

    internal DirtyLog(GuestMemory mem)
    {
        _mem = mem;
        _bits = mem.Regions.Select(r => new ulong[(r.Size / GuestMemory.PageSize + 63) / 64]).ToArray();
    }

    public bool Enabled => _enabled;

    /// <summary>Starts logging with every page clean (the first round sends all of RAM anyway), or stops it.</summary>
    public void SetEnabled(bool on)
    {
        if (on) foreach (var b in _bits) Array.Clear(b);
        _enabled = on;
    }

    /// <summary>Marks the pages of [gpa, gpa+len) that are RAM (thread-safe, lock-free).</summary>
    public void Mark(ulong gpa, ulong len)
    {
        if (!_enabled || len == 0) return;
        var regions = _mem.Regions;
        for (int i = 0; i < regions.Count; i++)
        {
            var r = regions[i];
            if (gpa + len <= r.GuestBase || gpa >= r.GuestBase + r.Size) continue;
            ulong from = Math.Max(gpa, r.GuestBase) - r.GuestBase;
            ulong to = Math.Min(gpa + len, r.GuestBase + r.Size) - r.GuestBase;
            for (ulong p = from >> GuestMemory.PageShift; p <= (to - 1) >> GuestMemory.PageShift; p++)
            {
                ref ulong w = ref _bits[i][p >> 6];
                ulong bit = 1UL << (int)(p & 63);
                if ((Volatile.Read(ref w) & bit) == 0) Interlocked.Or(ref w, bit);
            }
        }
    }

    /// <summary>Marks one page by guest-physical page number (for accelerators merging their own logs).</summary>
    public void MarkPage(ulong gpa) => Mark(gpa & ~(GuestMemory.PageSize - 1), GuestMemory.PageSize);

    /// <summary>Returns the guest-physical addresses of the dirty pages and clears them, atomically per 64 pages.</summary>
    public List<ulong> Harvest()
    {
        var pages = new List<ulong>();
        var regions = _mem.Regions;
        for (int i = 0; i < regions.Count; i++)
        {
            var bits = _bits[i];
            for (int w = 0; w < bits.Length; w++)
            {
                if (Volatile.Read(ref bits[w]) == 0) continue;
                ulong v = Interlocked.Exchange(ref bits[w], 0);
                while (v != 0)
                {
                    int b = System.Numerics.BitOperations.TrailingZeroCount(v);
                    v &= v - 1;
                    pages.Add(regions[i].GuestBase + (((ulong)w * 64 + (ulong)b) << GuestMemory.PageShift));
                }
            }
        }
        return pages;
    }
}
