using Dirigent.Machine.Accel;
using Dirigent.Machine.State;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    public const uint MsrEfer = 0xC000_0080, MsrStar = 0xC000_0081, MsrLstar = 0xC000_0082, MsrCstar = 0xC000_0083,
        MsrSfmask = 0xC000_0084, MsrFsBase = 0xC000_0100, MsrGsBase = 0xC000_0101, MsrKernelGsBase = 0xC000_0102,
        MsrTscAux = 0xC000_0103, MsrSysenterCs = 0x174, MsrSysenterEsp = 0x175, MsrSysenterEip = 0x176,
        MsrTsc = 0x10, MsrTscAdjust = 0x3B, MsrApicBase = 0x1B, MsrPat = 0x277, MsrMiscEnable = 0x1A0, MsrTscDeadline = 0x6E0;

    public CpuState GetState()
    {
        // An INIT that reached a vCPU not in Run is taken now, as it would be at its next boundary: the saved state
        // shows its effect rather than losing it (CpuState has no "INIT pending"). A SIPI stays latched (SipiVector).
        if (_startupPending && !_inRun) HonourStartup(takeSipi: false);
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
        // No XSAVE on this CPU (CPUID does not offer it): FXSAVE is the whole extended state.
        s.Xsave = null;
        s.Activity = WaitingForSipi ? VcpuActivity.WaitForSipi : Halted ? VcpuActivity.Halted : VcpuActivity.Running;
        s.SipiVector = _sipiVector;
        s.InterruptShadow = InterruptShadow;
        s.NmiMasked = _nmiBlocked;
        s.NmiPending = _nmiPending;
        var pending = new List<byte>();
        for (int v = 0; v < 256; v++)
            if ((Volatile.Read(ref _pendingVectors[v >> 6]) & (1UL << (v & 63))) != 0) pending.Add((byte)v);
        s.PendingInterrupts = pending.ToArray();
        // Run delivers exceptions before it returns, so only a restored one not yet delivered can be pending here.
        s.PendingException = _pendingException;
        return s;
    }

    /// <summary>
    /// Replaces the whole state, activity and pending events included (a vCPU saved in HLT stays halted until an
    /// interrupt or NMI wakes it). Throws <see cref="StateRestoreException"/> for a state no CPU can be in (wrong array
    /// sizes, an exception vector above 31) rather than failing half-way. <see cref="CpuState.Fxsave"/> carries the
    /// x87/SSE state; an <see cref="CpuState.Xsave"/> area is ignored (we offer no XSAVE components) except that its
    /// legacy region (first 512 bytes) stands in when Fxsave is missing or short. Fxsave wins when both are given.
    /// </summary>
    public void SetState(CpuState s)
    {
        Validate(s);
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
        LoadFxsave(s.Fxsave is { Length: >= 512 } ? s.Fxsave : s.Xsave!);
        Halted = s.Activity == VcpuActivity.Halted;
        lock (_startupSync)
        {
            WaitingForSipi = s.Activity == VcpuActivity.WaitForSipi;
            // A latched SIPI only means something to a vCPU waiting for one; it starts the vCPU when it next runs.
            _sipiVector = WaitingForSipi ? s.SipiVector : -1;
            _initPending = false;
            _startupPending = _sipiVector >= 0;
        }
        InterruptShadow = s.InterruptShadow;
        _deferredDb = 0;
        UpdateDebugArming(flush: false); // the TLB flush below covers watched pages
        _nmiBlocked = s.NmiMasked;
        _nmiPending = s.NmiPending;
        for (int k = 0; k < 4; k++) Volatile.Write(ref _pendingVectors[k], 0);
        foreach (byte v in s.PendingInterrupts) Interlocked.Or(ref _pendingVectors[v >> 6], 1UL << (v & 63));
        _pendingException = s.PendingException;
        // Let the Run loop look at whatever is pending (it clears this when nothing is).
        _pendingEvents = 1;
        lock (_tlbSync) FlushTlb();
        FlushJmpCache();
        Cpl = -1; // force SelectTlb
        UpdateMode();
        BlockExit = false;
    }

    private static void Validate(CpuState s)
    {
        static void Check(bool ok, string what)
        {
            if (!ok) throw new StateRestoreException($"invalid CPU state: {what}");
        }
        Check(s.Gpr is { Length: 16 }, "Gpr must hold 16 registers");
        Check(s.Segments is { Length: 6 }, "Segments must hold 6 segment registers");
        Check(s.Dr is { Length: 8 }, "Dr must hold 8 debug registers");
        Check(s.Msrs != null, "Msrs missing");
        Check(s.Fxsave is { Length: >= 512 } || s.Xsave is { Length: >= 512 }, "no 512-byte FXSAVE area (Fxsave or the start of Xsave)");
        Check(Enum.IsDefined(s.Activity), $"unknown activity {(int)s.Activity}");
        Check(s.SipiVector is >= -1 and <= 255, $"SIPI vector {s.SipiVector} out of range");
        Check(s.PendingInterrupts != null, "PendingInterrupts missing");
        Check(s.PendingException is not { } pe || pe.Vector < 32, $"pending exception vector {s.PendingException?.Vector} is not an exception (0..31)");
    }

    /// <summary>Delivers an exception a restored state had in flight; false on a triple fault.</summary>
    private bool DeliverRestoredException(PendingException pe)
    {
        _pendingException = null;
        Halted = false;
        InstrIp = Rip;
        return DeliverException(pe.Vector, pe.ErrorCode, pe.HasErrorCode, softwareInt: false);
    }
}
