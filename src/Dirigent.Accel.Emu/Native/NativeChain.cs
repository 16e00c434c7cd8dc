using System.Runtime.CompilerServices;
using Dirigent.Accel.Emu.Core;

namespace Dirigent.Accel.Emu.Native;

/// <summary>
/// A block's native code: valid only for the vCPU that owns the arena it lives in, in that generation. Its direct
/// exits (JMP, CALL, both ways of a Jcc, running off the block's end) are link sites: rel32 fields that first lead to
/// an epilogue returning to the vCPU's loop, and that the owner later points at a trampoline into the successor's code
/// (<see cref="NativeCompiler.Link"/>), as TCG chains its translation blocks.
/// </summary>
internal sealed unsafe class NativeCode
{
    public readonly object Owner;
    public readonly int Gen;
    public readonly nint Entry;
    public readonly Block Block;
    /// <summary>The code's index in its owner's table (what chained code stores in the CPU's _nativeSlot).</summary>
    public readonly int Slot;
    /// <summary>Per link site: its rel32 field's offset from <see cref="Entry"/>, the RIP it leaves with, what it is linked to.</summary>
    public readonly int[] SiteOffsets;
    public readonly ulong[] SiteTargets;
    public readonly NativeCode?[] LinkedTo;
    /// <summary>Per dynamic site (RET, JMP/CALL r/m): its target immediate's offset from Entry (-1: a direct exit), and how often it was linked.</summary>
    public readonly int[] SiteImms;
    public readonly byte[] Relinks;
    // The chain word: how many more times trampolines may enter this code before the vCPU's loop sees the block again
    // (which refills it), or Dead. In a pinned array, so that trampolines read it at a fixed address.
    private readonly int[] _words;
    private readonly int _wordIndex;

    /// <summary>A chain word no trampoline passes: the block was invalidated (a trampoline that meets it asks the vCPU's
    /// loop to link its site again, to the block that replaces it).</summary>
    public const int Dead = -(1 << 30);

    /// <summary>A chain word no trampoline passes and that needs no new link: the block has compiled (IL) code to run
    /// instead. Failing trampolines decrement it too; it stays above <see cref="DeadBelow"/> for tens of millions of them.</summary>
    public const int Retired = -(1 << 20);

    /// <summary>Words below this are <see cref="Dead"/>.</summary>
    public const int DeadBelow = -(1 << 26);

    public NativeCode(object owner, int gen, nint entry, Block block, int slot, int[] words, int wordIndex, int[] siteOffsets,
        ulong[] siteTargets, int[] siteImms)
    {
        Owner = owner;
        Gen = gen;
        Entry = entry;
        Block = block;
        Slot = slot;
        _words = words;
        _wordIndex = wordIndex;
        SiteOffsets = siteOffsets;
        SiteTargets = siteTargets;
        SiteImms = siteImms;
        Relinks = new byte[siteOffsets.Length];
        LinkedTo = new NativeCode?[siteOffsets.Length];
    }

    /// <summary>The chain word's address (the array is pinned; read it only while the code's generation is current).</summary>
    public int* Word => (int*)Unsafe.AsPointer(ref _words[_wordIndex]);

    /// <summary>Trampolines stop entering this code (any thread; the array stays alive as long as this object): Dead when
    /// the block was invalidated, Retired when it has IL code.</summary>
    public void Kill(int word = Dead) => Volatile.Write(ref _words[_wordIndex], word);
}

internal sealed unsafe partial class NativeCompiler
{
    /// <summary>
    /// Trampoline entries a block's code allows between two visits of the vCPU's loop, which refills them and credits
    /// them to the block's heat for the IL tier. It bounds how long native code runs without the loop (the GC waits for
    /// a vCPU inside native code) and how late a hot block reaches the IL tier's queue.
    /// </summary>
    public const int ChainBudget = 64;

