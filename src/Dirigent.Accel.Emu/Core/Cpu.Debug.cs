using System.Runtime.CompilerServices;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// Debug registers and debug exceptions (SDM vol. 3 ch. 17): DR0-DR3 breakpoints enabled and typed by DR7
/// (instruction, data write, data read/write, I/O with CR4.DE), DR6 status, DR7.GD general detect, RFLAGS.TF single
/// step and RFLAGS.RF.
///
/// None of this costs the common case anything per instruction. With no breakpoint enabled and TF/RF clear, the run
/// loop runs blocks (compiled or interpreted) as before; its existing per-block TF test also covers RF, and one bool
/// (<see cref="_dbgStep"/>) per dispatcher round covers DR7. Once a breakpoint is enabled, the vCPU executes one
/// instruction at a time through the interpreter (<see cref="DebugStep"/>), as it already did for TF. Data
/// breakpoints are found on the memory slow paths only: while one is armed, the soft TLB refuses to cache a read or
/// write translation for a page a breakpoint covers, so every access to such a page takes the slow path, where one
/// bool test (<see cref="_dataBpArmed"/>) leads to the comparison.
/// </summary>
public sealed partial class Cpu
{
    /// <summary>DR6 bits: B0-B3 (breakpoint conditions met), BD (debug-register access detected), BS (single step), BT (task switch).</summary>
    public const ulong Dr6B0to3 = 0xF, Dr6BD = 1UL << 13, Dr6BS = 1UL << 14, Dr6BT = 1UL << 15;
    /// <summary>DR7.GD (bit 13): general detect, #DB on any MOV to or from a debug register.</summary>
    public const ulong Dr7GD = 1UL << 13;

    // Some L0-L3/G0-G3 bit of DR7 is set, or a #DB held back by MOV SS is owed: the run loop steps instructions.
    private bool _dbgStep;
    // DR7 enables a breakpoint and some DRn is typed data (R/W 01 or 11): reads/writes on its page take the slow path.
    private bool _dataBpArmed;
    // DR7 enables a breakpoint, CR4.DE is set and some DRn is typed I/O (R/W 10).
    private bool _ioBpArmed;
    // Breakpoint conditions met by the instruction now executing (B0-B3), and whether one of them is enabled.
    private ulong _dbHits;
    private bool _dbHitEnabled;
    // DR6 bits of a #DB trap held back by MOV SS/POP SS until the instruction after it completes (SDM 6.8.3).
    private ulong _deferredDb;
    /// <summary>MOV SS / POP SS just executed: debug traps, like interrupts, wait one more instruction (SDM 6.8.3).</summary>
    public bool MovSsShadow;
    // The instruction delivered a software interrupt (INT n, INT3, INTO, INT1): it is not single-stepped (TF is
    // cleared on delivery and the handler runs; the SDM's "INT n ... clear the TF flag upon their execution").
    private bool _softIntDelivered;

    internal bool IoBpArmed => _ioBpArmed;

    /// <summary>The R/W field of DR7 for breakpoint n: 0 execute, 1 data write, 2 I/O (CR4.DE), 3 data read/write.</summary>
    private ulong BpType(int n) => (Dr[7] >> (16 + 4 * n)) & 3;

    /// <summary>The LEN field of DR7 for breakpoint n as a byte count: 00=1, 01=2, 10=8, 11=4.</summary>
    private ulong BpLen(int n) => ((Dr[7] >> (18 + 4 * n)) & 3) switch { 0 => 1, 1 => 2, 2 => 8, _ => 4 };

    private bool BpEnabled(int n) => ((Dr[7] >> (2 * n)) & 3) != 0;

