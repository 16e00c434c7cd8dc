using Dirigent.Machine.Accel;
using Dirigent.Machine.Introspection;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>
/// SYSCALL/SYSRET, SYSENTER/SYSEXIT and SWAPGS with Intel semantics: SYSCALL and SYSRET exist only in 64-bit mode
/// (#UD elsewhere, as on Intel CPUs); the segment caches they load are fixed flat descriptors, not read from the GDT.
/// </summary>
internal static unsafe class SystemCalls
{
    public static void Install(HandlerRegistry r)
    {
        r.Add(&Syscall, Code.Syscall);
        r.Add(&Sysret, Code.Sysretd, Code.Sysretq);
        r.Add(&Sysenter, Code.Sysenter);
        r.Add(&Sysexit, Code.Sysexitd, Code.Sysexitq);
        r.Add(&Swapgs, Code.Swapgs);
    }

    private const ushort Code64Attr = 0xA09B, Code32Attr = 0xC09B, DataAttr = 0xC093;

    private static SegmentState Flat(ushort sel, ushort attr, int dpl) =>
        new() { Selector = sel, Base = 0, Limit = 0xFFFF_FFFF, Attributes = (ushort)(attr | (dpl << 5)) };

    private static void Syscall(Cpu c, ref Instruction i)
    {
        if ((c.Efer & Cpu.EferSCE) == 0 || !c.Is64BitMode) throw Cpu.UD();
        if (c.Hooks.SyscallsArmed) c.HookSyscallEnter(SyscallKind.Syscall, c.Rip);
        ushort sel = (ushort)(c.Star >> 32);
        c.Gpr[Cpu.RCX] = c.Rip;
        ulong fl = c.Rflags;
        c.Gpr[11] = fl & ~Cpu.RF;
        c.Sreg[Cpu.CS] = Flat((ushort)(sel & 0xFFFC), Code64Attr, 0);
        c.Sreg[Cpu.SS] = Flat((ushort)((sel + 8) & 0xFFFC), DataAttr, 0);
        c.Rflags = fl & ~(c.Sfmask | Cpu.RF);
        c.UpdateMode();
        c.Rip = c.Lstar;
    }

    private static void Sysret(Cpu c, ref Instruction i)
    {
        if ((c.Efer & Cpu.EferSCE) == 0 || !c.Is64BitMode) throw Cpu.UD();
        c.RequireCpl0();
        bool to64 = i.Code == Code.Sysretq;
        ulong rip = to64 ? c.Gpr[Cpu.RCX] : (uint)c.Gpr[Cpu.RCX];
        if (!Cpu.IsCanonical(rip)) throw Cpu.GP0();
        ushort sel = (ushort)(c.Star >> 48);
        c.Sreg[Cpu.CS] = to64 ? Flat((ushort)((sel + 16) | 3), Code64Attr, 3) : Flat((ushort)(sel | 3), Code32Attr, 3);
        // SS keeps the selector+8 from STAR; its cache is a flat DPL-3 data segment.
        c.Sreg[Cpu.SS] = Flat((ushort)((sel + 8) | 3), DataAttr, 3);
        c.Rflags = (c.Gpr[11] & 0x3C7FD7) | 2;
        c.UpdateMode();
        c.Rip = rip;
        if (c.InterruptsEnabled) c.OnInterruptsMaybeEnabled();
        if (c.Hooks.SyscallsArmed) c.HookReturnToUser();
    }

    private static void Sysenter(Cpu c, ref Instruction i)
    {
        if (!c.ProtectedMode) throw Cpu.GP0();
        ushort cs = (ushort)c.SysenterCs;
        if ((cs & 0xFFFC) == 0) throw Cpu.GP0();
        if (c.Hooks.SyscallsArmed && c.Cpl == 3) c.HookSyscallEnter(SyscallKind.Sysenter, c.Rip);
        bool lm = c.LongModeActive;
        c.Rflags = c.Rflags & ~(Cpu.VM | Cpu.IF | Cpu.RF);
        c.Sreg[Cpu.CS] = Flat((ushort)(cs & 0xFFFC), lm ? Code64Attr : Code32Attr, 0);
        c.Sreg[Cpu.SS] = Flat((ushort)((cs + 8) & 0xFFFC), DataAttr, 0);
        c.UpdateMode();
        c.Gpr[Cpu.RSP] = lm ? c.SysenterEsp : (uint)c.SysenterEsp;
        c.Rip = lm ? c.SysenterEip : (uint)c.SysenterEip;
    }

    private static void Sysexit(Cpu c, ref Instruction i)
    {
        if (!c.ProtectedMode) throw Cpu.GP0();
        c.RequireCpl0();
        ushort cs = (ushort)c.SysenterCs;
        if ((cs & 0xFFFC) == 0) throw Cpu.GP0();
        bool to64 = i.Code == Code.Sysexitq;
        ulong rip = to64 ? c.Gpr[Cpu.RDX] : (uint)c.Gpr[Cpu.RDX];
        ulong rsp = to64 ? c.Gpr[Cpu.RCX] : (uint)c.Gpr[Cpu.RCX];
        if (to64 && !Cpu.IsCanonical(rip)) throw Cpu.GP0();
        c.Sreg[Cpu.CS] = to64 ? Flat((ushort)((cs + 32) | 3), Code64Attr, 3) : Flat((ushort)((cs + 16) | 3), Code32Attr, 3);
        c.Sreg[Cpu.SS] = Flat((ushort)((cs + (to64 ? 40 : 24)) | 3), DataAttr, 3);
        c.UpdateMode();
        c.Gpr[Cpu.RSP] = rsp;
        c.Rip = rip;
        if (c.Hooks.SyscallsArmed) c.HookReturnToUser();
    }

    private static void Swapgs(Cpu c, ref Instruction i)
    {
        if (!c.Is64BitMode) throw Cpu.UD();
        c.RequireCpl0();
        (c.Sreg[Cpu.GS].Base, c.KernelGsBase) = (c.KernelGsBase, c.Sreg[Cpu.GS].Base);
    }
}
