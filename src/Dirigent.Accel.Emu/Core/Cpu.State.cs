using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    public const uint MsrEfer = 0xC000_0080, MsrStar = 0xC000_0081, MsrLstar = 0xC000_0082, MsrCstar = 0xC000_0083,
        MsrSfmask = 0xC000_0084, MsrFsBase = 0xC000_0100, MsrGsBase = 0xC000_0101, MsrKernelGsBase = 0xC000_0102,
        MsrTscAux = 0xC000_0103, MsrSysenterCs = 0x174, MsrSysenterEsp = 0x175, MsrSysenterEip = 0x176,
        MsrTsc = 0x10, MsrTscAdjust = 0x3B, MsrApicBase = 0x1B, MsrPat = 0x277, MsrMiscEnable = 0x1A0, MsrTscDeadline = 0x6E0;

    public CpuState GetState()
    {
        var s = new CpuState();
        Array.Copy(Gpr, s.Gpr, 16);
        s.Rip = Rip;
        s.Rflags = Rflags;
        Array.Copy(Sreg, s.Segments, 6);
        s.Ldtr = Ldtr; s.Tr = Tr; s.Gdtr = Gdtr; s.Idtr = Idtr;
        s.Cr0 = Cr0; s.Cr2 = Cr2; s.Cr3 = Cr3; s.Cr4 = Cr4; s.Cr8 = Cr8; s.Efer = Efer;
        Array.Copy(Dr, s.Dr, 8);
        foreach (var kv in OtherMsrs) s.Msrs[kv.Key] = kv.Value;
        s.Msrs[MsrStar] = Star; s.Msrs[MsrLstar] = Lstar; s.Msrs[MsrCstar] = Cstar; s.Msrs[MsrSfmask] = Sfmask;
        s.Msrs[MsrKernelGsBase] = KernelGsBase; s.Msrs[MsrSysenterCs] = SysenterCs; s.Msrs[MsrSysenterEsp] = SysenterEsp;
        s.Msrs[MsrSysenterEip] = SysenterEip; s.Msrs[MsrTscAux] = TscAux; s.Msrs[MsrPat] = Pat;
        s.Msrs[MsrApicBase] = ApicBase; s.Msrs[MsrMiscEnable] = MiscEnable;
        s.Msrs[MsrTsc] = ReadTsc();
        s.Msrs[MsrTscAdjust] = TscAdjust;
        SaveFxsave(s.Fxsave);
        return s;
    }

    public void SetState(CpuState s)
    {
        Array.Copy(s.Gpr, Gpr, 16);
        Rip = s.Rip;
        Array.Copy(s.Segments, Sreg, 6);
        Ldtr = s.Ldtr; Tr = s.Tr; Gdtr = s.Gdtr; Idtr = s.Idtr;
        Cr0 = s.Cr0; Cr2 = s.Cr2; Cr3 = s.Cr3; Cr4 = s.Cr4; Cr8 = s.Cr8; Efer = s.Efer;
        Rflags = s.Rflags;
        Array.Copy(s.Dr, Dr, 8);
        OtherMsrs.Clear();
        foreach (var kv in s.Msrs)
        {
            switch (kv.Key)
            {
                case MsrStar: Star = kv.Value; break;
                case MsrLstar: Lstar = kv.Value; break;
                case MsrCstar: Cstar = kv.Value; break;
                case MsrSfmask: Sfmask = kv.Value; break;
                case MsrKernelGsBase: KernelGsBase = kv.Value; break;
                case MsrSysenterCs: SysenterCs = kv.Value; break;
                case MsrSysenterEsp: SysenterEsp = kv.Value; break;
                case MsrSysenterEip: SysenterEip = kv.Value; break;
                case MsrTscAux: TscAux = kv.Value; break;
                case MsrPat: Pat = kv.Value; break;
                case MsrApicBase: ApicBase = kv.Value; break;
                case MsrMiscEnable: MiscEnable = kv.Value; break;
                case MsrTscAdjust: TscAdjust = kv.Value; break;
                case MsrTsc: TscOffset = (long)(kv.Value - (ReadTsc() - (ulong)TscOffset)); break;
                default: OtherMsrs[kv.Key] = kv.Value; break;
            }
        }
        LoadFxsave(s.Fxsave);
        Halted = false;
        InterruptShadow = false;
        FlushTlb();
        FlushJmpCache();
        Cpl = -1; // force SelectTlb
        UpdateMode();
        BlockExit = false;
    }
}
