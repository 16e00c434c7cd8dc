using System.Globalization;
using Dirigent.Machine.Memory;

namespace Dirigent.Tests.Machine;

/// <summary>
/// Guest RAM is advised for transparent huge pages (as QEMU advises its RAM blocks): the kernel's own view of the
/// mapping, /proc/self/smaps, must call it THP-eligible wherever the host hands huge pages out on request.
/// </summary>
public sealed class GuestRamHugePageTests
{
    private const string ThpControl = "/sys/kernel/mm/transparent_hugepage/enabled";

    [SkippableFact]
    public unsafe void GuestRamIsEligibleForTransparentHugePages()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "transparent huge pages are a Linux feature");
        Skip.IfNot(File.Exists(ThpControl), $"{ThpControl} is missing: this kernel has no transparent huge pages");
        string mode = File.ReadAllText(ThpControl);
        Skip.If(mode.Contains("[never]", StringComparison.Ordinal), $"transparent huge pages are off on this host ({mode.Trim()})");

        using var mem = new GuestMemory(64UL << 20);
        ulong start = (ulong)mem.Regions[0].Host;
        string? eligible = null;
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            int dash = line.IndexOf('-');
            if (dash > 0 && line.IndexOf(' ') > dash && ulong.TryParse(line.AsSpan(0, dash), NumberStyles.HexNumber, null, out ulong lo))
            {
                ulong hi = ulong.Parse(line.AsSpan(dash + 1, line.IndexOf(' ') - dash - 1), NumberStyles.HexNumber);
                inside = lo <= start && start < hi;
                continue;
            }
            if (inside && line.StartsWith("THPeligible:", StringComparison.Ordinal)) { eligible = line; break; }
        }
        Assert.NotNull(eligible);
        Assert.Equal("1", eligible![12..].Trim());
    }
}
