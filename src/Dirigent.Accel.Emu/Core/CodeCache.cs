using Iced.Intel;
using Dirigent.Machine.Memory;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// Decoded blocks keyed by (guest-physical address, CS offset, bitness), shared by the vCPUs of one VM. Pages that
/// hold decoded code are tracked so that any write to them (guest store, DMA, loader) drops the stale blocks:
/// self-modifying and cross-modifying code take effect as on hardware.
/// </summary>
/// <remarks>
/// No thread touches another vCPU's TLB or current block while that vCPU runs. A store reaches RAM either through a
/// write-TLB entry (no hook) or through a slow path that calls <see cref="NotifyWrite"/>; so a page must not be covered
/// by any vCPU's write entry while blocks decoded from it exist. Per page we keep a state (data, being protected,
/// code) and a mask of the vCPUs that may hold a write entry for it. A vCPU filling a write entry sets its bit
/// (Interlocked: a full fence) and then reads the state, refusing the fill unless the page is data. A vCPU about to
/// decode from a data page sets the state to "being protected", fences, reads the mask, and has every vCPU in it drop
/// its write entries for the page at a safe point (Cpu.SafePoint.cs), waiting without holding the cache lock; each one
/// clears its own bit as it drops them. Dekker-style, either the filler sees the new state or the protector sees the
/// filler's bit. Only then is the page code; a block is registered (under the lock) only while its pages are code, and
/// an invalidation in between sends the decoder round again. Slow-path stores fence between the store and the state
/// read for the same reason, so a decoder either reads the new bytes or the store invalidates what it decoded.
/// Invalidation drops blocks and marks them invalid; only the writing vCPU's own current block is cut short
/// (BlockExit): the others see Block.Valid false at their next lookup or chained jump, like a processor that has
/// not yet serialized after another one modified its code.
/// </remarks>
internal sealed unsafe class CodeCache
{
    private readonly GuestMemory _mem;
    // Read without the lock (vCPUs look blocks up on every jump-cache miss, and must not wait behind another vCPU's
    // decode); added and removed under _lock with the page lists.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(ulong, ulong, int), Block> _blocks = new();
    private readonly Dictionary<ulong, List<Block>> _byPage = new();
    // Per guest-physical page below TopOfRam: data (0), code (-1), or a positive ticket while a vCPU protects it (so
    // that a protector whose page was invalidated and protected again by another meanwhile does not declare it code).
    private readonly int[] _pageState;
    // Per page: bit (vCPU index mod 64) set while that vCPU may hold a write-TLB entry for the page.
    private readonly ulong[] _writers;
    private int _lastTicket;
    private const int PageData = 0, PageCode = -1;
    private readonly List<Cpu> _cpus = new();
    private volatile Cpu[] _cpuArray = [];
    private readonly object _lock = new();
    private readonly Decoder?[] _decoders = new Decoder?[3];
    private readonly FetchReader _reader = new();
    private readonly Instruction[] _scratch = new Instruction[MaxBlockInstructions];

    public const int MaxBlockInstructions = 64;
    /// <summary>Decodes of a block whose page was invalidated while being protected before it runs once uncached.</summary>
    private const int MaxProtectAttempts = 4;
    public long BlocksTranslated;
    public long BlocksInvalidated;

    /// <summary>The compiled tier (null when off).</summary>
    public Jit.JitCompiler? Jit { get; }
    /// <summary>The native first tier's threshold for this VM's vCPUs (0: off); null: from DIRIGENT_NATIVE.</summary>
    public int? NativeThreshold { get; init; }

    public CodeCache(GuestMemory mem, Jit.JitMode jit = Emu.Jit.JitMode.Off)
    {
        _mem = mem;
        if (jit != Emu.Jit.JitMode.Off) Jit = new Jit.JitCompiler(jit, lookup: (phys, ip) => Lookup(phys, ip, 64));
        _pageState = new int[(mem.TopOfRam >> 12) + 1];
        _writers = new ulong[_pageState.Length];
        mem.ExternalWrite += (gpa, len) => InvalidateRange(gpa, len);
    }

    public void Register(Cpu c) { lock (_lock) { _cpus.Add(c); _cpuArray = _cpus.ToArray(); } }
    public void Unregister(Cpu c) { lock (_lock) { _cpus.Remove(c); _cpuArray = _cpus.ToArray(); } }

    /// <summary>vCPUs of this VM (HLT with IF=0 can only end the run on a uniprocessor).</summary>
    public int CpuCount => _cpuArray.Length;

    public bool IsCodePage(ulong physPage)
    {
        ulong n = physPage >> 12;
        return n < (ulong)_pageState.Length && Volatile.Read(ref _pageState[n]) != PageData;
    }

