namespace Dirigent.Daemon.Cluster;

/// <summary>
/// One host of a cluster as its daemon describes itself: at "members/NAME" (kept, so a dead host is still listed)
/// and at "hosts/NAME" under the daemon's lease (present exactly while the host is alive).
/// </summary>
public sealed class HostRecord
{
    public string Name { get; set; } = "";
    /// <summary>ADDR:PORT of the daemon's TCP API (--advertise): other daemons forward requests for its VMs there.</summary>
    public string Address { get; set; } = "";
    public int Cpus { get; set; }
    public long MemoryMib { get; set; }
    /// <summary>The machine's MemAvailable when the record was last written.</summary>
    public long FreeMemoryMib { get; set; }
    public DateTimeOffset JoinedAt { get; set; }
    public DateTimeOffset UpdatedAt { get; set; }

    /// <summary>This machine now: cores and RAM (from /proc/meminfo where it exists).</summary>
    public static HostRecord Measure(string name, string address, DateTimeOffset joined)
    {
        var (total, avail) = MemInfo();
        return new HostRecord
        {
            Name = name, Address = address, Cpus = Environment.ProcessorCount, MemoryMib = total, FreeMemoryMib = avail,
            JoinedAt = joined, UpdatedAt = DateTimeOffset.UtcNow,
        };
    }

    private static (long TotalMib, long AvailableMib) MemInfo()
    {
        long total = 0, avail = 0;
        try
        {
            foreach (string line in File.ReadLines("/proc/meminfo"))
            {
                // "MemTotal:       24567890 kB"
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal)) total = Kib(line) / 1024;
                else if (line.StartsWith("MemAvailable:", StringComparison.Ordinal)) avail = Kib(line) / 1024;
            }
        }
        catch (IOException) { }
        if (total == 0) total = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 20;
        if (avail == 0) avail = total;
        return (total, avail);

        static long Kib(string line) => long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out long v) ? v : 0;
    }
}
