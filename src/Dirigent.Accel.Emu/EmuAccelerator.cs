using Dirigent.Accel.Emu.Core;
using Dirigent.Machine;
using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu;

/// <summary>The pure C# x86-64 accelerator: runs on any host, lets us trace and inspect guests.</summary>
public sealed class EmuAccelerator : IAccelerator
{
    private readonly MachineModel _vm;
    private readonly CodeCache _cache;
    private readonly List<Cpu> _cpus = new();

    /// <param name="jit">The compiled tier; null: from DIRIGENT_JIT (on unless it says 0).</param>
    /// <param name="nativeThreshold">The native first tier: runs before a block's native code is made, 0 for off;
    /// null: from DIRIGENT_NATIVE (on where the host is x86-64 Linux, unless it says 0).</param>
    public EmuAccelerator(MachineModel vm, Jit.JitMode? jit = null, int? nativeThreshold = null)
    {
        _vm = vm;
        _cache = new CodeCache(vm.Memory, jit ?? Jit.JitSettings.FromEnvironment()) { NativeThreshold = nativeThreshold };
        vm.Hooks.Changed += OnHooksChanged;
    }

    /// <summary>
    /// Watchpoints or execution hooks changed: every vCPU drops its translations and leaves compiled code, and none
    /// runs on until all have. Without that rendezvous a vCPU that had dropped its translations reported stores to a
    /// new watchpoint while another, not yet at its safe point (its thread unscheduled on a loaded host), still stored
    /// through its old soft-TLB entry, unreported: a gap in what a watchpoint added to a running SMP guest saw.
    /// A vCPU that is not executing has its part done here (PostSafePoint/WaitSafePoint) and runs no guest code
    /// meanwhile; one that does it at its own boundary then waits, not executing, for the others.
    /// </summary>
    private void OnHooksChanged()
    {
        Cpu[] cpus;
        lock (_cpus) cpus = _cpus.ToArray();
        var posted = new Cpu.SafePointRequest?[cpus.Length];
        // Not disposed: a vCPU may still be returning from its Wait when the last part is done.
        var all = new CountdownEvent(cpus.Length);
        var requester = Thread.CurrentThread;
        for (int k = 0; k < cpus.Length; k++)
            posted[k] = cpus[k].PostSafePoint(c =>
            {
                try { c.OnHooksChanged(); }
                finally { all.Signal(); }
                // Done here (the vCPU not executing, or this is its own thread): nothing of it runs meanwhile.
                if (Thread.CurrentThread != requester) c.HoldAfterSafePoint(all);
            });
        for (int k = 0; k < cpus.Length; k++) cpus[k].WaitSafePoint(posted[k]);
    }

    /// <summary>The compiled tier's mode and figures (blocks, IL bytes, compile time, evictions).</summary>
    public Jit.JitMode JitMode => _cache.Jit?.Mode ?? Jit.JitMode.Off;
    public long JitBlocksCompiled => _cache.Jit?.BlocksCompiled ?? 0;
    /// <summary>Compiled methods that hold a region of several blocks (BlockCompiler.Region.cs).</summary>
    public long JitRegionsCompiled => _cache.Jit?.Regions ?? 0;
    /// <summary>Methods that hold a bundle of unrelated blocks, and bundled blocks compiled again alone (BlockCompiler.Bundle.cs).</summary>
    public long JitBundlesCompiled => _cache.Jit?.Bundles ?? 0;
    public long JitTierUps => _cache.Jit?.TierUps ?? 0;
    public long JitFailures => _cache.Jit?.Failures ?? 0;
    public string? JitFirstFailure => _cache.Jit?.FirstFailure;
    /// <summary>One line: blocks, instructions inline, IL bytes, compile time, evictions, failures ("off" when off).</summary>
    public string JitSummary => _cache.Jit?.ToString() ?? "off";

    public string Name => "emu";

    public IVcpu CreateVcpu(int index)
    {
        var c = new Cpu(_vm, _cache, index);
        lock (_cpus) _cpus.Add(c);
        return c;
    }

    /// <summary>
    /// Turns the memory's dirty log on (if it is not already: starting it clears it) or off. The vCPUs log the pages of
    /// their write-TLB fills, of every store that bypasses the TLB and of each write entry they drop, so the entries
    /// they hold from before are dropped now (logged) and every later store is seen.
    /// </summary>
    public void SetDirtyLogging(bool enabled)
    {
        var log = _vm.Memory.DirtyLog;
        if (enabled)
        {
            if (!log.Enabled) log.SetEnabled(true);
            DropWriteTlbs();
        }
        else log.SetEnabled(false);
    }

    /// <summary>
    /// Makes every vCPU drop (and log) its write-TLB entries, so each page written since the last call is in the dirty
    /// log when this returns and the next store to it is logged again. Running vCPUs do it at their next block
    /// boundary; this waits for them. Harvest the log after this returns.
    /// </summary>
    public void CollectDirtyPages()
    {
        if (!_vm.Memory.DirtyLog.Enabled) return;
        DropWriteTlbs();
    }

    private void DropWriteTlbs()
    {
        Cpu[] cpus;
        lock (_cpus) cpus = _cpus.ToArray();
        var posted = new Cpu.SafePointRequest?[cpus.Length];
        for (int k = 0; k < cpus.Length; k++) posted[k] = cpus[k].PostWriteTlbDrop();
        for (int k = 0; k < cpus.Length; k++) cpus[k].WaitSafePoint(posted[k]);
    }

    public long BlocksTranslated => _cache.BlocksTranslated;
    public long BlocksInvalidated => _cache.BlocksInvalidated;
    /// <summary>The compiled tier (null when off).</summary>
    internal Emu.Jit.JitCompiler? CompiledTier => _cache.Jit;

    public void Dispose()
    {
        _vm.Hooks.Changed -= OnHooksChanged;
        lock (_cpus)
        {
            if (Jit.JitCompiler.Stats)
                foreach (var c in _cpus)
                {
                    if (c.NativeTier is { } nt)
                        Console.Error.WriteLine($"dirigent: native: vcpu{c.Index}: {nt.BlocksCompiled} blocks ({nt.InstructionsCovered} instructions covered, {nt.BlocksNone} left to the interpreter: under three quarters covered), {nt.CompileTicks * 1000.0 / System.Diagnostics.Stopwatch.Frequency:F0} ms, {nt.Arena.BytesEmitted / 1024} KiB emitted, {nt.Links} links ({nt.LinkTicks * 1000.0 / System.Diagnostics.Stopwatch.Frequency:F0} ms; site exits {nt.SiteExits}, {nt.SiteExitsLinked} of them at linked sites), arena restarts {nt.Arena.Restarts}; stopped before: {string.Join(", ", nt.StopsAt.OrderByDescending(kv => kv.Value).Take(40).Select(kv => $"{kv.Key} {kv.Value}"))}; runs left to the interpreter at: {string.Join(", ", nt.StopRuns.OrderByDescending(kv => kv.Value).Take(40).Select(kv => $"{kv.Key} {kv.Value}"))}");
                    Console.Error.WriteLine($"dirigent: jit: vcpu{c.Index}: {c.JitRunsCompiled} compiled block runs, {c.JitRunsInterpreted} interpreted (chained loop), {c.JitRunsWhileQueued} of them waiting in the compiler's queue; ChainLookup {c.JitChainLookups} calls, {c.JitChainLookupMisses} found nothing ({c.JitMissSlot} not in the jump cache, {c.JitMissNotCompiled} not compiled)");
                }
            foreach (var c in _cpus) c.Dispose();
            _cpus.Clear();
        }
        _cache.Dispose();
    }
}