    /// <summary>Recomputes what the run loop and the memory paths must watch after DR0-DR3, DR7 or CR4.DE change.</summary>
    /// <param name="flush">False where the caller flushes the TLB itself (state loads, which hold the TLB lock for it).</param>
    internal void UpdateDebugArming(bool flush = true)
    {
        bool any = (Dr[7] & 0xFF) != 0;
        bool data = false, io = false;
        if (any)
            for (int n = 0; n < 4; n++)
            {
                ulong t = BpType(n);
                data |= t is 1 or 3;
                io |= t == 2 && (Cr4 & Cr4DE) != 0;
            }
        bool wasData = _dataBpArmed;
        _dataBpArmed = data;
        _ioBpArmed = io;
        _dbgStep = any || _deferredDb != 0;
        // Cached read/write translations may cover a newly watched page (or keep an old one on the slow path).
        if (flush && (data || wasData)) FlushTlb();
        // Leave chained/compiled execution at once: the next instruction may be a breakpoint.
        _pendingEvents = 1;
    }

    /// <summary>Matches an access against every data breakpoint (enabled or not, SDM 17.2.4) and notes the hits.</summary>
    private void NoteDataAccess(ulong la, int size, bool write)
    {
        for (int n = 0; n < 4; n++)
        {
            ulong t = BpType(n);
            if (!(t == 3 || (t == 1 && write))) continue;
            ulong len = BpLen(n);
            // The breakpoint covers the naturally aligned range of its length (SDM 17.2.5).
            ulong start = Dr[n] & ~(len - 1);
            if (la < start + len && start < la + (ulong)size) NoteHit(n);
        }
    }

    /// <summary>IN/OUT/INS/OUTS: matches the port range against I/O breakpoints (R/W 10, only with CR4.DE).</summary>
    internal void NoteIoAccess(ushort port, int size)
    {
        for (int n = 0; n < 4; n++)
        {
            if (BpType(n) != 2) continue;
            ulong len = BpLen(n);
            ulong start = (Dr[n] & 0xFFFF) & ~(len - 1);
            if (port < start + len && start < (ulong)port + (ulong)size) NoteHit(n);
        }
    }

    private void NoteHit(int n)
    {
        _dbHits |= 1UL << n;
        if (BpEnabled(n)) _dbHitEnabled = true;
    }

    /// <summary>Whether a data breakpoint covers the linear page: its translations stay out of the read/write TLB.</summary>
    private bool IsWatchedPage(ulong page)
    {
        for (int n = 0; n < 4; n++)
        {
            ulong t = BpType(n);
            if (t is 1 or 3 && ((Dr[n] & ~(BpLen(n) - 1)) >> 12) == page) return true;
        }
        return false;
    }

    /// <summary>Whether [la, la+len) overlaps a data breakpoint (bulk string accesses then go element by element).</summary>
    internal bool OverlapsDataBp(ulong la, int len)
    {
        for (int n = 0; n < 4; n++)
        {
            ulong t = BpType(n);
            if (t is not (1 or 3)) continue;
            ulong bl = BpLen(n), start = Dr[n] & ~(bl - 1);
            if (la < start + bl && start < la + (ulong)len) return true;
        }
        return false;
    }

    /// <summary>Instruction breakpoints (R/W 00) at a linear address; enabled says whether one of them is enabled.</summary>
    private ulong ExecHits(ulong linear, out bool enabled)
    {
        ulong hits = 0;
        enabled = false;
        for (int n = 0; n < 4; n++)
        {
            if (BpType(n) != 0 || Dr[n] != linear) continue;
            hits |= 1UL << n;
            enabled |= BpEnabled(n);
        }
        return hits;
    }

