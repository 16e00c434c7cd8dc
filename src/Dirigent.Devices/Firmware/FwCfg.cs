using System.Buffers.Binary;
using System.Text;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Firmware;

/// <summary>
/// QEMU's firmware configuration device (docs/specs/fw_cfg.txt) as SeaBIOS finds it on a PC: the selector at I/O
/// 0x510 (16-bit), the data port 0x511 (byte reads stream the selected item) and the DMA interface at 0x514 (the
/// big-endian address of an FWCfgDmaAccess structure: high half at 0x514, low half at 0x518, the low write starts
/// the transfer; reads return the signature "QEMU CFG"). Items are fixed when the machine is built; named files go
/// in the directory at FW_CFG_FILE_DIR (0x19) from selector 0x20 up. Bad selectors read as zeros; a DMA transfer
/// whose structure or buffer is not guest RAM ends with the error bit and never touches anything else.
/// </summary>
public sealed partial class FwCfg : IPortDevice
{
    public const ushort BasePort = 0x510, PortCount = 12;
    public const ushort SelectorOffset = 0, DataOffset = 1, DmaOffset = 4;

    // Selector keys (fw_cfg.txt, QEMU's include/standard-headers/linux/qemu_fw_cfg.h).
    public const ushort Signature = 0x00, Id = 0x01, Uuid = 0x02, RamSize = 0x03, NoGraphic = 0x04, NbCpus = 0x05,
        Numa = 0x0D, BootMenu = 0x0E, MaxCpus = 0x0F, FileDir = 0x19, FileFirst = 0x20;
    public const ushort ArchLocal = 0x8000, AcpiTablesKey = ArchLocal + 0, SmbiosEntries = ArchLocal + 1,
        Irq0Override = ArchLocal + 2, E820Table = ArchLocal + 3;
    /// <summary>Selector bit 14: the legacy write channel (nothing here is writable through it).</summary>
    public const ushort WriteChannel = 0x4000;
    /// <summary>FW_CFG_ID bits: the traditional interface and the DMA interface.</summary>
    public const uint IdTraditional = 1, IdDma = 2;

    // FWCfgDmaAccess.control bits.
    public const uint DmaError = 0x01, DmaRead = 0x02, DmaSkip = 0x04, DmaSelect = 0x08, DmaWrite = 0x10;

    /// <summary>"QEMU CFG", what a read of the DMA address register returns (as a big-endian 64-bit value).</summary>
    public static ReadOnlySpan<byte> DmaSignature => "QEMU CFG"u8;

    /// <summary>The most a file name may have (the directory entry's 56 bytes, NUL included).</summary>
    public const int MaxFileName = 55;

    private readonly GuestMemory _mem;
    private readonly Dictionary<ushort, byte[]> _items = new();
    private readonly List<(string Name, ushort Key)> _files = new();
    private readonly object _lock = new();

    // The guest-visible registers (saved).
    private ushort _selector;
    private uint _offset;
    private uint _dmaHigh;

    public FwCfg(GuestMemory mem)
    {
        _mem = mem;
        _items[Signature] = "QEMU"u8.ToArray();
        _items[Id] = Le32(IdTraditional | IdDma);
        RebuildDirectory();
    }