    private const int WordsPerChunk = 4096;
    // This generation's codes by slot, and its chain words (pinned chunks, never reused: a Kill from another thread
    // after the arena started over writes into its own chunk).
    private readonly List<NativeCode> _slots = new();
    private int[] _words = GC.AllocateArray<int>(WordsPerChunk, pinned: true);
    private int _wordsUsed, _slotsGen;
    // Per block being compiled: the link sites' rel32 offsets, RIP targets and epilogue labels.
    private readonly List<(int at, ulong target, int label, int imm)> _sites = new();

    /// <summary>Trampolines made (links between two blocks' code), the time spent making them, and (DIRIGENT_JIT_STATS)
    /// the site exits the vCPU's loop looked at, those at sites already linked.</summary>
    public long Links, LinkTicks, SiteExits, SiteExitsLinked;

    /// <summary>The code in slot <paramref name="slot"/> of the current generation.</summary>
    public NativeCode SlotCode(int slot) => _slots[slot];

    /// <summary>A direct exit to <paramref name="target"/>: a JMP (or the Jcc given) to an epilogue that Link may replace.</summary>
    private void ExitTo(ulong target, int jccCc = -1)
    {
        int label = _a.NewLabel();
        int at = jccCc >= 0 ? _a.Jcc(jccCc, label) : _a.Jmp(label);
        _sites.Add((at, target, label, -1));
    }

    /// <summary>
    /// An exit whose RIP (stored, and in r8) is known only at run time (RET, JMP/CALL r/m): an inline cache of one
    /// target. The site compares r8 with a patchable immediate (at first a non-canonical value no target equals) and,
    /// when equal, takes a link site like a direct exit's; Link sets the immediate when it links the site.
    /// </summary>
    private void DynamicExit()
    {
        int imm = _a.MovImm64(R10, NoTarget);
        _a.Alu(X64Emitter.OpCmp, 8, R8, R10);
        int label = _a.NewLabel();
        _a.Jcc(X64Emitter.CcNe, label);
        int at = _a.Jmp(label);
        _sites.Add((at, NoTarget, label, imm));
    }

    /// <summary>A dynamic site's target before it is linked: non-canonical, so no RIP equals it.</summary>
    private const ulong NoTarget = 0x8000_0000_0000_0000;

    /// <summary>Times a dynamic site is linked again to a new target: a RET that returns to many callers stays unlinked.</summary>
    public const int MaxRelinks = 4;

    /// <summary>The way out through link site <paramref name="site"/>: RIP, the site for the vCPU's loop to link (none: -1), the count.</summary>
    private void SiteEpilogue(ulong target, int site, int count)
    {
        // (A dynamic site's RIP is stored already; its trampoline's way out stores the linked target, the same value.)
        if (target != NoTarget)
        {
            _a.MovImm(R9, target);
            _a.Store(8, Rsi, _l.Rip, R9);
        }
        if (site >= 0) _a.StoreImm(4, Rsi, _l.LinkSite, site + 1);
        _a.MovEaxImm(count);
        _a.Ret();
    }

    /// <summary>The block's code object, in a slot of the current generation (a new generation empties the table).</summary>
    private NativeCode NewCode(Block b, nint entry)
    {
        if (_slotsGen != _arena.Gen)
        {
            _slotsGen = _arena.Gen;
            _slots.Clear();
            _wordsUsed = WordsPerChunk; // a fresh chunk too
        }
        if (_wordsUsed == WordsPerChunk)
        {
            _words = GC.AllocateArray<int>(WordsPerChunk, pinned: true);
            _wordsUsed = 0;
        }
        int w = _wordsUsed++;
        _words[w] = ChainBudget;
        var offsets = new int[_sites.Count];
        var targets = new ulong[_sites.Count];
        var imms = new int[_sites.Count];
        for (int s = 0; s < _sites.Count; s++) (offsets[s], targets[s], imms[s]) = (_sites[s].at, _sites[s].target, _sites[s].imm);
        var nc = new NativeCode(_owner, _arena.Gen, entry, b, _slots.Count, _words, w, offsets, targets, imms);
        _slots.Add(nc);
        return nc;
    }