    /// <summary>
    /// One instruction under TF, RF or armed breakpoints. Before it: instruction breakpoints (a fault, suppressed by
    /// RF). Then RF is cleared (SDM 17.3.1.1: "cleared at the start of the instruction after the check for instruction
    /// breakpoints"). After it: the single-step and data/I-O breakpoint trap, held back one instruction by MOV SS.
    /// False when there was nothing to step (only RF was set): the caller runs normally.
    /// </summary>
    private bool DebugStep(Block b)
    {
        bool tf = (_flags & TF) != 0;
        if (!tf && !_dbgStep)
        {
            // No breakpoint for RF to suppress: what remains of its meaning is that it is clear once the instruction starts.
            _flags &= ~RF;
            return false;
        }
        if ((Dr[7] & 0xFF) != 0 && (_flags & RF) == 0)
        {
            ulong linear = Is64BitMode ? Rip : (uint)(Sreg[CS].Base + Rip);
            ulong hits = ExecHits(linear, out bool enabled);
            if (enabled)
            {
                // A fault: RIP stays at the instruction, and the pushed RF is the current one (0), SDM 17.3.1.1.
                RaiseDebugException(hits | TakeDeferredDb());
                return true;
            }
        }
        _flags &= ~RF;
        _dbHits = 0;
        _dbHitEnabled = false;
        _softIntDelivered = false;
        MovSsShadow = false;
        Stepping = true;
        try { ExecuteBlock(b, 0, 1); }
        finally { Stepping = false; }
        bool stepped = tf && !_softIntDelivered;
        bool trap = stepped || _dbHitEnabled;
        ulong bits = (trap ? _dbHits : 0) | (stepped ? Dr6BS : 0);
        if (MovSsShadow)
        {
            // MOV SS / POP SS: the trap is delivered after the next instruction, together with that one's (SDM 6.8.3).
            // (bits is never 0 when trap is set: it holds BS or the enabled hit.)
            if (trap)
            {
                _deferredDb |= bits;
                _dbgStep = true;
            }
            return true;
        }
        if (_deferredDb != 0)
        {
            bits |= TakeDeferredDb();
            trap = true;
        }
        if (!trap) return true;
        // A debug exception resumes a halted processor (SDM HLT): after HLT under TF the trap is taken at once.
        Halted = false;
        RaiseDebugException(bits);
        return true;
    }

    private ulong TakeDeferredDb()
    {
        ulong d = _deferredDb;
        _deferredDb = 0;
        _dbgStep = (Dr[7] & 0xFF) != 0;
        return d;
    }

    /// <summary>
    /// Delivers #DB with DR6 updated the way the processor does it: B0-B3 replaced by the conditions of this
    /// exception, BD/BS/BT only ever set (software clears them, SDM 17.2.3). RIP is what to push (the instruction
    /// for a fault, the next one for a trap).
    /// </summary>
    private void RaiseDebugException(ulong bits)
    {
        Dr[6] = (Dr[6] & ~Dr6B0to3) | bits | 0xFFFF_0FF0;
        InstrIp = Rip;
        // Delivering an event is an instruction boundary: an STI shadow does not outlive it.
        InterruptShadow = false;
        if (!DeliverException(Vec.DB, 0, false, softwareInt: false))
            throw new TripleFaultException($"triple fault delivering #DB at {Sreg[CS].Selector:x4}:{Rip:x}");
    }

    /// <summary>INT n, INT3, INTO and INT1 tell the stepper that they transferred to a handler (no single-step trap).</summary>
    internal void NoteSoftwareInterrupt() => _softIntDelivered = true;

    /// <summary>
    /// MOV to or from a debug register with DR7.GD set: a #DB fault at the MOV with DR6.BD (SDM 17.2.4). The
    /// processor clears GD when it enters the handler, so the handler can use the registers.
    /// </summary>
    internal void CheckGeneralDetect()
    {
        if ((Dr[7] & Dr7GD) == 0) return;
        Dr[6] = (Dr[6] & ~Dr6B0to3) | Dr6BD | 0xFFFF_0FF0;
        throw new CpuException(Vec.DB);
    }

    /// <summary>Exceptions that are faults (SDM table 6-1): their handler sees RF=1 in the pushed RFLAGS (SDM 17.3.1.1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsFaultClass(int vector) => vector is not (Vec.DF or Vec.MC or Vec.BP or Vec.OF);
}
