using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Machine.Memory;
using Iced.Intel;

namespace Dirigent.Tests.Infrastructure;

/// <summary>Assembling test guests into RAM and the initial states they start from, for either accelerator.</summary>
public static class GuestSetup
{
    /// <summary>Assembles code at an address and copies it into guest RAM; returns the code bytes.</summary>
    public static byte[] Load(GuestMemory mem, ulong addr, int bitness, Action<Assembler> build)
    {
        var a = new Assembler(bitness);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), addr);
        var bytes = ms.ToArray();
        mem.Write(addr, bytes);
        return bytes;
    }

    public static CpuState Protected32(GuestMemory mem, ulong entry, ulong stackTop)
    {
        var s = BootState.Protected32(mem, entry);
        s.Gpr[4] = stackTop;
        return s;
    }

    /// <summary>Real mode at 0000:<paramref name="addr"/>, like a boot sector.</summary>
    public static CpuState Real16(ulong addr)
    {
        var s = CpuState.Reset();
        s.Segments[(int)Seg.CS] = SegmentState.RealMode(0);
        s.Segments[(int)Seg.CS].Attributes = 0x9B;
        s.Rip = addr;
        s.Gpr[4] = 0x7000;
        return s;
    }
}
