using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

public sealed partial class Cpu
{
    // INIT and STARTUP IPIs (SDM 10.4 / MP spec B.4). The local APIC calls InjectInit/InjectSipi on the sender's
    // thread; the state change happens on this vCPU's own thread at an instruction boundary (the Run loop looks at
    // _startupPending inside its _pendingEvents branch), also while it sleeps in HLT or waits for a SIPI, so no other
    // thread ever writes the registers of a vCPU that is executing. A vCPU that is not in Run when its state is read
    // (GetState) takes a pending INIT there (nothing else could be using its state then); a SIPI stays latched.
    //
    // Order matters: Linux sends INIT and then, without waiting, two SIPIs. The SIPI is accepted (latched in
    // _sipiVector) when the vCPU waits for one or has an INIT pending that will put it there, and dropped otherwise
    // (SDM 10.4.4: a SIPI to a processor not in wait-for-SIPI is ignored); an INIT drops a SIPI latched before it.
    // _sipiVector is also the saved SipiVector (KVM's SIPI_RECEIVED): a SIPI that arrived while the vCPU was stopped
    // survives a snapshot and starts the vCPU when it next runs.

    private readonly object _startupSync = new();
    // Under _startupSync: an INIT was received and not yet taken.
    private bool _initPending;
    // An INIT or a latched SIPI awaits the vCPU thread (set under _startupSync, before _pendingEvents).
    private volatile bool _startupPending;

    /// <summary>IA32_APIC_BASE.BSP: the boot processor restarts at the reset vector after INIT; the others wait for a SIPI.</summary>
    private const ulong ApicBaseBsp = 1UL << 8;
    /// <summary>IA32_APIC_BASE.EN (bit 11): the APIC global enable.</summary>
    public const ulong ApicBaseEnable = 1UL << 11;

    /// <summary>IA32_APIC_BASE after reset: the xAPIC at 0xFEE00000, enabled; the BSP flag on vCPU 0 only.</summary>
    public static ulong ResetApicBase(int index) => 0xFEE0_0800UL | (index == 0 ? ApicBaseBsp : 0);

    public void InjectInit()
    {
        lock (_startupSync)
        {
            _initPending = true;
            _sipiVector = -1;
            _startupPending = true;
        }
        _pendingEvents = 1;
        _wake.Set();
    }

    public void InjectSipi(byte vector)
    {
        lock (_startupSync)
        {
            // The first SIPI of the usual pair starts the vCPU; the second finds it started (or still latched) and
            // is ignored, as on hardware.
            if (!(_initPending || WaitingForSipi) || _sipiVector >= 0) return;
            _sipiVector = vector;
            _startupPending = true;
        }
        _pendingEvents = 1;
        _wake.Set();
    }

    /// <summary>
    /// vCPU thread at an instruction boundary: takes INIT, then SIPI. With <paramref name="takeSipi"/> false (GetState
    /// on a vCPU not in Run) only INIT is taken and a SIPI stays latched, as KVM reports SIPI_RECEIVED.
    /// </summary>
    private void HonourStartup(bool takeSipi = true)
    {
        lock (_startupSync)
        {
            if (_initPending)
            {
                _initPending = false;
                EnterInitState();
            }
            if (!takeSipi) return;
            _startupPending = false;
            if (WaitingForSipi && _sipiVector >= 0)
            {
                StartFromSipi(_sipiVector);
                _sipiVector = -1;
            }
        }
    }

    /// <summary>
    /// The INIT state (SDM 10.1, table 10-1): registers as after RESET except that x87/SSE state, CR0.CD/NW, the MSRs
    /// (IA32_APIC_BASE included; EFER is cleared) and the TSC are kept. Pending interrupts, a pending NMI, NMI blocking
    /// and a restored exception are dropped, the TLB is flushed. The BSP runs from F000:FFF0; an AP waits for a SIPI.
    /// </summary>
    private void EnterInitState()
    {
        var r = CpuState.Reset();
        Array.Clear(Gpr);
        // EDX holds the processor signature after RESET and INIT (SDM 10.1.2).
        Gpr[2] = Cpuid.Signature;
        Rip = r.Rip;
        Array.Copy(r.Segments, Sreg, 6);
        Ldtr = r.Ldtr; Tr = r.Tr; Gdtr = r.Gdtr; Idtr = r.Idtr;
        Cr0 = (Cr0 & (Cr0CD | Cr0NW)) | Cr0ET;
        Cr2 = 0; Cr3 = 0; Cr4 = 0; Cr8 = 0; Efer = 0;
        Rflags = r.Rflags;
        Array.Copy(r.Dr, Dr, 8);
        bool bsp = (ApicBase & ApicBaseBsp) != 0;
        Halted = false;
        WaitingForSipi = !bsp;
        InterruptShadow = false;
        _nmiBlocked = false;
        _nmiPending = false;
        for (int k = 0; k < 4; k++) Volatile.Write(ref _pendingVectors[k], 0);
        _pendingException = null;
        _deferredDb = 0;
        UpdateDebugArming(flush: false);
        lock (_tlbSync) FlushTlb();
        FlushJmpCache();
        UpdateMode();
        BlockExit = false;
    }

    /// <summary>STARTUP IPI: real mode at CS = vector &lt;&lt; 8 (base vector * 4096), IP = 0 (SDM 10.4.4.1).</summary>
    private void StartFromSipi(int vector)
    {
        Sreg[CS] = new SegmentState { Selector = (ushort)(vector << 8), Base = (ulong)vector << 12, Limit = 0xFFFF, Attributes = 0x9B };
        Rip = 0;
        WaitingForSipi = false;
        Halted = false;
        UpdateMode();
        BlockExit = false;
    }

    /// <summary>
    /// PAUSE: a guest spinning on a lock gives its host thread up, so that the vCPU holding the lock gets a host core
    /// when vCPUs outnumber them. On a uniprocessor nothing it waits for runs on another vCPU thread: a plain NOP.
    /// </summary>
    internal void SpinPause()
    {
        if (_codeCache.CpuCount > 1) Thread.Yield();
    }

    /// <summary>HLT with IF=0 ends Run only on a uniprocessor: with other vCPUs an NMI or INIT IPI may still wake it.</summary>
    private bool HaltIsForever => _codeCache.CpuCount == 1;
}