    public static byte[] Le16(ushort v) { var b = new byte[2]; BinaryPrimitives.WriteUInt16LittleEndian(b, v); return b; }
    public static byte[] Le32(uint v) { var b = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); return b; }
    public static byte[] Le64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); return b; }

    /// <summary>Sets a numbered item (before the machine runs).</summary>
    public void AddItem(ushort key, byte[] data)
    {
        if (key is FileDir or Signature or Id || (key & WriteChannel) != 0 || (key & 0x3FFF) >= FileFirst && (key & ArchLocal) == 0)
            throw new ArgumentException($"fw_cfg key 0x{key:x} is reserved");
        lock (_lock) _items[key] = data;
    }

    /// <summary>Adds a named file (before the machine runs); returns its selector.</summary>
    public ushort AddFile(string name, byte[] data)
    {
        if (name.Length == 0 || Encoding.ASCII.GetByteCount(name) > MaxFileName || name.Any(c => c > 0x7E || c < 0x20))
            throw new ArgumentException($"fw_cfg file name '{name}': 1..{MaxFileName} printable ASCII characters");
        lock (_lock)
        {
            if (_files.Any(f => f.Name == name)) throw new ArgumentException($"fw_cfg file '{name}' exists");
            ushort key = (ushort)(FileFirst + _files.Count);
            if (key >= 0x4000) throw new InvalidOperationException("fw_cfg: too many files");
            _files.Add((name, key));
            _items[key] = data;
            RebuildDirectory();
            return key;
        }
    }

    /// <summary>A file's contents, or null.</summary>
    public byte[]? File(string name)
    {
        lock (_lock)
        {
            foreach (var f in _files) if (f.Name == name) return _items[f.Key];
            return null;
        }
    }

    /// <summary>
    /// The directory: a big-endian count, then per file (sorted by name, as QEMU keeps them) a big-endian size,
    /// selector, reserved word and the NUL-padded 56-byte name.
    /// </summary>
    private void RebuildDirectory()
    {
        var sorted = _files.OrderBy(f => f.Name, StringComparer.Ordinal).ToList();
        var dir = new byte[4 + 64 * sorted.Count];
        BinaryPrimitives.WriteUInt32BigEndian(dir, (uint)sorted.Count);
        for (int i = 0; i < sorted.Count; i++)
        {
            var e = dir.AsSpan(4 + 64 * i, 64);
            BinaryPrimitives.WriteUInt32BigEndian(e, (uint)_items[sorted[i].Key].Length);
            BinaryPrimitives.WriteUInt16BigEndian(e[4..], sorted[i].Key);
            Encoding.ASCII.GetBytes(sorted[i].Name, e[8..]);
        }
        _items[FileDir] = dir;
    }

    private byte[]? Current => _items.TryGetValue((ushort)(_selector & ~WriteChannel), out var d) ? d : null;

    public uint Read(ushort offset, int size)
    {
        lock (_lock)
        {
            if (offset == DataOffset && size == 1)
            {
                var item = Current;
                if (item == null || _offset >= item.Length) return 0;
                return item[_offset++];
            }
            if (offset is >= DmaOffset and < DmaOffset + 8)
            {
                uint v = 0;
                for (int k = 0; k < size && offset - DmaOffset + k < 8; k++)
                    v |= (uint)DmaSignature[offset - DmaOffset + k] << (8 * k);
                return v;
            }
            if (offset == SelectorOffset && size == 2) return _selector;
            return 0;
        }
    }

    public void Write(ushort offset, int size, uint value)
    {
        lock (_lock)
        {
            switch (offset)
            {
                case SelectorOffset when size == 2:
                    Select((ushort)value);
                    break;
                case DmaOffset when size == 4:
                    _dmaHigh = BinaryPrimitives.ReverseEndianness(value);
                    break;
                case DmaOffset + 4 when size == 4:
                    ulong addr = (ulong)_dmaHigh << 32 | BinaryPrimitives.ReverseEndianness(value);
                    _dmaHigh = 0;
                    Dma(addr);
                    break;
            }
        }
    }

    private void Select(ushort key)
    {
        _selector = key;
        _offset = 0;
    }

    /// <summary>
    /// Runs one FWCfgDmaAccess { be32 control; be32 length; be64 address } at <paramref name="access"/>: select,
    /// then read (zeros past the item's end), skip or write (refused: nothing is writable); the control word is
    /// cleared when done, or left with only the error bit.
    /// </summary>
    private void Dma(ulong access)
    {
        Span<byte> hdr = stackalloc byte[16];
        if (!_mem.TryRead(access, hdr)) return; // nowhere to report to: the guest gave no RAM address
        uint control = BinaryPrimitives.ReadUInt32BigEndian(hdr);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(hdr[4..]);
        ulong address = BinaryPrimitives.ReadUInt64BigEndian(hdr[8..]);
        if ((control & DmaSelect) != 0) Select((ushort)(control >> 16));
        bool ok = true;
        var item = Current;
        if ((control & DmaRead) != 0)
        {
            ok = Transfer(item, address, length);
        }
        else if ((control & DmaWrite) != 0)
        {
            ok = false; // no writable items
        }
        else if ((control & DmaSkip) != 0)
        {
            _offset = item == null ? 0 : (uint)Math.Min((ulong)item.Length, (ulong)_offset + length);
        }
        Span<byte> result = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(result, ok ? 0 : DmaError);
        _mem.TryWrite(access, result);
    }

    private bool Transfer(byte[]? item, ulong address, uint length)
    {
        if (length == 0) return true;
        if (!_mem.IsRam(address, length)) return false;
        // In bounded pieces: a guest may ask for up to 4 GiB (of zeros past the item's end).
        Span<byte> chunk = stackalloc byte[4096];
        for (ulong done = 0; done < length;)
        {
            int n = (int)Math.Min((ulong)chunk.Length, length - done);
            var piece = chunk[..n];
            piece.Clear();
            if (item != null && _offset < item.Length)
            {
                int m = (int)Math.Min((uint)n, (uint)item.Length - _offset);
                item.AsSpan((int)_offset, m).CopyTo(piece);
                _offset += (uint)m;
            }
            if (!_mem.TryWrite(address + done, piece)) return false;
            done += (ulong)n;
        }
        return true;
    }
}
