using System.Runtime.CompilerServices;
using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    /// <summary>Recomputes CPL, code/stack width and the TLB set after CS, SS, CR0, EFER or RFLAGS.VM change.</summary>
    public void UpdateMode()
    {
        int cpl;
        if (!ProtectedMode) { cpl = 0; CodeBits = 16; }
        else if (IsV86Mode) { cpl = 3; CodeBits = 16; }
        else
        {
            cpl = Sreg[CS].Selector & 3;
            CodeBits = LongModeActive && Sreg[CS].L ? 64 : Sreg[CS].DB ? 32 : 16;
        }
        StackAddrSize = CodeBits == 64 ? 8 : Sreg[SS].DB ? 4 : 2;
        if (cpl != Cpl) { Cpl = cpl; SelectTlb(); }
        EndBlock();
    }

    /// <summary>Decodes an 8-byte segment descriptor into a descriptor cache (base/limit/attributes).</summary>
    public static SegmentState DescriptorToCache(ushort selector, ulong d)
    {
        uint limit = (uint)(d & 0xFFFF) | (uint)((d >> 32) & 0xF_0000);
        ushort attr = (ushort)((d >> 40) & 0xF0FF);
        if ((attr & 0x8000) != 0) limit = (limit << 12) | 0xFFF;
        ulong bas = ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24);
        return new SegmentState { Selector = selector, Base = bas, Limit = limit, Attributes = attr };
    }

    /// <summary>Implicit supervisor-mode reads/writes (GDT, IDT, TSS), which ignore CPL (SDM 4.6).</summary>
    public ulong ReadSystem(ulong la, int size)
    {
        ulong v = 0;
        for (int k = 0; k < size; k++)
        {
            ulong a = la + (ulong)k;
            if (!LongModeActive) a &= 0xFFFF_FFFF;
            ulong pa = Translate(a, Access.Read, user: false);
            byte b;
            unsafe
            {
                byte* p = _mem.TryGetHostPointer(pa);
                b = p != null ? *p : (byte)(_rr != null ? RrMmioRead(pa, 1, apic: false) : _vm.Mmio.Read(pa, 1));
            }
            v |= (ulong)b << (8 * k);
        }
        return v;
    }

    public void WriteSystem(ulong la, int size, ulong v)
    {
        for (int k = 0; k < size; k++)
        {
            ulong a = la + (ulong)k;
            if (!LongModeActive) a &= 0xFFFF_FFFF;
            ulong pa = Translate(a, Access.Write, user: false);
            unsafe
            {
                byte* p = _mem.TryGetHostPointer(pa);
                if (p != null) { *p = (byte)(v >> (8 * k)); _codeCache.NotifyWrite(pa, 1, this); }
                else if (_rr != null) RrMmioWrite(pa, 1, (byte)(v >> (8 * k)), apic: false);
                else _vm.Mmio.Write(pa, 1, (byte)(v >> (8 * k)));
            }
        }
    }

    /// <summary>Linear address of a selector's descriptor; #GP(selector) if it lies outside the GDT/LDT limit.</summary>
    public ulong DescriptorAddress(ushort selector, int length = 8)
    {
        uint idx = (uint)(selector & ~7);
        if ((selector & 4) != 0)
        {
            if ((Ldtr.Attributes & 0x80) == 0 || idx + (uint)length - 1 > Ldtr.Limit) throw new CpuException(Vec.GP, (uint)(selector & 0xFFFC));
            return Ldtr.Base + idx;
        }
        if (idx + (uint)length - 1 > Gdtr.Limit) throw new CpuException(Vec.GP, (uint)(selector & 0xFFFC));
        return Gdtr.Base + idx;
    }

    public ulong ReadDescriptor(ushort selector) => ReadSystem(DescriptorAddress(selector), 8);

    /// <summary>Sets the accessed bit of a code/data descriptor, as the CPU does on every segment load.</summary>
    public void MarkDescriptorAccessed(ushort selector, ulong desc)
    {
        if ((desc & (1UL << 40)) == 0) WriteSystem(DescriptorAddress(selector) + 5, 1, (byte)((desc >> 40) | 1));
    }

    /// <summary>MOV/POP to ES, SS, DS, FS or GS (and LDS-family), with the protected-mode checks of the SDM.</summary>
    public void LoadSegment(int seg, ushort sel)
    {
        if (!ProtectedMode || IsV86Mode)
        {
            ref var s = ref Sreg[seg];
            s.Selector = sel;
            s.Base = (ulong)sel << 4;
            if (IsV86Mode) { s.Limit = 0xFFFF; s.Attributes = 0xF3; }
            if (seg == SS || seg == CS) UpdateMode();
            return;
        }
        if ((sel & 0xFFFC) == 0)
        {
            if (seg == SS)
            {
                // Only 64-bit code at CPL<3 may hold a null SS (it is what interrupt delivery leaves there).
                if (!(Is64BitMode && Cpl != 3 && (sel & 3) == Cpl)) throw new CpuException(Vec.GP, 0);
                Sreg[SS] = new SegmentState { Selector = sel, Attributes = (ushort)(0x93 | (Cpl << 5)) };
                UpdateMode();
                return;
            }
            // A null selector leaves the register unusable (P=0): any legacy-mode access through it faults.
            Sreg[seg] = new SegmentState { Selector = sel };
            return;
        }
        ulong d = ReadDescriptor(sel);
        var c = DescriptorToCache(sel, d);
        int rpl = sel & 3, dpl = c.Dpl;
        bool isCode = (c.Type & 8) != 0;
        if (seg == SS)
        {
            if (!c.S || isCode || (c.Type & 2) == 0 || rpl != Cpl || dpl != Cpl) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
            if (!c.Present) throw new CpuException(Vec.SS, (uint)(sel & 0xFFFC));
        }
        else
        {
            if (!c.S || (isCode && (c.Type & 2) == 0)) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
            bool conforming = isCode && (c.Type & 4) != 0;
            if (!conforming && (rpl > dpl || Cpl > dpl)) throw new CpuException(Vec.GP, (uint)(sel & 0xFFFC));
            if (!c.Present) throw new CpuException(Vec.NP, (uint)(sel & 0xFFFC));
        }
        MarkDescriptorAccessed(sel, d);
        c.Attributes |= 1;
        if (Is64BitMode && seg >= FS) c.Base = (uint)c.Base; // 64-bit FS/GS bases come from the MSRs
        Sreg[seg] = c;
        if (seg == SS) UpdateMode();
    }

    /// <summary>Loads CS from a descriptor the caller has already checked; CPL becomes the selector's RPL.</summary>
    public void SetCodeSegment(ushort sel, ulong desc, int cpl)
    {
        var c = DescriptorToCache((ushort)((sel & 0xFFFC) | cpl), desc);
        c.Attributes |= 1;
        Sreg[CS] = c;
        UpdateMode();
    }

    /// <summary>Real-mode (and V86) far transfer target.</summary>
    public void SetCodeSegmentReal(ushort sel)
    {
        ref var s = ref Sreg[CS];
        s.Selector = sel;
        s.Base = (ulong)sel << 4;
        UpdateMode();
    }

    /// <summary>
    /// Segment base + offset with the legacy-mode presence, type and limit checks. In 64-bit mode only FS/GS add a
    /// base and nothing is checked here (the page walk checks canonicality).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Linear(int seg, ulong off, int size, bool write)
    {
        if (CodeBits == 64) return seg >= FS ? Sreg[seg].Base + off : off;
        return LinearLegacy(seg, off, size, write);
    }

    private ulong LinearLegacy(int seg, ulong off, int size, bool write)
    {
        ref var s = ref Sreg[seg];
        if (ProtectedMode && !IsV86Mode)
        {
            if ((s.Attributes & 0x80) == 0) throw new CpuException(seg == SS ? Vec.SS : Vec.GP, 0);
            bool code = (s.Type & 8) != 0;
            if (write && (code || (s.Type & 2) == 0)) throw new CpuException(seg == SS ? Vec.SS : Vec.GP, 0);
            if (!write && code && (s.Type & 2) == 0) throw new CpuException(Vec.GP, 0);
            if (!code && (s.Type & 4) != 0)
            {
                // Expand-down: valid offsets are (limit, upper], upper being 64K or 4G by the B bit.
                ulong upper = s.DB ? 0xFFFF_FFFFUL : 0xFFFF;
                if (off <= s.Limit || off + (ulong)size - 1 > upper) throw new CpuException(seg == SS ? Vec.SS : Vec.GP, 0);
                return (uint)(s.Base + off);
            }
        }
        if (off + (ulong)size - 1 > s.Limit) throw new CpuException(seg == SS ? Vec.SS : Vec.GP, 0);
        return (uint)(s.Base + off);
    }
}