    /// <summary>
    /// The vCPU with writer bit <paramref name="bit"/> is about to fill a write-TLB entry for a RAM page: records it
    /// and says whether the fill may go ahead (the page holds no code and no vCPU is protecting it).
    /// </summary>
    public bool PrepareWriteFill(ulong physPage, ulong bit)
    {
        ulong n = physPage >> 12;
        if (n >= (ulong)_pageState.Length) return true;
        // Already set means no protector has cleared it since our last fill, so any protector sees it: no fence needed.
        if ((Volatile.Read(ref _writers[n]) & bit) == 0) Interlocked.Or(ref _writers[n], bit);
        return Volatile.Read(ref _pageState[n]) == PageData;
    }

    /// <summary>A vCPU dropped its write entries for a page (on its own thread or while not executing).</summary>
    public void ClearWriter(ulong physPage, ulong bit)
    {
        ulong n = physPage >> 12;
        if (n < (ulong)_writers.Length) Interlocked.And(ref _writers[n], ~bit);
    }

    public Block? Lookup(ulong phys, ulong ip, int bits)
    {
        return _blocks.TryGetValue((phys, ip, bits), out var b) ? b : null;
    }

    /// <summary>
    /// A store by <paramref name="writer"/> hit guest RAM at pa without going through a write-TLB entry, after the
    /// bytes were stored: drop blocks decoded from the page(s) and log them dirty (every slow-path, RMW and page-table
    /// store of the vCPUs comes through here).
    /// </summary>
    public void NotifyWrite(ulong pa, int size, Cpu writer)
    {
        _mem.DirtyLog.Mark(pa, (ulong)size);
        // Store, fence, read the state: pairs with the protector's state write, fence, decode (see the remarks).
        if (_cpuArray.Length > 1) Interlocked.MemoryBarrier();
        ulong n = pa >> 12;
        if (n < (ulong)_pageState.Length && Volatile.Read(ref _pageState[n]) != PageData) InvalidatePage(n << 12, writer);
        ulong last = (pa + (ulong)size - 1) >> 12;
        if (last != n && last < (ulong)_pageState.Length && Volatile.Read(ref _pageState[last]) != PageData) InvalidatePage(last << 12, writer);
    }

    /// <summary>DMA and loader writes (GuestMemory.ExternalWrite): no vCPU wrote, so none has its block cut short.</summary>
    public void InvalidateRange(ulong gpa, ulong len)
    {
        if (len == 0) return;
        Interlocked.MemoryBarrier();
        for (ulong p = gpa & ~0xFFFUL; p < gpa + len; p += 4096)
            if (IsCodePage(p)) InvalidatePage(p, null);
    }

    private void InvalidatePage(ulong page, Cpu? writer)
    {
        lock (_lock)
        {
            Volatile.Write(ref _pageState[page >> 12], PageData);
            if (!_byPage.Remove(page, out var list)) return;
            foreach (var b in list)
            {
                if (!b.Valid) continue;
                b.Valid = false;
                // Native trampolines stop entering it (after the fence: the vCPU making its code writes Native, then
                // reads Valid).
                Interlocked.MemoryBarrier();
                b.Native?.Kill();
                BlocksInvalidated++;
                _blocks.TryRemove((b.Phys, b.Ip, b.Bits), out _);
                // Only the writer's own block is cut short: another vCPU's current block belongs to its thread.
                writer?.OnBlockInvalidated(b);
                Jit?.Forget(b);
            }
        }
    }

    /// <summary>
    /// Makes a page code: no vCPU keeps a write entry for it when this returns, unless an invalidation (a slow-path
    /// write) made it data again meanwhile. Called without the cache lock: it waits for other vCPUs' safe points.
    /// </summary>
    private void ProtectPage(ulong page)
    {
        ulong n = page >> 12;
        if (n >= (ulong)_pageState.Length || Volatile.Read(ref _pageState[n]) == PageCode) return;
        int ticket;
        lock (_lock)
        {
            ticket = _pageState[n];
            if (ticket == PageCode) return;
            if (ticket == PageData)
            {
                ticket = ++_lastTicket;
                if (ticket <= 0) ticket = _lastTicket = 1;
                Volatile.Write(ref _pageState[n], ticket);
            }
        }
        // State write, fence, mask read: pairs with PrepareWriteFill's bit set (a full fence) and state read.
        Interlocked.MemoryBarrier();
        ulong mask = Volatile.Read(ref _writers[n]);
        if (mask != 0)
        {
            var cpus = _cpuArray;
            Action<Cpu> drop = c => c.DropWritesToPage(page);
            var posted = new List<(Cpu, Cpu.SafePointRequest)>();
            foreach (var c in cpus)
            {
                if ((mask & c.WriterBit) == 0) continue;
                // Runs inline on the caller's own vCPU and on vCPUs that are not executing.
                var req = c.PostSafePoint(drop);
                if (req != null) posted.Add((c, req));
            }
            foreach (var (c, req) in posted) c.WaitSafePoint(req);
        }
        lock (_lock)
            if (_pageState[n] == ticket) Volatile.Write(ref _pageState[n], PageCode);
    }

