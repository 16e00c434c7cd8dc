using Iced.Intel;
using Dirigent.Machine.Memory;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// Decoded blocks keyed by (guest-physical address, CS offset, bitness), shared by the vCPUs of one VM. Pages that
/// hold decoded code are tracked so that any write to them (guest store, DMA, loader) drops the stale blocks:
/// self-modifying code takes effect at the next instruction.
/// </summary>
internal sealed unsafe class CodeCache
{
    private readonly GuestMemory _mem;
    private readonly Dictionary<(ulong, ulong, int), Block> _blocks = new();
    private readonly Dictionary<ulong, List<Block>> _byPage = new();
    private readonly byte[] _isCode;          // one flag per guest-physical page below TopOfRam
    private readonly List<Cpu> _cpus = new();
    private readonly object _lock = new();
    private readonly Decoder?[] _decoders = new Decoder?[3];
    private readonly FetchReader _reader = new();
    private readonly Instruction[] _scratch = new Instruction[MaxBlockInstructions];

    public const int MaxBlockInstructions = 64;
    public long BlocksTranslated;
    public long BlocksInvalidated;

    public CodeCache(GuestMemory mem)
    {
        _mem = mem;
        _isCode = new byte[(mem.TopOfRam >> 12) + 1];
        mem.ExternalWrite += (gpa, len) => InvalidateRange(gpa, len);
    }

    private volatile int _cpuCount;

    public void Register(Cpu c) { lock (_lock) { _cpus.Add(c); _cpuCount = _cpus.Count; } }
    public void Unregister(Cpu c) { lock (_lock) { _cpus.Remove(c); _cpuCount = _cpus.Count; } }

    /// <summary>vCPUs of this VM (HLT with IF=0 can only end the run on a uniprocessor).</summary>
    public int CpuCount => _cpuCount;

    public bool IsCodePage(ulong physPage)
    {
        ulong n = physPage >> 12;
        return n < (ulong)_isCode.Length && _isCode[n] != 0;
    }

    public Block? Lookup(ulong phys, ulong ip, int bits)
    {
        lock (_lock) return _blocks.TryGetValue((phys, ip, bits), out var b) ? b : null;
    }

    /// <summary>
    /// A store hit guest RAM at pa without going through a write-TLB entry: drop blocks decoded from the page(s) and
    /// log them dirty (every slow-path, RMW and page-table store of the vCPUs comes through here).
    /// </summary>
    public void NotifyWrite(ulong pa, int size)
    {
        _mem.DirtyLog.Mark(pa, (ulong)size);
        ulong n = pa >> 12;
        if (n < (ulong)_isCode.Length && _isCode[n] != 0) InvalidatePage(n << 12);
        ulong last = (pa + (ulong)size - 1) >> 12;
        if (last != n && last < (ulong)_isCode.Length && _isCode[last] != 0) InvalidatePage(last << 12);
    }

    public void InvalidateRange(ulong gpa, ulong len)
    {
        if (len == 0) return;
        for (ulong p = gpa & ~0xFFFUL; p < gpa + len; p += 4096)
            if (IsCodePage(p)) InvalidatePage(p);
    }

    private void InvalidatePage(ulong page)
    {
        lock (_lock)
        {
            _isCode[page >> 12] = 0;
            if (!_byPage.Remove(page, out var list)) return;
            foreach (var b in list)
            {
                if (!b.Valid) continue;
                b.Valid = false;
                BlocksInvalidated++;
                _blocks.Remove((b.Phys, b.Ip, b.Bits));
                foreach (var c in _cpus) c.OnBlockInvalidated(b);
            }
        }
    }

    private void AddToPage(ulong page, Block b)
    {
        if (!_byPage.TryGetValue(page, out var list)) _byPage[page] = list = new List<Block>();
        list.Add(b);
        ulong n = page >> 12;
        if (n < (ulong)_isCode.Length && _isCode[n] == 0)
        {
            _isCode[n] = 1;
            // Writes to this page must now trap to the slow path, so no vCPU may keep a direct write mapping.
            foreach (var c in _cpus) c.FlushTlbWritesTo(page);
        }
    }

    /// <summary>Decodes a new block starting at the given address (the first byte is known to be fetchable).</summary>
    public Block Translate(Cpu cpu, ulong linear, ulong phys, ulong ip, int bits)
    {
        lock (_lock)
        {
            int di = bits == 64 ? 2 : bits == 32 ? 1 : 0;
            _reader.Reset(cpu, linear, phys, _mem);
            var dec = _decoders[di] ??= Decoder.Create(bits, _reader, DecoderOptions.None);
            dec.IP = ip;
            var table = Dispatch.Table;
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
            for (int k = 0; k < n; k++)
            {
                var h = Instructions.FastRegReg.Select(ref b.Instrs[k], table[(int)b.Instrs[k].Code]);
                h = Instructions.FastMem.Select(ref b.Instrs[k], bits, h);
                b.Handlers[k] = Instructions.FastBranch.Select(ref b.Instrs[k], bits, h);
            }
            if (bits == 64 && n >= 2)
            {
                var f = Instructions.FastFused.Select(ref b.Instrs[n - 2], ref b.Instrs[n - 1]);
                if (f != null) { b.Handlers[n - 2] = f; b.RunCount = n - 1; }
            }
            if (_reader.SecondPagePhys != ulong.MaxValue) b.Page1 = _reader.SecondPagePhys;
            AddToPage(b.Page0, b);
            if (b.Page1 != ulong.MaxValue) AddToPage(b.Page1, b);
            _blocks[(phys, ip, bits)] = b;
            BlocksTranslated++;
            return b;
        }
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
