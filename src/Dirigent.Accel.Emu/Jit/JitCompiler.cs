using System.Diagnostics;
using System.Reflection;
using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>
/// The compiled tier of one VM: hot blocks are queued by the vCPUs and compiled on one background thread (at the
/// vCPUs' priority: see the constructor), which also has the .NET JIT produce their machine code before they are
/// published, so a vCPU never waits for a compiler; it keeps interpreting the block until
/// <see cref="Block.Compiled"/> appears. Compiled code has a budget (IL bytes, <see cref="BudgetIlBytes"/>): past it
/// the oldest compiled blocks go back to the interpreter (and may be compiled again if they get hot again), so a
/// guest that makes code forever cannot grow it.
/// </summary>
internal sealed class JitCompiler : IDisposable
{
    /// <summary>
    /// Interpreted runs of a block before it is queued (DIRIGENT_JIT_THRESHOLD overrides it). Chosen by measurement on
    /// the default guest (2-core host; boot to /init, then a 20000-iteration shell loop; guest seconds):
    /// interpreter 4.27 + 3.06; threshold 32: 5.5 + 3.4 (18000 blocks, 10 s of compiling that competes with the
    /// vCPU); 200: 5.32 + 1.74; 1000: 3.64 + 1.61 (5700 blocks, 3.7 s); 4000: 3.95 + 1.60; 16000: 3.75 + 2.05.
    /// </summary>
    public const int DefaultThreshold = 1000;
    /// <summary>
    /// The threshold for blocks in the lower half of the address space, where 64-bit systems keep user space
    /// (DIRIGENT_JIT_USER_THRESHOLD overrides it). A program's loop is run by one process for a while, where the
    /// boot's kernel code is mostly run a few hundred times and then left; compiling user code sooner shortens its
    /// warm-up. Measured on `bench boot-one` (alternating runs, medians, on a 2-core AMD host): against 1000 (eight
    /// pairs) the 20000-iteration shell loop 0.585 against 0.785 s (better in 7 of 8), `dd | sha256sum` 0.585 against
    /// 0.645 s, 100 fork + exec 1.035 against 1.185 s (8 of 8), the kernel's boot unchanged; 100 against 250 (eight
    /// pairs) was worse: loop 0.645 against 0.585 s, `dd | sha256sum` 0.675 against 0.58 s (more blocks compiled).
    /// </summary>
    public const int DefaultUserThreshold = 250;
    /// <summary>IL bytes of all compiled blocks at most (the .NET JIT's machine code for them is ~0.8x this: `bench jit-compile`).</summary>
    public const long BudgetIlBytes = 32L << 20;

    /// <summary>DIRIGENT_JIT_STATS=1: collect and print the tier's figures when the VM goes.</summary>
    internal static readonly bool Stats = Environment.GetEnvironmentVariable("DIRIGENT_JIT_STATS") == "1";
    /// <summary>DIRIGENT_JIT_DUMP=FILE: each compiled block's address and bytes appended to FILE (`bench jit-compile FILE`
    /// compiles them again, alone, to measure the compiler).</summary>
    private static readonly string? DumpPath = Environment.GetEnvironmentVariable("DIRIGENT_JIT_DUMP");
    private static readonly object DumpLock = new();

    public JitMode Mode { get; }
    public int Threshold { get; }
    /// <summary>Interpreted runs before a block at a lower-half address is queued (see <see cref="DefaultUserThreshold"/>).</summary>
    public int UserThreshold { get; }
    private readonly long _budget;
    // Hottest first (TakeHottest): the compiler takes the queued block with the most interpreted instructions recently.
    // A FIFO left a guest's hot loop interpreted for 700000 runs behind the boot's backlog; newest-first (a stack) still
    // left a kernel loop 1.5 million runs behind blocks that became hot after it and ran far less; the most runs so far
    // (heat) favoured boot code that had run many times and stopped over the loop the vCPU was in.
    private readonly List<Block> _queue = new();
    private readonly SemaphoreSlim _signal = new(0);
    private readonly Queue<Block> _compiled = new();
    private readonly object _lock = new();
    private readonly Thread? _thread;
    private volatile bool _disposed;
    private int _live;

