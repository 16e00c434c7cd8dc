using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Dirigent.Accel.Emu.Native;
using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>The native first tier (Native/NativeCompiler.cs): when a block's native code runs, and how it is entered.</summary>
public sealed unsafe partial class Cpu
{
    private NativeCompiler? _native;
    private int _nativeThreshold;
    private static NativeLayout? s_nativeLayout;
    /// <summary>DIRIGENT_NATIVE_CHAIN=0: native code is never linked (every block returns to the vCPU's loop), for comparison.</summary>
    private static readonly bool s_nativeChain = Environment.GetEnvironmentVariable("DIRIGENT_NATIVE_CHAIN") != "0";
    // Written by chained native code (Native/NativeChain.cs): the slot of the code running, the instructions of the
    // blocks it completed before that one, and the link site (+1) it left through.
    private int _nativeSlot, _nativeLinkSite;
    private ulong _nativeChained;
    // The code and site the last native run left through, for RunChained to link once it knows the successor.
    private NativeCode? _linkFrom;
    private int _linkSiteIdx;

    /// <summary>DIRIGENT_NATIVE: 0/off, always (every 64-bit block before it first runs), else on (x86-64 Linux hosts).</summary>
    private void InitNative()
    {
        _nativeThreshold = _codeCache.NativeThreshold ?? NativeThresholdFromEnvironment();
        if (_nativeThreshold <= 0) return;
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64 || !OperatingSystem.IsLinux()) return;
        var arena = NativeArena.TryCreate(int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_NATIVE_ARENA_MB"), out int mb) && mb is > 0 and <= 1024
            ? mb << 20 : NativeArena.DefaultSize);
        if (arena == null) { LogOnce("native tier off: no executable memory"); return; }
        _native = new NativeCompiler(s_nativeLayout ??= MeasureLayout(), arena, this);
    }

    /// <summary>DIRIGENT_NATIVE=0/off: 0; always: 1; else DIRIGENT_NATIVE_THRESHOLD or the default.</summary>
    internal static int NativeThresholdFromEnvironment()
    {
        string? v = Environment.GetEnvironmentVariable("DIRIGENT_NATIVE")?.Trim().ToLowerInvariant();
        if (v is "0" or "off" or "false" or "no") return 0;
        if (v is "always" or "force") return 1;
        return int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_NATIVE_THRESHOLD"), out int t) && t > 0 ? t : DefaultNativeThreshold;
    }

    /// <summary>Runs before a block's native code is made: blocks run fewer times are interpreted only.</summary>
    internal const int DefaultNativeThreshold = 4;

    internal NativeCompiler? NativeTier => _native;

    private NativeLayout MeasureLayout()
    {
        var l = new NativeLayout();
        fixed (ulong* a = &_flags)
        fixed (ulong* rip = &Rip)
        fixed (LazyOp* op = &_lazyOp)
        fixed (byte* size = &_lazySize)
        fixed (ulong* res = &_lazyRes)
        fixed (ulong* la = &_lazyA)
        fixed (ulong* lb = &_lazyB)
        fixed (bool* ci = &_lazyCarryIn)
        fixed (TlbEntry** r = &_tlbR)
        fixed (TlbEntry** w = &_tlbW)
        fixed (SegmentState* s = Sreg)
        fixed (TlbEntry** x = &_tlbX)
        fixed (int* slot = &_nativeSlot)
        fixed (int* site = &_nativeLinkSite)
        fixed (ulong* chained = &_nativeChained)
        {
            byte* b = (byte*)a;
            l.Rip = (int)((byte*)rip - b);
            l.LazyOp = (int)((byte*)op - b);
            l.LazySize = (int)(size - b);
            l.LazyRes = (int)((byte*)res - b);
            l.LazyA = (int)((byte*)la - b);
            l.LazyB = (int)((byte*)lb - b);
            l.LazyCarryIn = (int)((byte*)ci - b);
            l.TlbR = (int)((byte*)r - b);
            l.TlbW = (int)((byte*)w - b);
#pragma warning disable CS0420 // only the field's address is taken: native code reads it with a plain load (x86's are ordered)
            l.PendingEvents = (int)((byte*)Unsafe.AsPointer(ref _pendingEvents) - b);
#pragma warning restore CS0420
            l.TlbX = (int)((byte*)x - b);
            l.TlbEntrySize = sizeof(TlbEntry);
            TlbEntry e = default;
            l.TlbTag = (int)((byte*)&e.Tag - (byte*)&e);
            l.TlbPhysPage = (int)((byte*)&e.PhysPage - (byte*)&e);
            l.Slot = (int)((byte*)slot - b);
            l.LinkSite = (int)((byte*)site - b);
            l.Chained = (int)((byte*)chained - b);
            l.SegSize = sizeof(SegmentState);
            l.SegBaseOffset = (int)((byte*)&s[0].Base - (byte*)s);
        }
        return l;
    }

    /// <summary>
    /// The chained loop's interpreted path with the native tier on: runs the block's native code, made once the block
    /// has run <see cref="_nativeThreshold"/> times, and returns how many instructions of the block it ended in that
    /// code completed: the block's count (it set RIP), fewer (RIP is set at the one the interpreter goes on with), or
    /// 0 when there is no code to run (the interpreter runs the whole block). Native code may have chained through
    /// other blocks' code: b is then the block it ended in, and the instructions of those before it are counted here.
    /// </summary>
    private int RunNative(ref Block b, NativeCompiler nat)
    {
        var nc = b.Native;
        if (nc == null || nc.Gen != nat.Gen || nc.Owner != this)
        {
            // Another vCPU's code (its own arena) is not ours to run; our own stale code is made again at once; a
            // block without code gets it at its threshold-th run.
            if (nc != null ? nc.Owner != this : ++b.NativeHeat != _nativeThreshold)
            {
                if (Jit.JitCompiler.Stats && b.NativeHeat < 0) nat.CountStop(b, b.NativeStop);
                return 0;
            }
            nc = nat.Compile(b);
            b.Native = nc;
            if (nc == null) { b.NativeHeat = int.MinValue; return 0; }
            // An invalidation that ran while the code was made found no code to keep trampolines out of (it sets Valid
            // before it reads Native; this writes Native before it reads Valid).
            Interlocked.MemoryBarrier();
            if (!b.Valid) nc.Kill();
            b.NativeRefill = NativeCompiler.ChainBudget;
        }
        Refill(b, nc);
        _nativeSlot = nc.Slot;
        int k;
        fixed (ulong* g = Gpr)
        fixed (ulong* anchor = &_flags)
        fixed (SegmentState* s = Sreg)
            k = ((delegate* unmanaged[SuppressGCTransition]<ulong*, ulong*, SegmentState*, int>)nc.Entry)(g, anchor, s);
        if (_nativeSlot != nc.Slot)
        {
            nc = nat.SlotCode(_nativeSlot);
            b = nc.Block;
        }
        _instret += _nativeChained + (ulong)k;
        _nativeChained = 0;
        // (A site given up on, a dynamic one linked as often as it may be or a direct one whose target will not have
        // code to link to, is not worth the loop's linking step.)
        if (_nativeLinkSite != 0 && s_nativeChain && nc.Relinks[_nativeLinkSite - 1] < NativeCompiler.MaxRelinks)
        {
            _linkFrom = nc;
            _linkSiteIdx = _nativeLinkSite - 1;
        }
        _nativeLinkSite = 0;
        if (k < b.Count)
        {
            if (Jit.JitCompiler.Stats) nat.CountStop(b, k);
            Rip = b.Instrs[k].IP;
            _currentBlockId = b.Id;
        }
        else
        {
            InstrIp = b.Instrs[k - 1].IP;
            _currentBlockId = 0;
        }
        return k;
    }

    /// <summary>
    /// The block's chain word, when half spent: the trampoline entries since the last refill go to its heat for the IL
    /// tier (the loop counts only the runs it sees), and it gets a new budget, no more than the runs left before the
    /// block reaches the IL tier's threshold, so that it comes back here to be queued when it does. Another thread may
    /// kill the word at any time, so only a live value is replaced.
    /// </summary>
    private void Refill(Block b, NativeCode nc)
    {
        int* word = nc.Word;
        int left = *word;
        if (left < -1 || left > b.NativeRefill / 2) return;
        // (-1: the entry that found the word spent did not run the block.)
        int used = b.NativeRefill - Math.Max(left, 0), refill = NativeCompiler.ChainBudget;
        if (_jit != null && b.JitQueued == 0)
        {
            int toGo = _jit.ThresholdFor(b) - b.Heat - used;
            if (toGo > 0 && toGo < refill) refill = toGo;
        }
        if (Interlocked.CompareExchange(ref *word, refill, left) != left) return;
        b.NativeRefill = refill;
        b.Heat += used;
        if (_jit != null && b.Heat >= _jit.ThresholdFor(b) && b.JitQueued == 0) _jit.Enqueue(b);
    }

    /// <summary>
    /// RunChained, with n the block at RIP after b: links the site b's native code left through to n's code, when n is
    /// the valid block there, has this vCPU's code of this generation, no IL code, and lies on one page. A successor on
    /// b's own page needs no mapping check in the trampoline: every block in a chain is on a page whose mapping was
    /// checked when the chain began or when a trampoline entered it, and nothing native code runs changes mappings.
    /// </summary>
    private void LinkNative(Block b, Block n, ulong rip, NativeCompiler nat)
    {
        var from = _linkFrom!;
        _linkFrom = null;
        if (Jit.JitCompiler.Stats) { nat.SiteExits++; if (from.LinkedTo[_linkSiteIdx] != null) nat.SiteExitsLinked++; }
        int site = _linkSiteIdx;
        var to = n.Native;
        if (from.Block != b || from.Gen != nat.Gen || n.Linear != rip || !n.Valid) return;
        bool same = from.SiteTargets[site] == rip;
        if (n.Compiled != null || n.Page1 != ulong.MaxValue || n.NativeHeat == int.MinValue || (to != null && to.Owner != this))
        {
            // n will not have this vCPU's native code on one page (it has IL code, spans two pages, is left to the
            // interpreter, or belongs to another vCPU): a direct exit to it is given up on.
            if (same && from.SiteImms[site] < 0) from.Relinks[site] = NativeCompiler.MaxRelinks;
            return;
        }
        if (to == null || to.Gen != nat.Gen || *to.Word < -1) return;
        if (same ? from.LinkedTo[site] == to : from.SiteImms[site] < 0 || from.Relinks[site] >= NativeCompiler.MaxRelinks) return;
        nat.Link(from, site, to, rip, crossPage: (rip >> 12) != (b.Linear >> 12), n.Page0);
    }
}