    private bool IsProtected(ulong page)
    {
        ulong n = page >> 12;
        return n >= (ulong)_pageState.Length || _pageState[n] == PageCode;
    }

    /// <summary>
    /// Decodes a new block starting at the given address (the first byte is known to be fetchable). Its page(s) are
    /// made code first; a block whose page a write made data again while it was decoded is decoded again, and after
    /// <see cref="MaxProtectAttempts"/> runs once uncached (Valid false: no later lookup or link reuses it).
    /// </summary>
    public Block Translate(Cpu cpu, ulong linear, ulong phys, ulong ip, int bits)
    {
        var b = TranslateBlock(cpu, linear, phys, ip, bits);
        // JitMode.Always (tests): every 64-bit block is compiled before it first runs.
        if (Jit is { Mode: Emu.Jit.JitMode.Always } jit && bits == 64 && b.Valid) jit.CompileNow(b);
        return b;
    }

    private Block TranslateBlock(Cpu cpu, ulong linear, ulong phys, ulong ip, int bits)
    {
        ulong page1 = ulong.MaxValue;
        for (int attempt = 1; ; attempt++)
        {
            bool last = attempt >= MaxProtectAttempts;
            if (!last)
            {
                ProtectPage(phys & ~0xFFFUL);
                if (page1 != ulong.MaxValue) ProtectPage(page1);
            }
            lock (_lock)
            {
                var b = Decode(cpu, linear, phys, ip, bits);
                if (IsProtected(b.Page0) && (b.Page1 == ulong.MaxValue || IsProtected(b.Page1)))
                {
                    AddToPage(b.Page0, b);
                    if (b.Page1 != ulong.MaxValue) AddToPage(b.Page1, b);
                    _blocks[(phys, ip, bits)] = b;
                    BlocksTranslated++;
                    return b;
                }
                if (last)
                {
                    b.Valid = false;
                    return b;
                }
                page1 = b.Page1;
            }
        }
    }

    private void AddToPage(ulong page, Block b)
    {
        if (!_byPage.TryGetValue(page, out var list)) _byPage[page] = list = new List<Block>();
        list.Add(b);
    }

    /// <summary>Under the lock: decodes up to a control transfer, a block-ending instruction, a page end or the cap.</summary>
    private Block Decode(Cpu cpu, ulong linear, ulong phys, ulong ip, int bits)
    {
        int di = bits == 64 ? 2 : bits == 32 ? 1 : 0;
        _reader.Reset(cpu, linear, phys, _mem);
        var dec = _decoders[di] ??= Decoder.Create(bits, _reader, DecoderOptions.None);
        dec.IP = ip;
        var ends = Dispatch.EndsBlock;
        int n = 0;
        ulong pageEnd = (linear | 0xFFF) + 1;
        ulong curLinear = linear;
        while (n < MaxBlockInstructions)
        {
            dec.Decode(out _scratch[n]);
            ref Instruction ins = ref _scratch[n];
            if (dec.LastError == DecoderError.NoMoreBytes)
            {
                // The instruction runs into a page we cannot fetch: end the block before it so the fault is
                // raised (with the right RIP) when it is the first instruction of its own block.
                if (n == 0) _reader.RaiseFetchFault();
                break;
            }
            n++;
            curLinear += (ulong)ins.Length;
            bool end = ins.Code == Code.INVALID || ends[(int)ins.Code] || ins.FlowControl != FlowControl.Next;
            if (end || curLinear >= pageEnd) break;
            if (bits != 64 && ins.NextIP > 0xFFFF_FFFF) break;
        }
        var b = new Block
        {
            Phys = phys, Ip = ip, Linear = linear, Bits = bits, Count = n, RunCount = n,
            Instrs = _scratch.AsSpan(0, n).ToArray(),
            Handlers = new delegate*<Cpu, ref Instruction, void>[n],
            Page0 = phys & ~0xFFFUL,
        };
        for (int k = 0; k < n; k++) b.Handlers[k] = HandlerFor(ref b.Instrs[k], bits);
        if (bits == 64 && n >= 2)
        {
            var f = Instructions.FastFused.Select(ref b.Instrs[n - 2], ref b.Instrs[n - 1]);
            if (f != null) { b.Handlers[n - 2] = f; b.RunCount = n - 1; }
        }
        if (_reader.SecondPagePhys != ulong.MaxValue) b.Page1 = _reader.SecondPagePhys;
        return b;
    }