    /// <summary>Blocks queued for compiling (each time one got hot), under the queue's lock.</summary>
    public long BlocksQueued;

    /// <summary>Interpreted runs after which block b is queued: the user threshold for a lower-half address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int ThresholdFor(Block b) => (long)b.Ip < 0 ? Threshold : UserThreshold;

    public long EmitTicks, BlocksSkippedCold, Regions, RegionBlocks, Bundles, BundleBlocks, TierUps;

    /// <summary>The most IL bytes compiled code held at once (eviction keeps it under the budget).</summary>
    public long PeakIlBytes;

    /// <summary>The figures of the last compiler this process disposed (`bench boot-one` prints them after its VM).</summary>
    internal static (long Blocks, long PeakIlBytes, TimeSpan CompileTime)? LastTotals;

    public long IlBytes, BlocksCompiled, BlocksEvicted, InstructionsCompiled, InstructionsInlined, CompileTicks, Failures;
    /// <summary>The first compile failure (a compiler bug): the block stays interpreted.</summary>
    public string? FirstFailure;

    /// <summary>Decoded blocks by (guest-physical address, IP), for regions (BlockCompiler.Region.cs); null: one block per method.</summary>
    private readonly Func<ulong, ulong, Block?>? _lookup;

    public JitCompiler(JitMode mode, int threshold = DefaultThreshold, long budgetIlBytes = BudgetIlBytes, Func<ulong, ulong, Block?>? lookup = null,
        int userThreshold = DefaultUserThreshold)
    {
        Mode = mode;
        _lookup = lookup;
        if (int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_THRESHOLD"), out int t)) threshold = t;
        if (int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_USER_THRESHOLD"), out int ut)) userThreshold = ut;
        Threshold = Math.Max(1, threshold);
        UserThreshold = Math.Max(1, userThreshold);
        _budget = budgetIlBytes;
        if (mode == JitMode.On)
        {
            // Same priority as the vCPUs: the compiler is what a boot waits for. (.NET's ThreadPriority does not change
            // a Linux thread's nice value; a real nice of +5 for this thread, set from outside, made a boot to /init
            // 2.92 s against 2.27 s, six alternating `bench boot-one` pairs. Nice +3 for the vCPU and .NET's tiering
            // thread instead changed nothing, and +10 for .NET's tiering thread alone was worse, 2.58 against 2.24 s:
            // the interpreter's own methods wait longer for their optimised code.)
            _thread = new Thread(Loop) { IsBackground = true, Name = "dirigent-jit" };
            _thread.Start();
        }
    }

    public TimeSpan CompileTime => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref CompileTicks));

    /// <summary>A vCPU found b hot: compile it in the background (once; again only after an eviction).</summary>
    public void Enqueue(Block b)
    {
        if (Interlocked.Exchange(ref b.JitQueued, 1) != 0) return;
        lock (_queue)
        {
            BlocksQueued++;
            b.HeatSeen = Volatile.Read(ref b.Heat);
            b.JitScore = 0;
            b.JitIdleScans = 0;
            _queue.Add(b);
        }
        _signal.Release();
    }

    /// <summary><see cref="JitMode.Always"/>: compile on the caller's thread now.</summary>
    public void CompileNow(Block b)
    {
        if (Interlocked.Exchange(ref b.JitQueued, 1) != 0) return;
        // Bundles get the same differential tests as single blocks: each block goes into a bundle after a stand-in
        // for the block compiled before it (a copy, never published), so its code is emitted after another block's
        // and entered at a nonzero entry; one entered a few times is compiled again alone (TierUp).
        Block? before = _alwaysBefore;
        if (before != null && Bundleable(b) && before.Count + b.Count <= BlockCompiler.BundleMaxInstructions)
            CompileBundle([before, b], publishFrom: 1);
        else Compile(b);
        if (b.Bits == 64 && b.Count > 0) _alwaysBefore = StandIn(b);
    }

