using Dirigent.Daemon.Vms;

namespace Dirigent.Daemon.Cluster;

/// <summary>
/// Where a VM goes: the scheduler's rules as one pure function (unit-tested without etcd). A host qualifies when it is
/// up, is the pinned host if the VM has one, holds no VM of the VM's anti-affinity group, and has the memory left
/// (its RAM minus what the VMs placed on it reserve). Among those, the one with the fewest vCPUs placed per core wins,
/// then the most memory left, then the name (so equal hosts fill in turn and every scheduler decides alike).
/// </summary>
public static class Placement
{
    /// <summary>What a VM reserves besides its guest RAM: the worker process (VMM, buffers; see README "Limits").</summary>
    public const int OverheadMib = 64;

    /// <summary>Memory and vCPUs reserved on a host by the VMs placed there.</summary>
    public sealed record Load(long MemoryMib, int Vcpus, int Vms);

    public static long Reserve(VmRecord vm) => vm.Spec.MemoryMib + OverheadMib;

    /// <summary>The reservations of the VMs in <paramref name="vms"/>, per host.</summary>
    public static Dictionary<string, Load> Loads(IEnumerable<VmRecord> vms)
    {
        var d = new Dictionary<string, Load>(StringComparer.Ordinal);
        foreach (var vm in vms)
        {
            if (vm.Host is not { } h) continue;
            var l = d.GetValueOrDefault(h, new Load(0, 0, 0));
            d[h] = new Load(l.MemoryMib + Reserve(vm), l.Vcpus + vm.Spec.Vcpus, l.Vms + 1);
        }
        return d;
    }

    /// <summary>The host for <paramref name="vm"/>, or null with the reason in <paramref name="why"/>.</summary>
    public static string? Choose(VmRecord vm, IReadOnlyList<HostRecord> upHosts, IReadOnlyList<VmRecord> placed, out string? why)
    {
        why = null;
        var loads = Loads(placed);
        var groupHosts = vm.Placement?.AntiAffinity is { } g
            ? placed.Where(p => p.Host != null && p.Name != vm.Name && p.Placement?.AntiAffinity == g).Select(p => p.Host!).ToHashSet(StringComparer.Ordinal)
            : [];
        var candidates = new List<(HostRecord Host, double VcpusPerCore, long MemLeft)>();
        foreach (var h in upHosts)
        {
            if (vm.Placement?.Host is { } pin && pin != h.Name) continue;
            if (groupHosts.Contains(h.Name)) continue;
            var l = loads.GetValueOrDefault(h.Name, new Load(0, 0, 0));
            long left = h.MemoryMib - l.MemoryMib;
            if (left < Reserve(vm)) continue;
            candidates.Add((h, (double)(l.Vcpus + vm.Spec.Vcpus) / Math.Max(1, h.Cpus), left));
        }
        if (candidates.Count == 0)
        {
            why = vm.Placement?.Host is { } p && upHosts.All(h => h.Name != p) ? $"its pinned host '{p}' is not up"
                : vm.Placement?.AntiAffinity is { } grp && upHosts.Count > 0 && upHosts.All(h => groupHosts.Contains(h.Name))
                    ? $"every host up already runs a VM of anti-affinity group '{grp}'"
                : upHosts.Count == 0 ? "no host is up"
                : $"no host has {Reserve(vm)} MiB left";
            return null;
        }
        return candidates.OrderBy(c => c.VcpusPerCore).ThenByDescending(c => c.MemLeft).ThenBy(c => c.Host.Name, StringComparer.Ordinal)
            .First().Host.Name;
    }
}
