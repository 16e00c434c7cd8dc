using Iced.Intel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// A run of decoded instructions that starts at one guest address and ends at a control transfer, a
/// mode-changing instruction, a page boundary or a length cap. Decoded once, run many times, dropped when a
/// write touches its bytes.
/// </summary>
internal sealed unsafe class Block
{
    private static long s_nextId;
    /// <summary>Unique per block: the vCPU records the block it runs by id (a plain store, where a reference would cost a GC write barrier per block).</summary>
    public readonly long Id = Interlocked.Increment(ref s_nextId);
    public ulong Phys;      // guest-physical address of the first byte
    public ulong Ip;        // CS offset it was decoded at (branch targets and RIP-relative operands depend on it)
    public ulong Linear;    // linear address it was fetched from (jump-cache validation)
    public int Bits;        // decoder bitness
    public ulong Page0, Page1 = ulong.MaxValue; // guest-physical pages the bytes live on
    public Instruction[] Instrs = [];
    public delegate*<Cpu, ref Instruction, void>[] Handlers = [];
    public int Count;
    /// <summary>Handlers the chained loop runs: Count, or Count - 1 when the last one's work is fused into the one before.</summary>
    public int RunCount;
    public volatile bool Valid = true;
    /// <summary>
    /// The last two blocks that ran after this one (64-bit mode only): a hint that saves the jump-cache lookup.
    /// Each use re-checks the successor exactly as the jump cache is checked, so a stale link is just a miss.
    /// </summary>
    public Block? Succ0, Succ1;

    // ---- compiled tier (Jit/) ----
    /// <summary>The block compiled to host code, once the background compiler has published it (null: interpret).</summary>
    public volatile Jit.CompiledCode? Compiled;
    /// <summary>Interpreted runs so far (racy across vCPUs: only a hint for when to compile).</summary>
    public int Heat;
    /// <summary>1 once queued for compilation (0 again after an eviction, or if it was cold by its turn).</summary>
    public int JitQueued;
    /// <summary>The compiler's queue scans (JitCompiler.TakeHottest, under its queue lock): heat at the last scan,
    /// recent interpreted instructions (decayed per scan), scans since it last ran.</summary>
    public int HeatSeen, JitIdleScans;
    public long JitScore;
    public int JitIlBytes;
    /// <summary>The compiled code's entry (its function pointer), 0 when not compiled or evicted.</summary>
    public nint CompiledPtr;
    /// <summary>
    /// Direct chaining: a fully inline compiled block's constant exits (TargetA: the jump/call target or the
    /// fall-through; TargetB: a Jcc's not-taken side) jump straight into the compiled block last seen there
    /// (LinkA/LinkB, set by the dispatcher), after the same checks the dispatcher makes.
    /// </summary>
    public ulong TargetA = ulong.MaxValue, TargetB = ulong.MaxValue;
    public Block? LinkA, LinkB;
    /// <summary>The compiled block ends in a RET or an indirect JMP/CALL that chains: LinkB is the block its last
    /// exit through the dispatcher went to (TargetB is unused) and LinkC the last one the jump cache gave it (a
    /// function's RET alternating between two call sites), both tried before the jump cache (BlockCompiler.ExitDynamic).</summary>
    public Block? LinkC;
    public bool DynamicExit;
    /// <summary>
    /// Region compilation (BlockCompiler.Region.cs): the blocks compiled into this block's method after it, [0] being
    /// this block (IL reaches the others' instructions and links through it). RegionMember: some region's method runs
    /// this block's code, so the dispatcher keeps its links (LinkA/LinkB) current even when it has no method of its own.
    /// </summary>
    public Block[]? Region;
    public bool RegionMember;
    /// <summary>
    /// Bundles (BlockCompiler.Bundle.cs): this block's entry in the method it was compiled into with other unrelated
    /// blocks, which branches on it; -1 before it was ever bundled. Written once, before that method is published, and
    /// never changed: after an eviction the old method may still be entered with this block for a moment, so a block
    /// compiled again goes into a method of its own.
    /// </summary>
    public int JitEntry = -1;
    /// <summary>Entries into this block's bundle code left before it is compiled again alone (BlockCompiler.Bundle.cs).</summary>
    public int BundleRuns;
    /// <summary>The native first tier's code for this block (Native/), and runs counted towards making it.</summary>
    public volatile Native.NativeCode? Native;
    public int NativeHeat;
    /// <summary>The budget its native code's chain word was last given (Cpu.Refill).</summary>
    public int NativeRefill;
    /// <summary>DIRIGENT_JIT_STATS: the instruction the native tier's templates stopped at (its code, or the attempt).</summary>
    public int NativeStop = -1;
    /// <summary>DIRIGENT_JIT_STATS: interpreted runs in the chained loop.</summary>
    public long InterpRuns;
}