    private Block? _alwaysBefore;

    /// <summary>A copy of b's decoded instructions for a bundle's other entry: compiled, never run or published.</summary>
    private static unsafe Block StandIn(Block b) => new()
    {
        Phys = b.Phys, Ip = b.Ip, Linear = b.Linear, Bits = b.Bits, Page0 = b.Page0, Page1 = b.Page1,
        Instrs = b.Instrs, Handlers = b.Handlers, Count = b.Count, RunCount = b.RunCount,
    };

    /// <summary>A block was invalidated (its code was written): its compiled code goes with it.</summary>
    public void Forget(Block b)
    {
        if (b.Compiled == null) return;
        lock (_lock)
        {
            if (b.Compiled != null) Retire(b);
        }
    }

    // Retired code stays referenced a while: a vCPU may have read a block's entry pointer (through a chain link) just
    // before it was retired, and must not jump into code the GC already collected. Thousands of compilations pass
    // before one leaves this queue; a vCPU holds such a pointer for nanoseconds.
    private readonly Queue<CompiledCode> _graveyard = new();
    private const int GraveyardSize = 8192;

    /// <summary>Under _lock: the compiled block goes back to the interpreter; its code is kept alive for a while.</summary>
    private void Retire(Block b)
    {
        IlBytes -= b.JitIlBytes;
        _live--;
        Volatile.Write(ref b.CompiledPtr, 0);
        if (b.Compiled is { } code)
        {
            _graveyard.Enqueue(code);
            if (_graveyard.Count > GraveyardSize) _graveyard.Dequeue();
        }
        b.Compiled = null;
        b.LinkA = b.LinkB = b.LinkC = null;
    }

    /// <summary>The block counts its runs from zero again and is queued anew when it gets hot again.</summary>
    private static void Requeueable(Block b)
    {
        b.Heat = 0;
        Volatile.Write(ref b.JitQueued, 0);
    }

    /// <summary>The compiler thread's Linux thread id (for its CPU time in DIRIGENT_JIT_STATS); 0 where unknown.</summary>
    private int _tid;

    /// <summary>The compiler thread's CPU time so far (user + system, from /proc: 10 ms steps), or null where unreadable.
    /// Against <see cref="CompileTime"/> (wall time) it shows how much of a core the thread got.</summary>
    private TimeSpan? ThreadCpu()
    {
        if (_tid == 0) return null;
        try
        {
            // Fields after the ")" that ends comm: state is the 1st, utime the 12th, stime the 13th (proc(5)).
            string stat = File.ReadAllText($"/proc/self/task/{_tid}/stat");
            var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            long ticks = long.Parse(f[11]) + long.Parse(f[12]);
            return TimeSpan.FromSeconds(ticks / 100.0);
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or UnauthorizedAccessException) { return null; }
    }