    /// <summary>The interpreter's handler for one instruction (specialised forms first; never a fused pair).</summary>
    internal static delegate*<Cpu, ref Instruction, void> HandlerFor(ref Instruction i, int bits)
    {
        var h = Instructions.FastRegReg.Select(ref i, Dispatch.Table[(int)i.Code]);
        h = Instructions.FastMem.Select(ref i, bits, h);
        return Instructions.FastBranch.Select(ref i, bits, h);
    }

    public void Dispose()
    {
        if (Emu.Jit.JitCompiler.Stats)
        {
            var top = _blocks.Values.OrderByDescending(b => b.InterpRuns).Take(12)
                .Select(b => $"{b.Ip:x}/{b.Bits} runs={b.InterpRuns} heat={b.Heat} queued={b.JitQueued} compiled={(b.Compiled != null ? 1 : 0)} n={b.Count}");
            Console.Error.WriteLine("dirigent: jit: most interpreted blocks: " + string.Join("; ", top));
            long total = _blocks.Values.Sum(b => b.InterpRuns), under = _blocks.Values.Where(b => b.JitQueued == 0).Sum(b => b.InterpRuns);
            Console.Error.WriteLine($"dirigent: jit: interpreted runs of live blocks {total}, of never-queued blocks {under}, live blocks {_blocks.Count}, blocks invalidated {BlocksInvalidated}");
            // DIRIGENT_JIT_STATS_FILE=PATH: every live block's figures, one line each (to compare two runs).
            if (Environment.GetEnvironmentVariable("DIRIGENT_JIT_STATS_FILE") is { Length: > 0 } path)
                File.WriteAllLines(path, _blocks.Values.Select(b =>
                    $"{b.Ip:x} {b.Bits} {b.InterpRuns} {b.Heat} {b.JitQueued} {(b.Compiled != null ? 1 : 0)} {b.Count}"));
        }
        Jit?.Dispose();
    }

    /// <summary>Feeds instruction bytes to Iced from guest memory, translating a second page only when needed.</summary>
    private sealed class FetchReader : CodeReader
    {
        private Cpu _cpu = null!;
        private GuestMemory _mem = null!;
        private ulong _linear;      // linear address of the next byte
        private byte* _host;        // host pointer of the next byte within the current page (null: fetch needed)
        private ulong _hostEnd;     // linear address where _host stops being valid
        private ulong _faultLinear;
        public ulong SecondPagePhys;

        public void Reset(Cpu cpu, ulong linear, ulong phys, GuestMemory mem)
        {
            _cpu = cpu;
            _mem = mem;
            _linear = linear;
            _faultLinear = ulong.MaxValue;
            SecondPagePhys = ulong.MaxValue;
            _host = mem.TryGetHostPointer(phys & ~0xFFFUL, 4096);
            if (_host != null) _host += phys & 0xFFF;
            _hostEnd = (linear | 0xFFF) + 1;
        }

        public override int ReadByte()
        {
            if (_linear >= _hostEnd || _host == null)
            {
                if (_linear < _hostEnd) return -1; // first page is not RAM: nothing executable there
                ulong saved = _cpu.Cr2;
                try
                {
                    ulong pa = _cpu.TranslateFetch(_linear);
                    _host = _mem.TryGetHostPointer(pa & ~0xFFFUL, 4096);
                    if (_host == null) { _faultLinear = _linear; return -1; }
                    _host += pa & 0xFFF;
                    SecondPagePhys = pa & ~0xFFFUL;
                    _hostEnd = (_linear | 0xFFF) + 1;
                }
                catch (CpuException)
                {
                    _cpu.SetCr2Raw(saved);
                    _faultLinear = _linear;
                    return -1;
                }
            }
            _linear++;
            return *_host++;
        }

        /// <summary>Re-raises the fetch fault for a block whose first instruction cannot be fetched.</summary>
        public void RaiseFetchFault()
        {
            if (_faultLinear != ulong.MaxValue) _cpu.TranslateFetch(_faultLinear);
            // Fetching from a hole or MMIO: we do not execute from device memory, so the guest gets #GP(0).
            throw new CpuException(Vec.GP, 0);
        }
    }
}
