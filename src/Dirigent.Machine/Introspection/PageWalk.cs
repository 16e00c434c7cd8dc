using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Introspection;

/// <summary>
/// Linear → guest-physical translation for observers (introspection, memory dumps, debuggers): the same walk the
/// processor does (none, 32-bit, PAE, 4-level; SDM vol. 3 ch. 4) but without permission checks, without setting
/// accessed/dirty bits and without faulting, so looking never changes the guest.
/// </summary>
public static class PageWalk
{
    private const ulong P = 1, PS = 0x80, Cr0PG = 0x8000_0000, Cr4PSE = 0x10, Cr4PAE = 0x20, EferLMA = 0x400;
    private const ulong AddrMask = 0x000F_FFFF_FFFF_F000UL;

    public static bool TryTranslate(GuestMemory mem, ulong cr0, ulong cr3, ulong cr4, ulong efer, ulong la, out ulong pa)
    {
        pa = 0;
        if ((cr0 & Cr0PG) == 0) { pa = (efer & EferLMA) != 0 ? la : la & 0xFFFF_FFFF; return true; }
        if ((efer & EferLMA) != 0)
        {
            if ((ulong)((long)(la << 16) >> 16) != la) return false;
            ulong table = cr3 & AddrMask;
            for (int level = 3; level >= 0; level--)
            {
                int shift = 12 + 9 * level;
                if (!TryPte(mem, table + (((la >> shift) & 0x1FF) << 3), true, out ulong e) || (e & P) == 0) return false;
                if (level == 0 || (level <= 2 && (e & PS) != 0))
                {
                    ulong mask = (1UL << shift) - 1;
                    pa = (e & AddrMask & ~mask) | (la & mask);
                    return true;
                }
                table = e & AddrMask;
            }
            return false;
        }
        la &= 0xFFFF_FFFF;
        if ((cr4 & Cr4PAE) != 0)
        {
            if (!TryPte(mem, (cr3 & 0xFFFF_FFE0UL) + ((la >> 30) & 3) * 8, true, out ulong pdpte) || (pdpte & P) == 0) return false;
            ulong table = pdpte & AddrMask;
            for (int level = 1; level >= 0; level--)
            {
                int shift = 12 + 9 * level;
                if (!TryPte(mem, table + (((la >> shift) & 0x1FF) << 3), true, out ulong e) || (e & P) == 0) return false;
                if (level == 0 || (e & PS) != 0)
                {
                    ulong mask = (1UL << shift) - 1;
                    pa = (e & AddrMask & ~mask) | (la & mask);
                    return true;
                }
                table = e & AddrMask;
            }
            return false;
        }
        if (!TryPte(mem, (cr3 & 0xFFFF_F000UL) + ((la >> 22) << 2), false, out ulong pde) || (pde & P) == 0) return false;
        if ((pde & PS) != 0 && (cr4 & Cr4PSE) != 0)
        {
            pa = (pde & 0xFFC0_0000UL) | (((pde >> 13) & 0xFF) << 32) | (la & 0x3F_FFFF);
            return true;
        }
        if (!TryPte(mem, (pde & 0xFFFF_F000UL) + (((la >> 12) & 0x3FF) << 2), false, out ulong pte) || (pte & P) == 0) return false;
        pa = (pte & 0xFFFF_F000UL) | (la & 0xFFF);
        return true;
    }

    private static bool TryPte(GuestMemory mem, ulong pa, bool wide, out ulong e)
    {
        Span<byte> b = stackalloc byte[8];
        e = 0;
        if (!mem.TryRead(pa, b[..(wide ? 8 : 4)])) return false;
        e = wide ? BitConverter.ToUInt64(b) : BitConverter.ToUInt32(b);
        return true;
    }

    /// <summary>Reads guest-virtual memory page by page; returns the bytes read before the first unmapped page.</summary>
    public static int ReadVirtual(GuestMemory mem, ulong cr0, ulong cr3, ulong cr4, ulong efer, ulong la, Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            ulong a = la + (ulong)done;
            if (!TryTranslate(mem, cr0, cr3, cr4, efer, a, out ulong pa)) break;
            int n = (int)Math.Min((ulong)(dst.Length - done), 0x1000 - (a & 0xFFF));
            if (!mem.TryRead(pa, dst.Slice(done, n))) break;
            done += n;
        }
        return done;
    }
}