    private void Loop()
    {
        if (Stats)
        {
            try { _tid = int.Parse(Path.GetFileName(new FileInfo("/proc/thread-self").LinkTarget ?? "0")); }
            catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException) { }
        }
        while (!_disposed)
        {
            _signal.Wait();
            while (!_disposed)
            {
                // Blocks that outgrew their bundle first: they run compiled already, but are where the vCPU spends its time.
                Block? t = null;
                lock (_tierUp) if (_tierUp.Count > 0) t = _tierUp.Dequeue();
                if (t != null) { CompileAlone(t); continue; }
                if (TakeHottest() is not { } b) break;
                CompileWithOthers(b);
            }
        }
    }

    private readonly Queue<Block> _tierUp = new();

    /// <summary><see cref="JitMode.Always"/>: a block's bundle code runs this many times, then its own (the tests see both).</summary>
    internal const int AlwaysTierUpRuns = 3;

    /// <summary>A vCPU ran a bundled block's entries out (Cpu.JitTierUp): compile it again, alone. Under
    /// <see cref="JitMode.Always"/> at once, on the vCPU (the bundle's code goes on running to its exit, kept alive as
    /// retired code is).</summary>
    public void TierUp(Block b)
    {
        if (Mode == JitMode.Always) { CompileAlone(b); return; }
        lock (_tierUp) _tierUp.Enqueue(b);
        _signal.Release();
    }

    /// <summary>A tier-up: the bundled block, if it still has code, gets a method of its own (Publish retires its bundle code).</summary>
    private void CompileAlone(Block b)
    {
        if (!b.Valid || b.Compiled == null) return;
        TierUps++;
        Compile(b);
    }

    /// <summary>A queued block idle (no interpreted run) for this many of the compiler's queue scans is dropped, not compiled.</summary>
    internal const int ColdScans = 32;
    private long _scans;

    /// <summary>
    /// Removes and returns the queued block most worth compiling now: the most interpreted instructions recently (runs
    /// since the last scan times its length, decayed by a quarter per scan, so a loop the vCPU is in now goes before
    /// boot code that ran many times once). Blocks that have not run for <see cref="ColdScans"/> scans (code of a phase
    /// that ended) leave the queue uncompiled and count from zero again. One scan per compilation, so the decay and
    /// the idle count go with the compiler's progress through a backlog, not with wall time (a halted guest ages nothing).
    /// </summary>
    private Block? TakeHottest()
    {
        lock (_queue)
        {
            _scans++;
            int best = -1;
            long bestScore = long.MinValue;
            for (int k = 0; k < _queue.Count; k++)
            {
                Block q = _queue[k];
                int heat = Volatile.Read(ref q.Heat);
                int d = heat - q.HeatSeen;
                q.HeatSeen = heat;
                q.JitScore = q.JitScore - (q.JitScore >> 2) + (long)d * q.Count;
                if (d != 0) q.JitIdleScans = 0;
                else if (++q.JitIdleScans >= ColdScans)
                {
                    // Cold: out of the queue (order does not matter: swap with the last).
                    _queue[k] = _queue[^1];
                    _queue.RemoveAt(_queue.Count - 1);
                    k--;
                    Requeueable(q);
                    BlocksSkippedCold++;
                    continue;
                }
                if (q.JitScore > bestScore) { bestScore = q.JitScore; best = k; }
            }
            if (best < 0) return null;
            Block b = _queue[best];
            _queue[best] = _queue[^1];
            _queue.RemoveAt(_queue.Count - 1);
            return b;
        }
    }

    /// <summary>
    /// Compiles b; with DIRIGENT_JIT_BUNDLE=N (BlockCompiler.Bundle.cs) bundled with the next hottest queued blocks that
    /// may be, up to N in one method. A block that heads a region, was bundled before or is too long goes alone.
    /// </summary>
    private void CompileWithOthers(Block b)
    {
        int max = BlockCompiler.BundleMaxBlocks;
        if (max < 2 || !Bundleable(b)) { Compile(b); return; }
        var bundle = new List<Block>(max) { b };
        int instrs = b.Count;
        List<Block>? alone = null;
        // A bounded number of takes: blocks that cannot join are compiled alone after the bundle, in their turn.
        for (int takes = 0; takes < 2 * max && bundle.Count < max && !_disposed && TakeHottest() is { } o; takes++)
        {
            if (Bundleable(o) && instrs + o.Count <= BlockCompiler.BundleMaxInstructions) { bundle.Add(o); instrs += o.Count; }
            else (alone ??= new()).Add(o);
        }
        if (bundle.Count == 1) Compile(b);
        else CompileBundle(bundle.ToArray());
        if (alone != null) foreach (var o in alone) Compile(o);
    }

    /// <summary>May b go into a bundle: not a region head (those are compiled alone with their members) and never bundled.</summary>
    private bool Bundleable(Block b) =>
        BlockCompiler.Bundleable(b) && b.Count <= BlockCompiler.BundleMaxInstructions &&
        (_lookup == null || (b.RegionMember && b.Region == null) || BlockCompiler.BuildRegion(b, _lookup, RegionMinHeat) == null);

    /// <summary>A region's other blocks must have run an eighth as often as a block is hot (so a loop's exit path that
    /// ran a few times stays out); under Always every decoded block is a candidate (blocks compile before they run).</summary>
    private int RegionMinHeat => Mode == JitMode.Always ? 0 : Threshold / 8;

    /// <summary>Compiles blocks as one bundle and publishes those from <paramref name="publishFrom"/> on (the rest: CompileNow's stand-ins).</summary>
    private void CompileBundle(Block[] blocks, int publishFrom = 0)
    {
        if (DumpPath != null) foreach (var b in blocks) Dump(b);
        long t0 = Stopwatch.GetTimestamp();
        CompiledCode[] codes;
        int il, inlined;
        nint entry;
        try
        {
            (codes, il, inlined, var method) = BlockCompiler.CompileBundle(blocks, Mode == JitMode.Always ? AlwaysTierUpRuns : BlockCompiler.TierUpRuns);
            Interlocked.Add(ref EmitTicks, Stopwatch.GetTimestamp() - t0);
            entry = Prepare(method);
        }
        catch (Exception e) when (e is InvalidProgramException or NotSupportedException or ArgumentException or InvalidOperationException)
        {
            // A compiler bug: count it, and give each block its own method (they cannot be bundled again).
            Interlocked.Increment(ref Failures);
            Interlocked.CompareExchange(ref FirstFailure, $"bundle at {blocks[0].Ip:x}: {e.GetType().Name}: {e.Message}", null);
            for (int j = publishFrom; j < blocks.Length; j++) Compile(blocks[j]);
            return;
        }
        finally { Interlocked.Add(ref CompileTicks, Stopwatch.GetTimestamp() - t0); }
        int instrs = blocks.Sum(b => b.Count);
        lock (_lock)
        {
            Bundles++;
            InstructionsInlined += inlined;
            for (int j = publishFrom; j < blocks.Length; j++)
            {
                BundleBlocks++;
                // The method's IL is shared out by instructions: the budget counts each block's part.
                Publish(blocks[j], codes[j], entry, (int)((long)il * blocks[j].Count / instrs));
            }
        }
    }

    private void Compile(Block b)
    {
        if (!b.Valid) return;
        if (DumpPath != null) Dump(b);
        long t0 = Stopwatch.GetTimestamp();
        CompiledCode code;
        int il, inlined;
        nint entry;
        try
        {
            var r = BlockCompiler.Compile(b, _lookup, RegionMinHeat);
            if (r == null) return;
            (code, il, inlined, var method) = r.Value;
            long t1 = Stopwatch.GetTimestamp();
            Interlocked.Add(ref EmitTicks, t1 - t0);
            // Have the .NET JIT compile it here, not on the vCPU at its first call.
            entry = Prepare(method);
        }
        catch (Exception e) when (e is InvalidProgramException or NotSupportedException or ArgumentException or InvalidOperationException)
        {
            Interlocked.Increment(ref Failures);
            Interlocked.CompareExchange(ref FirstFailure, $"block at {b.Ip:x}: {e.GetType().Name}: {e.Message}", null);
            return;
        }
        finally { Interlocked.Add(ref CompileTicks, Stopwatch.GetTimestamp() - t0); }
        lock (_lock)
        {
            if (!b.Valid) return;
            if (b.Region is { } region) { Regions++; RegionBlocks += region.Length; }
            InstructionsInlined += inlined;
            Publish(b, code, entry, il);
        }
    }

    /// <summary>Under _lock: b's compiled code goes live (unless b was invalidated meanwhile); the oldest go past the budget.</summary>
    private void Publish(Block b, CompiledCode code, nint entry, int il)
    {
        if (!b.Valid) return;
        // A tier-up replaces the block's bundle code (kept alive a while like any retired code). Its old place in the
        // eviction order stays behind: under the budget's pressure it may go a little early, never late.
        if (b.Compiled != null) Retire(b);
        b.JitIlBytes = il;
        b.Compiled = code;
        Volatile.Write(ref b.CompiledPtr, entry);
        // Native code chained through trampolines would keep running instead: they stop entering it.
        b.Native?.Kill(Native.NativeCode.Retired);
        IlBytes += il;
        if (IlBytes > PeakIlBytes) PeakIlBytes = IlBytes;
        BlocksCompiled++;
        InstructionsCompiled += b.Count;
        _live++;
        _compiled.Enqueue(b);
        while (IlBytes > _budget && _compiled.TryDequeue(out var old))
        {
            if (old.Compiled == null) continue;
            Retire(old);
            BlocksEvicted++;
            Requeueable(old);
        }
        // Invalidated blocks leave dead entries behind: drop them before they outnumber the live ones.
        if (_compiled.Count > 2 * _live + 1024)
        {
            var keep = _compiled.Where(x => x.Compiled != null).ToArray();
            _compiled.Clear();
            foreach (var x in keep) _compiled.Enqueue(x);
        }
    }

    private static void Dump(Block b)
    {
        var ms = new MemoryStream();
        var enc = Iced.Intel.Encoder.Create(64, new Iced.Intel.StreamCodeWriter(ms));
        for (int k = 0; k < b.Count; k++)
            if (!enc.TryEncode(b.Instrs[k], b.Instrs[k].IP, out _, out _)) return;
        string line = $"{b.Ip:x} {Convert.ToHexString(ms.ToArray())}";
        lock (DumpLock) File.AppendAllText(DumpPath!, line + "\n");
    }

    private static readonly MethodInfo? s_getMethodDescriptor =
        typeof(System.Reflection.Emit.DynamicMethod).GetMethod("GetMethodDescriptor", BindingFlags.Instance | BindingFlags.NonPublic);

    /// <summary>
    /// Has the .NET JIT compile a DynamicMethod now (RuntimeHelpers.PrepareMethod on its runtime handle, which the
    /// public API does not expose for dynamic methods); an IL error surfaces here as InvalidProgramException.
    /// </summary>
    internal static nint Prepare(System.Reflection.Emit.DynamicMethod m)
    {
        if (s_getMethodDescriptor == null) return 0;
        RuntimeMethodHandle handle;
        try { handle = (RuntimeMethodHandle)s_getMethodDescriptor.Invoke(m, null)!; }
        catch (TargetInvocationException) { return 0; }
        RuntimeHelpers.PrepareMethod(handle);
        // The entry point, for direct chaining from other compiled blocks (0: no chaining into this one).
        return handle.GetFunctionPointer();
    }

    public override string ToString() =>
        $"{BlocksCompiled} blocks compiled ({InstructionsInlined}/{InstructionsCompiled} instructions inline), {IlBytes / 1024.0:F0} KiB IL, " +
        $"compile time {CompileTime.TotalMilliseconds:F0} ms (IL emission {Stopwatch.GetElapsedTime(0, EmitTicks).TotalMilliseconds:F0} ms{(ThreadCpu() is { } cpu ? $"; the compiler thread's CPU {cpu.TotalMilliseconds:F0} ms" : "")}), {Regions} of them regions of {RegionBlocks} blocks, {BundleBlocks} in {Bundles} bundles ({TierUps} compiled again alone), {BlocksEvicted} evicted, {BlocksSkippedCold} dropped from the queue cold, {Failures} failures{(FirstFailure != null ? " (first: " + FirstFailure + ")" : "")}";

    public void Dispose()
    {
        // DIRIGENT_JIT_STATS=1: the figures on stderr when the VM goes (for profiling the tier).
        if (Stats)
        {
            Console.Error.WriteLine($"dirigent: jit: {this}");
            if (BlockCompiler.HandlerForms is { } forms)
                Console.Error.WriteLine("dirigent: jit: left to handlers: " +
                    string.Join(", ", forms.OrderByDescending(kv => kv.Value).Take(40).Select(kv => $"{kv.Key} {kv.Value}")));
        }
        LastTotals = (Interlocked.Read(ref BlocksCompiled), Interlocked.Read(ref PeakIlBytes), CompileTime);
        _disposed = true;
        _signal.Release();
    }
}
