using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Loaders;

public enum E820Type : uint { Ram = 1, Reserved = 2, Acpi = 3, Nvs = 4, Unusable = 5 }

/// <summary>One BIOS e820 entry, as Linux's boot_params and Multiboot's mmap carry it.</summary>
public readonly record struct E820Entry(ulong Base, ulong Length, E820Type Type)
{
    public ulong End => Base + Length;
}

/// <summary>
/// The guest-physical memory map a loader hands to the kernel. The machine (which knows its platform addresses)
/// builds it; loaders only read it and use it to check where they may place things.
/// </summary>
public static class MemoryMap
{
    public const ulong OneMiB = 0x10_0000;

    /// <summary>
    /// The PC layout: conventional RAM below <paramref name="lowRamEnd"/> (the EBDA start), the EBDA/VGA/BIOS area
    /// reserved up to 1 MiB, RAM from 1 MiB to the end of the low RAM region, the given reserved ranges above
    /// 1 MiB (IOAPIC, LAPIC pages...), and the RAM above 4 GiB if any. Reserved ranges inside the legacy hole are
    /// already covered and skipped, so entries never overlap.
    /// </summary>
    public static IReadOnlyList<E820Entry> Pc(GuestMemory mem, ulong lowRamEnd, IEnumerable<(ulong Base, ulong Size)> reserved)
    {
        var low = mem.Regions[0];
        if (low.GuestBase != 0 || low.Size <= OneMiB)
            throw new LoaderException($"guest RAM too small: need more than 1 MiB, have {low.Size >> 10} KiB");
        var list = new List<E820Entry>
        {
            new(0, lowRamEnd, E820Type.Ram),
            new(lowRamEnd, OneMiB - lowRamEnd, E820Type.Reserved),
            new(OneMiB, low.Size - OneMiB, E820Type.Ram),
        };
        foreach (var (b, s) in reserved.OrderBy(r => r.Base))
        {
            if (b >= lowRamEnd && b + s <= OneMiB) continue;
            if (b < low.Size) throw new ArgumentException($"reserved range 0x{b:x}+0x{s:x} overlaps low RAM");
            list.Add(new E820Entry(b, s, E820Type.Reserved));
        }
        for (int i = 1; i < mem.Regions.Count; i++)
            list.Add(new E820Entry(mem.Regions[i].GuestBase, mem.Regions[i].Size, E820Type.Ram));
        return list.OrderBy(e => e.Base).ToList();
    }

    /// <summary>End of the RAM entry that contains <paramref name="addr"/>, or 0 if it is not in usable RAM.</summary>
    internal static ulong RamEndAt(IReadOnlyList<E820Entry> map, ulong addr)
    {
        foreach (var e in map)
            if (e.Type == E820Type.Ram && addr >= e.Base && addr < e.End) return e.End;
        return 0;
    }

    /// <summary>True when [addr, addr+len) lies in one usable-RAM entry of the map and is backed by guest RAM.</summary>
    internal static bool IsUsable(GuestMemory mem, IReadOnlyList<E820Entry> map, ulong addr, ulong len)
    {
        if (len == 0) len = 1;
        if (addr + len < addr) return false;
        ulong end = RamEndAt(map, addr);
        return end != 0 && addr + len <= end && mem.IsRam(addr, len);
    }

    /// <summary>Refuses a kernel whose range [lo, hi) overlaps the loader's own structures at [start, end).</summary>
    internal static void CheckClear(ulong lo, ulong hi, ulong start, ulong end, string what)
    {
        if (lo < end && hi > start)
            throw new LoaderException($"kernel at 0x{lo:x}..0x{hi:x} overlaps the {what} at 0x{start:x}..0x{end:x}");
    }

    internal static ulong AlignUp(ulong v, ulong a) => a <= 1 ? v : (v + a - 1) & ~(a - 1);
    internal static ulong AlignDown(ulong v, ulong a) => a <= 1 ? v : v & ~(a - 1);
}