    /// <summary>
    /// Points link site <paramref name="site"/> of <paramref name="from"/> at a trampoline into <paramref name="to"/>'s
    /// code (both this generation's; the caller checked that to's block is the valid block at the site's target, on
    /// one page). The trampoline leaves through the site's epilogue when an event is pending, when to's chain word is
    /// spent or dead, or (crossPage: to's page is not from's) when the execute TLB no longer maps the target page to to's
    /// frame, the check the vCPU's loop makes (Cpu.FetchMapped). Otherwise it counts from's instructions, makes to the
    /// current slot and jumps. Runs on the owning vCPU's thread, outside native code, so patching needs no care.
    /// </summary>
    public void Link(NativeCode from, int site, NativeCode to, ulong target, bool crossPage, ulong physPage)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        try { LinkCore(from, site, to, target, crossPage, physPage); }
        finally { LinkTicks += System.Diagnostics.Stopwatch.GetTimestamp() - t0; }
    }

    private void LinkCore(NativeCode from, int site, NativeCode to, ulong target, bool crossPage, ulong physPage)
    {
        int gen = _arena.Gen;
        if (from.Gen != gen || to.Gen != gen) return;
        int count = from.Block.Count;
        _a.Reset();
        int fail = _a.NewLabel();
        _a.AluMemImm(X64Emitter.OpCmp, 4, Rsi, _l.PendingEvents, 0);
        _a.Jcc(X64Emitter.CcNe, fail);
        if (crossPage)
        {
            ulong page = target >> 12;
            int entry = (int)(page & Cpu.TlbIndexMask) * _l.TlbEntrySize;
            _a.Load(8, R11, Rsi, _l.TlbX);
            _a.MovImm(R10, page);
            _a.AluLoad64(X64Emitter.OpCmp, R10, R11, entry + _l.TlbTag);
            _a.Jcc(X64Emitter.CcNe, fail);
            _a.MovImm(R10, physPage);
            _a.AluLoad64(X64Emitter.OpCmp, R10, R11, entry + _l.TlbPhysPage);
            _a.Jcc(X64Emitter.CcNe, fail);
        }
        int spent = _a.NewLabel();
        _a.MovImm(Rax, (ulong)to.Word);
        _a.AluMemImm(X64Emitter.OpSub, 4, Rax, 0, 1);
        _a.Jcc(X64Emitter.CcS, spent);
        _a.AluMemImm(X64Emitter.OpAdd, 8, Rsi, _l.Chained, count);
        _a.StoreImm(4, Rsi, _l.Slot, to.Slot);
        int jmp = _a.JmpPlaceholder();
        // Only a dead target asks for a new link; an event, an unmapped page, a spent budget or IL code do not (the
        // vCPU's loop would find nothing to change), so those ways out skip its linking step.
        _a.Bind(spent);
        _a.AluMemImm(X64Emitter.OpCmp, 4, Rax, 0, NativeCode.DeadBelow);
        _a.Jcc(X64Emitter.CcGe, fail);
        SiteEpilogue(target, site, count);
        _a.Bind(fail);
        SiteEpilogue(target, -1, count);
        if (!_a.Finish()) return;
        nint t = _arena.Place(_a.Code);
        // Placing it started a new generation: from's and to's code are stale (and their bytes may be overwritten).
        if (t == 0 || _arena.Gen != gen) return;
        *(int*)(t + jmp) = (int)(to.Entry - (t + jmp + 4));
        if (from.SiteImms[site] >= 0)
        {
            // A dynamic site: the cached target first (nothing runs this code meanwhile: one thread, outside it).
            *(ulong*)(from.Entry + from.SiteImms[site]) = target;
            from.SiteTargets[site] = target;
            from.Relinks[site]++;
        }
        nint field = from.Entry + from.SiteOffsets[site];
        *(int*)field = (int)(t - (field + 4));
        from.LinkedTo[site] = to;
        Links++;
    }
}
